"""Base classes of the gate guides (variational families) and the guide registry.

* a **local** guide (:class:`LocalGuide`) gives ``q(z)`` and ``q(theta)`` of one layer's gates, per
  token (``per_token = True``: sites in the ``sequences``/``tokens`` plates, scaled by N/B and masked
  at padding) or per layer (``per_token = False``: one draw of shape ``(r,)`` shared by all tokens,
  counted once like a global); a per-token guide with ``per_sequence`` (``conditional_prior`` with
  ``per: sequence``) has one gate per sequence instead, sites of batch shape ``(n, 1)`` in the ``sequences``
  plate alone, the tokens dim broadcast;
* a **global** guide (:class:`GlobalGuide`) gives the posterior of every global site the priors
  declare (:class:`~bara_pyro.models.priors.GlobalSite`).

Guides keep no tensors themselves: ``install`` puts parameters (``PyroParam``) and networks on the
gate module, where Pyro names them ``{model name}.adapters.{path}.gate.{param}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor
from torch.distributions import Distribution

from ..registry import Component, Registry

if TYPE_CHECKING:
    from ..gate import GlobalLocalGate
    from ..priors import GlobalSite

__all__ = ["GUIDES", "GlobalGuide", "LocalGuide", "register_guide"]


class LocalGuide(Component):
    """``q(z_tk)``, ``q(theta_tk)`` of one layer; see the module docstring."""

    per_token: ClassVar[bool] = True

    @property
    def per_sequence(self) -> bool:
        """Whether the local gates are instance-wise: one per sequence and component, shared by its tokens."""
        return False

    def install(self, gate: "GlobalLocalGate") -> None:
        """Create the guide's parameters on ``gate`` (it has ``r``, ``has_z``, ``has_theta``, ``a_theta``)."""

    def posterior(self, gate: "GlobalLocalGate", h: Tensor) -> tuple[Distribution | None, Distribution | None]:
        """``(q(z), q(theta))`` given the adapter projection ``h`` ``(..., r)``; ``None`` for a factor fixed to 1.

        Batch shape ``h.shape`` when ``per_token`` (``gate.local_value_shape(h)``, ``(n, 1, r)``, when
        ``per_sequence``), else ``(r,)``.  ``rsample`` must be reparameterised.
        """
        raise NotImplementedError


class GlobalGuide(Component):
    """Posterior of each global site; see the module docstring."""

    def install(self, gate: "GlobalLocalGate", sites: dict[str, "GlobalSite"]) -> None:
        """Create one set of parameters per site on ``gate``."""

    def posterior(self, gate: "GlobalLocalGate", name: str, site: "GlobalSite") -> Distribution:
        """``q`` of site ``name``, batch shape ``site.shape``."""
        raise NotImplementedError


GUIDES = Registry("guide", {"local": LocalGuide, "global": GlobalGuide})


def register_guide(kind: str, name: str):
    """Class decorator: register a :class:`LocalGuide` (``kind="local"``) or :class:`GlobalGuide`
    (``kind="global"``) subclass under ``name``, so a config can say ``guide: {kind: {name: ...}}``."""
    return GUIDES.register(kind, name)
