"""The amortized local guide (the BaRA default): a per-layer network maps each token's context to its gates."""

from __future__ import annotations

from ..amortized_net import AmortizedGateNet
from ..distributions import BinaryConcreteStraightThrough, ReparameterizedWeibull
from .base import LocalGuide, register_guide

__all__ = ["AmortizedLocalGuide", "check_local_common"]


def check_local_common(guide, config) -> None:
    """Fill ``temperature`` / ``init_logit`` / ``hidden`` (those the guide has) from the flat fields and check them."""
    for attr, flat in (("temperature", "temperature"), ("init_logit", "init_gate_logit"), ("hidden", "guide_hidden")):
        if hasattr(guide, attr) and getattr(guide, attr) is None:
            setattr(guide, attr, getattr(config, flat))
    if hasattr(guide, "temperature"):
        guide.need(guide.temperature > 0, f"temperature must be > 0, got {guide.temperature!r}")
    if hasattr(guide, "hidden"):
        guide.need(guide.hidden >= 1, f"hidden must be a positive integer, got {guide.hidden!r}")


@register_guide("local", "amortized")
class AmortizedLocalGuide(LocalGuide):
    r"""Per token, from the adapter projection ``h_t = A x_t`` (see :class:`AmortizedGateNet`)::

        q(z_tk)     = BinaryConcrete(temperature, logits_k(h_t))    # hard sample, straight-through gradient
        q(theta_tk) = Weibull(scale_k(h_t), concentration_k(h_t))   # reparameterised (WHAI)

    Both KLs to the ``Bernoulli`` / ``Gamma`` local priors are closed-form.  Parameters: the network
    ``gate.local_net``.  Defaults (None): ``hidden`` = flat ``guide_hidden``, ``temperature`` = flat
    ``temperature``, ``init_logit`` = flat ``init_gate_logit``.
    """

    hidden: int | None = None
    temperature: float | None = None
    init_logit: float | None = None

    def resolve(self, config) -> None:
        check_local_common(self, config)

    def install(self, gate) -> None:
        heads = (("logits",) if gate.has_z else ()) + (("scale", "concentration") if gate.has_theta else ())
        gate.local_net = AmortizedGateNet(gate.r, self.hidden, self.init_logit, gate.a_theta, heads=heads)

    def posterior(self, gate, h):
        out = dict(zip(gate.local_net.heads, gate.local_net(h)))
        q_z = BinaryConcreteStraightThrough(self.temperature, out["logits"]) if gate.has_z else None
        q_theta = ReparameterizedWeibull(out["scale"], out["concentration"]) if gate.has_theta else None
        return q_z, q_theta
