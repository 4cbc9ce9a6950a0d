"""Weight families (MAP, BLoB, MC dropout), per-draw sampling in prediction, per-layer gates, coexisting models."""

import copy

import pyro
import pytest
import torch
from builders import make_batch, make_tiny_bert
from torch.distributions import Normal

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.models.weights import flipout_linear
from bara_pyro.testing import ToyTokenTask, toy_rows


def _adapter(model):
    return model.adapter_items[0][1]


def test_map_kl_is_the_negative_gaussian_log_prior(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, prior="fixed", weights={"name": "map_gaussian",
                                                                                "prior_scale": 0.5}))
    with torch.no_grad():
        for _, a in model.adapter_items:
            a.lora_B.weight.normal_()
    _, parts = model.fused_loss(make_batch())
    expected = -sum(Normal(0.0, 0.5).log_prob(w).sum() for _, a in model.adapter_items
                    for w in (a.lora_A.weight, a.lora_B.weight))
    torch.testing.assert_close(parts["kl_global"], expected.detach())
    assert float(parts["kl_local"]) == 0.0


def test_flipout_is_exact_per_sequence_and_shared_by_its_tokens():
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 5, dtype=torch.float64), 0.5 * torch.rand(3, 5, dtype=torch.float64)
    x = torch.randn(5, dtype=torch.float64).expand(8, 2, 5)  # one input: 8 sequences of 2 tokens per call
    y = torch.stack([flipout_linear(x, loc, scale) for _ in range(5000)]).flatten(0, 1)  # 5000 draws of epsilon
    torch.testing.assert_close(y[:, 0], y[:, 1])  # the tokens of a sequence see the same weights
    mean, var = y[:, 0].mean(0), y[:, 0].var(0)
    torch.testing.assert_close(mean, x[0, 0] @ loc.T, atol=0.05, rtol=0)
    torch.testing.assert_close(var, x[0, 0] ** 2 @ (scale ** 2).T, rtol=0.05, atol=0)


def test_blob_draws_one_weight_per_posterior_sample_and_uses_the_mean_for_s0(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, prior="fixed", weights="blob_gaussian"))
    adapter = _adapter(model)
    with torch.no_grad():
        adapter.lora_A_scale_unconstrained.fill_(0.0)  # sigma = 1: draws clearly differ
    x = torch.randn(5, 32).repeat(3, 1).unsqueeze(1)  # S = 3 sample-major copies of 5 rows, 1 token
    model.ctx.reset("sample")
    model.ctx.num_samples = 3
    h = adapter._factor("lora_A", x).squeeze(1).view(3, 5, 4)
    draws = [torch.linalg.lstsq(x[:5, 0], h[s]).solution.T for s in range(3)]  # recover each copy's A
    for s in range(3):
        torch.testing.assert_close(h[s], x[:5, 0] @ draws[s].T, atol=1e-4, rtol=1e-4)  # one A per copy
    assert (draws[0] - draws[1]).abs().max() > 0.5
    model.ctx.reset("mean")
    torch.testing.assert_close(adapter._factor("lora_A", x), adapter.lora_A(x))


def test_mc_dropout_is_on_when_sampling_and_off_for_the_mean(tiny_bert):
    mc = get_bara_model(copy.deepcopy(tiny_bert), BaRAConfig(r=4, prior="fixed", lora_dropout=0.5,
                                                             weights="mc_dropout"))
    plain = get_bara_model(tiny_bert, BaRAConfig(r=4, prior="fixed", lora_dropout=0.5, name="plain"))
    for model in (mc, plain):
        model.eval()
        with torch.no_grad():
            for _, a in model.adapter_items:
                a.lora_B.weight.normal_()
    batch = make_batch(num_examples=2)
    twice = type(batch)({k: v.repeat(2, 1) for k, v in batch.inputs.items()}, batch.labels.repeat(2),
                        batch.token_mask.repeat(2, 1))
    with torch.no_grad():
        sampled = mc.scores(twice, mode="sample", num_samples=2)
        assert (sampled[:2] - sampled[2:]).abs().max() > 1e-4  # two dropout masks
        torch.testing.assert_close(mc.scores(batch, mode="mean"), mc.scores(batch, mode="mean"))
        plain_sampled = plain.scores(twice, mode="sample", num_samples=2)
    torch.testing.assert_close(plain_sampled[:2], plain_sampled[2:])  # plain LoRA dropout is a training-only thing


