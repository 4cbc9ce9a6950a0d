"""Indian buffet process sparsity prior in its stick-breaking construction."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .base import GlobalSite, SparsityPrior, flat, positive_number, register_prior

__all__ = ["StickBreakingIBPPrior"]


@register_prior("sparsity", "ibp")
class StickBreakingIBPPrior(SparsityPrior):
    r"""Stick-breaking IBP truncated at ``r`` components (Teh, Gorur & Ghahramani 2007)::

        v_k   ~ Beta(alpha, 1)                     # site {path}.v, shape (r,)
        pi_k  = prod_{j <= k} v_j                  # decreasing inclusion probabilities
        z_tk  ~ Bernoulli(pi_k)

    ``E[pi_k] = (alpha / (1 + alpha))^k``, so earlier components are used more and the expected
    number of active components is ``alpha (1 - (alpha / (1 + alpha))^r)`` (``alpha`` when untruncated).
    ``alpha`` defaults (None) to the flat ``gamma0``.  Mean-field posterior:
    ``q(v_k) = Kumaraswamy(v_a_k, v_b_k)`` with the closed-form KL to the Beta registered in
    :mod:`bara_pyro.models.kl` (Nalisnick & Smyth 2017).
    """

    alpha: float | None = None

    def resolve(self, config) -> None:
        self.alpha = flat(config, self.alpha, "gamma0")
        positive_number(self, "alpha", self.alpha)

    def global_sites(self, r, init_prob):
        return {"v": GlobalSite((r,), constraints.unit_interval, init_prob, "kumaraswamy")}

    def hyperparameters(self, r):
        return {"alpha": torch.full((r,), float(self.alpha)), "one": torch.ones(r)}

    def global_prior(self, name, hp, values):
        return dist.Beta(hp.alpha, hp.one)

    def inclusion_probs(self, hp, values):
        return torch.cumprod(values["v"], dim=-1)
