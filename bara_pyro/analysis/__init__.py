"""Posterior analysis of BaRA runs, read from run directories (see :mod:`bara_pyro.analysis.rundir`).

Only :mod:`bara_pyro.analysis.arviz_data` imports ArviZ, and the names below load their submodule on first
use, so ``import bara_pyro.analysis.update_spectrum`` (run evaluation) needs neither ArviZ nor matplotlib.
Guide quality is judged by PSIS k-hat; R-hat is computed only across independent fits (seeds), never on
draws of one variational guide.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names, for type checkers and the API site; at run time __getattr__ loads them
    from .arviz_data import (
        GLOBAL_VARS,
        PSISDiagnostic,
        WeightConcentration,
        compare,
        global_posterior_idata,
        interpret_khat,
        loo,
        plot_forest_pi,
        predictive_idata,
        psis_khat,
        rhat_across_fits,
        summary,
        token_gate_dataset,
        weight_concentration,
    )
    from .diagnostics import (
        DEFAULT_CARRY_THRESHOLD,
        DEFAULT_DEAD_THRESHOLD,
        ComponentUsage,
        EffectiveRank,
        GateConfidence,
        KLTraces,
        ReliabilityBins,
        component_usage,
        dead_components,
        effective_rank,
        gate_confidence,
        kl_traces,
        log_predictive_density,
        posterior_mean_lambda,
        posterior_mean_pi,
        reliability_bins,
        token_rank_spread,
        token_rank_spread_per_layer,
    )
    from .plots import (
        plot_component_usage,
        plot_effective_rank_distribution,
        plot_rank_usage,
        plot_reliability,
        plot_token_gate_map,
        plot_training_curves,
        short_layer_names,
    )
    from .report import write_report
    from .rundir import GatesLike, RunData, as_arrays, load_npz, load_run, read_train_log
    from .update_spectrum import component_norms, spectral_effective_rank, update_ranks, update_singular_values

# searched in this order on first use of a name: the light modules before those that import matplotlib or ArviZ
_SUBMODULES = ("diagnostics", "rundir", "update_spectrum", "plots", "arviz_data", "report")

__all__ = [
    "DEFAULT_CARRY_THRESHOLD",
    "DEFAULT_DEAD_THRESHOLD",
    "ComponentUsage",
    "EffectiveRank",
    "GLOBAL_VARS",
    "GateConfidence",
    "GatesLike",
    "KLTraces",
    "PSISDiagnostic",
    "ReliabilityBins",
    "RunData",
    "WeightConcentration",
    "as_arrays",
    "compare",
    "component_norms",
    "component_usage",
    "dead_components",
    "effective_rank",
    "gate_confidence",
    "global_posterior_idata",
    "interpret_khat",
    "kl_traces",
    "load_npz",
    "load_run",
    "log_predictive_density",
    "loo",
    "plot_component_usage",
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
    "token_rank_spread",
    "token_rank_spread_per_layer",
    "update_ranks",
    "update_singular_values",
    "weight_concentration",
    "write_report",
]


def __getattr__(name: str):
    if name in __all__:
        for submodule in _SUBMODULES:
            module = importlib.import_module(f".{submodule}", __name__)
            if name in getattr(module, "__all__", ()):
                value = globals()[name] = getattr(module, name)
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