def test_global_only_gates_are_per_layer_sites_and_per_draw_when_sampling(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, guide={"local": "mean_field"}))
    model.dataset_size = 40
    batch = make_batch()
    trace = pyro.poutine.trace(model.guide).get_trace(batch)
    path = model.adapter_items[0][0]
    z = trace.nodes[f"{path}.z"]
    assert z["value"].shape == (4,) and not z["cond_indep_stack"] and z["scale"] == 1.0
    assert "sequences" not in trace.nodes and "tokens" not in trace.nodes
    gate = model.gates[0][1]
    model.ctx.reset("sample")
    model.ctx.num_samples = 2
    g = gate.forward(torch.randn(6, 3, 4))
    assert g.shape == (6, 1, 4)
    torch.testing.assert_close(g[0], g[2])  # rows 0-2 are draw 0
    torch.testing.assert_close(g[3], g[5])  # rows 3-5 are draw 1


def test_two_models_coexist_under_distinct_names():
    task = ToyTokenTask()
    rows = toy_rows()
    models = [get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, name=f"member{i}"), forward_fn=task.scores)
              for i in range(2)]
    for model in models:
        model.dataset_size = len(rows)
        pyro.poutine.trace(model.guide).get_trace(task.collate(rows[:4]))
    names = list(pyro.get_param_store().keys())
    for i, model in enumerate(models):
        own = [n for n in names if n.startswith(f"member{i}.")]
        assert own and all(pyro.param(n).unconstrained() is not None for n in own)
    before = [p.detach().clone() for p in models[0].trainable_parameters()]
    config = TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_ratio=0.0, checkpoint_every=0)
    fit(models[1], task, rows, config, progress=False)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, models[0].trainable_parameters()))


def test_a_new_model_does_not_inherit_param_store_values_of_an_old_one_with_its_name():
    batch = make_batch()
    old = get_bara_model(make_tiny_bert(), BaRAConfig(r=4))
    pyro.poutine.trace(old.guide).get_trace(batch)
    new = get_bara_model(make_tiny_bert(), BaRAConfig(r=4))
    with torch.no_grad():
        new.gates[0][1].pi_alpha_unconstrained.add_(1.0)
    trace = pyro.poutine.trace(new.guide).get_trace(batch)
    path = new.adapter_items[0][0]
    alpha = trace.nodes[f"{path}.pi"]["fn"].base_dist.concentration1
    torch.testing.assert_close(alpha, new.gates[0][1].pi_alpha)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(alpha, old.gates[0][1].pi_alpha)


@pytest.mark.parametrize("kwargs,stochastic", [
    ({"prior": "fixed"}, False),
    ({"prior": "fixed", "weights": "map_gaussian"}, False),
    ({"prior": "fixed", "weights": "blob_gaussian"}, True),
    ({"prior": "fixed", "weights": "mc_dropout", "lora_dropout": 0.1}, True),
    ({"prior": "fixed", "lora_dropout": 0.1}, False),
    ({}, True),
    ({"guide": {"local": "delta", "global": "delta"}}, False),
    ({"guide": {"local": "mean_field"}}, True),
])
def test_is_stochastic(kwargs, stochastic, tiny_bert):
    assert get_bara_model(tiny_bert, BaRAConfig(r=4, **kwargs)).is_stochastic == stochastic


def test_draw_globals_sets_the_context_and_returns_the_importance_log_ratio(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4))
    model._prepare(make_batch(), "fused")
    gate = model.gates[0][1]
    pyro.set_rng_seed(1)
    log_ratio = gate.draw_globals()
    values = model.ctx.globals[gate.path]
    expected = sum((gate.prior_global(n, {}).log_prob(values[n]) - gate.guide_global(n).log_prob(values[n])).sum()
                   for n in ("pi", "lambda"))
    torch.testing.assert_close(log_ratio, expected)
    for _, other in model.gates[1:]:
        other.draw_globals()
    model.forward_fn(model.backbone, make_batch())  # a fused pass runs on those globals
    assert set(model.ctx.kl_local) == {p for p, _ in model.adapter_items}
