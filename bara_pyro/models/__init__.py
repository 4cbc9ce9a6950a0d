"""Priors, guides, weight families, gate distributions, adapter layers and injection."""

from . import kl  # noqa: F401  (registers the closed-form KL rules)
from .adapter import BaRAAdapter
from .bara_model import BaRAModel
from .config import BaRAConfig, ConfigError, ResolvedComponents, available_components
from .context import GateContext
from .distributions import BinaryConcreteStraightThrough, ReparameterizedKumaraswamy, ReparameterizedWeibull
from .gate import GlobalLocalGate
from .guides import GUIDES, GlobalGuide, LocalGuide, register_guide
from .injection import get_bara_model
from .likelihoods import CategoricalLikelihood, GaussianLikelihood
from .priors import PRIORS, GlobalSite, MagnitudePrior, SparsityPrior, register_prior
from .slab_weights import SlabGaussianWeights
from .targets import find_target_modules
from .weights import WEIGHTS, WeightFamily, register_weights
from .weights_adaptive_noise import AdaptiveNoiseWeights  # noqa: F401  (registers weights: adaptive_noise)
from .weights_inducing import InducingWeights  # noqa: F401  (registers weights: inducing_gaussian)
from .weights_laplace import LaplaceWeights  # noqa: F401  (registers weights: laplace)
from .weights_projected import ProjectedSubspaceWeights  # noqa: F401  (registers weights: projected_subspace)
from .weights_rank_dropout import RankDropoutWeights  # noqa: F401  (registers weights: rank_dropout)
from .weights_singular import SingularSlabWeights  # noqa: F401  (registers weights: singular_slab)

__all__ = [
    "GUIDES",
    "PRIORS",
    "WEIGHTS",
    "BaRAAdapter",
    "BaRAConfig",
    "BaRAModel",
    "BinaryConcreteStraightThrough",
    "CategoricalLikelihood",
    "ConfigError",
    "GateContext",
    "GaussianLikelihood",
    "GlobalGuide",
    "GlobalLocalGate",
    "GlobalSite",
    "LocalGuide",
    "MagnitudePrior",
    "ReparameterizedKumaraswamy",
    "ReparameterizedWeibull",
    "ResolvedComponents",
    "SlabGaussianWeights",
    "SparsityPrior",
    "WeightFamily",
    "available_components",
    "find_target_modules",
    "get_bara_model",
    "register_guide",
    "register_prior",
    "register_weights",
]
