"""Projected-subspace fine-tuning (LoRA-XS factors, r x r core, SWAG posterior)."""

import copy

import pyro
import pytest
import torch

from bara_pyro import BaRAConfig, BaRAModel, get_bara_model
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.models.config import ConfigError
from bara_pyro.testing import ToyTokenTask, tiny_bert, toy_rows

CONFIG = BaRAConfig(r=4, prior="fixed", weights={"name": "projected_subspace", "swag_start": 0.5, "swag_every": 1,
                                                 "swag_rank": 4})


def test_bad_values_are_rejected_at_config_load():
    for weights in ({"name": "projected_subspace", "posterior_kind": "laplace_kron"},
                    {"name": "projected_subspace", "swag_rank": 1}):
        try:
            BaRAConfig(r=4, prior="fixed", weights=weights)
        except ConfigError as exc:
            assert "projected_subspace" in str(exc)
        else:
            raise AssertionError(f"{weights} was accepted")


def test_trains_exactly_r_squared_parameters_per_layer_and_keeps_the_svd_factors(tmp_path):
    pyro.set_rng_seed(0)
    task = ToyTokenTask()
    backbone = tiny_bert()
    model = get_bara_model(backbone, CONFIG, forward_fn=task.scores)
    modules = dict(backbone.named_modules())
    adapter_params = [p for p in model.parameters() if p.requires_grad]
    assert [tuple(p.shape) for p in adapter_params] == [(4, 4)] * len(model.adapter_items)
    before = {}
    for path, adapter in model.adapter_items:
        w0 = modules[path].weight.detach()
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        torch.testing.assert_close(adapter.lora_B.weight @ adapter.lora_A.weight, (u[:, :4] * s[:4]) @ vh[:4])
        before[path] = (adapter.lora_A.weight.clone(), adapter.lora_B.weight.clone())
    rows = toy_rows(32)
    fit(model, task, rows, TrainConfig(steps=10, batch_size=8, lr=1e-2, warmup_ratio=0.0, checkpoint_every=0,
                                       estimator="fused"), progress=False)
    for path, adapter in model.adapter_items:
        assert torch.equal(adapter.lora_A.weight, before[path][0]) and torch.equal(adapter.lora_B.weight,
                                                                                   before[path][1])
        assert adapter.lora_R.abs().max() > 0
        assert float(adapter.swag_count) == 6  # steps 5..10 (from swag_start = 0.5 of 10 steps), every step
    assert model.is_stochastic
    a = predict(model, task, rows[:8], num_samples=4, progress=False)
    assert float((a.sample_probs[0] - a.sample_probs[1]).abs().max()) > 0  # SWAG draws differ
    model.save_pretrained(tmp_path)
    loaded = BaRAModel.from_pretrained(tiny_bert(), tmp_path, forward_fn=task.scores)
    for (_, x), (_, y) in zip(model.adapter_items, loaded.adapter_items):
        for name in ("lora_R", "swag_mean", "swag_sq_mean", "swag_deviations", "swag_count"):
            assert torch.equal(getattr(x, name), getattr(y, name))
    m0 = predict(model, task, rows[:8], num_samples=0, progress=False).probs
    torch.testing.assert_close(predict(loaded, task, rows[:8], num_samples=0, progress=False).probs, m0)


def test_mean_prediction_uses_the_swag_mean():
    pyro.set_rng_seed(0)
    task = ToyTokenTask()
    model = get_bara_model(tiny_bert(), CONFIG, forward_fn=task.scores)
    point = get_bara_model(tiny_bert(), copy.deepcopy(CONFIG), forward_fn=task.scores)
    for (_, a), (_, b) in zip(model.adapter_items, point.adapter_items):
        with torch.no_grad():
            a.lora_R.normal_()
            b.lora_R.copy_(a.lora_R + 1.0)
            a.swag_mean.copy_(b.lora_R)  # three identical iterates: the SWAG mean is b's core, zero variance
            a.swag_sq_mean.copy_(b.lora_R.pow(2))
            a.swag_count.fill_(3)
    rows = toy_rows(8)
    torch.testing.assert_close(predict(model, task, rows, num_samples=0, progress=False).probs,
                               predict(point, task, rows, num_samples=0, progress=False).probs)
    sampled = predict(model, task, rows, num_samples=2, progress=False).sample_probs
    torch.testing.assert_close(sampled[0], sampled[1])  # no variance and zero deviations: every draw is the mean


