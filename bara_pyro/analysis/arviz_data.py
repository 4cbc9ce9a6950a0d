"""The one module that talks to ArviZ (0.2x ``InferenceData`` API).

Every ArviZ call of the package lives here, so the move to ArviZ 1.x (``DataTree``, Python >= 3.12)
touches this file only. Everything else works with numpy arrays, xarray objects and pandas frames.

Posterior draws of a variational guide are *independent* draws from ``q``. The usual MCMC
diagnostics therefore answer the wrong question when computed on them:

* **R-hat on draws of one guide is meaningless.** It compares chains of a sampler to detect
  non-mixing; draws of one fitted ``q`` are iid and give R-hat ~ 1 however wrong ``q`` is.
  :func:`rhat_across_fits` computes R-hat only where each "chain" is an independent fit
  (another seed), which measures whether the optimisation lands on the same posterior.
* **Guide quality is measured by PSIS k-hat** (:func:`psis_khat`) of the importance weights
  ``log p(data, globals_s) - log q(globals_s)`` (Yao et al. 2018).

References
----------
1. Yao, Vehtari, Simpson, Gelman (2018). Yes, but did it work?: Evaluating variational inference. ICML.
2. Vehtari, Simpson, Gelman, Yao, Gabry (2024). Pareto smoothed importance sampling. JMLR 25(72).
3. Vehtari, Gelman, Gabry (2017). Practical Bayesian model evaluation using leave-one-out
   cross-validation and WAIC. Statistics and Computing 27.
4. Vehtari, Gelman, Simpson, Carpenter, Buerkner (2021). Rank-normalization, folding, and
   localization: an improved R-hat. Bayesian Analysis 16(2).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .plots import short_layer_names
from .rundir import GatesLike, as_arrays

with warnings.catch_warnings():
    # ArviZ 0.2x warns once a day, on import, that 1.x is coming; nothing to act on here.
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import arviz as az

__all__ = [
    "GLOBAL_VARS",
    "PSISDiagnostic",
    "WeightConcentration",
    "compare",
    "global_posterior_idata",
    "interpret_khat",
    "loo",
    "plot_forest_pi",
    "predictive_idata",
    "present_global_vars",
    "psis_khat",
    "rhat_across_fits",
    "summary",
    "token_gate_dataset",
    "weight_concentration",
]

#: Posterior variables of the global guide, each with dims ``(chain, draw, layer, rank)``.
GLOBAL_VARS = ("pi", "lambda")

# az.loo warns when a pointwise k-hat is high; the same information is kept in the result
# (``ELPDData.warning`` and ``pareto_k``) and shown by the report, so the warning is redundant.
_LOO_KHAT_WARNING = "Estimated shape parameter of Pareto distribution is greater than"
# ArviZ 0.23's compare sorts with ``inplace=True``, deprecated by pandas 3.1 (an ArviZ internal, harmless).
_PANDAS_INPLACE_WARNING = "The inplace keyword in DataFrame"


def _layer_rank_coords(gates: Mapping[str, Any]) -> dict[str, np.ndarray]:
    layers = np.asarray([str(name) for name in gates["layer_names"]])
    rank = np.arange(np.shape(gates["pi_alpha"])[-1])
    return {"layer": layers, "rank": rank}


def predictive_idata(predictions: Mapping[str, Any], seed: int = 0) -> az.InferenceData:
    """Predictive groups from ``predictions.npz`` (for any method, gated or not).

    * ``log_likelihood.y`` ``(chain=1, draw=S, example=N)`` from ``sample_loglik`` (S, N),
    * ``posterior_predictive.y`` ``(1, S, N)`` labels drawn from ``sample_probs`` (S, N, C) and
      ``posterior_predictive.y_prob`` ``(1, S, N, class=C)`` the probabilities themselves,
    * ``observed_data.y`` ``(example,)`` from ``labels``.

    Groups whose arrays are absent are left out.
    """
    groups: dict[str, xr.Dataset] = {}
    if "labels" in predictions:
        labels = np.asarray(predictions["labels"])
        groups["observed_data"] = xr.Dataset({"y": (("example",), labels)}, coords={"example": np.arange(len(labels))})
    if "sample_loglik" in predictions:
        loglik = np.asarray(predictions["sample_loglik"], float)
        if loglik.ndim != 2:
            raise ValueError(f"sample_loglik must be (S, N), got shape {loglik.shape}")
        groups["log_likelihood"] = xr.Dataset(
            {"y": (("chain", "draw", "example"), loglik[None])},
            coords={"chain": [0], "draw": np.arange(loglik.shape[0]), "example": np.arange(loglik.shape[1])},
        )
    if "sample_probs" in predictions:
        probs = np.asarray(predictions["sample_probs"], float)  # (S, N, C)
        if probs.ndim != 3:
            raise ValueError(f"sample_probs must be (S, N, C), got shape {probs.shape}")
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
        draws = (rng.random(probs.shape[:2] + (1,)) > cdf).sum(-1).clip(max=probs.shape[-1] - 1)
        s, n, c = probs.shape
        groups["posterior_predictive"] = xr.Dataset(
            {
                "y": (("chain", "draw", "example"), draws[None]),
                "y_prob": (("chain", "draw", "example", "class"), probs[None]),
            },
            coords={"chain": [0], "draw": np.arange(s), "example": np.arange(n), "class": np.arange(c)},
        )
    return az.InferenceData(**groups)


def global_posterior_idata(
    gates: GatesLike,
    num_draws: int = 1000,
    seed: int = 0,
    predictions: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    r"""Draws of the global guide as an ``InferenceData`` (one chain).

    .. math::

        \pi_{lk} \sim \text{Beta}(\text{pi\_alpha}_{lk}, \text{pi\_beta}_{lk}), \qquad
        \lambda_{lk} \sim \text{Gamma}(\text{lambda\_shape}_{lk}, \text{rate}=\text{lambda\_rate}_{lk})

    :param gates: loaded ``gates.npz`` (or its path / run dir) with ``layer_names`` (L,) and the
        four ``(L, r)`` guide parameters.
    :param num_draws: draws per variable.
    :param seed: numpy seed of the draws.
    :param predictions: optional loaded ``predictions.npz``; adds the groups of
        :func:`predictive_idata`. Its ``S`` draws are the trainer's own posterior samples and are
        *not* paired with the ``num_draws`` draws of ``pi``/``lambda``.
    :returns: ``posterior`` with ``pi`` and (where the gates have a magnitude posterior) ``lambda`` of dims
        ``(chain, draw, layer, rank)``, coords
        ``layer`` = module paths and ``rank`` = ``0..r-1``.
    """
    gates = as_arrays(gates)
    missing = [k for k in ("layer_names", "pi_alpha", "pi_beta") if k not in gates]
    if missing:
        raise KeyError(f"gates data lacks {missing}")
    rng = np.random.default_rng(seed)
    alpha, beta = np.asarray(gates["pi_alpha"], float), np.asarray(gates["pi_beta"], float)
    size = (1, num_draws) + alpha.shape
    dims = ("chain", "draw", "layer", "rank")
    draws = {"pi": (dims, rng.beta(alpha, beta, size=size))}
    if "lambda_shape" in gates and "lambda_rate" in gates:  # absent without a magnitude prior
        shape, rate = np.asarray(gates["lambda_shape"], float), np.asarray(gates["lambda_rate"], float)
        draws["lambda"] = (dims, rng.gamma(shape, 1.0 / rate, size=size))
    posterior = xr.Dataset(
        draws,
        coords={"chain": [0], "draw": np.arange(num_draws), **_layer_rank_coords(gates)},
        attrs={"source": f"numpy draws from the variational guide q({'), q('.join(draws)})"},
    )
    idata = az.InferenceData(posterior=posterior)
    if predictions is not None:
        idata.extend(predictive_idata(predictions, seed=seed))
    return idata


def token_gate_dataset(gates: GatesLike) -> xr.Dataset:
    """Per-token gates as an xarray Dataset.

    * ``gate_prob`` ``(layer, token, rank)``: :math:`p_{ltk} = q(z_{ltk}=1)` (``token_gate_prob``),
    * ``expected_gate`` ``(layer, token, rank)``: :math:`E_q[g_{ltk}]` (``token_expected_gate``),
    * ``example_gate_prob`` ``(layer, example_token, rank)`` with the token strings in the
      non-index coord ``example_token_text``.

    Variables whose arrays are absent are left out; at least one must be present.
    """
    gates = as_arrays(gates)
    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = _layer_rank_coords(gates)
    for name, key in (("gate_prob", "token_gate_prob"), ("expected_gate", "token_expected_gate")):
        if key in gates:
            values = np.asarray(gates[key], float)
            data_vars[name] = (("layer", "token", "rank"), values)
            coords["token"] = np.arange(values.shape[1])
    if "example_gate_prob" in gates:
        values = np.asarray(gates["example_gate_prob"], float)
        data_vars["example_gate_prob"] = (("layer", "example_token", "rank"), values)
        coords["example_token"] = np.arange(values.shape[1])
        if "example_tokens" in gates:
            coords["example_token_text"] = ("example_token", np.asarray([str(t) for t in gates["example_tokens"]]))
    if not data_vars:
        raise KeyError("gates data has none of token_gate_prob, token_expected_gate, example_gate_prob")
    return xr.Dataset(data_vars, coords=coords)


def present_global_vars(idata: az.InferenceData) -> tuple[str, ...]:
    """The :data:`GLOBAL_VARS` that ``idata``'s posterior holds (``lambda`` only with a magnitude prior)."""
    return tuple(v for v in GLOBAL_VARS if v in idata.posterior)


