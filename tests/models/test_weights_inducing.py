"""Bayesian-LoRA (inducing-weight posterior on A): contract, the LoRA limit, the closed-form KL against Monte Carlo."""

import math

import pyro
import torch
from builders import assert_globals_at_once_equal_per_adapter, make_batch, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.models.config import ConfigError
from bara_pyro.testing import run_contract

CONFIG = BaRAConfig(r=4, prior="fixed", weights={"name": "inducing_gaussian", "inducing_rows": 3,
                                                 "inducing_cols": 5})


def test_contract_sites_fused_equals_svi_training_and_round_trip():
    report = run_contract(CONFIG)
    assert sorted({s.rpartition(".")[2] for s in report.sites}) == ["lora_A", "lora_U"]
    assert report.kl_is_analytic and report.fused_matches_svi


def test_bad_values_are_rejected_at_config_load():
    for weights in ({"name": "inducing_gaussian", "prior_scale": 0.0}, {"name": "inducing_gaussian", "rows": 2}):
        try:
            BaRAConfig(r=4, prior="fixed", weights=weights)
        except ConfigError as exc:
            assert "inducing_gaussian" in str(exc)
        else:
            raise AssertionError(f"{weights} was accepted")


def test_reduces_to_lora_as_the_posterior_variance_vanishes(tiny_bert):
    import copy

    pyro.set_rng_seed(0)
    bayes = get_bara_model(copy.deepcopy(tiny_bert), CONFIG)
    lora = get_bara_model(tiny_bert, BaRAConfig(r=4, prior="fixed", name="lora"))
    with torch.no_grad():
        for (_, a), (_, b) in zip(bayes.adapter_items, lora.adapter_items):
            a.lora_B.weight.normal_()
            a.lora_U_scale_raw.fill_(-40.0)  # S = softplus(-40) ~ 4e-18
            a.inducing_log_lambda.fill_(-40.0)  # lambda ~ 4e-18
            b.lora_A.weight.copy_(a.weights.conditional_mean(a, a.lora_U_loc))
            b.lora_B.weight.copy_(a.lora_B.weight)
    batch = make_batch(num_examples=3)
    twice = type(batch)({k: v.repeat(2, 1) for k, v in batch.inputs.items()}, batch.labels.repeat(2),
                        batch.token_mask.repeat(2, 1))
    with torch.no_grad():
        reference = lora.scores(batch, mode="mean")
        assert (reference - lora.scores(batch, mode="off")).abs().max() > 1e-3  # the adapters matter
        torch.testing.assert_close(bayes.scores(batch, mode="mean"), reference)
        sampled = bayes.scores(twice, mode="sample", num_samples=2)
    torch.testing.assert_close(sampled, reference.repeat(2, 1), atol=1e-5, rtol=1e-5)


def test_closed_form_kl_matches_monte_carlo_and_the_conditional_formula(tiny_bert):
    torch.set_default_dtype(torch.float64)
    try:
        pyro.set_rng_seed(0)
        model = get_bara_model(tiny_bert.double(), CONFIG)
        adapter = model.adapter_items[0][1]
        family = adapter.weights
        with torch.no_grad():
            adapter.lora_U_scale_raw.fill_(-2.0)
            adapter.inducing_log_lambda.fill_(math.log(0.4))
        model.ctx.reset("fused")
        adapter.fused_globals()
        kl = float(model.ctx.kl_global[adapter.path].detach())
        lam, d = 0.4, adapter.r * adapter.in_features
        q_u, p_u = family.posterior(adapter, "lora_U"), family.prior(adapter, "lora_U")
        conditional = d * (0.5 * lam ** 2 - math.log(lam) - 0.5)
        assert math.isclose(kl, float(torch.distributions.kl_divergence(q_u, p_u).sum()) + conditional, rel_tol=1e-9)
        # Monte Carlo: log q(U, A) - log p(U, A) at joint draws from q
        draws = []
        with torch.no_grad():
            for _ in range(4000):
                u = q_u.sample()
                model.ctx.weights[adapter.path] = {"lora_U": u}
                q_a, p_a = family.posterior(adapter, "lora_A"), family.prior(adapter, "lora_A")
                a = q_a.sample()
                draws.append(float(q_u.log_prob(u).sum() + q_a.log_prob(a).sum()
                                   - p_u.log_prob(u).sum() - p_a.log_prob(a).sum()))
        mc = torch.tensor(draws)
        assert abs(float(mc.mean()) - kl) < 4 * float(mc.std()) / math.sqrt(len(draws)) + 1e-6 * kl
    finally:
        torch.set_default_dtype(torch.float32)


def test_every_adapter_at_once_equals_adapter_by_adapter(monkeypatch):
    """The fused estimator's batched path (one Cholesky per kind for all adapters) draws the guide's random numbers
    and gives the per-adapter path's loss and gradients; its draws of ``U`` and ``A`` agree to round-off (vectorised
    elementwise functions and batched matrix products round differently from the per-adapter ones)."""
    def build():
        pyro.set_rng_seed(0)
        model = get_bara_model(make_tiny_bert(), BaRAConfig(r=4, prior="fixed", target_modules=["query", "value",
                                                                                                  "intermediate.dense"],
                                                            weights={"name": "inducing_gaussian", "inducing_rows": 3,
                                                                     "inducing_cols": 5}))
        with torch.no_grad():
            for _, a in model.adapter_items:
                a.lora_B.weight.normal_()
                a.lora_U_scale_raw.normal_(-1.0, 0.3)
                a.inducing_log_lambda.fill_(math.log(0.3))
        assert len({a.in_features for _, a in model.adapter_items}) == 1
        return model

    assert_globals_at_once_equal_per_adapter(build, monkeypatch, "_inducing_globals", exact=())
