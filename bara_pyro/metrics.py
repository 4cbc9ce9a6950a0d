"""Predictive performance, calibration and uncertainty metrics for categorical predictions.

Conventions: ``probs`` is ``(N, C)`` with rows summing to one (a missing choice may have
probability exactly 0), ``labels`` is ``(N,)`` integer class indices, ``sample_probs`` is
``(S, N, C)`` (``S`` posterior samples).  Inputs may be torch tensors or anything
``torch.as_tensor`` accepts (NumPy arrays, lists); computations run in float64 and scalar
metrics are returned as Python floats.  ``log`` is the natural logarithm (nats).
"""

from __future__ import annotations

import torch

__all__ = [
    "accuracy",
    "brier_score",
    "calibration_error",
    "classification_metrics",
    "expected_calibration_error",
    "mutual_information",
    "nll",
    "ood_auroc",
    "predictive_entropy",
    "token_metrics",
]


def _probs(probs) -> torch.Tensor:
    probs = torch.as_tensor(probs).detach().to(dtype=torch.float64, device="cpu")
    if probs.ndim < 2:
        raise ValueError(f"expected probabilities of shape (..., N, C), got shape {tuple(probs.shape)}")
    return probs


def _labels(labels, num_examples: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).detach().to(dtype=torch.long, device="cpu")
    if labels.shape != (num_examples,):
        raise ValueError(f"expected labels of shape ({num_examples},), got {tuple(labels.shape)}")
    return labels


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """``-sum_c p_c log p_c`` over the last axis, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def accuracy(probs, labels) -> float:
    """Fraction of examples whose most probable class is the label: ``mean_n [argmax_c p_nc = y_n]``."""
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[0])
    return (probs.argmax(dim=-1) == labels).double().mean().item()


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative log predictive probability of the label: ``-mean_n log p_{n, y_n}``.

    Probabilities are clamped below at ``eps`` so a confidently wrong prediction gives a large
    finite value rather than ``inf``.
    """
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[0])
    label_probs = probs.gather(-1, labels[:, None]).squeeze(-1)
    return -label_probs.clamp_min(eps).log().mean().item()


