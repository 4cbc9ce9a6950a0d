r"""Fused gate math for BaRA's fast path: pure functions, and Triton kernels on CUDA.

The per-adapter gate math of :class:`~bara_pyro.models.gate.GlobalLocalGate` is a few dozen tiny
elementwise ops on ``(tokens, r)`` tensors; run op by op it costs ~40 kernels forward and ~70
backward per adapter, which for a small backbone is several times the backbone itself.  This
module holds the same math as pure functions of tensors (no modules, no context), in three
implementations selected by ``impl``:

* ``"torch"``: plain torch ops, bit-identical in fp32 to the gate's fused path (same functions
  from :mod:`~bara_pyro.models.distributions` and :mod:`~bara_pyro.models.kl`, same draws);
* ``"compile"``: the same function through ``torch.compile`` (inductor fuses the elementwise ops);
* ``"triton"``: one hand-written kernel forward and one backward per adapter (CUDA only), which
  recompute the gate network in the backward pass instead of saving its intermediates.

``"auto"`` picks ``"triton"`` on CUDA when Triton is importable and the shapes fit, else ``"torch"``.

Local gates of one adapter (``h = A x``, shape ``(..., r)``, computed in fp32)::

    logits, scale, conc = net(h)                       # LN -> Linear -> SiLU -> Linear, see AmortizedGateNet
    z     = BinaryConcreteST(logits, temperature; u0)  # hard {0, 1}, straight-through gradient
    theta = Weibull(scale, conc; u1)                   # inverse-CDF draw
    gate  = z * theta
    kl    = sum_{tokens in mask, k} KL(Bern(sigmoid(logits)) || Bern(pi)) + KL(Weibull || Gamma(a, a / lambda))

``u = (u0, u1)`` is drawn by one ``torch.rand((2, *h.shape))`` call; on CPU this gives exactly the
two consecutive draws of the gate's fused path.  Global variables of ``L`` adapters at once::

    pi     ~ q(pi)     = Beta(pi_alpha, pi_beta)        (L, r)
    lambda ~ q(lambda) = Gamma(lam_shape, lam_rate)     (L, r)

:func:`bara_globals_fused` draws them with one gamma-sampling call laid out in the per-layer order
of the Pyro guide (pi of layer 1, lambda of layer 1, pi of layer 2, ...), so on CPU the draws
and the gradients equal those of the per-gate ``Beta(...).rsample()``, ``Gamma(...).rsample()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Beta, Gamma, kl_divergence
from torch.distributions.dirichlet import _Dirichlet_backward

from . import row_shard
from .amortized_net import MIN_CONCENTRATION
from .distributions import binary_concrete_straight_through, weibull_mean, weibull_rsample
from .kl import kl_bernoulli_logits_probs, kl_weibull_gamma

__all__ = [
    "IMPLS",
    "gate_net",
    "uniform_pair",
    "bara_local_fused",
    "bara_mean_gate",
    "bara_sample_gate",
    "bara_gated_local",
    "bara_gated_mean",
    "bara_gated_sample",
    "bara_globals_fused",
    "bara_globals_expected",
    "triton_available",
    "resolve_impl",
]

IMPLS = ("auto", "torch", "compile", "triton")
LN_EPS = 1e-5  # nn.LayerNorm's default, as in AmortizedGateNet


# ===================================================================== pure torch (the reference math)
def gate_net(h, w1, b1, w2, b2):
    """``AmortizedGateNet.forward`` as a function: ``h (..., r)`` -> ``(logits, scale, concentration)``."""
    r = h.shape[-1]
    u = F.silu(F.linear(F.layer_norm(h, (r,), eps=LN_EPS), w1, b1))
    logits, scale_raw, conc_raw = F.linear(u, w2, b2).split(r, dim=-1)
    return logits, F.softplus(scale_raw), MIN_CONCENTRATION + F.softplus(conc_raw)


def uniform_pair(shape, like: torch.Tensor) -> torch.Tensor:
    """``(2, *shape)`` uniforms from one ``torch.rand`` call, clamped to the open interval like ``_uniform_open``."""
    u = row_shard.uniform((2, *shape), like.dtype, like.device, row_dim=1)
    return _clamp_open(u)


def _clamp_open(u: torch.Tensor) -> torch.Tensor:
    fi = torch.finfo(u.dtype)
    return u.clamp(fi.tiny, 1.0 - fi.eps)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.sum()
    return torch.where(mask, values, values.new_zeros(())).sum()


def bara_local_fused(h, w1, b1, w2, b2, pi, lam, a_theta, temperature: float, mask=None, u=None):
    """Gates ``(..., r)`` drawn from q and the masked sum of their local KL (the gate's ``fused`` mode).

    :param h: ``(..., r)`` adapter projection, already in the gate's dtype (fp32).
    :param w1, b1, w2, b2: the amortized net's ``hidden`` and ``out`` Linear weights and biases.
    :param pi, lam: ``(r,)`` draws of the globals; ``a_theta``: 0-dim tensor (shape of theta's Gamma prior).
    :param mask: ``h.shape[:-1]`` bool, True for real tokens (KL only), or None.
    :param u: ``(2, ..., r)`` uniforms (clamped here); None draws them with :func:`uniform_pair`.
    :returns: ``(gate, kl_sum)``.
    """
    logits, scale, conc = gate_net(h, w1, b1, w2, b2)
    u = uniform_pair(logits.shape, logits) if u is None else _clamp_open(u)
    z = binary_concrete_straight_through(logits, temperature, u[0])
    theta = weibull_rsample(scale, conc, u[1])
    kl = (kl_bernoulli_logits_probs(logits, pi) + kl_weibull_gamma(scale, conc, a_theta, a_theta / lam)).sum(-1)
    return z * theta, _masked_sum(kl, mask)


def bara_mean_gate(h, w1, b1, w2, b2):
    """Posterior-mean gates ``E[z] E[theta] = sigmoid(logits) * scale * Gamma(1 + 1/k)`` (the ``mean`` mode)."""
    logits, scale, conc = gate_net(h, w1, b1, w2, b2)
    return torch.sigmoid(logits) * weibull_mean(scale, conc)


def bara_sample_gate(h, w1, b1, w2, b2, temperature: float, u=None):
    """Gates drawn from q without KL (the ``sample`` mode of posterior prediction)."""
    logits, scale, conc = gate_net(h, w1, b1, w2, b2)
    u = uniform_pair(logits.shape, logits) if u is None else _clamp_open(u)
    return binary_concrete_straight_through(logits, temperature, u[0]) * weibull_rsample(scale, conc, u[1])


# ----------------------------------------------------------------- gated forms: h -> h * gate, h in any dtype
def _gated_local_torch(h, w1, b1, w2, b2, pi, lam, a_theta, temperature, mask, u):
    with torch.autocast(device_type=h.device.type, enabled=False):
        gate, kl = bara_local_fused(h.to(w1.dtype), w1, b1, w2, b2, pi, lam, a_theta, temperature, mask, u)
    return h * gate.to(h.dtype), kl


def _gated_mean_torch(h, w1, b1, w2, b2):
    with torch.autocast(device_type=h.device.type, enabled=False):
        gate = bara_mean_gate(h.to(w1.dtype), w1, b1, w2, b2)
    return h * gate.to(h.dtype)


def _gated_sample_torch(h, w1, b1, w2, b2, temperature, u):
    with torch.autocast(device_type=h.device.type, enabled=False):
        gate = bara_sample_gate(h.to(w1.dtype), w1, b1, w2, b2, temperature, u)
    return h * gate.to(h.dtype)


_COMPILED: dict[str, object] = {}


def _compiled(name: str, fn):
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[name]


def triton_available() -> bool:
    return _triton_kernels() is not None


def resolve_impl(impl: str, h: torch.Tensor, hidden: int) -> str:
    """The implementation ``impl`` stands for on this input (``auto`` -> triton on CUDA when it fits)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    if impl == "auto":
        fits = h.is_cuda and h.shape[-1] <= 128 and hidden <= 256 and triton_available()
        return "triton" if fits else "torch"
    if impl == "triton" and not (h.is_cuda or _interpreting()):
        raise ValueError("impl='triton' needs a CUDA tensor (or TRITON_INTERPRET=1)")
    return impl


def bara_gated_local(h, w1, b1, w2, b2, pi, lam, a_theta, temperature: float, mask=None, u=None, impl="auto"):
    """``(h * gate, kl_sum)`` with ``gate, kl_sum = bara_local_fused(h.float(), ...)``; output in ``h``'s dtype.

    The adapter's fused-mode forward in one call: ``h`` is the (possibly bf16) projection ``A x``,
    the gates and the KL are computed in fp32.  ``u``: ``(2, *h.shape)`` uniforms (drawn if None).
    """
    impl = resolve_impl(impl, h, w1.shape[0])
    if u is None:
        u = row_shard.uniform((2, *h.shape), w1.dtype, h.device, row_dim=1)
    if impl == "triton":
        return _TritonGatedLocal.apply(h, u, mask, w1, b1, w2, b2, pi, lam, a_theta, float(temperature))
    fn = _compiled("local", _gated_local_torch) if impl == "compile" else _gated_local_torch
    return fn(h, w1, b1, w2, b2, pi, lam, a_theta, temperature, mask, u)


def bara_gated_mean(h, w1, b1, w2, b2, impl="auto"):
    """``h * mean_gate(h)`` in ``h``'s dtype (posterior-mean prediction, ``S = 0``)."""
    impl = resolve_impl(impl, h, w1.shape[0])
    if impl == "triton" and not _needs_grad(h, w1, b1, w2, b2):
        return _triton_forward(2, h, None, None, w1, b1, w2, b2, None, None, None, 1.0)[0]
    fn = _compiled("mean", _gated_mean_torch) if impl == "compile" else _gated_mean_torch
    return fn(h, w1, b1, w2, b2)


def bara_gated_sample(h, w1, b1, w2, b2, temperature: float, u=None, impl="auto"):
    """``h * gate`` with gates drawn from q, no KL (posterior-predictive samples)."""
    impl = resolve_impl(impl, h, w1.shape[0])
    if u is None:
        u = row_shard.uniform((2, *h.shape), w1.dtype, h.device, row_dim=1)
    if impl == "triton" and not _needs_grad(h, w1, b1, w2, b2):
        return _triton_forward(1, h, u, None, w1, b1, w2, b2, None, None, None, float(temperature))[0]
    fn = _compiled("sample", _gated_sample_torch) if impl == "compile" else _gated_sample_torch
    return fn(h, w1, b1, w2, b2, temperature, u)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# ===================================================================== global variables, all adapters at once
class _DirichletFromSample(torch.autograd.Function):
    """Identity on a Dirichlet draw ``x`` whose backward is torch's implicit reparameterisation gradient."""

    @staticmethod
    def forward(ctx, concentration, x):
        ctx.save_for_backward(x, concentration)
        return x.clone()

    @staticmethod
    def backward(ctx, grad_output):
        x, concentration = ctx.saved_tensors
        return _Dirichlet_backward(x, concentration, grad_output), None


class _StandardGammaFromSample(torch.autograd.Function):
    """Identity on a standard-gamma draw ``g`` with the gradient of ``torch._standard_gamma``."""

    @staticmethod
    def forward(ctx, concentration, g):
        ctx.save_for_backward(concentration, g)
        return g.clone()

    @staticmethod
    def backward(ctx, grad_output):
        concentration, g = ctx.saved_tensors
        return grad_output * torch._standard_gamma_grad(concentration, g), None


def bara_globals_fused(pi_alpha, pi_beta, lam_shape, lam_rate, prior_pi_a, prior_pi_b, prior_lam_shape,
                       prior_lam_rate, per_layer: bool = False):
    r"""Draw ``pi ~ Beta(pi_alpha, pi_beta)`` and ``lambda ~ Gamma(lam_shape, lam_rate)`` for ``L`` layers at once.

    Every argument is ``(L, r)``.  Returns ``(pi, lam, kl)`` with ``pi, lam`` ``(L, r)`` and
    ``kl = sum KL(q(pi) || p(pi)) + KL(q(lambda) || p(lambda))`` (closed form, 0-dim; ``per_layer``: ``(L,)``,
    summed over the components only).

    One ``torch._standard_gamma`` call draws every gamma variate in the order of ``L`` per-layer
    ``Beta(...).rsample(); Gamma(...).rsample()`` calls, so on CPU the values equal the per-gate
    draws; the gradients are torch's (Dirichlet implicit reparameterisation for ``pi``,
    ``_standard_gamma_grad`` for ``lambda``).
    """
    L, r = pi_alpha.shape
    ab = torch.stack([pi_alpha, pi_beta], -1)  # (L, r, 2), as Beta builds its Dirichlet
    conc = torch.cat([ab.reshape(L, 2 * r), lam_shape], -1)  # (L, 3r): per layer [a1 b1 ... ar br | s1 ... sr]
    g = torch._standard_gamma(conc.detach())
    g_ab = g[:, : 2 * r].reshape(L, r, 2)
    fi = torch.finfo(g.dtype)
    x = (g_ab / g_ab.sum(-1, keepdim=True)).clamp(fi.tiny, 1.0 - fi.eps / 2)
    pi = _DirichletFromSample.apply(ab, x).select(-1, 0).contiguous()  # one copy here, not one per layer later
    lam = _StandardGammaFromSample.apply(lam_shape, g[:, 2 * r:]) / lam_rate
    lam.detach().clamp_(min=fi.tiny)
    kl = _globals_kl(pi_alpha, pi_beta, lam_shape, lam_rate, prior_pi_a, prior_pi_b, prior_lam_shape,
                     prior_lam_rate, per_layer)
    return pi, lam, kl


def _globals_kl(pi_alpha, pi_beta, lam_shape, lam_rate, prior_pi_a, prior_pi_b, prior_lam_shape, prior_lam_rate,
                per_layer: bool = False):
    """``sum KL(Beta(pi_alpha, pi_beta) || Beta(prior)) + KL(Gamma(lam_shape, lam_rate) || Gamma(prior))``; the sum
    over the components only (``(L,)``) with ``per_layer``."""
    q_pi, p_pi = Beta(pi_alpha, pi_beta, validate_args=False), Beta(prior_pi_a, prior_pi_b, validate_args=False)
    q_lam = Gamma(lam_shape, lam_rate, validate_args=False)
    p_lam = Gamma(prior_lam_shape, prior_lam_rate, validate_args=False)
    if per_layer:
        return kl_divergence(q_pi, p_pi).sum(-1) + kl_divergence(q_lam, p_lam).sum(-1)
    return kl_divergence(q_pi, p_pi).sum() + kl_divergence(q_lam, p_lam).sum()


def bara_globals_expected(pi_alpha, pi_beta, lam_shape, lam_rate, prior_pi_a, prior_pi_b, prior_lam_shape,
                          prior_lam_rate, local_shape, per_layer: bool = False):
    r"""The local KL's expectation under ``q(pi) q(lambda)``, as effective globals plus a constant.

    Every argument is ``(L, r)`` but ``local_shape`` (``a``, ``(L, 1)`` or a scalar).  Both local KLs are
    linear in the globals' log-terms, so their expectations are closed form and equal the KL at an
    effective value plus a per-token, per-component constant that does not depend on the local guide::

        E_pi[KL(Bern(p) || Bern(pi))]                = KL(Bern(p) || Bern(pi_eff)) - log Z
            E log pi = psi(alpha) - psi(alpha + beta),  E log(1 - pi) = psi(beta) - psi(alpha + beta)
            Z = exp(E log pi) + exp(E log(1 - pi)) (< 1),  pi_eff = exp(E log pi) / Z
        E_lambda[KL(Weibull || Gamma(a, a / lambda))] = KL(Weibull || Gamma(a, a / lam_eff)) + a (psi(s) - log(s - 1))
            lam_eff = 1 / E[1 / lambda] = (s - 1) / rho      for q(lambda) = Gamma(s, rho), s > 1

    (``E[1 / lambda]`` is infinite for ``s <= 1``; ``s`` is clamped just above 1, where the constant's
    gradient pushes it up.)  Returns ``(pi_eff, lam_eff, offset, kl)``: ``pi_eff, lam_eff`` ``(L, r)``,
    ``offset`` ``(L,)`` the constant summed over components (add it once per real token), and ``kl`` the
    closed-form global KL of :func:`bara_globals_fused` (``per_layer`` as there).  Nothing is drawn.
    """
    psi_total = torch.digamma(pi_alpha + pi_beta)
    e_log_pi = torch.digamma(pi_alpha) - psi_total
    e_log_1m_pi = torch.digamma(pi_beta) - psi_total
    log_z = torch.logaddexp(e_log_pi, e_log_1m_pi)
    pi_eff = torch.sigmoid(e_log_pi - e_log_1m_pi)
    shape_m1 = (lam_shape - 1.0).clamp(min=torch.finfo(lam_shape.dtype).eps)
    lam_eff = shape_m1 / lam_rate
    offset = (-log_z + local_shape * (torch.digamma(lam_shape) - torch.log(shape_m1))).sum(-1)
    kl = _globals_kl(pi_alpha, pi_beta, lam_shape, lam_rate, prior_pi_a, prior_pi_b, prior_lam_shape,
                     prior_lam_rate, per_layer)
    return pi_eff, lam_eff, offset, kl


# ===================================================================== Triton kernels (CUDA)
def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_KERNEL_MODULES: dict[str, object] = {}


def triton_module(name: str):
    """The Triton kernel module ``bara_pyro.models.<name>``, imported once; None when Triton is missing."""
    if name not in _KERNEL_MODULES:
        try:
            import triton  # noqa: F401
        except ImportError:
            _KERNEL_MODULES[name] = None
        else:
            import importlib

            _KERNEL_MODULES[name] = importlib.import_module(f"{__package__}.{name}")
    return _KERNEL_MODULES[name]


def _triton_kernels():
    return triton_module("_fused_triton")


def _next_pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (int(n) - 1).bit_length())


# Launch configuration of the Triton kernels (module-level so a benchmark can tune it): tokens per program
# (>= 16, a power of 2: the gate network's matrix products need 16 rows) and warps per program.  16 x 4 was the
# fastest of 32x4, 16x4, 16x2, 32x8 on an H100 (fwd+bwd 24.3 us vs 31.7 us for 32x4; docs/dev/speed_notes.md).
BLOCK_TOKENS = 16
NUM_WARPS = 4


def _launch_args(h, w1):
    r = h.shape[-1]
    hidden = w1.shape[0]
    n = h.numel() // r
    return r, hidden, n, _next_pow2(r), _next_pow2(hidden), math.ceil(n / BLOCK_TOKENS)


def _triton_forward(mode: int, h, u, mask, w1, b1, w2, b2, pi, lam, a_theta, temperature):
    """mode 0: sample + KL (returns y, kl_partials); 1: sample; 2: mean."""
    k = _triton_kernels()
    r, hidden, n, rp, hp, nblk = _launch_args(h, w1)
    h, w1, b1, w2, b2 = (t.contiguous() for t in (h, w1, b1, w2, b2))
    u = u.contiguous() if u is not None else None
    y = torch.empty_like(h)
    klp = torch.empty(nblk if mode == 0 else 1, dtype=torch.float32, device=h.device)
    dummy = w1
    k.bara_gate_fwd[(nblk,)](
        h, u if u is not None else dummy, mask if mask is not None else dummy,
        w1, b1, w2, b2,
        pi if pi is not None else dummy, lam if lam is not None else dummy, a_theta if a_theta is not None else dummy,
        y, klp, n, float(temperature),
        R=r, H=hidden, RP=rp, HP=hp, BT=BLOCK_TOKENS, MODE=mode, HAS_MASK=mask is not None,
        MIN_CONC=MIN_CONCENTRATION, num_warps=NUM_WARPS,
    )
    return y, klp


class _TritonGatedLocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, u, mask, w1, b1, w2, b2, pi, lam, a_theta, temperature):
        # the kernels index every tensor as dense row-major (pi is often a strided view of a Dirichlet draw)
        mask = mask.reshape(-1).contiguous() if mask is not None else None
        h, u, w1, b1, w2, b2, pi, lam = (t.contiguous() for t in (h, u, w1, b1, w2, b2, pi, lam))
        y, klp = _triton_forward(0, h, u, mask, w1, b1, w2, b2, pi, lam, a_theta, temperature)
        ctx.save_for_backward(h, u, mask, w1, b1, w2, b2, pi, lam, a_theta)
        ctx.temperature = temperature
        return y, klp.sum()

    @staticmethod
    def backward(ctx, gy, gkl):
        h, u, mask, w1, b1, w2, b2, pi, lam, a_theta = ctx.saved_tensors
        k = _triton_kernels()
        r, hidden, n, rp, hp, nblk = _launch_args(h, w1)
        gy = torch.zeros_like(h) if gy is None else gy.contiguous()
        gkl = torch.zeros((), dtype=torch.float32, device=h.device) if gkl is None else gkl.float().contiguous()
        gh = torch.empty_like(h)
        sizes = [hidden * r, hidden, 3 * r * hidden, 3 * r, r, r]
        width = sum(sizes)
        part = torch.empty((nblk, width), dtype=torch.float32, device=h.device)
        k.bara_gate_bwd[(nblk,)](
            h, u, mask if mask is not None else w1, w1, b1, w2, b2, pi, lam, a_theta,
            gy, gkl, gh, part, n, float(ctx.temperature), width,
            R=r, H=hidden, RP=rp, HP=hp, BT=BLOCK_TOKENS, HAS_MASK=mask is not None,
            MIN_CONC=MIN_CONCENTRATION, num_warps=NUM_WARPS,
        )
        total = part.sum(0)
        gw1, gb1, gw2, gb2, gpi, glam = total.split(sizes)
        return (gh, None, None, gw1.view(hidden, r).to(w1.dtype), gb1.to(b1.dtype),
                gw2.view(3 * r, hidden).to(w2.dtype), gb2.to(b2.dtype), gpi.to(pi.dtype), glam.to(lam.dtype),
                None, None)
