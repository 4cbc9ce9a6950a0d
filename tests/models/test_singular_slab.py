"""The singular slab weight family: near-orthonormal factors, a Gaussian slab on each component's magnitude."""

import pytest
import torch
from builders import assert_globals_at_once_equal_per_adapter, make_batch, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.export import mean_lora_weights
from bara_pyro.models import ConfigError
from bara_pyro.models.weights_singular import NearStiefel
from bara_pyro.testing import check_fused_equals_svi


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
@pytest.mark.parametrize("weights", [{"learn_scale": True}, {"learn_scale": False}, {"slab": "moment", "ard": "off"}])
def test_fused_loss_equals_trace_mean_field_elbo(per, weights):
    assert check_fused_equals_svi(singular_config(per, **weights), make_batch())


def test_every_parameter_gets_a_gradient():
    model = get_bara_model(make_tiny_bert(), singular_config())
    with torch.no_grad():
        for _, a in model.adapter_items:
            a.lora_S_loc.normal_(0, 0.1)
    model.dataset_size = 37
    loss, _ = model.fused_loss(make_batch())
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad and name.split(".")[-1] in ("lora_S_loc", "weight", "lora_log_slab_scale",
                                                           "lora_S_scale_unconstrained", "pi_alpha_unconstrained"):
            assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("slab", ["gaussian", "moment"])
def test_every_kl_is_exact(slab):
    """lambda's KL is Normal-Normal or Normal-MomentNormal (closed form); the point factors' is ``-log p`` at their
    value (a Delta guide): exact too."""
    report = get_bara_model(make_tiny_bert(), singular_config(slab=slab)).kl_report()
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
    # an unquoted `off` on the command line or in YAML is a boolean; the choice 'off' is meant
    config = BaRAConfig(r=4, prior={"sparsity": "none"}, weights={"name": "singular_slab", "ard": False})
    assert config.weights["ard"] == "off"
    with pytest.raises(ConfigError, match="ard must be one of"):
        BaRAConfig(r=4, prior={"sparsity": "none"}, weights={"name": "singular_slab", "ard": True})


@pytest.mark.parametrize("per", ["token", "sequence"])
@pytest.mark.parametrize("weights", [{}, {"ard": "off", "learn_scale": False}, {"ard": "off", "slab": "moment"}])
def test_globals_of_all_adapters_at_once_equal_the_per_adapter_path(per, weights, monkeypatch):
    """``slab_globals_fused`` (one batched Gram matrix per factor group, one magnitude KL per output width) gives
    the per-adapter ``fused_globals``' draws bit for bit, and its loss and gradients."""
    def build():
        model = get_bara_model(make_tiny_bert(), singular_config(per, **weights))
        with torch.no_grad():
            for _, a in model.adapter_items:
                a.lora_S_loc.normal_(0, 0.1)
                a.lora_A.weight.add_(0.05 * torch.randn_like(a.lora_A.weight))  # off the Stiefel manifold
        return model

    assert_globals_at_once_equal_per_adapter(build, monkeypatch)


def test_is_stochastic_after_a_sampled_prediction():
    """The probe of the contextual gate does not depend on the mode a prediction left the model in (a second
    evaluation, e.g. of another OOD set, asks again after an S-sample pass)."""
    from bara_pyro.inference import predict
    from bara_pyro.testing import ToyTokenTask, toy_rows
    task = ToyTokenTask()
    model = get_bara_model(make_tiny_bert(num_labels=2), singular_config(), forward_fn=task.scores)
    assert model.is_stochastic
    predict(model, task, toy_rows()[:6], num_samples=3, batch_size=6, progress=False)
    assert model.ctx.mode == "sample" and model.ctx.num_samples == 3  # what the pass leaves behind
    assert model.is_stochastic
