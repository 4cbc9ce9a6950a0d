"""Gate priors, one registered class each: sparsity (``z``) and magnitude (``theta``) components."""

from .base import PRIORS, GatePrior, GlobalSite, Hyperparameters, MagnitudePrior, SparsityPrior, register_prior
from .beta_process import BetaProcessPrior
from .contextual import ContextualBetaProcessPrior
from .contextual_ibp import ContextualStickBreakingPrior
from .gamma import GammaMagnitudePrior
from .horseshoe import HorseshoePrior
from .ibp import StickBreakingIBPPrior
from .none import NoMagnitude, NoSparsity

__all__ = [
    "PRIORS",
    "BetaProcessPrior",
    "ContextualBetaProcessPrior",
    "ContextualStickBreakingPrior",
    "GammaMagnitudePrior",
    "GatePrior",
    "GlobalSite",
    "HorseshoePrior",
    "Hyperparameters",
    "MagnitudePrior",
    "NoMagnitude",
    "NoSparsity",
    "SparsityPrior",
    "StickBreakingIBPPrior",
    "register_prior",
]
