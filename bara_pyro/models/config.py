"""``BaRAConfig``: every hyperparameter of the BaRA adapter, with its meaning and default.

Priors, guides and the weight family are named components (:mod:`~bara_pyro.models.registry`),
written as nested specs::

    prior:
      sparsity: {name: beta_process, gamma0: 4, concentration: 1}   # or ibp, none
      magnitude: {name: gamma, shape: 1}                            # or horseshoe, none
    guide:
      local: {name: amortized, hidden: 32}                          # or mean_field, delta, conditional_prior
                                                                    # (per: token or sequence)
      global: {name: mean_field}                                    # or delta
    weights: {name: point}                                          # or map_gaussian, blob_gaussian, mc_dropout

``prior: fixed`` (every gate 1: plain LoRA) is the same as ``gate: none``.  A spec may be a bare
name (``sparsity: ibp``).  The flat fields are the defaults of the components' parameters that
are left out (or null) in a spec:

==================  ==========================================================================
flat field          component parameter it provides
==================  ==========================================================================
``gamma0``          ``beta_process.gamma0``; ``ibp.alpha``
``concentration``   ``beta_process.concentration``
``e0``              ``gamma.shape`` (``lambda ~ Gamma(shape, shape)``)
``a_theta``         ``gamma.local_shape``, ``horseshoe.local_shape``
``temperature``     ``amortized.temperature``, ``mean_field.temperature`` (local)
``guide_hidden``    ``amortized.hidden``, ``delta.hidden`` (local)
``init_gate_logit`` ``amortized`` / ``mean_field`` / ``delta`` (local) ``init_logit``; the global
                    posteriors start at the matching inclusion probability
==================  ==========================================================================

A value given in a spec wins over the flat field.  Specs are stored as written (normalised to
``{name: ..., **params}``), so :meth:`BaRAConfig.to_dict` / :meth:`BaRAConfig.from_dict` round-trip
exactly; the resolved component objects are :attr:`BaRAConfig.components`.  Treat a config as
immutable (use :func:`dataclasses.replace` to change one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError, dataclass_from_dict
from .guides import GUIDES, GlobalGuide, LocalGuide
from .priors import PRIORS, GatePrior, MagnitudePrior, SparsityPrior
from .registry import normalize_spec
from .row_shard import CHOICE_DRAWS
from .weights import WEIGHTS, WeightFamily

__all__ = ["BaRAConfig", "ConfigError", "ResolvedComponents", "available_components"]

GATE_TYPES = ("bara", "none")
DEFAULT_PRIOR = {"sparsity": "beta_process", "magnitude": "gamma"}
DEFAULT_GUIDE = {"local": "amortized", "global": "mean_field"}
DEFAULT_WEIGHTS = "point"
RESERVED_SITES = ("z", "theta", "lora_A", "lora_B")


def available_components() -> dict[str, list[str]]:
    """Registered names per config slot, e.g. ``{"prior.sparsity": ["beta_process", "ibp", "none"], ...}``."""
    return {**{f"prior.{k}": PRIORS.names(k) for k in PRIORS.kinds},
            **{f"guide.{k}": GUIDES.names(k) for k in GUIDES.kinds},
            "weights": WEIGHTS.names("weights")}


@dataclass(frozen=True)
class ResolvedComponents:
    """The component objects a config names, with every parameter filled in."""

    sparsity: SparsityPrior
    magnitude: MagnitudePrior
    local: LocalGuide
    global_: GlobalGuide
    weights: WeightFamily


def _normalize_pair(value: Any, slot: str, defaults: dict[str, str]) -> dict[str, dict[str, Any]]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{slot} must be a mapping with keys {list(defaults)}"
                          + (" or 'fixed'" if slot == "prior" else "") + f", got {value!r}")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {slot} key(s) {unknown}; legal keys: {list(defaults)}")
    return {kind: normalize_spec(value.get(kind, default), f"{slot}.{kind}") for kind, default in defaults.items()}


@dataclass
class BaRAConfig:
    """Configuration of BaRA adapters (PEFT-style; unknown keys are rejected by :meth:`from_dict`).

    Default generative model per adapted layer ``l`` and component ``k = 1..r`` (see the module
    docstring for swapping the prior, the guide or the weight family)::

        pi_lk     ~ Beta(c * gamma0 / r, c * (1 - gamma0 / r))   # finite beta process
        lambda_lk ~ Gamma(e0, e0)                                 # component magnitude, mean 1
        z_ltk     ~ Bernoulli(pi_lk)                              # token t uses component k
        theta_ltk ~ Gamma(a_theta, a_theta / lambda_lk)           # how strongly, mean lambda_lk
        y_t = W0 x_t + (alpha / r) * B (z_lt * theta_lt * (A x_t))
    """

    r: int = field(default=8, metadata={"help": "rank budget: number of LoRA components per layer"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator; the update is scaled by alpha/r"})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "modules to adapt: a list matches names exactly or by '.suffix', a string is a regex "
                          "(full match); None uses the architecture's default (query/value or q_proj/v_proj)"})
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "modules never adapted, same matching rules as target_modules"})
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "backbone modules trained as point estimates (e.g. a new classification head); "
                          "None trains a top-level 'classifier' or 'score' module if the model has one"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    choice_draws: str = field(default="prefix", metadata={
        "help": "how the choice sequences of a multiple-choice example share random draws (flipout signs, tied "
                "per-token gates, dropout masks): 'example' (one draw per example and position), 'prefix' (shared "
                "on the tokens all choices have in common, per sequence after; flipout signs per example) or "
                "'sequence' (every sequence its own)"})
    gate: str = field(default="bara", metadata={"help": "gate type: 'bara' (gates from prior/guide) or 'none' "
                                                         "(plain LoRA; same as prior: fixed)"})
    prior: dict | str | None = field(default=None, metadata={
        "help": "gate prior {sparsity: SPEC, magnitude: SPEC} or 'fixed' (every gate 1); SPEC is a registered name "
                "or {name: ..., **params}; null: beta_process + gamma"})
    guide: dict | None = field(default=None, metadata={
        "help": "gate guide {local: SPEC, global: SPEC}; null: amortized + mean_field; local conditional_prior takes "
                "per: token (default, one gate per token) or per: sequence (one gate per sequence)"})
    weights: dict | str | None = field(default=None, metadata={
        "help": "LoRA factors: point (default), map_gaussian, blob_gaussian or mc_dropout, as a SPEC"})
    gamma0: float | None = field(default=None, metadata={"help": "beta-process mass: prior expected number of "
                                                                "active components, 0 < gamma0 < r; None: r / 2"})
    concentration: float = field(default=1.0, metadata={"help": "beta-process concentration c > 0"})
    e0: float = field(default=1.0, metadata={"help": "shape and rate of the Gamma prior on lambda (mean 1)"})
    a_theta: float = field(default=4.0, metadata={"help": "shape of theta ~ Gamma(a_theta, a_theta/lambda); "
                                                          "larger means theta stays closer to lambda"})
    temperature: float = field(default=0.67, metadata={"help": "binary-concrete relaxation temperature > 0"})
    guide_hidden: int = field(default=32, metadata={"help": "hidden width of the amortized gate network"})
    init_gate_logit: float = field(default=2.0, metadata={"help": "initial logit of q(z=1) (2.0 -> 0.88)"})
    name: str = field(default="bara", metadata={"help": "prefix of this model's names in Pyro's param store"})

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(msg)

        need(isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1,
             f"r must be a positive integer, got {self.r!r}")
        for name in ("alpha", "concentration", "e0", "a_theta", "temperature"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                 f"{name} must be a positive number, got {value!r}")
        if self.gamma0 is None:
            self.gamma0 = self.r / 2
        need(isinstance(self.gamma0, (int, float)) and 0 < self.gamma0 < self.r,
             f"gamma0 must satisfy 0 < gamma0 < r = {self.r}, got {self.gamma0!r}")
        need(isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1,
             f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        need(self.choice_draws in CHOICE_DRAWS,
             f"choice_draws must be one of {list(CHOICE_DRAWS)}, got {self.choice_draws!r}")
        need(isinstance(self.guide_hidden, int) and self.guide_hidden >= 1,
             f"guide_hidden must be a positive integer, got {self.guide_hidden!r}")
        need(self.gate in GATE_TYPES, f"gate must be one of {list(GATE_TYPES)}, got {self.gate!r}")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            need(value is None or isinstance(value, str) or
                 (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)),
                 f"{name} must be a list of names, a regex string or null, got {value!r}")
            if isinstance(value, tuple):
                setattr(self, name, list(value))
        self._normalize_components()
        self._components = self._resolve_components()

    def _normalize_components(self) -> None:
        if self.prior == "fixed" or self.gate == "none":
            if self.prior not in (None, "fixed") and _normalize_pair(self.prior, "prior", DEFAULT_PRIOR) != \
                    _normalize_pair(None, "prior", DEFAULT_PRIOR):
                raise ConfigError(f"gate='none' (plain LoRA) contradicts prior={self.prior!r}; leave prior unset")
            self.prior, self.gate = "fixed", "none"
        else:
            self.prior = _normalize_pair(self.prior, "prior", DEFAULT_PRIOR)
        self.guide = _normalize_pair(self.guide, "guide", DEFAULT_GUIDE)
        self.weights = normalize_spec(DEFAULT_WEIGHTS if self.weights is None else self.weights, "weights")

    def _resolve_components(self) -> ResolvedComponents:
        prior = {"sparsity": {"name": "none"}, "magnitude": {"name": "none"}} if self.prior == "fixed" else self.prior
        built = {}
        for slot, registry, kind, spec in (("prior.sparsity", PRIORS, "sparsity", prior["sparsity"]),
                                           ("prior.magnitude", PRIORS, "magnitude", prior["magnitude"]),
                                           ("guide.local", GUIDES, "local", self.guide["local"]),
                                           ("guide.global", GUIDES, "global", self.guide["global"]),
                                           ("weights", WEIGHTS, "weights", self.weights)):
            component = registry.build(kind, spec, slot)
            component.resolve(self)
            built[kind] = component
        names: dict[str, str] = {}
        for kind in ("sparsity", "magnitude"):
            component = built[kind]
            if not component.active:
                continue
            for site in component.global_sites(self.r, 0.5):
                if site in RESERVED_SITES or site in names:
                    raise ConfigError(f"prior.{kind} {component.name!r} declares site {site!r}, already used by "
                                      f"{names.get(site, 'the adapter')}; site names must be unique per layer")
                names[site] = f"prior.{kind} {component.name!r}"
        if built["sparsity"].active and built["sparsity"].contextual and not built["local"].per_token:
            raise ConfigError(f"prior.sparsity {built['sparsity'].name!r} gives every token its own inclusion "
                              f"probability; guide.local {built['local'].name!r} has per-layer gates: use "
                              "amortized or conditional_prior")
        if built["local"].per_sequence:
            for kind in ("sparsity", "magnitude"):
                component = built[kind]
                if (component.active and component.contextual
                        and type(component).sequence_local_prior is GatePrior.sequence_local_prior):
                    raise ConfigError(f"guide.local {built['local'].name!r} with per: sequence needs a per-sequence "
                                      f"local prior; prior.{kind} {component.name!r} has none")
        return ResolvedComponents(built["sparsity"], built["magnitude"], built["local"], built["global"],
                                  built["weights"])

    @property
    def components(self) -> ResolvedComponents:
        """The resolved prior, guide and weight components (shared by every adapter of a model)."""
        return self._components

    @property
    def has_gate(self) -> bool:
        """Whether adapters get gates (False for plain LoRA: ``gate: none``, ``prior: fixed`` or both priors none)."""
        parts = self._components
        return self.gate == "bara" and (parts.sparsity.active or parts.magnitude.active)

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON/YAML-ready) dict of the fields; :meth:`from_dict` of it gives an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaRAConfig":
        return dataclass_from_dict(cls, data, "BaRAConfig")

    @classmethod
    def from_preset(cls, name: str, **fields: Any) -> "BaRAConfig":
        """The ``adapter`` block of the packaged preset ``name`` (``bara-pyro methods``) with ``fields`` merged in,
        nested mappings key by key: ``BaRAConfig.from_preset("bara_singular", r=8, alpha=16,
        weights={"direction_occam": "kfac"})``."""
        from ..methods import preset_section  # methods imports this module

        return cls.from_dict(preset_section(name, "adapter", fields))
