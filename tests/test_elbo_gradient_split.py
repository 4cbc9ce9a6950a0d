"""benchmarks/elbo_gradient_split.py: the likelihood and KL terms of a fused step and their separate gradients."""

import pyro
import torch
from builders import benchmark_script, make_batch, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.methods import load_preset


def test_the_two_terms_and_their_gradients_add_up_to_the_step():
    adapter = load_preset("blob")["adapter"]
    model = get_bara_model(make_tiny_bert(), BaRAConfig.from_dict({**adapter, "r": 4}))
    with torch.no_grad():
        for _, a in model.adapter_items:
            a.lora_B.weight.normal_(0, 0.1)
    model.dataset_size, model.kl_beta = 37, 0.5
    params = [p for p in model.parameters() if p.requires_grad]
    pyro.set_rng_seed(3)
    loss, parts = model.fused_loss(make_batch())
    row = benchmark_script("elbo_gradient_split").split_row(model, loss)
    total = torch.autograd.grad(loss, params, allow_unused=True)
    norm = sum(float(g.pow(2).sum()) for g in total if g is not None) ** 0.5
    assert row["kl_term"] > 0 and row["grad_kl"] > 0 and row["grad_likelihood"] > 0
    expected_likelihood = -float(parts["loglik"]) * 37 / 4  # -(N / B) sum_b log p(y_b | theta)
    assert abs(row["likelihood_term"] - expected_likelihood) < 1e-4 * abs(expected_likelihood)
    # |g|^2 = |g_lik|^2 + |g_kl|^2 + 2 cos |g_lik| |g_kl|
    combined = (row["grad_likelihood"] ** 2 + row["grad_kl"] ** 2
                + 2 * row["cosine"] * row["grad_likelihood"] * row["grad_kl"]) ** 0.5
    assert abs(combined - norm) < 1e-4 * norm
    assert len(row["top_likelihood"]) == 3 and row["top_likelihood"][0][1] >= row["top_likelihood"][1][1]
