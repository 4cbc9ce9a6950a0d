"""Finite beta-process sparsity prior (the BaRA default)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .base import GlobalSite, SparsityPrior, flat, positive_number, register_prior

__all__ = ["BetaProcessPrior"]


@register_prior("sparsity", "beta_process")
class BetaProcessPrior(SparsityPrior):
    r"""Finite beta process with mass ``gamma0`` and concentration ``c`` (Paisley & Carin 2009)::

        pi_k  ~ Beta(c * gamma0 / r, c * (1 - gamma0 / r))    # site {path}.pi, shape (r,)
        z_tk  ~ Bernoulli(pi_k)

    ``E[sum_k pi_k] = gamma0``: the prior expected number of active components.  Defaults (None)
    come from the flat config fields ``gamma0`` (itself ``r / 2`` by default) and ``concentration``.
    Mean-field posterior: ``q(pi_k) = Beta(pi_alpha_k, pi_beta_k)``, closed-form KL.
    """

    gamma0: float | None = None
    concentration: float | None = None

    def resolve(self, config) -> None:
        self.gamma0 = flat(config, self.gamma0, "gamma0")
        self.concentration = flat(config, self.concentration, "concentration")
        self.need(0 < self.gamma0 < config.r, f"gamma0 must satisfy 0 < gamma0 < r = {config.r}, got {self.gamma0!r}")
        positive_number(self, "concentration", self.concentration)

    def global_sites(self, r, init_prob):
        return {"pi": GlobalSite((r,), constraints.unit_interval, init_prob, "beta")}

    def hyperparameters(self, r):
        c, g0 = float(self.concentration), float(self.gamma0)
        return {"a": torch.full((r,), c * g0 / r), "b": torch.full((r,), c * (1 - g0 / r))}

    def global_prior(self, name, hp, values):
        return dist.Beta(hp.a, hp.b)

    def inclusion_probs(self, hp, values):
        return values["pi"]