def summary(idata: az.InferenceData, var_names: Sequence[str] | None = None, hdi_prob: float = 0.94) -> pd.DataFrame:
    """``az.summary(kind="stats")``: mean, sd and HDI of each ``(layer, rank)`` entry of ``var_names`` (default:
    the global variables ``idata`` holds).

    Only statistics, no R-hat/ESS: those are MCMC diagnostics and meaningless for iid guide draws.
    """
    var_names = present_global_vars(idata) if var_names is None else var_names
    return az.summary(idata, var_names=list(var_names), kind="stats", hdi_prob=hdi_prob)


class PSISDiagnostic(NamedTuple):
    """Pareto k-hat of the importance weights and its interpretation (see :func:`interpret_khat`)."""

    khat: float
    interpretation: str


def interpret_khat(khat: float) -> str:
    r"""Plain-language reading of a PSIS :math:`\hat k` for a variational guide (Yao et al. 2018).

    :math:`\hat k < 0.5` good, :math:`0.5 \le \hat k \le 0.7` ok, :math:`\hat k > 0.7` unreliable.
    """
    if not np.isfinite(khat) and khat < 0:
        return "good: all importance weights are equal, the guide matches the posterior up to a constant"
    if khat < 0.5:
        return "good: the guide is close to the posterior; importance-weighted estimates are reliable"
    if khat <= 0.7:
        return "ok: the guide is usable, but importance weights are heavy-tailed; treat estimates with care"
    return (
        "unreliable: the guide misses posterior mass (weights too heavy-tailed); "
        "posterior summaries from it may be far off"
    )


