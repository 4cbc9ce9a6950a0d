"""The contextual gate's fused training pass (``bara_singular``) equals the gate's module path, and its Triton
kernels equal the torch function (values and gradients)."""

import textwrap

import pytest
import torch
from builders import TRITON_DEVICES, make_batch, make_tiny_bert, run_triton_check

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.models import fused_contextual as fc


def singular_model(r=4):
    config = BaRAConfig(r=r, gamma0=2.0, prior={"sparsity": "contextual_beta_process", "magnitude": "none"},
                        guide={"local": {"name": "conditional_prior"},
                               "global": {"name": "mean_field", "init_strength": 10.0}},
                        weights={"name": "singular_slab", "ard": "off", "slab": "moment"})
    model = get_bara_model(make_tiny_bert(), config)
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            adapter.lora_S_loc.normal_(0, 0.2)  # so the likelihood depends on the gates
            adapter.gate.w_loc.normal_(0, 1.0)  # and the gates on the context
    model.dataset_size = 37
    return model


def loss_and_grads(model, fast: bool):
    for _, adapter in model.adapter_items:
        adapter.gate.fast_contextual = fast
    torch.manual_seed(5)
    loss, _ = model.fused_loss(make_batch())
    params = model.trainable_parameters()
    return loss, torch.autograd.grad(loss, params, allow_unused=True)


def test_the_preset_takes_the_fused_contextual_path():
    model = singular_model()
    assert all(adapter.gate.fast_contextual for _, adapter in model.adapter_items)


def test_fused_path_equals_the_module_path_bit_for_bit():
    model = singular_model()
    fast_loss, fast_grads = loss_and_grads(model, True)
    ref_loss, ref_grads = loss_and_grads(model, False)
    assert torch.equal(fast_loss, ref_loss)
    assert sum(g is not None for g in ref_grads) > 0
    for a, b in zip(fast_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def test_gates_switch_components_off_and_keep_the_input_dtype():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 4).to(torch.bfloat16)
    pi, w = torch.tensor([0.999, 0.5, 0.5, 1e-4]), torch.zeros(4, 4)
    y = fc.contextual_gated_local(h, pi, w, 0.5, impl="torch")
    assert y.dtype == torch.bfloat16
    ratio = (y.float() / h.float())
    assert torch.all((ratio == 0) | (ratio == 1))
    assert bool((ratio[..., 0] == 1).all()) and bool((ratio[..., 3] == 0).all())  # pi near 1 / near 0


TRITON_CHECK = textwrap.dedent("""
    import torch
    from bara_pyro.models import fused_contextual as fc
    torch.manual_seed(0)
    for r, n, t, dtype, scaled in [(8, 3, 37, torch.float32, False), (4, 2, 20, torch.float32, True),
                                   (6, 2, 17, torch.float32, True), (8, 4, 33, torch.bfloat16, True)]:
        h = (torch.randn(n, t, r) * 2).to(dtype).requires_grad_()
        pi = (torch.rand(r) * 0.9 + 0.05)
        pi[0] = 1.0  # clamped: no gradient
        pi = pi.requires_grad_()
        w = torch.randn(r, r).requires_grad_()
        s = torch.randn(1, r).requires_grad_()
        pi_strided = torch.stack([pi, 1 - pi], -1)[..., 0]  # as the Beta draw arrives: a strided view
        u, gy = torch.rand(n, t, r), torch.randn(n, t, r).to(dtype)
        out = {}
        for impl in ("torch", "triton"):
            y = fc.contextual_gated_local(h, pi_strided, w, 0.67, scale=s.reshape(-1) if scaled else None, u=u,
                                          impl=impl)
            grads = torch.autograd.grad((y.float() * gy.float()).sum(), [h, pi, w, s], allow_unused=True)
            out[impl] = [y, *grads]
        if dtype == torch.float32:  # bf16: the interpreter rounds to bf16 toward zero, a GPU to nearest
            assert torch.equal(out["triton"][0], out["torch"][0]), r
        assert (out["triton"][4] is None) == (not scaled) == (out["torch"][4] is None)
        tol = 2e-5 if dtype == torch.float32 else 1e-2
        for x, ref in zip(out["triton"], out["torch"]):
            if ref is None:
                continue
            err = float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))
            assert err < tol, (r, dtype, err)
        assert float(out["triton"][2][0]) == 0.0
    print("ok")
""")



@pytest.mark.parametrize("cuda", TRITON_DEVICES)
def test_triton_kernels_match_torch(cuda):
    run_triton_check(TRITON_CHECK, cuda)
