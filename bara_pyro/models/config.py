"""``BaRAConfig``: every hyperparameter of the BaRA adapter, with its meaning and default."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["BaRAConfig", "ConfigError"]


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and the legal values."""


GATE_TYPES = ("bara", "none")


@dataclass
class BaRAConfig:
    """Configuration of BaRA adapters (PEFT-style; unknown keys are rejected by :meth:`from_dict`).

    Generative model per adapted layer ``l`` and component ``k = 1..r``::

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
    gate: str = field(default="bara", metadata={"help": "gate type: 'bara' (global-local gates) or 'none' (LoRA)"})
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaRAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown BaRAConfig field(s) {unknown}; legal fields: {sorted(known)}")
        return cls(**data)
