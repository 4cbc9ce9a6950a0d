"""Base classes of the gate priors and the prior registry.

A BaRA gate ``g_tk = z_tk * theta_tk`` has two prior components, each one registered class:

* a **sparsity** prior (:class:`SparsityPrior`): global variables (e.g. ``pi``) and the inclusion
  probabilities they imply, ``z_tk ~ Bernoulli(pi_k)``;
* a **magnitude** prior (:class:`MagnitudePrior`): global variables (e.g. ``lambda``) and the component
  scale ``m_k`` they imply, ``theta_tk ~ Gamma(a, a / m_k)`` (mean ``m_k``).

A component declares its global variables as :class:`GlobalSite` objects (shape, support, initial
posterior mean, preferred variational family); the global guide chosen in the config builds
their posteriors, so a new prior works with every guide.  Hyperparameters that enter the
distributions become buffers (``hyperparameters``), handed back to the prior as ``hp``, so
``.to(device)`` moves them.  Sites are named ``{module path}.{variable}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Distribution
from torch.distributions.constraints import Constraint

from ..registry import Component, Registry

if TYPE_CHECKING:
    from ..config import BaRAConfig

__all__ = [
    "PRIORS",
    "GatePrior",
    "GlobalSite",
    "Hyperparameters",
    "MagnitudePrior",
    "SparsityPrior",
    "register_prior",
]


@dataclass(frozen=True)
class GlobalSite:
    """A global latent variable of one layer.

    :param shape: its shape, e.g. ``(r,)``; the whole shape is the site's event shape.
    :param support: its support (``constraints.unit_interval``, ``constraints.positive``, ...).
    :param init: initial mean of its variational posterior (a number, or one per element as a tuple).
    :param family: preferred mean-field family (``beta``, ``gamma``, ``kumaraswamy``, ``lognormal``,
        ``normal``); ``None`` uses a normal in the unconstrained space of ``support``.
    """

    shape: tuple[int, ...]
    support: Constraint
    init: float | tuple[float, ...]
    family: str | None = None

    def initial_mean(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``init`` as a tensor of the site's shape."""
        return torch.as_tensor(self.init, dtype=dtype or torch.get_default_dtype()).expand(self.shape).clone()


class Hyperparameters(nn.Module):
    """Holds a prior's hyperparameters as non-persistent buffers: ``hp.name`` is a tensor."""

    def __init__(self, values: dict[str, torch.Tensor]):
        super().__init__()
        for name, value in values.items():
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.get_default_dtype()), persistent=False)


class GatePrior(Component):
    """A prior component: global sites, their priors, and the local prior of one gate factor."""

    #: the local variable this component governs (``z`` or ``theta``)
    local_site: ClassVar[str] = ""
    #: False for the 'none' components (the factor is fixed to 1 and has no sites)
    active: ClassVar[bool] = True

    def global_sites(self, r: int, init_prob: float) -> dict[str, GlobalSite]:
        """Ordered global variables of one layer (``init_prob``: initial inclusion probability)."""
        return {}

    def hyperparameters(self, r: int) -> dict[str, torch.Tensor]:
        """Tensors the distributions are built from; registered as buffers and passed back as ``hp``."""
        return {}

    def global_prior(self, name: str, hp: Hyperparameters, values: dict[str, torch.Tensor]) -> Distribution:
        """Prior of global site ``name`` (batch shape = the site's shape) given the sites drawn before it."""
        raise NotImplementedError(f"{self.kind} prior {self.name!r} declares no global site {name!r}")

    #: whether the local prior depends on the token's context ``h`` (then :meth:`local_prior` needs it)
    contextual: ClassVar[bool] = False

    def local_prior(self, hp: Hyperparameters, values: dict[str, torch.Tensor],
                    h: torch.Tensor | None = None) -> Distribution:
        """Prior of the local factor given the layer's global values; batch shape ``(r,)``, or ``h.shape``
        for a contextual prior (``h``: the adapter projection ``(..., r)`` of the tokens)."""
        raise NotImplementedError

    def sequence_local_prior(self, hp: Hyperparameters, values: dict[str, torch.Tensor], h: torch.Tensor,
                             mask: torch.Tensor | None = None) -> Distribution:
        """Prior of one local factor per sequence (instance-wise gates): batch shape ``(r,)``, or ``(n, 1, r)`` for a
        contextual prior, which pools the context of the real tokens of each sequence (``h`` ``(n, T, r)``, ``mask``
        ``(n, T)``, None: every position real).  A prior without context has the per-token prior itself."""
        if self.contextual:
            raise NotImplementedError(f"{self.kind} prior {self.name!r} has no per-sequence local prior")
        return self.local_prior(hp, values)


class SparsityPrior(GatePrior):
    """``z_tk ~ Bernoulli(pi_k)`` with ``pi = inclusion_probs(globals)``."""

    local_site = "z"

    def inclusion_probs(self, hp: Hyperparameters, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``pi`` of shape ``(r,)`` from the layer's global values."""
        raise NotImplementedError

    def local_prior(self, hp, values, h=None):
        return dist.Bernoulli(probs=self.inclusion_probs(hp, values))


class MagnitudePrior(GatePrior):
    """``theta_tk ~ Gamma(a, a / m_k)`` (mean ``m_k``) with ``m = component_scale(globals)`` and
    ``a = hp.local_shape``."""

    local_site = "theta"

    def component_scale(self, hp: Hyperparameters, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``m`` of shape ``(r,)``: the prior mean of the per-token magnitudes."""
        raise NotImplementedError

    def local_prior(self, hp, values, h=None):
        a = hp.local_shape
        return dist.Gamma(a, a / self.component_scale(hp, values))


PRIORS = Registry("prior", {"sparsity": SparsityPrior, "magnitude": MagnitudePrior})


def register_prior(kind: str, name: str):
    """Class decorator: register a :class:`SparsityPrior` (``kind="sparsity"``) or :class:`MagnitudePrior`
    (``kind="magnitude"``) subclass under ``name``, so a config can say ``prior: {kind: {name: ...}}``."""
    return PRIORS.register(kind, name)


def positive_number(component: Component, field: str, value) -> None:
    """Shared range check: a finite positive number."""
    component.need(value is not None and value > 0 and value < float("inf"),
                   f"{field} must be a positive number, got {value!r}")


def flat(config: "BaRAConfig", value, field: str):
    """``value`` unless it is None, then the flat config field ``field``."""
    return getattr(config, field) if value is None else value
