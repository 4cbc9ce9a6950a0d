"""Mean-field variational families for global sites, chosen by a site's ``family`` hint.

Each family lists its parameters (name, constraint, initial value as a function of the site's
initial mean ``m``) and the distribution they make.  Parameters are named ``{site}_{param}`` on the
gate, e.g. ``pi_alpha``, ``pi_beta``, ``lambda_shape``, ``lambda_rate``.  A site with no hint gets a
normal in the unconstrained space of its support, pushed through ``biject_to(support)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import Distribution, biject_to
from torch.distributions.constraints import Constraint

from ..distributions import ReparameterizedKumaraswamy

__all__ = ["FAMILIES", "GLOBAL_INIT_STRENGTH", "VariationalFamily", "family_for"]

# Global posteriors start sharp: every token's local KL is computed against one draw of the globals,
# so a broad q adds noise to ~N*T*r local terms per layer while a sharp one costs O(r) nats of global
# KL (docs/model.md, "Sharp global initialisation").  Strength 1000: Beta(1000 m, 1000 (1 - m)),
# Gamma(1000, 1000 / m), log-normal/normal scale 0.03.
GLOBAL_INIT_STRENGTH = 1000.0


@dataclass(frozen=True)
class VariationalFamily:
    """Parameters ``(name, constraint, init(m[, strength]))`` and ``make(**params) -> Distribution``; ``strength``
    (default :data:`GLOBAL_INIT_STRENGTH`) is the initial posterior's sharpness, as pseudo-observations."""

    params: tuple[tuple[str, Constraint, Callable[[float], float]], ...]
    make: Callable[..., Distribution]


FAMILIES: dict[str, VariationalFamily] = {
    "beta": VariationalFamily(
        (("alpha", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n * m),
         ("beta", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n * (1 - m))),
        dist.Beta),
    "gamma": VariationalFamily(
        (("shape", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n),
         ("rate", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n / m)),
        dist.Gamma),
    "kumaraswamy": VariationalFamily(
        (("a", constraints.positive, lambda m, n=None: m / (1 - m)),
         ("b", constraints.positive, lambda m, n=None: 1.0)),
        ReparameterizedKumaraswamy),
    "lognormal": VariationalFamily(
        (("loc", constraints.real, lambda m, n=None: torch.log(m)),
         ("scale", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n ** -0.5)),
        dist.LogNormal),
    "normal": VariationalFamily(
        (("loc", constraints.real, lambda m, n=None: m),
         ("scale", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n ** -0.5)),
        dist.Normal),
}


def family_for(family: str | None, support: Constraint) -> VariationalFamily:
    """The named family, or the unconstrained-normal family pushed onto ``support``."""
    if family is not None:
        if family not in FAMILIES:
            raise ValueError(f"unknown variational family {family!r}; known: {sorted(FAMILIES)} or None")
        return FAMILIES[family]
    transform = biject_to(support)

    def make(loc, scale):
        return dist.TransformedDistribution(dist.Normal(loc, scale), [transform])

    def init_loc(m: torch.Tensor, n=None) -> torch.Tensor:
        return transform.inv(m)

    return VariationalFamily((("loc", constraints.real, init_loc),
                              ("scale", constraints.positive, lambda m, n=GLOBAL_INIT_STRENGTH: n ** -0.5)), make)
