"""Gate guides, one registered class each: local (``q(z)``, ``q(theta)``) and global posteriors."""

from .amortized import AmortizedLocalGuide
from .base import GUIDES, GlobalGuide, LocalGuide, register_guide
from .conditional import ConditionalPriorLocalGuide
from .delta import DeltaGlobalGuide, DeltaLocalGuide
from .families import FAMILIES, VariationalFamily
from .mean_field import MeanFieldGlobalGuide, MeanFieldLocalGuide

__all__ = [
    "FAMILIES",
    "GUIDES",
    "AmortizedLocalGuide",
    "ConditionalPriorLocalGuide",
    "DeltaGlobalGuide",
    "DeltaLocalGuide",
    "GlobalGuide",
    "LocalGuide",
    "MeanFieldGlobalGuide",
    "MeanFieldLocalGuide",
    "VariationalFamily",
    "register_guide",
]
