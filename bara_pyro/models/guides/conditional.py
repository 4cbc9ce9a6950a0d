"""The tied local guide: each token's gate posterior is its conditional prior given the global posteriors."""

from __future__ import annotations

import pyro.distributions as dist

from ..distributions import BinaryConcreteStraightThrough
from .amortized import check_local_common
from .base import LocalGuide, register_guide

__all__ = ["ConditionalPriorLocalGuide"]


@register_guide("local", "conditional_prior")
class ConditionalPriorLocalGuide(LocalGuide):
    r"""``q(z_t, theta_t | h_t, globals) = p(z_t, theta_t | h_t, globals)`` for every token::

        q(z_tk | h_t)     = BinaryConcrete(temperature, logit p(z_tk = 1 | h_t, pi, w))   # straight-through
        q(theta_tk)       = Gamma(a, a / m_k)                                          # the prior itself

    The variational family is ``q(globals) prod_t p(locals_t | h_t, globals)``: every token's local KL
    is exactly zero, so nothing is charged per token and all learning of which component which token
    uses goes through the global sites (``pi``, and ``w`` of a contextual prior), whose KL is counted
    once per layer.  The ELBO is then ``E_q(globals) E_p(locals | globals) log p(y | ...)`` minus the
    global KLs: a valid bound (Jensen on the locals' marginal).  The guide has no parameters; it is
    amortized through the globals (a function of each token's context ``h_t``).  Outside training
    (modes ``mean`` and ``sample``) the globals are their posterior means or posterior draws.
    """

    temperature: float | None = None
    tied_to_prior = True

    def resolve(self, config) -> None:
        check_local_common(self, config)

    def posterior(self, gate, h):
        p_z, p_theta = gate.local_priors(gate.globals_for(h), h)
        q_z = None if p_z is None else BinaryConcreteStraightThrough(self.temperature, p_z.logits.expand(h.shape))
        q_theta = None
        if p_theta is not None:
            q_theta = dist.Gamma(p_theta.concentration.expand(h.shape), p_theta.rate.expand(h.shape))
        return q_z, q_theta
