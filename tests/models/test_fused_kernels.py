"""The fused gate math equals the gate's reference (per-op) path: values and gradients, fp32, CPU.

The reference is :meth:`GlobalLocalGate.forward` (modes ``fused``, ``mean``, ``sample``) and
:meth:`GlobalLocalGate.fused_globals`, run on the same random draws (same seed: one
``torch.rand((2, ...))`` call gives the gate's two consecutive draws on CPU).
"""

import textwrap

import pyro
import pytest
import torch
from builders import TRITON_DEVICES, run_triton_check

from bara_pyro import BaRAConfig
from bara_pyro.models import fused_kernels as fk
from bara_pyro.models.gate import GlobalLocalGate

TOL = dict(rtol=1e-6, atol=1e-6)


def make_gate(r=8, hidden=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    gate = GlobalLocalGate("layer", BaRAConfig(r=r, guide_hidden=hidden)).to(dtype)
    with torch.no_grad():
        for p in gate.local_net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        for name in ("pi_alpha", "pi_beta", "lambda_shape", "lambda_rate"):
            getattr(gate, f"{name}_unconstrained").add_(torch.randn(r, dtype=dtype) * 0.5)
    return gate


def net_weights(gate):
    net = gate.local_net
    return [net.hidden.weight, net.hidden.bias, net.out.weight, net.out.bias]


def local_inputs(r=8, n=3, t=7, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, t, r, generator=g, dtype=dtype) * 2).requires_grad_()
    pi = (torch.rand(r, generator=g, dtype=dtype) * 0.9 + 0.05).requires_grad_()
    lam = (torch.rand(r, generator=g, dtype=dtype) + 0.5).requires_grad_()
    mask = torch.rand(n, t, generator=g) > 0.3
    return h, pi, lam, mask


@pytest.mark.parametrize("masked", [True, False])
def test_local_fused_equals_gate_fused_path(masked):
    gate = make_gate()
    h, pi, lam, mask = local_inputs()
    mask = mask if masked else None
    ctx = gate._ctx
    ctx.reset("fused")
    ctx.token_mask = mask
    ctx.globals[gate.path] = {"pi": pi, "lambda": lam}
    torch.manual_seed(5)
    ref_gate = gate.forward(h)
    ref_kl = ctx.kl_local[gate.path]

    torch.manual_seed(5)
    u = fk.uniform_pair(h.shape, h)
    a = gate.magnitude_hp.local_shape
    new_gate, new_kl = fk.bara_local_fused(h, *net_weights(gate), pi, lam, a, gate.local_guide.temperature,
                                           mask=mask, u=u)
    torch.testing.assert_close(new_gate, ref_gate, **TOL)
    torch.testing.assert_close(new_kl, ref_kl, **TOL)

    inputs = [h, pi, lam, *net_weights(gate)]
    w = torch.randn_like(ref_gate)
    ref_grads = torch.autograd.grad((ref_gate * w).sum() + 0.37 * ref_kl, inputs)
    new_grads = torch.autograd.grad((new_gate * w).sum() + 0.37 * new_kl, inputs)
    for a_, b_ in zip(new_grads, ref_grads):
        torch.testing.assert_close(a_, b_, **TOL)


def test_mean_and_sample_gates_equal_gate_modes():
    gate = make_gate()
    h, _, _, _ = local_inputs()
    ctx = gate._ctx
    ctx.reset("mean")
    torch.testing.assert_close(fk.bara_mean_gate(h, *net_weights(gate)), gate.forward(h), **TOL)
    ctx.reset("sample")
    torch.manual_seed(9)
    ref = gate.forward(h)
    torch.manual_seed(9)
    new = fk.bara_sample_gate(h, *net_weights(gate), gate.local_guide.temperature)
    torch.testing.assert_close(new, ref, **TOL)


def test_gated_forms_multiply_in_the_input_dtype():
    gate = make_gate()
    h, pi, lam, mask = local_inputs()
    hb = h.detach().to(torch.bfloat16)
    u = torch.rand(2, *h.shape)
    a, temp = gate.magnitude_hp.local_shape, gate.local_guide.temperature
    y, kl = fk.bara_gated_local(hb, *net_weights(gate), pi, lam, a, temp, mask=mask, u=u, impl="torch")
    g, kl_ref = fk.bara_local_fused(hb.float(), *net_weights(gate), pi, lam, a, temp, mask=mask, u=u)
    assert y.dtype == torch.bfloat16 and kl.dtype == torch.float32
    torch.testing.assert_close(y, hb * g.to(torch.bfloat16))
    torch.testing.assert_close(kl, kl_ref)
    ym = fk.bara_gated_mean(hb, *net_weights(gate), impl="torch")
    torch.testing.assert_close(ym, hb * fk.bara_mean_gate(hb.float(), *net_weights(gate)).to(torch.bfloat16))


def test_auto_impl_is_torch_on_cpu():
    h = torch.zeros(2, 8)
    assert fk.resolve_impl("auto", h, hidden=32) == "torch"
    with pytest.raises(ValueError, match="impl must be one of"):
        fk.resolve_impl("fast", h, hidden=32)


def _stack(gates, name):
    return torch.stack([getattr(g, name) for g in gates])


