r"""The second-moment non-local prior (Johnson & Rossell 2012) and its KL from a Gaussian, in closed form.

::

    p(x) = (x^2 / s^2) N(x; 0, s^2)          # |x| / s ~ chi with 3 degrees of freedom; p(0) = 0

A Gaussian slab has its largest density at 0, so a slab coefficient near zero costs almost nothing and a spike
(the coefficient switched off) and a small slab value explain the data alike: the inclusion probability of a
coefficient the data do not need stays at its prior.  A non-local slab vanishes at 0: a coefficient kept in the
slab must be away from 0, so an unneeded one is cheaper switched off.

For ``q = N(m, tau^2)``::

    KL(q || p) = KL(q || N(0, s^2)) - E_q[log x^2] + log s^2
    E_q[log x^2] = log tau^2 + E[log X],  X ~ noncentral chi^2_1(delta),  delta = m^2 / tau^2
    E[log X] = sum_j Poisson(j; delta / 2) (log 2 + psi(j + 1/2))                   (delta <= 60)
             = log delta - 1/delta - 3/(2 delta^2) - 5/delta^3 - 105/(4 delta^4)     (delta > 60, asymptotic)

The series is cut after :data:`SERIES_TERMS` terms (the Poisson mass beyond is below 1e-20 for delta <= 60); the
expansion's next term is below 3e-7 at delta = 60.  The test suite checks both against Monte Carlo.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import Normal, kl_divergence, register_kl

__all__ = ["MomentNormal", "expected_log_square", "kl_normal_moment"]

SERIES_TERMS = 160
SERIES_LIMIT = 60.0


def _log_noncentral_chi2_mean(delta: torch.Tensor) -> torch.Tensor:
    """``E[log X]``, ``X ~ chi^2_1(delta)``, elementwise (module docstring)."""
    small = delta.clamp(1e-12, SERIES_LIMIT)
    j = torch.arange(SERIES_TERMS, dtype=delta.dtype, device=delta.device)
    half = (small / 2).unsqueeze(-1)
    weights = torch.exp(torch.special.xlogy(j, half) - half - torch.lgamma(j + 1))
    series = (weights * (math.log(2.0) + torch.digamma(j + 0.5))).sum(-1)
    large = delta.clamp_min(SERIES_LIMIT)
    asymptotic = large.log() - 1 / large - 1.5 / large**2 - 5 / large**3 - 26.25 / large**4
    return torch.where(delta <= SERIES_LIMIT, series, asymptotic)


def expected_log_square(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``E[log x^2]`` for ``x ~ N(loc, scale^2)``, elementwise."""
    return 2 * scale.log() + _log_noncentral_chi2_mean((loc / scale) ** 2)


def kl_normal_moment(loc: torch.Tensor, scale: torch.Tensor, prior_scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, scale^2) || MomentNormal(prior_scale))``, elementwise."""
    gaussian = kl_divergence(Normal(loc, scale, validate_args=False),
                             Normal(torch.zeros_like(prior_scale), prior_scale, validate_args=False))
    return gaussian - expected_log_square(loc, scale) + 2 * prior_scale.log()


class MomentNormal(dist.TorchDistribution):
    """``p(x) = (x^2 / s^2) N(x; 0, s^2)`` (module docstring); ``rsample``: ``s`` times a random sign times the
    norm of three standard normals."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, scale: torch.Tensor, validate_args=None):
        self.scale = scale
        super().__init__(scale.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return MomentNormal(self.scale.expand(batch_shape))

    def log_prob(self, value):
        s = self.scale
        return (2 * (value.abs().log() - s.log()) - 0.5 * (value / s) ** 2 - s.log()
                - 0.5 * math.log(2 * math.pi))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        radius = torch.randn(shape + (3,), dtype=self.scale.dtype, device=self.scale.device).norm(dim=-1)
        sign = torch.randint(0, 2, shape, device=self.scale.device).to(self.scale.dtype) * 2 - 1
        return self.scale * sign * radius


@register_kl(Normal, MomentNormal)
def _kl_normal_moment(q, p):
    return kl_normal_moment(q.loc, q.scale, p.scale)
