"""The tied local guide: each gate's posterior is its conditional prior given the global posteriors."""

from __future__ import annotations

from dataclasses import field

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

    ``per: sequence`` makes the gates instance-wise: one gate per sequence ``n`` and component, applied to
    every token of the sequence, its context the mean of ``phi(h_nt)`` over the sequence's real tokens::

        z_nk ~ Bernoulli(sigmoid(logit pi_k + w_k . phibar_n)),   phibar_n = mean_{t real} phi(h_nt)

    Sites ``{path}.z`` / ``{path}.theta`` of batch shape ``(n, 1)`` in the ``sequences`` plate alone (the tokens
    dim broadcast), masked where a sequence has no real token; the local KL is still zero.
    """

    temperature: float | None = None
    per: str = field(default="token", metadata={
        "choices": ("token", "sequence"),
        "help": "'token': one gate per token and component; 'sequence': one per sequence (instance-wise), its "
                "context the mean of phi(h) over the sequence's real tokens"})
    tied_to_prior = True

    @property
    def per_sequence(self) -> bool:
        return self.per == "sequence"

    def resolve(self, config) -> None:
        check_local_common(self, config)

    def posterior(self, gate, h):
        p_z, p_theta = gate.local_priors(gate.globals_for(h), h)
        shape = gate.local_value_shape(h)
        q_z = None if p_z is None else BinaryConcreteStraightThrough(self.temperature, p_z.logits.expand(shape))
        q_theta = None
        if p_theta is not None:
            q_theta = dist.Gamma(p_theta.concentration.expand(shape), p_theta.rate.expand(shape))
        return q_z, q_theta
