r"""Closed-form KL divergences for the BaRA guide/prior pairs that torch does not ship.

``TraceMeanField_ELBO`` uses ``kl_divergence(q, p)`` when a rule is registered for the pair
and silently falls back to a Monte Carlo estimate otherwise; importing this module registers:

* ``KL(Weibull(l, k) || Gamma(a, b))`` in closed form (WHAI, Zhang et al. 2018):

  .. math::
      \mathrm{KL} = \frac{\gamma a}{k} - a\log l + \log k + b\,l\,\Gamma(1 + 1/k)
                    - \gamma - 1 - a\log b + \log\Gamma(a)

  with :math:`\gamma` the Euler-Mascheroni constant.
* ``KL(BinaryConcreteStraightThrough(q) || Bernoulli(p))`` as the KL of the underlying
  Bernoullis, :math:`q\log\frac{q}{p} + (1-q)\log\frac{1-q}{1-p}`: the usual surrogate for a
  relaxed guide whose forward samples are hard (the relaxed density has no closed form).

The functional forms are used directly by the fused estimator, so both paths agree exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Gamma, kl_divergence, register_kl

from .distributions import EULER_GAMMA, BinaryConcreteStraightThrough, ReparameterizedWeibull

__all__ = ["kl_weibull_gamma", "kl_bernoulli_logits_probs", "kl_divergence"]

PROB_EPS = 1e-6


def kl_weibull_gamma(scale, concentration, shape, rate) -> torch.Tensor:
    """KL(Weibull(scale, concentration) || Gamma(shape, rate)), elementwise."""
    k, lam, a, b = concentration, scale, shape, rate
    return (EULER_GAMMA * a / k - a * torch.log(lam) + torch.log(k) + b * lam * torch.exp(torch.lgamma(1 + 1 / k))
            - EULER_GAMMA - 1 - a * torch.log(b) + torch.lgamma(a))


def kl_bernoulli_logits_probs(q_logits: torch.Tensor, p_probs: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(q_logits)) || Bernoulli(p_probs)), elementwise; p clamped to [1e-6, 1-1e-6]."""
    q = torch.sigmoid(q_logits)
    p = p_probs.clamp(PROB_EPS, 1 - PROB_EPS)
    return q * (F.logsigmoid(q_logits) - torch.log(p)) + (1 - q) * (F.logsigmoid(-q_logits) - torch.log1p(-p))


@register_kl(ReparameterizedWeibull, Gamma)
def _kl_weibull_gamma(q, p):
    return kl_weibull_gamma(q.scale, q.concentration, p.concentration, p.rate)


@register_kl(BinaryConcreteStraightThrough, Bernoulli)
def _kl_binary_concrete_bernoulli(q, p):
    return kl_bernoulli_logits_probs(q.logits, p.probs)
