"""Delta (MAP) guides: point estimates of the local gates and of the global variables."""

from __future__ import annotations

import pyro.distributions as dist
from pyro.nn import PyroParam

from ..amortized_net import AmortizedGateNet
from ..distributions import hard_threshold_straight_through
from .amortized import check_local_common
from .base import GlobalGuide, LocalGuide, register_guide

__all__ = ["DeltaGlobalGuide", "DeltaLocalGuide"]


@register_guide("local", "delta")
class DeltaLocalGuide(LocalGuide):
    r"""MAP estimates of each token's gates, amortized by a network as in ``amortized``::

        q(z_tk)     = Delta([logits_k(h_t) > 0])      # straight-through gradient of sigmoid(logits)
        q(theta_tk) = Delta(softplus(value_k(h_t)))

    ``KL(Delta(x) || p) = -log p(x)`` (Pyro's rule), so the ELBO becomes the log joint: MAP
    inference of the gates.  Defaults (None) from the flat ``guide_hidden`` and ``init_gate_logit``.
    """

    hidden: int | None = None
    init_logit: float | None = None

    def resolve(self, config) -> None:
        check_local_common(self, config)

    def install(self, gate) -> None:
        heads = (("logits",) if gate.has_z else ()) + (("value",) if gate.has_theta else ())
        gate.local_net = AmortizedGateNet(gate.r, self.hidden, self.init_logit, gate.a_theta, heads=heads)

    def posterior(self, gate, h):
        out = dict(zip(gate.local_net.heads, gate.local_net(h)))
        q_z = dist.Delta(hard_threshold_straight_through(out["logits"])) if gate.has_z else None
        q_theta = dist.Delta(out["value"]) if gate.has_theta else None
        return q_z, q_theta


@register_guide("global", "delta")
class DeltaGlobalGuide(GlobalGuide):
    r"""MAP point estimates of the global sites: ``q(x) = Delta(x_value)`` with ``x_value`` constrained
    to the site's support and started at its initial mean; ``KL = -log p(x_value)``.

    Note: a ``Beta(a, b)`` prior with ``a < 1`` (the beta process for ``gamma0 < r / c``) has its
    density unbounded at 0, so the MAP objective keeps rewarding ``pi -> 0`` for unused components;
    this guide is meant for ablations, not as a default.
    """

    def install(self, gate, sites) -> None:
        for name, site in sites.items():
            setattr(gate, f"{name}_value", PyroParam(site.initial_mean(), constraint=site.support))

    def posterior(self, gate, name, site):
        return dist.Delta(getattr(gate, f"{name}_value"))
