"""Posterior diagnostics of a BaRA fit computed from the saved guide parameters (numpy only).

Notation: ``L`` adapted layers, ``r`` rank components, ``n_tokens`` evaluated tokens::

    pi_lk     ~ Beta(a_pi, b_pi)                  # global usage of component k in layer l
    lambda_lk ~ Gamma(...)                         # global scale of component k
    z_ltk     ~ Bernoulli(pi_lk)                   # per-token switch
    g_ltk     = z_ltk * theta_ltk                  # gate applied to component k

with the variational posterior ``q(pi_lk) = Beta(pi_alpha, pi_beta)``,
``q(lambda_lk) = Gamma(lambda_shape, lambda_rate)`` and ``q(z_ltk = 1) = p_ltk``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import entr

from .rundir import GatesLike, as_arrays

__all__ = [
    "DEFAULT_CARRY_THRESHOLD",
    "DEFAULT_DEAD_THRESHOLD",
    "ComponentUsage",
    "EffectiveRank",
    "GateConfidence",
    "UNDECIDED_BAND",
    "KLTraces",
    "ReliabilityBins",
    "component_usage",
    "dead_components",
    "effective_rank",
    "gate_confidence",
    "kl_traces",
    "log_predictive_density",
    "posterior_mean_lambda",
    "posterior_mean_pi",
    "reliability_bins",
    "token_rank_spread",
    "token_rank_spread_per_layer",
]

#: Usage below which a component counts as switched off (used when gates.npz has no ``dead_threshold``).
DEFAULT_DEAD_THRESHOLD = 0.01
#: Share of its layer's largest component norm from which a component counts as carrying the update.
DEFAULT_CARRY_THRESHOLD = 0.2
#: Gate probabilities in ``[UNDECIDED_BAND, 1 - UNDECIDED_BAND]`` count as undecided.
UNDECIDED_BAND = 0.2


def _require(arrays: Mapping[str, Any], *keys: str) -> None:
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise KeyError(f"gates data lacks {missing}; present: {sorted(arrays)}")


def posterior_mean_pi(gates: GatesLike) -> np.ndarray:
    r"""Posterior mean usage :math:`E_q[\pi_{lk}] = \alpha_{lk} / (\alpha_{lk} + \beta_{lk})`, shape ``(L, r)``."""
    gates = as_arrays(gates)
    _require(gates, "pi_alpha", "pi_beta")
    alpha, beta = np.asarray(gates["pi_alpha"], float), np.asarray(gates["pi_beta"], float)
    return alpha / (alpha + beta)


def posterior_mean_lambda(gates: GatesLike) -> np.ndarray:
    r"""Posterior mean scale :math:`E_q[\lambda_{lk}] = \text{shape}_{lk} / \text{rate}_{lk}`, shape ``(L, r)``."""
    gates = as_arrays(gates)
    _require(gates, "lambda_shape", "lambda_rate")
    return np.asarray(gates["lambda_shape"], float) / np.asarray(gates["lambda_rate"], float)


def dead_components(gates: GatesLike, threshold: float | None = None) -> list[tuple[str, int]]:
    r"""Components that are off both globally and for every evaluated token.

    ``(l, k)`` is dead when :math:`E_q[\pi_{lk}] < \tau` **and** :math:`\max_t p_{ltk} < \tau`
    (``token_gate_prob``). Without ``token_gate_prob`` only the global criterion is applied.

    :param gates: loaded ``gates.npz`` (or its path / run dir).
    :param threshold: :math:`\tau`; defaults to the file's ``dead_threshold`` or
        :data:`DEFAULT_DEAD_THRESHOLD` (0.01).
    :returns: ``[(layer_name, k), ...]`` in layer-then-component order.
    """
    gates = as_arrays(gates)
    _require(gates, "layer_names")
    if threshold is None:
        threshold = float(gates["dead_threshold"]) if "dead_threshold" in gates else DEFAULT_DEAD_THRESHOLD
    dead = posterior_mean_pi(gates) < threshold  # (L, r)
    if "token_gate_prob" in gates:
        token_prob = np.asarray(gates["token_gate_prob"], float)  # (L, n_tokens, r)
        if token_prob.shape[1] > 0:
            dead &= token_prob.max(axis=1) < threshold
    names = [str(name) for name in gates["layer_names"]]
    return [(names[layer], int(k)) for layer, k in zip(*np.nonzero(dead))]


@dataclass(frozen=True)
class EffectiveRank:
    r"""Expected number of active components, :math:`s_{lt} = \sum_k p_{ltk}`.

    :param overall: joint effective rank :math:`s = \text{mean}_{l,t}\, s_{lt}` (a float).
    :param per_layer: ``(L,)`` mean over tokens.
    :param per_token: ``(n_tokens,)`` mean over layers.
    :param per_layer_token: ``(L, n_tokens)`` the full :math:`s_{lt}`.
    """

    overall: float
    per_layer: np.ndarray
    per_token: np.ndarray
    per_layer_token: np.ndarray


def effective_rank(gates: GatesLike) -> EffectiveRank:
    r"""Expected effective rank from ``token_gate_prob`` ``(L, n_tokens, r)``.

    :math:`E[\sum_k z_{ltk}] = \sum_k p_{ltk}`; averaged over tokens (per layer), over layers
    (per token) and over both (overall; the number ``metrics.json`` reports as ``effective_rank``).
    """
    gates = as_arrays(gates)
    _require(gates, "token_gate_prob")
    per_layer_token = np.asarray(gates["token_gate_prob"], float).sum(axis=-1)  # (L, n_tokens)
    if per_layer_token.size == 0:
        raise ValueError("token_gate_prob has no tokens; the effective rank is undefined")
    return EffectiveRank(
        overall=float(per_layer_token.mean()),
        per_layer=per_layer_token.mean(axis=1),
        per_token=per_layer_token.mean(axis=0),
        per_layer_token=per_layer_token,
    )


def token_rank_spread_per_layer(gates: GatesLike) -> np.ndarray:
    r"""How much the per-token rank varies within a sequence, layer by layer: ``(L,)``, for layer ``l`` the standard
    deviation over a sequence's tokens of :math:`\sum_k p_{ltk}`, averaged over the sequences with two or more tokens.

    Needs ``token_gate_prob`` ``(L, n_tokens, r)`` and ``token_row`` ``(n_tokens,)`` (each token's sequence).  0 for
    gates that are the same at every token of a sequence (per-layer or per-sequence gates).
    """
    gates = as_arrays(gates)
    _require(gates, "token_gate_prob", "token_row")
    ranks = np.asarray(gates["token_gate_prob"], float).sum(axis=-1)  # (L, n_tokens)
    _, row, count = np.unique(np.asarray(gates["token_row"]), return_inverse=True, return_counts=True)
    several = count >= 2
    if not several.any():
        raise ValueError("no sequence has two tokens; the within-sequence spread is undefined")
    stds = []
    for layer in ranks:
        mean = np.bincount(row, weights=layer) / count
        var = np.bincount(row, weights=(layer - mean[row]) ** 2) / count
        stds.append(np.sqrt(var)[several].mean())
    return np.asarray(stds)


def token_rank_spread(gates: GatesLike) -> float:
    """The within-sequence spread of the per-token rank (:func:`token_rank_spread_per_layer`), averaged over the
    layers."""
    return float(np.mean(token_rank_spread_per_layer(gates)))


@dataclass(frozen=True)
class ComponentUsage:
    r"""How often each component is switched on, against how much of the update it carries.

    :param usage: ``(L, r)`` mean over tokens of :math:`p_{ltk}`, the component's share of the gate rank.
    :param relative_norm: ``(L, r)`` :math:`\|\Delta W_{lk}\| / \max_j \|\Delta W_{lj}\|` (0 for a zero update).
    :param carrying: ``(L, r)`` ``relative_norm >= threshold``.
    :param threshold: the share of the layer's largest norm from which a component carries the update.
    """

    usage: np.ndarray
    relative_norm: np.ndarray
    carrying: np.ndarray
    threshold: float

    @property
    def carrying_usage(self) -> float:
        """Mean usage of the carrying components (nan if none)."""
        return float(self.usage[self.carrying].mean()) if self.carrying.any() else float("nan")

    @property
    def spare_usage(self) -> float:
        """Mean usage of the other components (nan if none)."""
        return float(self.usage[~self.carrying].mean()) if (~self.carrying).any() else float("nan")

    @property
    def spare_rank(self) -> float:
        """The spare components' part of the joint effective rank: ``mean_l sum_k usage_lk [not carrying]``."""
        return float(np.where(self.carrying, 0.0, self.usage).sum(axis=1).mean())


def component_usage(gates: GatesLike, threshold: float = DEFAULT_CARRY_THRESHOLD) -> ComponentUsage:
    r"""Usage of each component against its size, from ``token_gate_prob`` ``(L, n_tokens, r)`` and
    ``component_norm`` ``(L, r)``, the Frobenius norm of component ``k``'s part of the mean update,
    :math:`\|\Delta W_{lk}\| = (\alpha / r) \|B_{:k}\| \|A_{k:}\|` (a magnitude folded into ``B``).

    A component can be switched off two ways: by its gate (usage near 0) or by its size (norm near 0, the gate
    then left at its prior); the joint effective rank counts the second kind at their usage.  ``carrying``
    marks the components whose norm is at least ``threshold`` of their layer's largest.
    """
    gates = as_arrays(gates)
    _require(gates, "token_gate_prob", "component_norm")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    probs = np.asarray(gates["token_gate_prob"], float)
    if probs.shape[1] == 0:
        raise ValueError("token_gate_prob has no tokens; the usage is undefined")
    norm = np.asarray(gates["component_norm"], float)
    if norm.shape != (probs.shape[0], probs.shape[2]):
        raise ValueError(f"component_norm has shape {norm.shape}, expected {(probs.shape[0], probs.shape[2])}")
    largest = norm.max(axis=1, keepdims=True)
    relative = np.divide(norm, largest, out=np.zeros_like(norm), where=largest > 0)
    return ComponentUsage(usage=probs.mean(axis=1), relative_norm=relative, carrying=relative >= threshold,
                          threshold=float(threshold))


@dataclass(frozen=True)
class GateConfidence:
    r"""How decided the per-token gates are: the Bernoulli entropy of each :math:`p_{ltk}` as a fraction of
    :math:`\log 2` (0: the gate is surely on or off for that token, 1: a fair coin), and the share of
    probabilities in the undecided band :math:`[b, 1 - b]`.

    :param entropy: overall mean entropy fraction; ``entropy_per_layer`` ``(L,)``.
    :param undecided: overall share in the band; ``undecided_per_layer`` ``(L,)``.
    """

    entropy: float
    entropy_per_layer: np.ndarray
    undecided: float
    undecided_per_layer: np.ndarray
    band: float


def gate_confidence(gates: GatesLike, band: float = UNDECIDED_BAND) -> GateConfidence:
    r"""Entropy and undecided share of the per-token gate probabilities ``token_gate_prob`` ``(L, n_tokens, r)``.

    A gate that is undecided for a token switches its component on in about half of the posterior draws: the
    sampled update then varies from draw to draw as under dropout, where decided gates give every draw the same
    sparse update."""
    gates = as_arrays(gates)
    _require(gates, "token_gate_prob")
    if not 0 <= band < 0.5:
        raise ValueError(f"band must be in [0, 0.5), got {band!r}")
    p = np.clip(np.asarray(gates["token_gate_prob"], float), 0.0, 1.0)
    if p.shape[1] == 0:
        raise ValueError("token_gate_prob has no tokens; the gate confidence is undefined")
    entropy = (entr(p) + entr(1 - p)) / np.log(2.0)  # entr(x) = -x log x, 0 at 0
    undecided = (p >= band) & (p <= 1 - band)
    return GateConfidence(entropy=float(entropy.mean()), entropy_per_layer=entropy.mean(axis=(1, 2)),
                          undecided=float(undecided.mean()), undecided_per_layer=undecided.mean(axis=(1, 2)),
                          band=float(band))


@dataclass(frozen=True)
class KLTraces:
    """Training curves from ``train_log.jsonl``; each array is ``(n_rows,)``, NaN where a row lacks the key.

    ``loss`` is the negative ELBO per example, so the ELBO is ``-loss``; ``kl_per_layer`` maps a
    layer name to its KL trace.
    """

    step: np.ndarray
    loss: np.ndarray
    nll: np.ndarray
    kl_global: np.ndarray
    kl_local: np.ndarray
    beta: np.ndarray
    lr: np.ndarray
    kl_per_layer: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_kl(self) -> bool:
        """True if any row logged a global or local KL (Bayesian methods)."""
        return bool(np.isfinite(self.kl_global).any() or np.isfinite(self.kl_local).any())


def kl_traces(train_log_rows: Iterable[Mapping[str, Any]]) -> KLTraces:
    """Collect the scalar series of ``train_log.jsonl`` rows (sorted by ``step``) into arrays."""
    rows = sorted(train_log_rows, key=lambda row: row.get("step", 0))

    def series(key: str) -> np.ndarray:
        values = (row.get(key) for row in rows)
        return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

    layers: dict[str, None] = {}
    for row in rows:
        layers.update(dict.fromkeys(row.get("kl_per_layer") or {}))
    per_layer = {
        name: np.array([float((row.get("kl_per_layer") or {}).get(name, np.nan)) for row in rows]) for name in layers
    }
    return KLTraces(
        step=np.array([row.get("step", i) for i, row in enumerate(rows)], dtype=float),
        loss=series("loss"),
        nll=series("nll"),
        kl_global=series("kl_global"),
        kl_local=series("kl_local"),
        beta=series("beta"),
        lr=series("lr"),
        kl_per_layer=per_layer,
    )


@dataclass(frozen=True)
class ReliabilityBins:
    r"""Equal-width confidence bins of a classifier.

    :param edges: ``(n_bins + 1,)`` bin edges on [0, 1].
    :param confidence: ``(n_bins,)`` mean max-probability in each bin (NaN if empty).
    :param accuracy: ``(n_bins,)`` fraction correct in each bin (NaN if empty).
    :param count: ``(n_bins,)`` examples per bin.

    The expected calibration error is
    :math:`\text{ECE} = \sum_b \frac{|B_b|}{N} |\text{acc}(B_b) - \text{conf}(B_b)|`.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error (L1, weighted by bin size)."""
        filled = self.count > 0
        weights = self.count[filled] / self.count.sum()
        return float(np.sum(weights * np.abs(self.accuracy[filled] - self.confidence[filled])))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by confidence ``max_c probs[n, c]``; bins are ``[lo, hi)``, the last one closed.

    :param probs: ``(N, C)`` predictive probabilities.
    :param labels: ``(N,)`` integer true labels.
    """
    probs, labels = np.asarray(probs, float), np.asarray(labels).astype(int)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {probs.shape} and {labels.shape}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges=edges, confidence=mean_conf, accuracy=accuracy, count=count.astype(int))


def log_predictive_density(sample_loglik: np.ndarray) -> np.ndarray:
    r"""Pointwise log predictive density :math:`\log \frac1S \sum_s p(y_n \mid \theta_s)`, shape ``(N,)``.

    :param sample_loglik: ``(S, N)`` :math:`\log p(y_n \mid \theta_s)` for posterior draws :math:`\theta_s`.
    On held-out examples its sum (the test lppd) directly estimates the expected log predictive density.
    """
    loglik = np.asarray(sample_loglik, float)
    if loglik.ndim != 2 or loglik.shape[0] == 0:
        raise ValueError(f"sample_loglik must be (S, N) with S >= 1, got shape {loglik.shape}")
    top = loglik.max(axis=0)
    return top + np.log(np.mean(np.exp(loglik - top), axis=0))
