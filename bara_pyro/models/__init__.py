"""Priors, gate distributions, adapter layers and injection."""

from . import kl  # noqa: F401  (registers the closed-form KL rules)
from .adapter import BaRAAdapter
from .bara_model import BaRAModel
from .config import BaRAConfig, ConfigError
from .context import GateContext
from .distributions import BinaryConcreteStraightThrough, ReparameterizedWeibull
from .gate import GlobalLocalGate
from .injection import get_bara_model
from .likelihoods import CategoricalLikelihood, GaussianLikelihood
from .targets import find_target_modules

__all__ = [
    "BaRAAdapter",
    "BaRAConfig",
    "BaRAModel",
    "BinaryConcreteStraightThrough",
    "CategoricalLikelihood",
    "ConfigError",
    "GateContext",
    "GaussianLikelihood",
    "GlobalLocalGate",
    "ReparameterizedWeibull",
    "find_target_modules",
    "get_bara_model",
]
