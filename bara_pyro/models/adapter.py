"""``BaRAAdapter``: the low-rank update of one frozen ``nn.Linear``, gated per token."""

from __future__ import annotations

import math

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from .config import BaRAConfig
from .context import GateContext, per_sample_linear
from .gate import GlobalLocalGate
from .kl import has_closed_form_kl, kl_divergence, kl_or_mc
from .weights import flipout_linear

__all__ = ["BaRAAdapter"]


class BaRAAdapter(PyroModule):
    r"""Adds :math:`\Delta y_t = \frac{\alpha}{r} B\,(g_t \odot A x_t)` to a frozen linear layer's output.

    ``A`` (``r x d_in``, Kaiming-uniform) and ``B`` (``d_out x r``, zeros) are initialised as in
    LoRA, so a fresh adapter leaves the backbone unchanged; the config's weight family
    (:mod:`~bara_pyro.models.weights`) says whether they are point estimates or random variables
    (sites ``{path}.lora_A`` / ``{path}.lora_B``).  ``g_t`` comes from the gate (``None``: every gate
    is 1, plain LoRA).  ``lora_dropout`` acts on ``x`` in training (and, for ``mc_dropout``, when
    predicting in mode 'sample').  Shapes: ``x`` ``(..., d_in)`` -> ``(..., d_out)``.  The adapter is
    attached with a forward hook, so the backbone's own module tree and state dict are untouched.
    """

    def __init__(self, base_layer: nn.Linear, path: str, config: BaRAConfig):
        super().__init__()
        self.path = path
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = config.r
        self.scaling = config.alpha / config.r
        self.lora_dropout_p = float(config.lora_dropout)
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self._base_layer = (base_layer,)  # a weight family may read the frozen weight (outside the module tree)
        self.lora_A = nn.Linear(self.in_features, config.r, bias=False)
        self.lora_B = nn.Linear(config.r, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.weights = config.components.weights
        self.weights.install(self)
        self._flipout = self.weights.flipout_factors()
        self._rank_transform = self.weights.rank_transform
        self._transform_before_gate = self.weights.transform_before_gate
        self._records = self.weights.records_statistics
        self.gate = GlobalLocalGate(path, config) if config.has_gate else None
        self._ctx = GateContext()
        # direct references for the non-Pyro modes (no PyroModule attribute lookup per call)
        self._direct = {"lora_A": self.lora_A, "lora_B": self.lora_B, "gate": self.gate}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self._ctx
        if self.lora_dropout_p > 0 and (self.training or (self.weights.dropout_when_sampling and ctx.mode == "sample")):
            x = self._dropout(x)
        h = self._factor("lora_A", x)
        transform, before = self._rank_transform, self._transform_before_gate
        if transform is not None and before:
            h = transform(self, h)
        gate = self._direct["gate"]
        if gate is not None:
            # .gated (not __call__): PyroModule.__call__ would activate the Pyro context (and param-store
            # traffic) on the fused fast path; the Pyro model/guide activate it themselves.
            scale = self.weights.component_scale(self) if transform is not None and not before else None
            scaled = gate.gated_scaled(h, scale) if scale is not None else None
            if scaled is not None:  # the gate's fused pass applied the transform too
                h, transform = scaled, None
            else:
                h = gate.gated(h)
        if transform is not None and not before:
            h = transform(self, h)
        out = self._factor("lora_B", h) * self.scaling
        if self._records and ctx.mode in ("fused", "model") and out.requires_grad:  # a training pass
            self.weights.record(self, x, out)
        return out

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Inverted dropout on the adapter input ``x`` ``(n, T, d_in)``; the rows of one example (the choices of a
        multiple-choice example, ``ctx.row_groups``) share the mask at each position, as they share a weight draw."""
        p, groups = self.lora_dropout_p, self._ctx.row_groups
        if groups is None or x.dim() != 3:
            return F.dropout(x, p, training=True)
        keep = groups.uniform(x.shape, torch.float32, x.device) >= p
        return x * keep.to(x.dtype) / (1 - p)

    def _factor(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` times factor ``name`` (transposed), with the factor drawn as the context's mode says."""
        ctx = self._ctx
        if name not in self.weights.latent:
            if ctx.mode == "sample" and self.weights.samples_factor(self, name):  # a post-hoc posterior's draws
                return per_sample_linear(x, self.weights.draws(self, name, ctx.num_samples))
            # inside the Pyro model/guide the PyroModule lookup registers the weights in the param store
            return (getattr(self, name) if ctx.mode in ("guide", "model") else self._direct[name])(x)
        mode = ctx.mode
        if mode in ("guide", "model", "given") or (mode == "fused" and (
                name not in self._flipout or name in ctx.weights.get(self.path, ()))):  # flipout, unless drawn whole
            return F.linear(x, ctx.weights[self.path][name])
        if mode == "fused":
            q = self.weights.posterior(self, name)
            return flipout_linear(x, q.loc, q.scale, ctx.row_groups)
        if mode == "sample" and self.weights.samples_factor(self, name):
            return per_sample_linear(x, self.weights.draws(self, name, ctx.num_samples))
        return F.linear(x, self.weights.mean(self, name))

    # ----------------------------------------------------------------- global sites (weights, then the gate's)
    def weight_dist(self, name: str, side: str):
        return self.weights.posterior(self, name) if side == "guide" else self.weights.prior(self, name)

    def sample_globals(self, side: str) -> None:
        """Pyro ``model``/``guide`` side: the gate's global sites, then the latent weights (whose prior may depend
        on them, see :class:`~bara_pyro.models.slab_weights.SlabGaussianWeights`), kept in the context."""
        ctx = self._ctx
        if self.gate is not None:
            self.gate.sample_globals(side)
        if self.weights.latent:
            values = ctx.weights[self.path] = {}  # filled in order: a factor's law may depend on earlier ones
            with poutine.scale(scale=ctx.kl_beta):
                for name in self.weights.latent:
                    d = self.weight_dist(name, side)
                    values[name] = pyro.sample(f"{self.path}.{name}", d.to_event(len(d.batch_shape)))
                factor = self.weights.global_factor(self) if side == "model" else None
                if factor is not None:
                    pyro.factor(f"{self.path}.global_factor", -factor)

    def draw_globals(self) -> torch.Tensor:
        """Draw the gate's global sites (:meth:`Gate.draw_globals`), then every latent weight whole (flipout factors
        too), from q into the context for a following pass in mode ``fused``, and return ``log p(values) -
        log q(values)``, summed: one importance log-ratio of the global guide (for PSIS)."""
        log_ratio = self.gate.draw_globals() if self.gate is not None else self.lora_A.weight.new_zeros(())
        values = self._ctx.weights[self.path] = {}  # filled in order: a factor's law may depend on earlier ones
        for name in self.weights.latent:
            q = self.weights.posterior(self, name)
            x = values[name] = q.sample()
            log_ratio = log_ratio + (self.weights.prior(self, name).log_prob(x) - q.log_prob(x)).sum()
        factor = self.weights.global_factor(self)
        return log_ratio if factor is None else log_ratio - factor

    def fused_globals(self) -> None:
        """Fused path: draw the gate's globals and the latent weights from q (the guide's order) and put their
        KL, counted once, in ``ctx.kl_global[path]``.  Flipout factors are drawn later, in the forward pass."""
        ctx = self._ctx
        kl = self.gate.fused_globals() if self.gate is not None else None
        values = {}
        ctx.weights[self.path] = values  # filled in order: a factor's law may depend on earlier ones
        for name in self.weights.latent:
            q, p = self.weights.posterior(self, name), self.weights.prior(self, name)
            if name in self._flipout:
                term = kl_divergence(q, p)
            else:
                values[name] = q.rsample()
                term = kl_or_mc(q, p, values[name])
            kl = term.sum() if kl is None else kl + term.sum()
        factor = self.weights.global_factor(self)
        if factor is not None:
            kl = factor if kl is None else kl + factor
        if kl is not None:
            ctx.kl_global[self.path] = kl

    @property
    def has_latent_sites(self) -> bool:
        return bool(self.weights.latent) or bool(self.weights.local_kl_report(self)) or self.gate is not None

    def kl_report(self) -> dict[str, bool]:
        """``{site: True if its KL is closed-form}`` for the latent weights and the gate's sites."""
        report = {name: has_closed_form_kl(self.weights.posterior(self, name), self.weights.prior(self, name))
                  for name in self.weights.latent}
        report.update(self.weights.local_kl_report(self))
        if self.gate is not None:
            report.update(self.gate.kl_report())
        return report

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) B A``: the update when every gate is 1 (plain LoRA), ``(d_out, d_in)``; A, B at their means."""
        return self.scaling * self.lora_B.weight @ self.lora_A.weight
