"""BaLoRA-style input-adaptive noise: per-token noise set by the input, the LoRA mean, few extra parameters,
the local KL against Monte Carlo."""

import math

import pyro
import pytest
import torch
from builders import make_batch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.models.config import ConfigError
from bara_pyro.testing import tiny_bert

CONFIG = BaRAConfig(r=4, prior="fixed", weights="adaptive_noise")


def test_bad_values_are_rejected_at_config_load():
    with pytest.raises(ConfigError, match="prior_scale must be a positive number"):
        BaRAConfig(r=4, prior="fixed", weights={"name": "adaptive_noise", "prior_scale": -1.0})
    with pytest.raises(ConfigError, match="prior: fixed"):
        BaRAConfig(r=4, weights="adaptive_noise")


def test_adds_r_squared_plus_r_parameters_per_layer_and_its_mean_is_the_lora():
    pyro.set_rng_seed(0)
    noisy = get_bara_model(tiny_bert(), CONFIG)
    lora = get_bara_model(tiny_bert(), BaRAConfig(r=4, prior="fixed", name="lora"))
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(noisy) - count(lora) == len(noisy.adapter_items) * (4 * 4 + 4)
    with torch.no_grad():
        for (_, a), (_, b) in zip(noisy.adapter_items, lora.adapter_items):
            a.lora_B.weight.normal_()
            b.lora_A.weight.copy_(a.lora_A.weight)
            b.lora_B.weight.copy_(a.lora_B.weight)
    batch = make_batch(num_examples=3)
    with torch.no_grad():
        torch.testing.assert_close(noisy.scores(batch, mode="mean"), lora.scores(batch, mode="mean"))
        assert noisy.is_stochastic
        twice = type(batch)({k: v.repeat(2, 1) for k, v in batch.inputs.items()}, batch.labels.repeat(2),
                            batch.token_mask.repeat(2, 1))
        sampled = noisy.scores(twice, mode="sample", num_samples=2)
    assert (sampled[:3] - sampled[3:]).abs().max() > 1e-4  # each copy draws its own noise


def test_noise_scale_depends_on_the_input_token():
    pyro.set_rng_seed(0)
    model = get_bara_model(tiny_bert(), CONFIG)
    adapter = model.adapter_items[0][1]
    family = adapter.weights
    h = torch.randn(2, 5, 4)
    model.ctx.reset("sample")
    flat = family.noise_scale(adapter, h)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))  # W = 0 at the start: s = init_scale = s0
    assert float(family.local_kl(flat).abs().max()) < 1e-6  # the posterior starts at the prior
    with torch.no_grad():
        adapter.noise_weight.normal_()
    scale = family.noise_scale(adapter, h)
    assert float(scale.detach().std()) > 0.01  # different tokens, different noise
    torch.testing.assert_close(family.noise_scale(adapter, 3.0 * h), scale, rtol=1e-4, atol=0)  # by the direction of Ax


def test_local_kl_matches_monte_carlo():
    from bara_pyro.models.weights_adaptive_noise import AdaptiveNoiseWeights

    family = AdaptiveNoiseWeights(prior_scale=0.3)
    scale = torch.tensor([[0.05, 0.2, 0.3, 0.6]], dtype=torch.float64)
    q, p = torch.distributions.Normal(1.0, scale), torch.distributions.Normal(1.0, 0.3 * torch.ones_like(scale))
    xi = q.sample((200_000,))
    mc = (q.log_prob(xi) - p.log_prob(xi)).sum(-1)
    exact = float(family.local_kl(scale))
    assert abs(float(mc.mean()) - exact) < 4 * float(mc.std()) / math.sqrt(len(mc))
