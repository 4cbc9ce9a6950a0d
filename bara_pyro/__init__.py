"""bara_pyro: Bayesian parameter-efficient fine-tuning (BaRA and baselines) on Pyro and transformers."""

from .models import BaRAConfig, BaRAModel, get_bara_model

__version__ = "0.1.0"

__all__ = ["BaRAConfig", "BaRAModel", "get_bara_model", "__version__"]
