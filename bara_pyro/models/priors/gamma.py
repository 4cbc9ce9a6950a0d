"""Gamma magnitude prior (the BaRA default)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .base import GlobalSite, MagnitudePrior, flat, positive_number, register_prior

__all__ = ["GammaMagnitudePrior"]


@register_prior("magnitude", "gamma")
class GammaMagnitudePrior(MagnitudePrior):
    r"""Per-component magnitudes with mean 1::

        lambda_k  ~ Gamma(shape, shape)                        # site {path}.lambda, shape (r,)
        theta_tk  ~ Gamma(local_shape, local_shape / lambda_k) # mean lambda_k

    Defaults (None): ``shape`` = flat ``e0``, ``local_shape`` = flat ``a_theta``.  Mean-field
    posterior ``q(lambda_k) = Gamma(lambda_shape_k, lambda_rate_k)``, closed-form KL.
    """

    shape: float | None = None
    local_shape: float | None = None

    def resolve(self, config) -> None:
        self.shape = flat(config, self.shape, "e0")
        self.local_shape = flat(config, self.local_shape, "a_theta")
        positive_number(self, "shape", self.shape)
        positive_number(self, "local_shape", self.local_shape)

    def global_sites(self, r, init_prob):
        return {"lambda": GlobalSite((r,), constraints.positive, 1.0, "gamma")}

    def hyperparameters(self, r):
        return {"shape": torch.full((r,), float(self.shape)), "local_shape": torch.tensor(float(self.local_shape))}

    def global_prior(self, name, hp, values):
        return dist.Gamma(hp.shape, hp.shape)

    def component_scale(self, hp, values):
        return values["lambda"]