def psis_khat(log_weights: np.ndarray) -> PSISDiagnostic:
    r"""Pareto k-hat of variational importance weights via ``az.psislw``.

    :param log_weights: ``(S,)`` :math:`\log w_s = \log p(\text{data}, \theta_s) - \log q(\theta_s)`,
        :math:`\theta_s \sim q` (the ``log_importance_weights`` of ``gates.npz``). The draws are
        independent, so the relative efficiency is 1. At least 21 draws are needed to fit the tail
        (a few hundred give a stable estimate).
    :returns: ``(khat, interpretation)``. Exactly equal weights give ``khat = -inf`` (a perfect guide).
    """
    log_weights = np.asarray(log_weights, float).ravel()
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise ValueError("log importance weights must not contain NaN or +inf")
    if log_weights.size < 21:
        raise ValueError(f"PSIS needs at least 21 draws to fit the Pareto tail, got {log_weights.size}")
    if np.ptp(log_weights[np.isfinite(log_weights)]) == 0:
        return PSISDiagnostic(float("-inf"), interpret_khat(float("-inf")))
    _, khat = az.psislw(log_weights, reff=1.0)
    khat = float(khat)
    return PSISDiagnostic(khat, interpret_khat(khat))


class WeightConcentration(NamedTuple):
    """How far the self-normalised importance weights sit on few draws: always finite, where k-hat may not be."""

    ess: float  # Kish's effective sample size 1 / sum_s wbar_s^2, between 1 and S
    max_share: float  # the largest self-normalised weight, between 1 / S and 1
    log_range: float  # max_s log w_s - min_s log w_s (nats)