def test_laplace_variant_fits_a_diagonal_posterior_over_the_cores_only(tmp_path):
    from bara_pyro.models.weights_laplace import _as_input, laplace_of

    pyro.set_rng_seed(0)
    task = ToyTokenTask()
    rows = toy_rows(24)
    variances = []
    for precision in (1.0, 1e4):
        config = BaRAConfig(r=4, prior="fixed", weights={"name": "projected_subspace", "posterior_kind": "laplace",
                                                         "prior_precision": precision,
                                                         "optimize_prior_precision": False})
        model = get_bara_model(tiny_bert(), config, forward_fn=task.scores)
        fit(model, task, rows, TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_ratio=0.0, checkpoint_every=0,
                                           estimator="fused"), progress=False)
        model.fit_posterior(task, rows, batch_size=8)
        la = laplace_of(model.config.components.weights, model)
        assert la.n_params == 16 * len(model.adapter_items)  # r^2 per layer: the cores, not A, B or the head
        with torch.enable_grad():
            variances.append(la._glm_predictive_distribution(_as_input(task.collate(rows[:8])))[1]
                             .diagonal(dim1=-2, dim2=-1))
    assert bool((variances[0] > 0).all()) and bool((variances[1] < variances[0]).all())
    assert model.is_stochastic
    sampled = predict(model, task, rows[:8], num_samples=3, progress=False)
    torch.testing.assert_close(sampled.probs, predict(model, task, rows[:8], num_samples=0, progress=False).probs,
                               atol=1e-2, rtol=0)
    model.save_pretrained(tmp_path)
    loaded = BaRAModel.from_pretrained(tiny_bert(), tmp_path, forward_fn=task.scores)
    with torch.enable_grad():
        again = laplace_of(loaded.config.components.weights, loaded)._glm_predictive_distribution(
            _as_input(task.collate(rows[:8])))[1].diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(again, variances[1])


def test_snapshot_count_follows_the_buffer():
    """The count is read from the buffer once per change (capturable prediction), and follows fills, in-place
    updates, state-dict loads and device moves."""
    from bara_pyro.models.weights_projected import _snapshot_count

    model = get_bara_model(tiny_bert(), CONFIG, forward_fn=ToyTokenTask().scores)
    (_, adapter), *_ = model.adapter_items
    assert _snapshot_count(adapter) == 0
    adapter.swag_count.fill_(3)
    assert _snapshot_count(adapter) == 3
    adapter.swag_count.add_(1)
    assert _snapshot_count(adapter) == 4
    adapter.load_state_dict({**adapter.state_dict(), "swag_count": torch.tensor(7.0)})
    assert _snapshot_count(adapter) == 7
    adapter.swag_count = torch.tensor(2.0)  # a new tensor in the buffer's place
    assert _snapshot_count(adapter) == 2


def test_laplace_variant_can_choose_its_prior_precision_on_validation_rows():
    """The cores' diagonal posterior (Jacobians through laplace-torch's backend) takes the prior precision of lowest
    validation NLL on the grid, and its linearised predictive at that point has that NLL."""
    from bara_pyro.models.laplace_prior_precision import glm_nll, prior_precision_grid, standard_draws
    from bara_pyro.models.weights_laplace import _glm, laplace_of

    pyro.set_rng_seed(0)
    task = ToyTokenTask()
    rows, validation = toy_rows(24), toy_rows(8, seed=1)
    config = BaRAConfig(r=4, prior="fixed", weights={"name": "projected_subspace", "posterior_kind": "laplace",
                                                     "prior_precision_method": "validation"})
    model = get_bara_model(tiny_bert(), config, forward_fn=task.scores)
    fit(model, task, rows, TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_ratio=0.0, checkpoint_every=0,
                                       estimator="fused"), progress=False)
    model.fit_posterior(task, rows, batch_size=4, validation_rows=validation)
    summary = model.posterior_summary()
    curve = torch.tensor(summary["validation_nll"]["nll"])
    assert summary["prior_precision_method"] == "validation"
    assert summary["prior_precision"] == pytest.approx(float(prior_precision_grid()[int(curve.argmin())]), rel=1e-6)
    batch = task.collate(validation)
    f_mu, f_var = _glm(laplace_of(model.config.components.weights, model), batch)
    nll = glm_nll(f_mu, f_var, batch.labels, standard_draws(f_mu.shape[-1])).mean()
    torch.testing.assert_close(nll, curve.min().float(), rtol=1e-5, atol=1e-6)
