"""The fused estimator computes exactly Pyro's TraceMeanField ELBO: same value, same gradients."""

import pyro
import pytest
import torch
from builders import make_batch, make_tiny_bert
from pyro.infer import TraceMeanField_ELBO

from bara_pyro import BaRAConfig, get_bara_model

GUIDES = {
    "amortized": None,
    # tied local gates, one per sequence, under the (non-contextual) beta process and gamma magnitude
    "conditional_prior_per_sequence": {"local": {"name": "conditional_prior", "per": "sequence"}},
}


@pytest.mark.parametrize("guide", list(GUIDES))
@pytest.mark.parametrize("kl_beta", [1.0, 0.3])
def test_fused_loss_equals_trace_mean_field_elbo(kl_beta, guide):
    torch.set_default_dtype(torch.float64)
    try:
        model = get_bara_model(make_tiny_bert(), BaRAConfig(r=4, gamma0=2.0, guide=GUIDES[guide]))
        with torch.no_grad():
            for _, a in model.adapter_items:
                a.lora_B.weight.normal_(0, 0.1)
        model.dataset_size, model.kl_beta = 37, kl_beta
        batch = make_batch()
        params = model.trainable_parameters()
        pyro.set_rng_seed(11)
        ref = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch)
        ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
        pyro.set_rng_seed(11)
        fused, _ = model.fused_loss(batch)
        fused_grads = torch.autograd.grad(fused, params, allow_unused=True)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-9)
    if guide == "amortized":  # the tied guide has no parameters of its own
        assert sum(g is not None for g in ref_grads) == len(params)
    assert [a is None for a in ref_grads] == [b is None for b in fused_grads]
    for a, b in zip(ref_grads, fused_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
