r"""Triton kernels behind :mod:`bara_pyro.models.fused_contextual` (imported only when Triton is installed).

One program handles ``BT`` tokens of one adapter and keeps every intermediate in registers.  With
``x = h_t`` (``r`` entries, any float dtype, computed in fp32)::

    phi      = x / sqrt(mean_j x_j^2 + 1e-6)
    logit_k  = logit(clamp(pi_k, 1e-6, 1 - 1e-6)) + sum_j w_kj phi_j
    soft_k   = sigmoid((logit_k + log u_k - log(1 - u_k)) / temperature),   z_k = [soft_k > 1/2]
    y_k      = x_k z_k s_k                                          # s: the component scales (1 if absent)

``s`` is rounded to ``h``'s dtype first, as the op-by-op path multiplies in it.

* ``contextual_gate_fwd`` writes ``y`` in ``h``'s dtype.
* ``contextual_gate_bwd`` recomputes the forward from ``h`` and the uniforms and writes ``dL/dh`` plus one
  row of per-program partial sums ``[dL/dpi (r) | dL/dw (r x r) | dL/ds (r)]`` (summed by the caller); the
  straight-through gradient differentiates ``soft`` in place of ``z``.

``r`` is small (BaRA's rank), so ``w phi`` is a broadcast product over a ``(BT, RP, RP)`` block, not a
matrix unit product.  Only ``tl`` arithmetic is used, so the kernels also run under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl

TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(torch.float32).tiny
ONE_MINUS_EPS = tl.constexpr(0.99999988079071044921875)  # 1 - torch.finfo(torch.float32).eps
PROB_EPS = tl.constexpr(1e-6)
ONE_MINUS_PROB_EPS = tl.constexpr(0.999999)
RMS_EPS = tl.constexpr(1e-6)  # context_features' eps


@triton.jit
def _log1p(x):
    w = 1.0 + x
    return tl.where(w == 1.0, x, tl.log(w) * (x / (w - 1.0)))


@triton.jit
def _forward(h_ptr, u_ptr, pi_ptr, w_ptr, s_ptr, out_ptr, N, temperature,
             R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr, HAS_SCALE: tl.constexpr):
    """This program's rows and ``(x, rs, phi, w, soft, hard, s)``; padded rows and columns hold zeros.  ``s``:
    the scales rounded to ``out_ptr``'s dtype (ones without them)."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    kr = tl.arange(0, RP)
    km = kr < R
    m2 = (rows < N)[:, None] & km[None, :]
    offs = rows[:, None] * R + kr[None, :]
    x = tl.load(h_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    rs = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / R + RMS_EPS)
    phi = x * rs[:, None]
    w = tl.load(w_ptr + kr[:, None] * R + kr[None, :], mask=km[:, None] & km[None, :], other=0.0)  # (RP, RP)
    p = tl.minimum(tl.maximum(tl.load(pi_ptr + kr, mask=km, other=0.5), PROB_EPS), ONE_MINUS_PROB_EPS)
    logit = tl.log(p / (1.0 - p))[None, :] + tl.sum(phi[:, None, :] * w[None, :, :], axis=2)
    u = tl.minimum(tl.maximum(tl.load(u_ptr + offs, mask=m2, other=0.5), TINY), ONE_MINUS_EPS)
    soft = tl.sigmoid((logit + tl.log(u) - _log1p(-u)) / temperature)
    hard = tl.where(soft > 0.5, 1.0, 0.0)
    if HAS_SCALE:
        s = tl.load(s_ptr + kr, mask=km, other=0.0).to(out_ptr.dtype.element_ty).to(tl.float32)
    else:
        s = tl.where(km, 1.0, 0.0)
    return kr, km, m2, offs, x, rs, phi, w, soft, hard, s


@triton.jit
def contextual_gate_fwd(h_ptr, u_ptr, pi_ptr, w_ptr, s_ptr, y_ptr, N, temperature,
                        R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr, HAS_SCALE: tl.constexpr):
    kr, km, m2, offs, x, rs, phi, w, soft, hard, s = _forward(h_ptr, u_ptr, pi_ptr, w_ptr, s_ptr, y_ptr, N,
                                                              temperature, R, RP, BT, HAS_SCALE)
    tl.store(y_ptr + offs, (x * hard * s[None, :]).to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def contextual_gate_bwd(h_ptr, u_ptr, pi_ptr, w_ptr, s_ptr, gy_ptr, gh_ptr, part_ptr, N, temperature,
                        R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr, HAS_SCALE: tl.constexpr):
    kr, km, m2, offs, x, rs, phi, w, soft, hard, s = _forward(h_ptr, u_ptr, pi_ptr, w_ptr, s_ptr, gh_ptr, N,
                                                              temperature, R, RP, BT, HAS_SCALE)
    gy_raw = tl.load(gy_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    gy = gy_raw * s[None, :]  # dL/d(x z)
    glogit = tl.where(m2, gy * x * soft * (1.0 - soft) / temperature, 0.0)  # straight-through: d soft for d z

    pi = tl.load(pi_ptr + kr, mask=km, other=0.5)
    p = tl.minimum(tl.maximum(pi, PROB_EPS), ONE_MINUS_PROB_EPS)
    inside = (pi >= PROB_EPS) & (pi <= ONE_MINUS_PROB_EPS)
    gpi = tl.where(inside, tl.sum(glogit, axis=0) / (p * (1.0 - p)), 0.0)
    gw = tl.sum(glogit[:, :, None] * phi[:, None, :], axis=0)  # (RP, RP): sum_t glogit_tk phi_tj
    base = part_ptr + tl.program_id(0) * (2 * R + R * R)
    tl.store(base + kr, gpi, mask=km)
    tl.store(base + R + kr[:, None] * R + kr[None, :], gw, mask=km[:, None] & km[None, :])
    tl.store(base + R + R * R + kr, tl.sum(tl.where(m2, gy_raw * x * hard, 0.0), axis=0), mask=km)

    gphi = tl.sum(glogit[:, :, None] * w[None, :, :], axis=1)  # (BT, RP): sum_k glogit_tk w_kj
    # phi = x rs, rs = (mean x^2 + eps)^(-1/2): d/dx_j = rs dphi_j - x_j rs^3 (sum_i dphi_i x_i) / R
    dot = tl.sum(gphi * x, axis=1)
    gx = gy * hard + rs[:, None] * gphi - x * (rs * rs * rs * dot / R)[:, None]
    tl.store(gh_ptr + offs, gx.to(gh_ptr.dtype.element_ty), mask=m2)
