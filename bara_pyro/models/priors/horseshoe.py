"""Horseshoe prior on the component scales."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .base import GlobalSite, MagnitudePrior, flat, positive_number, register_prior

__all__ = ["HorseshoePrior"]


@register_prior("magnitude", "horseshoe")
class HorseshoePrior(MagnitudePrior):
    r"""Horseshoe shrinkage of whole components (Carvalho, Polson & Scott 2010)::

        tau       ~ HalfCauchy(global_scale)                # site {path}.tau, shape (1,)
        lambda_k  ~ HalfCauchy(1)                           # site {path}.lambda, shape (r,)
        theta_tk  ~ Gamma(local_shape, local_shape / (tau * lambda_k))   # mean tau * lambda_k

    Most components are shrunk towards 0 by the shared ``tau`` while the heavy tails of ``lambda_k``
    let a few escape.  ``local_shape`` defaults (None) to the flat ``a_theta``.

    KL: the mean-field posteriors are log-normal (``tau_loc``, ``tau_scale``, ``lambda_loc``,
    ``lambda_scale``) and KL(log-normal || half-Cauchy) has no closed form, so these two sites use
    the one-draw Monte Carlo estimate (``kl_is_analytic`` is False); the local theta sites stay
    closed-form.  With the ``delta`` global guide every term is exact (``-log p`` at the point).
    """

    global_scale: float = 1.0
    local_shape: float | None = None

    def resolve(self, config) -> None:
        self.local_shape = flat(config, self.local_shape, "a_theta")
        positive_number(self, "global_scale", self.global_scale)
        positive_number(self, "local_shape", self.local_shape)

    def global_sites(self, r, init_prob):
        return {"tau": GlobalSite((1,), constraints.positive, 1.0, "lognormal"),
                "lambda": GlobalSite((r,), constraints.positive, 1.0, "lognormal")}

    def hyperparameters(self, r):
        return {"global_scale": torch.tensor([float(self.global_scale)]), "one": torch.ones(r),
                "local_shape": torch.tensor(float(self.local_shape))}

    def global_prior(self, name, hp, values):
        return dist.HalfCauchy(hp.global_scale if name == "tau" else hp.one)

    def component_scale(self, hp, values):
        return values["tau"] * values["lambda"]
