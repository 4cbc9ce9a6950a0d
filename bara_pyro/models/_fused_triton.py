r"""Triton kernels behind :mod:`bara_pyro.models.fused_kernels` (imported only when Triton is installed).

One program handles ``BT`` tokens of one adapter: it loads ``h`` (``(BT, r)``, any float dtype)
and the gate network's weights, and keeps every intermediate in registers.

* ``bara_gate_fwd``: ``y = h * gate`` (in ``h``'s dtype) and, in mode 0, one partial sum of the
  masked local KL per program.  Modes: 0 = draw + KL (training), 1 = draw (prediction),
  2 = posterior mean (prediction).
* ``bara_gate_bwd``: recomputes the forward from ``h`` and the saved uniforms and writes
  ``dL/dh`` plus one row of per-program partial sums of the weight, ``pi`` and ``lambda``
  gradients (summed by the caller), so nothing but ``h`` and ``u`` is kept for the backward pass.

Only ``tl`` arithmetic is used (no libdevice), so the kernels also run under
``TRITON_INTERPRET=1`` on CPU; ``log1p``, ``lgamma`` and ``digamma`` are written out below
(Goldberg's log1p; Stirling / asymptotic series after shifting the argument past 7).
Matrix products use ``input_precision="ieee"`` (fp32, no TF32), like the fp32 reference.
"""

from __future__ import annotations

import triton
import triton.language as tl

# module-level constants must be tl.constexpr to be read inside @triton.jit functions
EULER = tl.constexpr(0.5772156649015329)
HALF_LOG_2PI = tl.constexpr(0.9189385332046727)
TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(torch.float32).tiny
ONE_MINUS_EPS = tl.constexpr(0.99999988079071044921875)  # 1 - torch.finfo(torch.float32).eps
PROB_EPS = tl.constexpr(1e-6)
ONE_MINUS_PROB_EPS = tl.constexpr(0.999999)


@triton.jit
def _log1p(x):
    w = 1.0 + x
    return tl.where(w == 1.0, x, tl.log(w) * (x / (w - 1.0)))