def _globals_both_ways(dtype):
    gates = [make_gate(seed=s, dtype=dtype) for s in range(4)]
    params = [getattr(g, f"{n}_unconstrained") for g in gates for n in ("pi_alpha", "pi_beta", "lambda_shape",
                                                                            "lambda_rate")]
    pyro.set_rng_seed(3)
    kl_ref = torch.stack([g.fused_globals() for g in gates]).sum()
    pi_ref = torch.stack([g._ctx.globals[g.path]["pi"] for g in gates])
    lam_ref = torch.stack([g._ctx.globals[g.path]["lambda"] for g in gates])
    pyro.set_rng_seed(3)
    pi, lam, kl = fk.bara_globals_fused(
        _stack(gates, "pi_alpha"), _stack(gates, "pi_beta"), _stack(gates, "lambda_shape"),
        _stack(gates, "lambda_rate"), torch.stack([g.sparsity_hp.a for g in gates]),
        torch.stack([g.sparsity_hp.b for g in gates]), torch.stack([g.magnitude_hp.shape for g in gates]),
        torch.stack([g.magnitude_hp.shape for g in gates]))
    w1, w2 = torch.randn_like(pi), torch.randn_like(lam)
    grads_ref = torch.autograd.grad(kl_ref + (pi_ref * w1).sum() + (lam_ref * w2).sum(), params)
    grads = torch.autograd.grad(kl + (pi * w1).sum() + (lam * w2).sum(), params)
    return (pi, lam, kl, grads), (pi_ref, lam_ref, kl_ref, grads_ref)


def test_globals_at_once_equal_per_gate_draws_float64():
    (pi, lam, kl, grads), (pi_ref, lam_ref, kl_ref, grads_ref) = _globals_both_ways(torch.float64)
    torch.testing.assert_close(pi, pi_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lam, lam_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_globals_at_once_equal_per_gate_draws_float32():
    # Same draws; the CPU Dirichlet sampler normalises in double, one gamma call in float: pi may differ
    # by one ulp, which the implicit Dirichlet gradient can amplify to ~1e-5 relative.
    (pi, lam, kl, grads), (pi_ref, lam_ref, kl_ref, grads_ref) = _globals_both_ways(torch.float32)
    torch.testing.assert_close(pi, pi_ref, **TOL)
    torch.testing.assert_close(lam, lam_ref, **TOL)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-6, atol=1e-4)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


TRITON_CHECK = textwrap.dedent("""
    import torch
    from bara_pyro.models import fused_kernels as fk
    torch.manual_seed(0)
    for r, hidden, n, t, masked in [(16, 32, 3, 37, True), (8, 32, 2, 20, False), (12, 20, 2, 17, True)]:
        h = (torch.randn(n, t, r) * 2).requires_grad_()
        w = [(torch.randn(hidden, r) * 0.5).requires_grad_(), (torch.randn(hidden) * 0.1).requires_grad_(),
             (torch.randn(3 * r, hidden) * 0.3).requires_grad_(), (torch.randn(3 * r) * 0.5).requires_grad_()]
        pi = (torch.rand(r) * 0.9 + 0.05).requires_grad_()
        lam = (torch.rand(r) + 0.5).requires_grad_()
        a = torch.tensor(4.0)
        pi_strided = torch.stack([pi, 1 - pi], -1)[..., 0]  # as the Beta draw arrives: a strided view
        mask = torch.rand(n, t) > 0.3 if masked else None
        u, gy = torch.rand(2, n, t, r), torch.randn(n, t, r)
        out = {}
        for impl in ("torch", "triton"):
            y, kl = fk.bara_gated_local(h, *w, pi_strided, lam, a, 0.67, mask=mask, u=u, impl=impl)
            grads = torch.autograd.grad((y * gy).sum() + 0.37 * kl, [h, *w, pi, lam])
            with torch.no_grad():
                m = fk.bara_gated_mean(h, *w, impl=impl)
                s = fk.bara_gated_sample(h, *w, 0.67, u=u, impl=impl)
            out[impl] = [y, kl, m, s, *grads]
        for x, ref in zip(out["triton"], out["torch"]):  # norm-wise: sums reordered, cancellation in LN backward
            err = float((x - ref).detach().norm() / ref.detach().norm().clamp_min(1e-30))
            assert err < 2e-5, (r, hidden, err)
    print("ok")
""")


@pytest.mark.parametrize("cuda", TRITON_DEVICES)
def test_triton_kernels_match_torch(cuda):
    run_triton_check(TRITON_CHECK, cuda)


@pytest.mark.slow
def test_compiled_impl_matches_torch():
    gate = make_gate()
    h, pi, lam, mask = local_inputs()
    u = torch.rand(2, *h.shape)
    a, temp = gate.magnitude_hp.local_shape, gate.local_guide.temperature
    outs = {}
    for impl in ("torch", "compile"):
        y, kl = fk.bara_gated_local(h, *net_weights(gate), pi, lam, a, temp, mask=mask, u=u, impl=impl)
        outs[impl] = [y, kl, *torch.autograd.grad(y.sum() + kl, [h, pi, lam, *net_weights(gate)])]
    for x, ref in zip(outs["compile"], outs["torch"]):  # norm-wise: inductor reorders sums
        assert float((x - ref).detach().norm() / ref.detach().norm().clamp_min(1e-30)) < 2e-5
