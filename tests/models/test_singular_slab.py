"""The singular slab weight family: near-orthonormal factors, a Gaussian slab on each component's magnitude."""

import pyro
import pytest
import torch
from builders import make_batch, make_tiny_bert
from pyro.infer import TraceMeanField_ELBO

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.export import mean_lora_weights
from bara_pyro.models import ConfigError
from bara_pyro.models.weights_singular import NearStiefel


def singular_config(per="token", **weights):
    return BaRAConfig(r=4, gamma0=1.0, prior={"sparsity": "contextual_beta_process", "magnitude": "none"},
                      guide={"local": {"name": "conditional_prior", "per": per},
                             "global": {"name": "mean_field", "init_strength": 10.0}},
                      weights={"name": "singular_slab", **weights})


def test_near_stiefel_log_prob_sums_to_the_orthogonality_penalty():
    w = torch.randn(3, 7)
    gram = w @ w.T  # the Gram matrix of the 3 vectors meant to be orthonormal
    for rows in (True, False):
        like = w if rows else w.T  # rows of (3, 7), or columns of (7, 3)
        lp = NearStiefel(like, 2.5, rows=rows).log_prob(like)
        assert lp.shape == like.shape
        expected = -0.5 * 2.5 * (gram - torch.eye(gram.shape[0])).pow(2).sum()
        torch.testing.assert_close(lp.sum(), expected)
    q, _ = torch.linalg.qr(torch.randn(7, 3))
    assert float(NearStiefel(q.T, 2.5, rows=True).log_prob(q.T).abs().max()) < 1e-5  # orthonormal rows: no penalty


@pytest.mark.parametrize("per", ["token", "sequence"])
@pytest.mark.parametrize("learn_scale", [True, False])
def test_fused_loss_equals_trace_mean_field_elbo(per, learn_scale):
    torch.set_default_dtype(torch.float64)
    try:
        model = get_bara_model(make_tiny_bert(), singular_config(per, learn_scale=learn_scale))
        with torch.no_grad():
            for _, a in model.adapter_items:
                a.lora_S_loc.normal_(0, 0.1)
        model.dataset_size, model.kl_beta = 37, 0.5
        batch = make_batch()
        params = model.trainable_parameters()
        pyro.set_rng_seed(5)
        ref = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch)
        ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
        pyro.set_rng_seed(5)
        fused, _ = model.fused_loss(batch)
        fused_grads = torch.autograd.grad(fused, params, allow_unused=True)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-9)
    for a, b in zip(ref_grads, fused_grads):
        if a is None:
            assert b is None or torch.count_nonzero(b) == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = dict(zip(names, fused_grads[:len(names)]))
    for suffix in ("lora_S_loc", "lora_A.weight", "lora_B.weight", "gate.pi_alpha_unconstrained"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.endswith(suffix)), suffix
    assert any(n.endswith("lora_log_slab_scale") for n in names) == learn_scale


def test_every_kl_is_exact():
    """lambda's KL is Normal-Normal; the point factors' is ``-log p`` at their value (a Delta guide): exact too."""
    report = get_bara_model(make_tiny_bert(), singular_config()).kl_report()
    assert all(report.values()), report
    assert {s.rsplit(".", 1)[1] for s in report} == {"pi", "w", "z", "lora_S", "lora_A", "lora_B"}


def test_fresh_adapter_is_the_backbone_and_factors_start_orthonormal():
    backbone = make_tiny_bert()
    batch = make_batch()
    model = get_bara_model(backbone, singular_config())
    (_, adapter), *_ = model.adapter_items
    a, b = adapter.lora_A.weight, adapter.lora_B.weight
    torch.testing.assert_close(a @ a.T, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.T @ b, torch.eye(4), atol=1e-5, rtol=0)
    with torch.no_grad():
        ones = model.scores(batch, "ones")
        mean = model.scores(batch, "mean")
    torch.testing.assert_close(mean, ones)  # m = 0: no update whatever the gates


def test_gate_sees_a_x_and_the_update_folds_the_magnitudes(tmp_path):
    model = get_bara_model(make_tiny_bert(), singular_config())
    seen = {}
    for path, adapter in model.adapter_items:
        with torch.no_grad():
            adapter.lora_S_loc.normal_(0, 0.5)
        original = adapter.gate.gated
        adapter.gate.gated = lambda h, path=path, original=original: seen.setdefault(path, h) * 0 + original(h)
    x = torch.randn(2, 5, 32)
    path, adapter = model.adapter_items[0]
    model.ctx.mode = "mean"
    with torch.no_grad():
        out = adapter(x)
    torch.testing.assert_close(seen[path], adapter.lora_A(x))  # A x, not lambda * A x
    a, b = mean_lora_weights(adapter)
    m = adapter.lora_S_loc * adapter.out_features ** 0.5
    torch.testing.assert_close(b, adapter.lora_B.weight * m)
    gates = adapter.gate(adapter.lora_A(x))
    torch.testing.assert_close(out, adapter.scaling * ((adapter.lora_A(x) * gates) * m) @ adapter.lora_B.weight.T)
    model.ctx.mode = "fused"


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="slab_scale must be > 0"):
        singular_config(slab_scale=0.0)
    with pytest.raises(ConfigError, match="ard: inclusion scales each magnitude"):
        BaRAConfig(r=4, prior={"sparsity": "none"}, weights={"name": "singular_slab"})
    BaRAConfig(r=4, prior={"sparsity": "none"}, weights={"name": "singular_slab", "ard": "off"})
