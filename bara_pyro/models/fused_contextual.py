r"""The contextual gate of ``bara_singular`` in one call: training's ``fused`` mode as a pure function.

With the contextual beta process (``context: shift``), no magnitude component and the local guide tied to the
prior (``conditional_prior``, per token), a training pass gates the adapter projection ``h = A x`` ``(..., r)``
as::

    phi_t  = h_t / rms(h_t)                                        # context_features
    l_tk   = logit(pi_k) + w_k . phi_t                             # shifted_logits
    z_tk   = BinaryConcreteST(l_tk, temperature; u_tk)             # hard {0, 1}, straight-through gradient
    y_t    = h_t * z_t                                             # in h's dtype; the local KL is 0
    y_t    = h_t * z_t * s                                         # with component scales s (r,), if given

``s`` is what a weight family multiplies the gated activations by after the gate (``singular_slab``: the
step's draw of the singular values), folded in so that it costs no kernels of its own.

``pi`` ``(r,)`` and ``w`` ``(r, r)`` are the step's draws of the layer's globals.  Op by op this is a few
dozen small kernels per adapter, forward and backward; ``impl``:

* ``"torch"``: the same ops as the gate's module path, the same draw (one ``torch.rand`` of ``h``'s shape), so
  on CPU the values and gradients are those of the module path bit for bit;
* ``"compile"``: that function through ``torch.compile``;
* ``"triton"``: one kernel forward, one backward plus a sum of per-program partials (CUDA, or
  ``TRITON_INTERPRET=1``), which recompute the gate from ``h`` and ``u`` instead of saving intermediates.

``"auto"`` picks ``"triton"`` on CUDA when Triton is importable and ``r <= 32``, else ``"torch"``.
"""

from __future__ import annotations

import math

import torch

from . import row_shard
from .distributions import binary_concrete_straight_through
from .fused_kernels import IMPLS, _clamp_open, _compiled, _interpreting, _next_pow2, triton_module
from .priors.contextual import context_features, shifted_logits

__all__ = ["contextual_gated_local", "resolve_contextual_impl"]

BLOCK_TOKENS = 32
NUM_WARPS = 4
MAX_RANK = 32  # the kernels hold a (BLOCK_TOKENS, r, r) block in registers


def _contextual_gated_torch(h, pi, w, temperature, u, scale):
    with torch.autocast(device_type=h.device.type, enabled=False):
        logits = shifted_logits(pi, w, context_features(h.to(pi.dtype)))
        z = binary_concrete_straight_through(logits, temperature, _clamp_open(u))
    y = h * z.to(h.dtype)
    return y if scale is None else y * scale.to(h.dtype)


def _triton_kernels():
    return triton_module("_fused_triton_contextual")


def resolve_contextual_impl(impl: str, h: torch.Tensor) -> str:
    """The implementation ``impl`` stands for on this input (``auto`` -> triton on CUDA when it fits)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    if impl == "auto":
        fits = h.is_cuda and h.shape[-1] <= MAX_RANK and _triton_kernels() is not None
        return "triton" if fits else "torch"
    if impl == "triton" and not (h.is_cuda or _interpreting()):
        raise ValueError("impl='triton' needs a CUDA tensor (or TRITON_INTERPRET=1)")
    return impl


def contextual_gated_local(h: torch.Tensor, pi: torch.Tensor, w: torch.Tensor, temperature: float,
                           scale: torch.Tensor | None = None, u: torch.Tensor | None = None,
                           impl: str = "auto") -> torch.Tensor:
    """``h * z`` (times ``scale`` ``(r,)`` if given; module docstring), in ``h``'s dtype; ``u`` ``h.shape`` uniforms
    (drawn if None, in ``pi``'s dtype, through the context's data-parallel row shard if any)."""
    impl = resolve_contextual_impl(impl, h)
    if u is None:
        u = row_shard.uniform(h.shape, pi.dtype, h.device)
    if impl == "triton":
        return _TritonContextualGate.apply(h, u, pi, w, scale, float(temperature))
    fn = _compiled("contextual", _contextual_gated_torch) if impl == "compile" else _contextual_gated_torch
    return fn(h, pi, w, temperature, u, scale)


def _launch(h):
    r = h.shape[-1]
    n = h.numel() // r
    return r, n, _next_pow2(r, floor=1), math.ceil(n / BLOCK_TOKENS)


class _TritonContextualGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, u, pi, w, scale, temperature):
        h, u, pi, w = (t.contiguous() for t in (h, u, pi, w))  # the kernels index dense row-major tensors
        has_scale = scale is not None
        scale = scale.reshape(-1).contiguous() if has_scale else pi  # pi: a placeholder the kernel never reads
        r, n, rp, nblk = _launch(h)
        y = torch.empty_like(h)
        _triton_kernels().contextual_gate_fwd[(nblk,)](
            h, u, pi, w, scale, y, n, temperature, R=r, RP=rp, BT=BLOCK_TOKENS, HAS_SCALE=has_scale,
            num_warps=NUM_WARPS)
        ctx.save_for_backward(h, u, pi, w, scale)
        ctx.temperature, ctx.has_scale = temperature, has_scale
        return y

    @staticmethod
    def backward(ctx, gy):
        h, u, pi, w, scale = ctx.saved_tensors
        r, n, rp, nblk = _launch(h)
        gh = torch.empty_like(h)
        part = torch.empty((nblk, 2 * r + r * r), dtype=torch.float32, device=h.device)
        _triton_kernels().contextual_gate_bwd[(nblk,)](
            h, u, pi, w, scale, gy.contiguous(), gh, part, n, ctx.temperature, R=r, RP=rp, BT=BLOCK_TOKENS,
            HAS_SCALE=ctx.has_scale, num_warps=NUM_WARPS)
        gpi, gw, gs = part.sum(0).split((r, r * r, r))
        gs = gs.to(scale.dtype) if ctx.has_scale else None
        return gh, None, gpi.to(pi.dtype), gw.view(r, r).to(w.dtype), gs, None
