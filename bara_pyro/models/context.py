"""``GateContext``: the per-call state every adapter of one model reads during a forward pass.

One object is shared by all adapters of a :class:`~bara_pyro.models.bara_model.BaRAModel`; the
model sets it before running the backbone, so the adapters (called from forward hooks deep
inside a transformers model) know how to draw their gates without extra arguments.

Modes:
    ``guide``  gates sampled from q through ``pyro.sample`` (Pyro SVI, guide side);
    ``model``  gates sampled from the prior through ``pyro.sample`` (prior predictive, or replay);
    ``fused``  gates sampled from q with plain torch, closed-form KLs accumulated (fast path);
    ``sample`` gates sampled from q, no KL (posterior predictive);
    ``mean``   posterior-mean gates E[z] E[theta] (deterministic fast prediction);
    ``given``  gates read from ``cache`` (the model's own draws when it is not a replay of the guide);
    ``ones``   every gate fixed to 1 (the adapter is then plain LoRA);
    ``off``    adapters disabled: the frozen backbone alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pyro
import torch

__all__ = ["GateContext", "MODES"]

MODES = ("guide", "model", "fused", "sample", "mean", "given", "ones", "off")


@dataclass
class GateContext:
    mode: str = "mean"
    token_mask: torch.Tensor | None = None  # (n_seq, T) bool, or None when every position is real
    local_scale: float = 1.0  # N / B: scales local KL (and likelihood) from the minibatch to the dataset
    kl_beta: float = 1.0  # KL warm-up weight
    globals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # path -> (pi, lambda)
    kl_local: dict[str, torch.Tensor] = field(default_factory=dict)  # path -> unscaled masked local KL sum
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # path -> (z, theta) drawn
    collect_stats: bool = False  # record gate statistics (detached) into ``stats``
    stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    record_tokens: bool = False  # keep per-token q(z=1) and E[g] (for analysis)
    plates: dict[str, pyro.plate] = field(default_factory=dict)  # local plates, built once per model/guide run

    def reset(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown gate mode {mode!r}; legal modes: {list(MODES)}")
        self.mode = mode
        self.globals = {}
        self.kl_local = {}
        self.cache = {}
        self.stats = {}
        self.plates = {}

    def local_plates(self, batch_shape: torch.Size) -> contextlib.ExitStack:
        """Enter plates ``sequences`` (dim -2) and ``tokens`` (dim -1) over a local site's batch dims.

        The plate objects are created once per model/guide run and shared by every adapter, so each
        plate is one site of the trace (a 2-D adapter input gets ``sequences`` alone, at dim -1)."""
        if len(batch_shape) not in (1, 2):
            raise ValueError(f"local gate sites need 1 or 2 batch dims (sequences[, tokens]); got {tuple(batch_shape)}")
        stack = contextlib.ExitStack()
        for i, (name, size) in enumerate(zip(("sequences", "tokens"), batch_shape)):
            dim = i - len(batch_shape)
            plate = self.plates.get(name)
            if plate is None:
                plate = self.plates[name] = pyro.plate(name, size, dim=dim)
            elif plate.size != size or plate.dim != dim:
                raise ValueError(f"adapters of one model see inputs of different leading shapes ({name}: "
                                 f"{plate.size} vs {size}); gates need one (sequences, tokens) layout per pass")
            stack.enter_context(plate)
        return stack
