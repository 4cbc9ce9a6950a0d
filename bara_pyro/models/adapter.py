"""``BaRAAdapter``: the low-rank update of one frozen ``nn.Linear``, gated per token."""

from __future__ import annotations

import math

import torch
from pyro.nn import PyroModule
from torch import nn

from .config import BaRAConfig
from .gate import GlobalLocalGate

__all__ = ["BaRAAdapter"]


class BaRAAdapter(PyroModule):
    r"""Adds :math:`\Delta y_t = \frac{\alpha}{r} B\,(g_t \odot A x_t)` to a frozen linear layer's output.

    ``A`` (``r x d_in``, Kaiming-uniform) and ``B`` (``d_out x r``, zeros) are point estimates,
    initialised as in LoRA, so a fresh adapter leaves the backbone unchanged.  ``g_t`` comes from
    the gate (``None``: every gate is 1, plain LoRA).  Shapes: ``x`` ``(..., d_in)`` ->
    ``(..., d_out)``.  The adapter is attached with a forward hook, so the backbone's own module
    tree and state dict are untouched.
    """

    def __init__(self, base_layer: nn.Linear, path: str, config: BaRAConfig):
        super().__init__()
        self.path = path
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = config.r
        self.scaling = config.alpha / config.r
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, config.r, bias=False)
        self.lora_B = nn.Linear(config.r, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.gate = GlobalLocalGate(path, config) if config.gate == "bara" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_A(self.lora_dropout(x))
        if self.gate is not None:
            # .forward, not __call__: PyroModule.__call__ would activate the Pyro context (and param-store
            # traffic) on the fused fast path; the Pyro model/guide activate it themselves.
            h = h * self.gate.forward(h).to(h.dtype)
        return self.lora_B(h) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) B A``: the update when every gate is 1 (plain LoRA), ``(d_out, d_in)``."""
        return self.scaling * self.lora_B.weight @ self.lora_A.weight