def brier_score(probs, labels) -> float:
    """Multiclass Brier score ``mean_n sum_c (p_nc - [c = y_n])^2`` (in ``[0, 2]``)."""
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[0])
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[-1]).double()
    return (probs - one_hot).square().sum(dim=-1).mean().item()


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins.

    With confidence ``conf_n = max_c p_nc``, correctness ``acc_n = [argmax_c p_nc = y_n]`` and bins
    ``B_b = {n : conf_n in ((b-1)/n_bins, b/n_bins]}``,

    .. math::

        \\mathrm{ECE} = \\sum_b \\frac{|B_b|}{N} \\, \\bigl| \\overline{acc}(B_b) - \\overline{conf}(B_b) \\bigr|.
    """
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[0])
    confidence, prediction = probs.max(dim=-1)
    return calibration_error(confidence, prediction == labels, n_bins=n_bins)


def calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """ECE from ``(N,)`` top-label confidences and ``(N,)`` correctness (bool or 0/1), binned as in
    :func:`expected_calibration_error`; used directly for token-level ECE."""
    confidence = torch.as_tensor(confidence).detach().to(dtype=torch.float64, device="cpu").reshape(-1)
    correct = torch.as_tensor(correct).detach().to(dtype=torch.float64, device="cpu").reshape(-1)
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, inner_edges, right=False)  # bin b holds (edge_{b-1}, edge_b]
    count = torch.zeros(n_bins, dtype=torch.float64).index_add(0, bins, torch.ones_like(confidence))
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add(0, bins, correct - confidence)
    return (gap.abs().sum() / count.sum()).item()


def predictive_entropy(probs) -> torch.Tensor:
    """Entropy of each predictive distribution, ``H[p_n] = -sum_c p_nc log p_nc``: ``(..., N, C) -> (..., N)``."""
    return _entropy(_probs(probs))


def mutual_information(sample_probs) -> torch.Tensor:
    """Epistemic uncertainty (BALD): ``I_n = H[mean_s p_snc] - mean_s H[p_snc]``, ``(S, N, C) -> (N,)``.

    Non-negative by concavity of the entropy (clamped at 0 against round-off); zero when all
    samples agree.
    """
    sample_probs = _probs(sample_probs)
    if sample_probs.ndim != 3:
        raise ValueError(f"expected sample probabilities of shape (S, N, C), got {tuple(sample_probs.shape)}")
    total = _entropy(sample_probs.mean(dim=0))
    aleatoric = _entropy(sample_probs).mean(dim=0)
    return (total - aleatoric).clamp_min(0.0)


def ood_auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve for telling out-of-distribution inputs (positives) from in-distribution ones.

    ``scores_*`` are ``(N_in,)`` / ``(N_out,)`` uncertainty scores, higher meaning "more likely OOD"
    (e.g. predictive entropy).  Computed from ranks (Mann-Whitney U, ties get average ranks):

    .. math::

        \\mathrm{AUROC} = \\frac{R_{out} - N_{out}(N_{out} + 1)/2}{N_{in} N_{out}},

    where ``R_out`` is the sum of the ranks of the OOD scores in the pooled sample; this equals
    ``P(s_out > s_in) + P(s_out = s_in) / 2``.
    """
    scores_in = torch.as_tensor(scores_in).detach().to(dtype=torch.float64, device="cpu").reshape(-1)
    scores_out = torch.as_tensor(scores_out).detach().to(dtype=torch.float64, device="cpu").reshape(-1)
    n_in, n_out = scores_in.numel(), scores_out.numel()
    if n_in == 0 or n_out == 0:
        raise ValueError("ood_auroc needs at least one in-distribution and one OOD score")
    pooled = torch.cat([scores_in, scores_out])
    if torch.isnan(pooled).any():
        raise ValueError("ood_auroc got NaN scores")
    _, inverse, counts = torch.unique(pooled, sorted=True, return_inverse=True, return_counts=True)
    # Tied values share the mean of the 1-based ranks they occupy.
    first_rank = torch.cumsum(counts, dim=0) - counts + 1
    average_rank = first_rank.double() + (counts.double() - 1) / 2
    rank_sum_out = average_rank[inverse[n_in:]].sum()
    return ((rank_sum_out - n_out * (n_out + 1) / 2) / (n_in * n_out)).item()


def classification_metrics(probs, labels, n_bins: int = 15) -> dict[str, float]:
    """``{"accuracy", "nll", "brier", "ece", "mean_entropy"}`` of ``(N, C)`` predictive probabilities."""
    probs = _probs(probs)
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "mean_entropy": predictive_entropy(probs).mean().item(),
    }


def token_metrics(pred, n_bins: int = 15) -> dict[str, float]:
    """Next-token metrics of a :class:`~bara_pyro.inference.token_predictive.TokenPrediction`, averaged over response
    tokens: ``nll`` (nats per token), ``perplexity`` = exp(nll), ``accuracy`` (top-1 token), token-level ``ece``
    (top-label, ``n_bins`` bins), ``brier``, ``mean_entropy`` (predictive entropy per token),
    ``mean_mutual_information`` (its epistemic part), and ``num_tokens``."""
    nll_per_token = pred.nll.double().mean().item()
    return {
        "accuracy": pred.correct.double().mean().item(),
        "nll": nll_per_token,
        "perplexity": float(torch.tensor(nll_per_token, dtype=torch.float64).exp()),
        "brier": pred.brier.double().mean().item(),
        "ece": calibration_error(pred.confidence, pred.correct, n_bins=n_bins),
        "mean_entropy": pred.entropy.double().mean().item(),
        "mean_mutual_information": pred.mutual_information.double().mean().item(),
        "num_tokens": int(pred.nll.numel()),
    }