def weight_concentration(log_weights: np.ndarray) -> WeightConcentration:
    r"""Kish's effective sample size, the largest share and the range of ``(S,)`` finite log importance weights.

    With :math:`\bar w_s = w_s / \sum_j w_j`: :math:`\mathrm{ESS} = 1 / \sum_s \bar w_s^2` is ``S`` for equal
    weights and 1 when one draw carries all the weight (a log-weight range of hundreds of nats, where PSIS's
    Pareto fit has no tail left and returns an infinite k-hat)."""
    log_weights = np.asarray(log_weights, float).ravel()
    if log_weights.size == 0 or not np.isfinite(log_weights).all():
        raise ValueError("log importance weights must be finite and at least one")
    shifted = np.exp(log_weights - log_weights.max())
    normalised = shifted / shifted.sum()
    return WeightConcentration(float(1.0 / np.sum(normalised ** 2)), float(normalised.max()),
                               float(np.ptp(log_weights)))


def loo(idata: az.InferenceData, pointwise: bool = True) -> az.ELPDData:
    """PSIS-LOO on the ``log_likelihood.y`` group (``az.loo`` with ``reff=1``: guide draws are iid).

    High pointwise k-hat values are reported in the result (``warning``, ``pareto_k``) rather than
    as a Python warning.
    """
    if "log_likelihood" not in idata.groups():
        raise KeyError("idata has no log_likelihood group (predictions.npz lacks sample_loglik)")
    n_draws = idata.log_likelihood.sizes["chain"] * idata.log_likelihood.sizes["draw"]
    if n_draws < 2:
        raise ValueError(f"PSIS-LOO needs several posterior draws of the log-likelihood, got {n_draws}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LOO_KHAT_WARNING, category=UserWarning)
        return az.loo(idata, pointwise=pointwise, reff=1.0, var_name="y")


def compare(idatas: Mapping[str, az.InferenceData]) -> pd.DataFrame:
    """``az.compare`` by PSIS-LOO (stacking weights) of several runs scored on the same test examples.

    :param idatas: ``{name: InferenceData}`` each with a ``log_likelihood.y`` group of shape ``(1, S, N)``.
    :returns: one row per run, best first: ``elpd_loo``, ``p_loo``, ``elpd_diff``, ``weight``, ``se``,
        ``dse``, ``warning``, ``scale``.
    """
    if len(idatas) < 2:
        raise ValueError("compare needs at least two runs")
    elpds = {name: loo(idata) for name, idata in idatas.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PANDAS_INPLACE_WARNING, category=DeprecationWarning)
        return az.compare(elpds, ic="loo")


def _fit_draws(fit: az.InferenceData, var: str) -> xr.DataArray:
    """All draws of one fit's ``var`` with chain and draw merged into ``sample``: dims ``(sample, ...)``."""
    values = fit.posterior[var].stack(sample=("chain", "draw")).transpose("sample", ...)
    return values.drop_vars(["sample", "chain", "draw"])


def rhat_across_fits(
    fits: Sequence[az.InferenceData | np.ndarray], var_names: Sequence[str] | None = None
) -> xr.Dataset | np.ndarray:
    r"""Rank-normalised split R-hat where **each chain is an independent fit** (a different seed).

    .. warning::
        Never feed this the draws of a *single* variational guide split into "chains": those draws
        are iid from one ``q``, so R-hat ~ 1 by construction and says nothing about whether ``q`` is
        right. Here R-hat compares the posteriors found by independent optimisations: values near 1
        mean the fits agree; R-hat > 1.01 means the fits land on different posteriors (local optima,
        label switching between components, or too little training).

    :param fits: ``F >= 2`` fits, all ``InferenceData`` (from :func:`global_posterior_idata`) or all
        arrays of draws ``(draws, *shape)``. Draws are truncated to the smallest fit.
    :param var_names: posterior variables to use (``InferenceData`` input only; default: the global variables
        every fit holds).
    :returns: for ``InferenceData`` a Dataset of R-hat per variable with dims ``(layer, rank)``;
        for arrays an array of shape ``shape`` (a float for 1-d draws).
    """
    if len(fits) < 2:
        raise ValueError("R-hat across fits needs at least two independent fits (seeds); for one fit it is undefined")
    if all(isinstance(fit, az.InferenceData) for fit in fits):
        if var_names is None:
            held = [present_global_vars(fit) for fit in fits]
            var_names = [v for v in held[0] if all(v in h for h in held)]
        stacked = {}
        for var in var_names:
            per_fit = [_fit_draws(fit, var) for fit in fits]
            n = min(d.sizes["sample"] for d in per_fit)
            chains = [d.isel(sample=slice(n)) for d in per_fit]
            stacked[var] = xr.concat(chains, dim="chain", join="exact", coords="minimal", compat="override")
            stacked[var] = stacked[var].rename(sample="draw")
        return az.rhat(xr.Dataset(stacked).transpose("chain", "draw", ...))
    if any(isinstance(fit, az.InferenceData) for fit in fits):
        raise TypeError("pass either all InferenceData or all draw arrays")
    draws = [np.asarray(fit, float) for fit in fits]
    if len({d.shape[1:] for d in draws}) != 1:
        raise ValueError(f"fits have different shapes: {[d.shape for d in draws]}")
    n = min(len(d) for d in draws)
    chains = np.stack([d[:n] for d in draws])  # (F, n, *shape)
    result = az.rhat(az.convert_to_dataset({"x": chains}))["x"].values
    return float(result) if result.ndim == 0 else result


def plot_forest_pi(idata: az.InferenceData, hdi_prob: float = 0.94) -> Figure:
    r"""Forest plot (``az.plot_forest``) of :math:`q(\pi_{lk})`: median, quartiles and HDI per layer and component.

    Layers are labelled with :func:`~bara_pyro.analysis.plots.short_layer_names`.
    """
    pi = idata.posterior["pi"]
    pi = pi.assign_coords(layer=short_layer_names(list(pi["layer"].values)))
    rows = pi.sizes["layer"] * pi.sizes["rank"]
    fig = Figure(figsize=(6.5, 1.2 + 0.22 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    az.plot_forest(
        xr.Dataset({"pi": pi}), var_names=["pi"], combined=True, hdi_prob=hdi_prob, ax=ax, show=False, textsize=8
    )
    ax.set_xlim(-0.02, 1.02)
    ax.set_title(rf"$q(\pi_{{lk}})$: median, IQR and {hdi_prob:.0%} HDI")
    return fig
