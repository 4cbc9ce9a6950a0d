"""The 'none' components: a gate factor fixed to 1, with no latent variables."""

from __future__ import annotations

from .base import MagnitudePrior, SparsityPrior, register_prior

__all__ = ["NoMagnitude", "NoSparsity"]


@register_prior("sparsity", "none")
class NoSparsity(SparsityPrior):
    """``z_tk = 1``: every component is always on (no sparsity sites)."""

    active = False


@register_prior("magnitude", "none")
class NoMagnitude(MagnitudePrior):
    """``theta_tk = 1``: no magnitude sites (e.g. BaRA sparsity-only)."""

    active = False