@triton.jit
def _softplus(x):  # F.softplus, threshold 20
    return tl.where(x > 20.0, x, _log1p(tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _softplus_grad(x):  # torch's softplus_backward factor: z / (z + 1), z = exp(x); 1 past the threshold
    z = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, 1.0, z / (z + 1.0))


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _lgamma(x):  # x > 0
    small = x < 7.0
    z = tl.where(small, x + 6.0, x)
    prod = x * (x + 1.0) * (x + 2.0) * (x + 3.0) * (x + 4.0) * (x + 5.0)
    corr = tl.where(small, tl.log(tl.where(small, prod, 1.0)), 0.0)
    zi = 1.0 / z
    zi2 = zi * zi
    series = zi * (1.0 / 12.0 - zi2 * (1.0 / 360.0 - zi2 * (1.0 / 1260.0 - zi2 * (1.0 / 1680.0))))
    return (z - 0.5) * tl.log(z) - z + HALF_LOG_2PI + series - corr


@triton.jit
def _digamma(x):  # x > 0
    small = x < 7.0
    z = tl.where(small, x + 6.0, x)
    corr = tl.where(small, 1.0 / x + 1.0 / (x + 1.0) + 1.0 / (x + 2.0) + 1.0 / (x + 3.0) + 1.0 / (x + 4.0)
                    + 1.0 / (x + 5.0), 0.0)
    zi = 1.0 / z
    zi2 = zi * zi
    series = zi2 * (1.0 / 12.0 - zi2 * (1.0 / 120.0 - zi2 * (1.0 / 252.0 - zi2 * (1.0 / 240.0 - zi2 * (1.0 / 132.0)))))
    return tl.log(z) - 0.5 * zi - series - corr


@triton.jit
def _net(h_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, rows, m2, kr, km, kh, hm,
         R: tl.constexpr, H: tl.constexpr):
    """LayerNorm -> Linear(r, H) -> SiLU -> Linear(H, 3r) for BT rows; padded rows/columns give zeros."""
    x = tl.load(h_ptr + rows[:, None] * R + kr[None, :], mask=m2, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / R
    xc = tl.where(m2, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / R
    rstd = 1.0 / tl.sqrt(var + 1e-5)
    n = xc * rstd[:, None]
    w1t = tl.load(w1_ptr + kh[None, :] * R + kr[:, None], mask=km[:, None] & hm[None, :], other=0.0)  # (RP, HP)
    b1 = tl.load(b1_ptr + kh, mask=hm, other=0.0)
    a1 = tl.dot(n, w1t, input_precision="ieee") + b1[None, :]
    s = a1 * tl.sigmoid(a1)
    wm = hm[:, None] & km[None, :]
    w2l = tl.load(w2_ptr + kr[None, :] * H + kh[:, None], mask=wm, other=0.0)  # (HP, RP): W2[k, j] at [j, k]
    w2s = tl.load(w2_ptr + (R + kr[None, :]) * H + kh[:, None], mask=wm, other=0.0)
    w2c = tl.load(w2_ptr + (2 * R + kr[None, :]) * H + kh[:, None], mask=wm, other=0.0)
    b2l = tl.load(b2_ptr + kr, mask=km, other=0.0)
    b2s = tl.load(b2_ptr + R + kr, mask=km, other=0.0)
    b2c = tl.load(b2_ptr + 2 * R + kr, mask=km, other=0.0)
    logit = tl.dot(s, w2l, input_precision="ieee") + b2l[None, :]
    sraw = tl.dot(s, w2s, input_precision="ieee") + b2s[None, :]
    craw = tl.dot(s, w2c, input_precision="ieee") + b2c[None, :]
    return x, n, rstd, a1, s, w1t, w2l, w2s, w2c, logit, sraw, craw


@triton.jit
def bara_gate_fwd(h_ptr, u_ptr, mask_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, pi_ptr, lam_ptr, a_ptr,
                  y_ptr, klp_ptr, N, temperature,
                  R: tl.constexpr, H: tl.constexpr, RP: tl.constexpr, HP: tl.constexpr, BT: tl.constexpr,
                  MODE: tl.constexpr, HAS_MASK: tl.constexpr, MIN_CONC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    rmask = rows < N
    kr = tl.arange(0, RP)
    km = kr < R
    kh = tl.arange(0, HP)
    hm = kh < H
    m2 = rmask[:, None] & km[None, :]
    x, n, rstd, a1, s, w1t, w2l, w2s, w2c, logit, sraw, craw = _net(
        h_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, rows, m2, kr, km, kh, hm, R, H)
    scale = _softplus(sraw)
    conc = MIN_CONC + _softplus(craw)
    inv_c = 1.0 / conc
    offs = rows[:, None] * R + kr[None, :]
    if MODE == 2:
        gate = tl.sigmoid(logit) * (scale * tl.exp(_lgamma(1.0 + inv_c)))
    else:
        u0 = tl.minimum(tl.maximum(tl.load(u_ptr + offs, mask=m2, other=0.5), TINY), ONE_MINUS_EPS)
        u1 = tl.minimum(tl.maximum(tl.load(u_ptr + N * R + offs, mask=m2, other=0.5), TINY), ONE_MINUS_EPS)
        soft = tl.sigmoid((logit + tl.log(u0) - _log1p(-u0)) / temperature)
        hard = tl.where(soft > 0.5, 1.0, 0.0)
        e = -_log1p(-u1)
        theta = tl.maximum(scale * tl.exp(tl.log(e) * inv_c), TINY)
        gate = hard * theta
    tl.store(y_ptr + offs, (x * gate).to(y_ptr.dtype.element_ty), mask=m2)
    if MODE == 0:
        pi = tl.load(pi_ptr + kr, mask=km, other=0.5)
        lam = tl.load(lam_ptr + kr, mask=km, other=1.0)
        a = tl.load(a_ptr)
        p = tl.minimum(tl.maximum(pi, PROB_EPS), ONE_MINUS_PROB_EPS)
        q = tl.sigmoid(logit)
        klb = (q * (_logsigmoid(logit) - tl.log(p)[None, :])
               + (1.0 - q) * (_logsigmoid(-logit) - _log1p(-p)[None, :]))
        b = a / lam
        g1 = tl.exp(_lgamma(1.0 + inv_c))
        klw = (EULER * a * inv_c - a * tl.log(scale) + tl.log(conc) + b[None, :] * scale * g1 - EULER - 1.0
               - a * tl.log(b)[None, :] + _lgamma(a))
        kl = tl.where(m2, klb + klw, 0.0)
        if HAS_MASK:
            tm = tl.load(mask_ptr + rows, mask=rmask, other=0).to(tl.int32)
            kl = tl.where(tm[:, None] != 0, kl, 0.0)
        tl.store(klp_ptr + pid, tl.sum(tl.sum(kl, axis=1), axis=0))


@triton.jit
def bara_gate_bwd(h_ptr, u_ptr, mask_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, pi_ptr, lam_ptr, a_ptr,
                  gy_ptr, gkl_ptr, gh_ptr, part_ptr, N, temperature, PSTRIDE,
                  R: tl.constexpr, H: tl.constexpr, RP: tl.constexpr, HP: tl.constexpr, BT: tl.constexpr,
                  HAS_MASK: tl.constexpr, MIN_CONC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    rmask = rows < N
    kr = tl.arange(0, RP)
    km = kr < R
    kh = tl.arange(0, HP)
    hm = kh < H
    m2 = rmask[:, None] & km[None, :]
    x, n, rstd, a1, s, w1t, w2l, w2s, w2c, logit, sraw, craw = _net(
        h_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, rows, m2, kr, km, kh, hm, R, H)
    scale = _softplus(sraw)
    conc = MIN_CONC + _softplus(craw)
    inv_c = 1.0 / conc
    offs = rows[:, None] * R + kr[None, :]
    u0 = tl.minimum(tl.maximum(tl.load(u_ptr + offs, mask=m2, other=0.5), TINY), ONE_MINUS_EPS)
    u1 = tl.minimum(tl.maximum(tl.load(u_ptr + N * R + offs, mask=m2, other=0.5), TINY), ONE_MINUS_EPS)
    soft = tl.sigmoid((logit + tl.log(u0) - _log1p(-u0)) / temperature)
    hard = tl.where(soft > 0.5, 1.0, 0.0)
    e = -_log1p(-u1)
    pw = tl.exp(tl.log(e) * inv_c)
    theta_raw = scale * pw
    theta = tl.maximum(theta_raw, TINY)
    gate = hard * theta

    gy = tl.load(gy_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    gkl = tl.load(gkl_ptr)
    gk_row = tl.where(rmask, gkl, 0.0)
    if HAS_MASK:
        tm = tl.load(mask_ptr + rows, mask=rmask, other=0).to(tl.int32)
        gk_row = tl.where(tm != 0, gk_row, 0.0)
    gk = tl.where(m2, gk_row[:, None], 0.0)

    # y = h * gate; gate = z * theta
    gx = gy * gate
    gg = gy * x
    gz = gg * theta
    gth = tl.where(theta_raw >= TINY, gg * hard, 0.0)
    gscale = gth * pw
    log_e = tl.log(e)
    gconc = gth * scale * pw * log_e * (-(inv_c * inv_c))
    glogit = gz * (1.0 - soft) * soft / temperature

    # KL(Bernoulli(sigmoid(logit)) || Bernoulli(pi))
    pi = tl.load(pi_ptr + kr, mask=km, other=0.5)
    lam = tl.load(lam_ptr + kr, mask=km, other=1.0)
    a = tl.load(a_ptr)
    p = tl.minimum(tl.maximum(pi, PROB_EPS), ONE_MINUS_PROB_EPS)
    logp = tl.log(p)
    log1mp = _log1p(-p)
    q = tl.sigmoid(logit)
    bracket = (_logsigmoid(logit) - logp[None, :]) - (_logsigmoid(-logit) - log1mp[None, :])
    glogit += gk * (bracket * (1.0 - q) * q)
    gp = tl.sum(gk * (-q / p[None, :] + (1.0 - q) / (1.0 - p[None, :])), axis=0)
    gp = tl.where((pi >= PROB_EPS) & (pi <= ONE_MINUS_PROB_EPS), gp, 0.0)

    # KL(Weibull(scale, conc) || Gamma(a, a / lam))
    b = a / lam
    g1 = tl.exp(_lgamma(1.0 + inv_c))
    gscale += gk * (-a / scale + b[None, :] * g1)
    gconc += gk * (-EULER * a * inv_c * inv_c + inv_c - b[None, :] * scale * g1 * _digamma(1.0 + inv_c) * inv_c * inv_c)
    glam = tl.sum(gk * (scale * g1 - a / b[None, :]), axis=0) * (-a / (lam * lam))

    # softplus heads -> raw outputs of the second Linear
    gsraw = tl.where(m2, gscale * _softplus_grad(sraw), 0.0)
    gcraw = tl.where(m2, gconc * _softplus_grad(craw), 0.0)
    glogit = tl.where(m2, glogit, 0.0)

    base = part_ptr + pid * PSTRIDE
    o_b1 = H * R
    o_w2 = o_b1 + H
    o_b2 = o_w2 + 3 * R * H
    o_pi = o_b2 + 3 * R
    o_lam = o_pi + R
    wm = km[:, None] & hm[None, :]
    w2_offs = kr[:, None] * H + kh[None, :]
    tl.store(base + o_w2 + w2_offs, tl.dot(tl.trans(glogit), s, input_precision="ieee"), mask=wm)
    tl.store(base + o_w2 + R * H + w2_offs, tl.dot(tl.trans(gsraw), s, input_precision="ieee"), mask=wm)
    tl.store(base + o_w2 + 2 * R * H + w2_offs, tl.dot(tl.trans(gcraw), s, input_precision="ieee"), mask=wm)
    tl.store(base + o_b2 + kr, tl.sum(glogit, axis=0), mask=km)
    tl.store(base + o_b2 + R + kr, tl.sum(gsraw, axis=0), mask=km)
    tl.store(base + o_b2 + 2 * R + kr, tl.sum(gcraw, axis=0), mask=km)
    tl.store(base + o_pi + kr, gp, mask=km)
    tl.store(base + o_lam + kr, glam, mask=km)

    gs = (tl.dot(glogit, tl.trans(w2l), input_precision="ieee") + tl.dot(gsraw, tl.trans(w2s), input_precision="ieee")
          + tl.dot(gcraw, tl.trans(w2c), input_precision="ieee"))  # (BT, HP)
    sig = tl.sigmoid(a1)
    ga = gs * (sig * (1.0 + a1 * (1.0 - sig)))
    ga = tl.where(rmask[:, None] & hm[None, :], ga, 0.0)
    tl.store(base + o_b1 + kh, tl.sum(ga, axis=0), mask=hm)
    tl.store(base + kh[:, None] * R + kr[None, :], tl.dot(tl.trans(ga), n, input_precision="ieee"),
             mask=hm[:, None] & km[None, :])
    gn = tl.where(m2, tl.dot(ga, tl.trans(w1t), input_precision="ieee"), 0.0)  # (BT, RP)
    mean_gn = tl.sum(gn, axis=1) / R
    mean_gnn = tl.sum(gn * n, axis=1) / R
    gx += tl.where(m2, rstd[:, None] * (gn - mean_gn[:, None] - n * mean_gnn[:, None]), 0.0)
    tl.store(gh_ptr + offs, gx.to(gh_ptr.dtype.element_ty), mask=m2)
