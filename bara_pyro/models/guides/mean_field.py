"""Mean-field guides: per-layer local gates (global-only rank allocation) and the default global posteriors."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam

from ..amortized_net import MIN_CONCENTRATION, weibull_init
from ..distributions import BinaryConcreteStraightThrough, ReparameterizedWeibull
from .amortized import check_local_common
from .base import GlobalGuide, LocalGuide, register_guide
from .families import GLOBAL_INIT_STRENGTH, family_for

__all__ = ["MeanFieldGlobalGuide", "MeanFieldLocalGuide"]


@register_guide("local", "mean_field")
class MeanFieldLocalGuide(LocalGuide):
    r"""No amortization: one set of gates per layer, shared by every token::

        q(z_k)     = BinaryConcrete(temperature, z_logits_k)              # site {path}.z, shape (r,)
        q(theta_k) = Weibull(theta_scale_k, theta_concentration_k)       # site {path}.theta, shape (r,)

    With this guide the *model's* local gates are per layer too (``z_k ~ Bernoulli(pi_k)``, not per
    token), so rank allocation is global only; the local KL is counted once per step, not scaled by
    N/B.  When predicting with ``S`` samples, each sample draws its own ``(z, theta)``.
    """

    per_token = False
    temperature: float | None = None
    init_logit: float | None = None

    def resolve(self, config) -> None:
        check_local_common(self, config)

    def install(self, gate) -> None:
        r = gate.r
        if gate.has_z:
            gate.z_logits = PyroParam(torch.full((r,), float(self.init_logit)))
        if gate.has_theta:
            scale0, k0 = weibull_init(gate.a_theta)
            gate.theta_scale = PyroParam(torch.full((r,), scale0), constraint=constraints.positive)
            gate.theta_concentration = PyroParam(torch.full((r,), k0),
                                                 constraint=constraints.greater_than(MIN_CONCENTRATION))

    def posterior(self, gate, h):
        q_z = BinaryConcreteStraightThrough(self.temperature, gate.z_logits) if gate.has_z else None
        q_theta = ReparameterizedWeibull(gate.theta_scale, gate.theta_concentration) if gate.has_theta else None
        return q_z, q_theta


@register_guide("global", "mean_field")
class MeanFieldGlobalGuide(GlobalGuide):
    r"""An independent posterior per global site, in the family the prior suggests
    (:mod:`~bara_pyro.models.guides.families`)::

        q(pi_k)     = Beta(pi_alpha_k, pi_beta_k)            # beta_process
        q(v_k)      = Kumaraswamy(v_a_k, v_b_k)              # ibp
        q(lambda_k) = Gamma(lambda_shape_k, lambda_rate_k)   # gamma
        q(tau), q(lambda_k) = LogNormal(loc, scale)          # horseshoe

    Parameters ``{site}_{param}`` on the gate start at the site's initial mean, with the sharpness of
    ``init_strength`` pseudo-observations (e.g. ``Beta(n m, n (1 - m))``; normal scales ``n ** -0.5``).
    """

    init_strength: float = GLOBAL_INIT_STRENGTH

    def resolve(self, config) -> None:
        self.need(self.init_strength > 0, f"init_strength must be > 0, got {self.init_strength!r}")

    def install(self, gate, sites) -> None:
        for name, site in sites.items():
            for param, constraint, init in family_for(site.family, site.support).params:
                value = init(site.initial_mean(torch.float64), float(self.init_strength))
                value = torch.as_tensor(value, dtype=torch.get_default_dtype()).expand(site.shape).clone()
                setattr(gate, f"{name}_{param}", PyroParam(value, constraint=constraint))

    def posterior(self, gate, name, site):
        family = family_for(site.family, site.support)
        return family.make(*(getattr(gate, f"{name}_{param}") for param, _, _ in family.params))
