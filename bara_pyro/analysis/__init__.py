"""Posterior analysis of BaRA runs, read from run directories (see :mod:`bara_pyro.analysis.rundir`).

Only :mod:`bara_pyro.analysis.arviz_data` imports ArviZ, and the names below load their submodule on first
use, so ``import bara_pyro.analysis.update_spectrum`` (run evaluation) needs neither ArviZ nor matplotlib.
Guide quality is judged by PSIS k-hat; R-hat is computed only across independent fits (seeds), never on
draws of one variational guide.
"""

import importlib

_SUBMODULE_OF = {
    "GLOBAL_VARS": "arviz_data",
    "PSISDiagnostic": "arviz_data",
    "compare": "arviz_data",
    "global_posterior_idata": "arviz_data",
    "interpret_khat": "arviz_data",
    "loo": "arviz_data",
    "plot_forest_pi": "arviz_data",
    "predictive_idata": "arviz_data",
    "psis_khat": "arviz_data",
    "rhat_across_fits": "arviz_data",
    "summary": "arviz_data",
    "token_gate_dataset": "arviz_data",
    "DEFAULT_DEAD_THRESHOLD": "diagnostics",
    "EffectiveRank": "diagnostics",
    "KLTraces": "diagnostics",
    "ReliabilityBins": "diagnostics",
    "dead_components": "diagnostics",
    "effective_rank": "diagnostics",
    "kl_traces": "diagnostics",
    "log_predictive_density": "diagnostics",
    "posterior_mean_lambda": "diagnostics",
    "posterior_mean_pi": "diagnostics",
    "reliability_bins": "diagnostics",
    "plot_effective_rank_distribution": "plots",
    "plot_rank_usage": "plots",
    "plot_reliability": "plots",
    "plot_token_gate_map": "plots",
    "plot_training_curves": "plots",
    "short_layer_names": "plots",
    "write_report": "report",
    "GatesLike": "rundir",
    "RunData": "rundir",
    "as_arrays": "rundir",
    "load_npz": "rundir",
    "load_run": "rundir",
    "read_train_log": "rundir",
    "spectral_effective_rank": "update_spectrum",
    "update_ranks": "update_spectrum",
    "update_singular_values": "update_spectrum",
}

__all__ = [
    "DEFAULT_DEAD_THRESHOLD",
    "EffectiveRank",
    "GLOBAL_VARS",
    "GatesLike",
    "KLTraces",
    "PSISDiagnostic",
    "ReliabilityBins",
    "RunData",
    "as_arrays",
    "compare",
    "dead_components",
    "effective_rank",
    "global_posterior_idata",
    "interpret_khat",
    "kl_traces",
    "load_npz",
    "load_run",
    "log_predictive_density",
    "loo",
    "plot_effective_rank_distribution",
    "plot_forest_pi",
    "plot_rank_usage",
    "plot_reliability",
    "plot_token_gate_map",
    "plot_training_curves",
    "posterior_mean_lambda",
    "posterior_mean_pi",
    "predictive_idata",
    "psis_khat",
    "read_train_log",
    "reliability_bins",
    "rhat_across_fits",
    "short_layer_names",
    "spectral_effective_rank",
    "summary",
    "token_gate_dataset",
    "update_ranks",
    "update_singular_values",
    "write_report",
]


def __getattr__(name: str):
    if name in _SUBMODULE_OF:
        value = getattr(importlib.import_module(f".{_SUBMODULE_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
