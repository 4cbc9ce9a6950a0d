"""The spike-and-slab BaRA components: contextual beta-process prior, the local guide tied to the prior (per
token or per sequence), and Gaussian slab factors whose per-component scale is the inclusion probability (ARD)."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from builders import assert_globals_at_once_equal_per_adapter, make_batch, make_tiny_bert
from pyro.infer import TraceMeanField_ELBO

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.models import ConfigError
from bara_pyro.tasks.base import Batch


def slab_config(magnitude="none", context="shift", per="token", **weights):
    sparsity = {"name": "contextual_beta_process", "context": context}
    return BaRAConfig(r=4, gamma0=1.0, prior={"sparsity": sparsity, "magnitude": magnitude},
                      guide={"local": {"name": "conditional_prior", "per": per},
                             "global": {"name": "mean_field", "init_strength": 10.0}},
                      weights={"name": "slab_gaussian", **weights})


@pytest.mark.parametrize("per", ["token", "sequence"])
@pytest.mark.parametrize("magnitude,context,posterior_scale,factors", [("none", "shift", "absolute", "both"),
                                                                       ("gamma", "shift", "absolute", "both"),
                                                                       ("none", "thin", "relative", "both"),
                                                                       ("none", "shift", "relative", "B")])
def test_fused_loss_equals_trace_mean_field_elbo(magnitude, context, posterior_scale, factors, per):
    torch.set_default_dtype(torch.float64)
    try:
        model = get_bara_model(make_tiny_bert(), slab_config(magnitude, context, per, posterior_scale=posterior_scale,
                                                             factors=factors))
        with torch.no_grad():
            for _, a in model.adapter_items:
                a.lora_B.weight.normal_(0, 0.1)
        model.dataset_size, model.kl_beta = 37, 0.5
        batch = make_batch()
        params = model.trainable_parameters()
        pyro.set_rng_seed(5)
        ref = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch)
        ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
        pyro.set_rng_seed(5)
        fused, parts = model.fused_loss(batch)
        fused_grads = torch.autograd.grad(fused, params, allow_unused=True)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-9)
    assert "kl_local" not in parts or float(parts["kl_local"]) == 0.0  # the tied local guide charges nothing
    for a, b in zip(ref_grads, fused_grads):
        if a is None:
            assert b is None or torch.count_nonzero(b) == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # the context matrix w and the inclusion probabilities get gradients through the gates
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = dict(zip(names, fused_grads[:len(names)]))
    for site in ("w_loc", "pi_alpha"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
                   if n.endswith(f"gate.{site}_unconstrained")), site


def test_every_kl_is_closed_form():
    model = get_bara_model(make_tiny_bert(), slab_config("gamma"))
    report = model.kl_report()
    assert all(report.values()), report
    assert {s.rsplit(".", 1)[1] for s in report} == {"pi", "w", "lambda", "z", "theta", "lora_A", "lora_B"}


def test_prediction_modes_and_round_trip(tmp_path):
    model = get_bara_model(make_tiny_bert(), slab_config())
    batch = make_batch()
    with torch.no_grad():
        for _, a in model.adapter_items:
            a.lora_B.weight.normal_(0, 0.1)
        mean = model.scores(batch, "mean")
        model.ctx.collect_stats = True
        model.scores(batch, "mean")
        rank = model.effective_rank()["joint"]
        model.ctx.collect_stats = False
        s = 3
        rows = make_batch(num_examples=4 * s)
        sampled = model.scores(rows, "sample", num_samples=s)
    assert mean.shape == (4, 3) and sampled.shape == (4 * s, 3)
    assert 0.0 < rank < 4.0
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(make_tiny_bert(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again.scores(batch, "mean"), mean)


def test_ard_by_inclusion_needs_a_sparsity_prior():
    with pytest.raises(ConfigError, match="ard: inclusion scales"):
        BaRAConfig(r=4, prior={"sparsity": "none"}, weights={"name": "slab_gaussian"})
    BaRAConfig(r=4, prior={"sparsity": "none"}, weights={"name": "slab_gaussian", "ard": "learned"})
    BaRAConfig(r=4, prior={"sparsity": "ibp"}, weights={"name": "slab_gaussian"})


def test_relative_posterior_scale_is_a_fraction_of_the_prior_scale():
    model = get_bara_model(make_tiny_bert(), slab_config(posterior_scale="relative", init_scale=0.1))
    (_, adapter), *_ = model.adapter_items
    family = model.config.components.weights
    for name in ("lora_A", "lora_B"):
        q, p = family.posterior(adapter, name), family.prior(adapter, name)
        torch.testing.assert_close(q.scale, 0.1 * p.scale)
    # the entropy part of the KL, log(prior scale / posterior scale), is the same for every component
    q, p = family.posterior(adapter, "lora_A"), family.prior(adapter, "lora_A")
    torch.testing.assert_close(torch.log(p.scale / q.scale), torch.full_like(q.scale, -torch.log(torch.tensor(0.1))))


def test_thinned_context_never_raises_inclusion_above_the_layer_probability():
    from bara_pyro.models.priors.contextual import ContextualBetaProcessPrior

    torch.manual_seed(0)
    prior = ContextualBetaProcessPrior(context="thin", base_retention=0.9)
    pi = torch.tensor([0.9, 0.5, 0.05, 0.7])
    h = torch.randn(6, 5, 4)
    w = 3 * torch.randn(4, 4)
    probs = torch.sigmoid(prior.inclusion_logits({"pi": pi, "w": w}, h))
    assert probs.shape == h.shape and bool((probs <= pi + 1e-6).all())
    at_zero = torch.sigmoid(prior.inclusion_logits({"pi": pi, "w": torch.zeros(4, 4)}, h))
    torch.testing.assert_close(at_zero, (0.9 * pi).expand(h.shape))
    shifted = ContextualBetaProcessPrior(context="shift")  # the shift can exceed pi
    assert bool((torch.sigmoid(shifted.inclusion_logits({"pi": pi, "w": w}, h)) > pi).any())


def test_contextual_ibp_is_the_contextual_beta_process_at_the_stick_breaking_probabilities():
    """``contextual_ibp``'s per-token law is the contextual beta process's at ``pi_k = prod_{j<=k} v_j`` (per token
    and pooled per sequence); its prior means decrease as ``(alpha / (1 + alpha))^k``."""
    from bara_pyro.models.priors import ContextualBetaProcessPrior, ContextualStickBreakingPrior

    torch.manual_seed(0)
    v, w, h = torch.rand(4), torch.randn(4, 4), torch.randn(3, 5, 4)
    ibp, beta = ContextualStickBreakingPrior(alpha=3.0), ContextualBetaProcessPrior()
    pi = torch.cumprod(v, 0)
    torch.testing.assert_close(ibp.local_prior(None, {"v": v, "w": w}, h).logits,
                               beta.local_prior(None, {"pi": pi, "w": w}, h).logits)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    torch.testing.assert_close(ibp.sequence_local_prior(None, {"v": v, "w": w}, h, mask).logits,
                               beta.sequence_local_prior(None, {"pi": pi, "w": w}, h, mask).logits)
    config = BaRAConfig(r=4, gamma0=3.0, prior={"sparsity": "contextual_ibp"})
    hp = config.components.sparsity.hyperparameters(4)
    draws = torch.distributions.Beta(hp["alpha"], hp["one"]).sample((20000,)).cumprod(-1).mean(0)
    torch.testing.assert_close(draws, torch.tensor([0.75 ** k for k in range(1, 5)]), atol=0.01, rtol=0)
    with pytest.raises(ConfigError, match="context_scale"):
        BaRAConfig(r=4, prior={"sparsity": {"name": "contextual_ibp", "context_scale": 0.0}})


def test_b_alone_random_keeps_a_a_trained_point_estimate_without_a_kl():
    model = get_bara_model(make_tiny_bert(), slab_config(posterior_scale="relative", factors="B"))
    adapter = model.adapter_items[0][1]
    assert adapter.weights.latent == ("lora_B",)
    assert not hasattr(adapter, "lora_A_scale") and hasattr(adapter, "lora_B_scale")
    assert adapter.lora_A.weight.requires_grad
    report = adapter.kl_report()
    assert report["lora_B"] and "lora_A" not in report


@pytest.mark.parametrize("magnitude,weights", [("none", {"posterior_scale": "relative"}),
                                               ("gamma", {"ard": "learned", "sampler": "flipout"}),
                                               ("none", {"ard": "off", "factors": "B"})])
def test_globals_of_all_adapters_at_once_equal_the_per_adapter_path(magnitude, weights, monkeypatch):
    assert_globals_at_once_equal_per_adapter(
        lambda: get_bara_model(make_tiny_bert(), slab_config(magnitude, **weights)), monkeypatch)


def _sequence_gate(**weights):
    model = get_bara_model(make_tiny_bert(), slab_config(per="sequence", posterior_scale="relative", **weights))
    gate = model.adapter_items[0][1].gate
    with torch.no_grad():
        gate.w_loc_unconstrained.normal_(0, 2.0)  # a context that moves the gates
    return model, gate


def test_sequence_gates_are_one_draw_per_sequence_in_the_sequences_plate():
    model, gate = _sequence_gate()
    batch = make_batch()
    trace = pyro.poutine.trace(model.guide).get_trace(batch)
    site = trace.nodes[f"{gate.path}.z"]
    assert site["value"].shape == (4, 1, 4)
    assert [f.name for f in site["cond_indep_stack"]] == ["sequences"]
    torch.manual_seed(0)
    h = torch.randn(6, 9, 4)
    model.ctx.reset("sample")
    model.ctx.token_mask = torch.arange(9) < torch.tensor([9, 5, 1, 9, 3, 7])[:, None]
    with torch.no_grad():
        z = gate(h)
    assert z.shape == (6, 1, 4) and set(z.unique().tolist()) <= {0.0, 1.0}
    gated = gate.gated(h) / h  # every token of a sequence gets the same gates
    torch.testing.assert_close(gated, gated[:, :1].expand_as(gated))


def test_padding_leaves_the_pooled_context_and_the_sequence_gates_unchanged():
    from bara_pyro.models.priors.contextual import context_features, sequence_context_features

    torch.manual_seed(0)
    lengths = torch.tensor([5, 2, 7])
    h = torch.randn(3, 7, 4)
    mask = torch.arange(7) < lengths[:, None]
    longer = torch.cat([h, 100 * torch.randn(3, 4, 4)], 1)  # extra padding positions with large junk
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    phibar = sequence_context_features(h, mask)
    torch.testing.assert_close(sequence_context_features(longer, longer_mask), phibar)
    torch.testing.assert_close(phibar[1, 0], context_features(h[1, :2]).mean(0))
    model, gate = _sequence_gate()
    model.ctx.reset("mean")
    with torch.no_grad():
        model.ctx.token_mask = mask
        probs = gate(h)
        model.ctx.token_mask = longer_mask
        torch.testing.assert_close(gate(longer), probs)
    # end to end: a batch padded to more positions scores the same
    batch = make_batch()
    padded = Batch(inputs={k: F.pad(v, (0, 5)) for k, v in batch.inputs.items()}, labels=batch.labels,
                   token_mask=F.pad(batch.token_mask, (0, 5)))
    with torch.no_grad():
        torch.testing.assert_close(model.scores(padded, "mean"), model.scores(batch, "mean"), rtol=1e-5, atol=1e-5)


def test_sequence_gate_noise_of_a_data_parallel_shard_is_its_rows_of_the_one_process_draw():
    from bara_pyro.models.row_shard import RowShard

    model, gate = _sequence_gate()
    torch.manual_seed(0)
    h = torch.randn(6, 5, 4)
    model.ctx.reset("sample")
    with torch.no_grad():
        torch.manual_seed(1)
        whole = gate.gated(h)
        # this process holds rows 2 and 3, padded to its own length 7
        model.ctx.row_shard = RowShard(start=2, total_rows=6, total_length=8)
        model.ctx.token_mask = torch.arange(7).expand(2, 7) < 5
        torch.manual_seed(1)
        part = gate.gated(F.pad(h[2:4], (0, 0, 0, 2)))
    torch.testing.assert_close(part[:, :5], whole[2:4])


def test_per_option_is_checked_at_config_load():
    from bara_pyro.experiment_config import load_config
    from bara_pyro.models import PRIORS, SparsityPrior

    config = load_config(method="bara_slab", overrides=["adapter.guide.local.per=sequence"])
    assert BaRAConfig.from_dict(config["adapter"]).components.local.per_sequence
    assert not slab_config().components.local.per_sequence  # per: token is the default
    with pytest.raises(ConfigError, match=r"per must be one of \['token', 'sequence'\], got 'word'"):
        load_config(method="bara_slab", overrides=["adapter.guide.local.per=word"])
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['per'\] of local guide 'amortized'"):
        BaRAConfig(guide={"local": {"name": "amortized", "per": "sequence"}})

    @PRIORS.register("sparsity", "token_context_only")
    class TokenContextOnly(SparsityPrior):  # a contextual prior with no per-sequence local prior
        contextual = True

    try:
        with pytest.raises(ConfigError, match="needs a per-sequence local prior; prior.sparsity 'token_context_only'"):
            BaRAConfig(prior={"sparsity": "token_context_only"},
                       guide={"local": {"name": "conditional_prior", "per": "sequence"}})
    finally:
        PRIORS.unregister("sparsity", "token_context_only")
