"""Laplace-LoRA (post-hoc, laplace-torch): predictive variance, its prior-precision limit, save and load."""

import pyro
import pytest
import torch

from bara_pyro import BaRAConfig, BaRAModel, get_bara_model
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.models.config import ConfigError
from bara_pyro.models.weights_laplace import _as_input, laplace_of
from bara_pyro.testing import ToyTokenTask, tiny_bert, toy_rows

ROWS = toy_rows(24)
VALIDATION = toy_rows(10, seed=1)
NOISY_VALIDATION = [{**row, "label": 1 - row["label"]} if i < 2 else row for i, row in enumerate(VALIDATION)]


def _trained(hessian_structure="kron", predictive="glm", prior_precision=1.0, optimize=False, validation=None,
             steps=6, **weights):
    pyro.set_rng_seed(0)
    task = ToyTokenTask()
    config = BaRAConfig(r=4, prior="fixed", weights={"name": "laplace", "hessian_structure": hessian_structure,
                                                     "predictive": predictive, "prior_precision": prior_precision,
                                                     "optimize_prior_precision": optimize, **weights})
    model = get_bara_model(tiny_bert(), config, forward_fn=task.scores)
    fit(model, task, ROWS, TrainConfig(steps=steps, batch_size=8, lr=5e-2, warmup_ratio=0.0, checkpoint_every=0,
                                       estimator="fused"), progress=False)
    assert not model.is_stochastic  # no posterior before the post-hoc fit
    model.fit_posterior(task, ROWS, batch_size=8, validation_rows=validation)
    return model, task


def _function_variance(model, task):
    la = laplace_of(model.config.components.weights, model)
    batch = task.collate(ROWS[:8])
    with torch.enable_grad():
        _, f_var = la._glm_predictive_distribution(_as_input(batch))
    return f_var.diagonal(dim1=-2, dim2=-1)


def test_bad_values_are_rejected_at_config_load():
    with pytest.raises(ConfigError, match=r"hessian_structure must be one of \['kron', 'diag'\]"):
        BaRAConfig(r=4, prior="fixed", weights={"name": "laplace", "hessian_structure": "full"})
    with pytest.raises(ConfigError, match=r"predictive must be one of \['glm', 'nn'\]"):
        BaRAConfig(r=4, prior="fixed", weights={"name": "laplace", "predictive": "probit"})
    with pytest.raises(ConfigError, match=r"fit_batch_size must be a whole number >= 1, got 0"):
        BaRAConfig(r=4, prior="fixed", weights={"name": "laplace", "fit_batch_size": 0})
    with pytest.raises(ConfigError, match=r"kfac_approx must be one of \['expand', 'reduce'\], got 'sum'"):
        BaRAConfig(r=4, prior="fixed", weights={"name": "laplace", "kfac_approx": "sum"})
    for name in ("laplace", "projected_subspace"):
        with pytest.raises(ConfigError, match=rf"weights '{name}': prior_precision_method must be one of "
                                              r"\['marglik', 'validation'\], got 'gridsearch'"):
            BaRAConfig(r=4, prior="fixed", weights={"name": name, "prior_precision_method": "gridsearch"})
    # a config saved before the field existed loads with the marginal likelihood
    assert BaRAConfig(r=4, prior="fixed", weights={"name": "laplace"}).components.weights.prior_precision_method \
        == "marglik"


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_predictive_variance_is_positive_and_shrinks_as_the_prior_precision_grows(structure):
    variances = []
    for precision in (1.0, 100.0, 1e6):
        model, task = _trained(structure, prior_precision=precision)
        variances.append(_function_variance(model, task))
    assert all(bool((v > 0).all()) for v in variances)
    assert bool((variances[1] < variances[0]).all()) and bool((variances[2] < variances[1]).all())
    # and the sampled predictive tends to the MAP model's
    model, task = _trained(structure, prior_precision=1e6)
    assert model.is_stochastic
    sampled = predict(model, task, ROWS[:8], num_samples=4, progress=False)
    map_probs = predict(model, task, ROWS[:8], num_samples=0, progress=False).probs
    torch.testing.assert_close(sampled.probs, map_probs, atol=1e-3, rtol=0)
    loose, _ = _trained(structure, prior_precision=1e-2)
    spread = predict(loose, task, ROWS[:8], num_samples=4, progress=False).sample_probs
    assert float(spread.std(0).max()) > 10 * float(sampled.sample_probs.std(0).max())


def test_weight_space_predictive_draws_one_weight_per_copy_and_round_trips(tmp_path):
    model, task = _trained("kron", predictive="nn", prior_precision=1.0, optimize=True)
    la = laplace_of(model.config.components.weights, model)
    assert float(la.prior_precision) != 1.0  # set by the marginal likelihood
    assert model.posterior_summary() == {"kind": "laplace", "hessian_structure": "kron", "kfac_approx": "expand",
                                         "predictive": "nn",
                                         "prior_precision": pytest.approx(float(la.prior_precision)),
                                         "prior_precision_method": "marglik", "fit_examples": len(ROWS)}
    pred = predict(model, task, ROWS[:8], num_samples=3, progress=False)
    assert float((pred.sample_probs[0] - pred.sample_probs[1]).abs().max()) > 0
    model.save_pretrained(tmp_path)
    loaded = BaRAModel.from_pretrained(tiny_bert(), tmp_path, forward_fn=task.scores)
    assert loaded.is_stochastic and loaded.posterior_summary() == model.posterior_summary()
    torch.testing.assert_close(_function_variance(loaded, task), _function_variance(model, task))
    torch.testing.assert_close(predict(loaded, task, ROWS[:8], num_samples=0, progress=False).probs,
                               predict(model, task, ROWS[:8], num_samples=0, progress=False).probs)


def test_linearised_predictive_of_copies_takes_one_jacobian_and_equals_the_whole_batch():
    from bara_pyro.models.weights_laplace import _glm, _glm_of_copies

    model, task = _trained("diag", prior_precision=1.0)
    la = laplace_of(model.config.components.weights, model)
    copies = task.collate(ROWS[:4] * 3)  # S = 3 sample-major copies, as predict lays them out
    mu, var = _glm_of_copies(la, model, copies, 3)
    ref_mu, ref_var = _glm(la, copies)
    torch.testing.assert_close(mu, ref_mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, ref_var, atol=1e-7, rtol=1e-4)


def test_prediction_collates_each_row_once_for_the_linearised_predictive(monkeypatch):
    """predict hands the linearised predictive each row once (no S copies through the backbone), with the same
    draws as the copies' path; the sampled-weights predictive still gets the copies."""
    model, task = _trained("diag", prior_precision=1.0)
    assert model.draws_from_one_copy(4) and not model.draws_from_one_copy(0)
    sizes, collate = [], task.collate
    monkeypatch.setattr(task, "collate", lambda rows: sizes.append(len(rows)) or collate(rows))
    pyro.set_rng_seed(3)
    once = predict(model, task, ROWS[:6], num_samples=4, batch_size=3, progress=False)
    assert sizes == [3, 3]  # each batch's rows collated once
    sizes.clear()
    monkeypatch.setattr(model, "draws_from_one_copy", lambda num_samples: False)
    pyro.set_rng_seed(3)
    copies = predict(model, task, ROWS[:6], num_samples=4, batch_size=3, progress=False)
    assert sizes == [12, 12]
    torch.testing.assert_close(once.sample_probs, copies.sample_probs)
    with pytest.raises(ValueError, match="copied=False"):
        model.scores(collate(ROWS[:2]), mode="mean", copied=False)
    sampled_weights, _ = _trained("diag", predictive="nn")
    assert not sampled_weights.draws_from_one_copy(4)


def test_jacobians_taken_in_chunks_equal_laplace_torchs_and_the_chunk_follows_the_budget(monkeypatch):
    from laplace.curvature import CurvlinopsGGN

    import bara_pyro.models.weights_laplace as wl

    model, task = _trained("diag")
    la = laplace_of(model.config.components.weights, model)
    x = _as_input(task.collate(ROWS[:6]))
    reference = CurvlinopsGGN(la.model, "classification")
    ref_js, ref_f = reference.jacobians(x)
    seen = []
    real_jacrev = torch.func.jacrev

    def spy(fn, *args, **kwargs):
        seen.append(kwargs.get("chunk_size"))
        return real_jacrev(fn, *args, **kwargs)

    monkeypatch.setattr(torch.func, "jacrev", spy)
    for budget in (1, 10**12):  # one output per pass; every output in one pass
        monkeypatch.setattr(wl, "JACOBIAN_BUDGET_ELEMENTS", budget)
        js, f = wl._chunked_jacobian_backend()(la.model, "classification").jacobians(x)
        torch.testing.assert_close(js, ref_js, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(f, ref_f)
    assert seen[0] == 1 and seen[1] > js.shape[0] * js.shape[1]
    tokens = x["batch"].token_mask.numel()
    assert wl.jacobian_chunk(x["batch"], width=49152, budget=2**28) == max(1, 2**28 // (tokens * 49152))


def test_kfac_fit_takes_one_forward_pass_per_batch_and_equals_laplace_torchs():
    """The K-FAC fit's loss comes from the factors' own forward pass: one pass of the model per batch instead of
    laplace-torch's two, with the same loss and Kronecker factors."""
    from laplace.curvature import CurvlinopsGGN

    import bara_pyro.models.weights_laplace as wl

    model, task = _trained("kron")
    la = laplace_of(model.config.components.weights, model)
    x, y = _as_input(task.collate(ROWS[:8])), task.collate(ROWS[:8]).labels
    passes = []
    handle = la.model.register_forward_hook(lambda module, args, out: passes.append(1))
    try:
        loss, kron = wl._chunked_jacobian_backend()(la.model, "classification", dict_key_x="labels").kron(x, y, N=24)
        assert len(passes) == 1
        ref_loss, ref_kron = CurvlinopsGGN(la.model, "classification", dict_key_x="labels").kron(x, y, N=24)
        assert len(passes) == 3
    finally:
        handle.remove()
    torch.testing.assert_close(loss, ref_loss)
    assert len(kron.kfacs) == len(ref_kron.kfacs)
    for ours, theirs in zip(kron.kfacs, ref_kron.kfacs):
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_kfac_input_factor_is_the_mean_over_real_tokens_whatever_the_batches(kfac_approx):
    """Each layer's K-FAC input factor is the mean of ``x x^T`` over the fit set's real tokens (expand) or of
    ``xbar xbar^T`` over its sequences, ``xbar`` a sequence's mean input over its real tokens (reduce); padded
    positions are left out, so fits in batches of 4 and of all 24 rows agree; curvlinops alone would average over
    every padded position of each batch."""
    model, task = _trained("kron")
    model.config.components.weights.kfac_approx = kfac_approx
    ((_, adapter), *_) = model.adapter_items
    inputs = {}
    hooks = [getattr(adapter, name).register_forward_hook(
        lambda module, args, out, name=name: inputs.__setitem__(name, args[0].detach()))
        for name in ("lora_A", "lora_B")]
    try:
        batch = task.collate(ROWS)
        with torch.no_grad():
            model.scores(batch, mode="mean")
    finally:
        for hook in hooks:
            hook.remove()
    real = batch.inputs["attention_mask"].bool()
    assert 0 < int(real.sum()) < real.numel()  # the rows are padded
    factors = {}
    family = model.config.components.weights
    assert family.fit_batch_size == 16
    for batch_size in (4, 24):
        family.fit_batch_size = batch_size
        model.fit_posterior(task, ROWS, batch_size=8)  # the training batch size: not the fit's
        factors[batch_size] = {name: getattr(adapter, f"laplace_{name}_kfac1").clone() for name in ("lora_A", "lora_B")}
    weights = real.unsqueeze(-1).float()
    for name in ("lora_A", "lora_B"):
        x = inputs[name][real] if kfac_approx == "expand" else (weights * inputs[name]).sum(1) / weights.sum(1)
        torch.testing.assert_close(factors[4][name], x.T @ x / x.shape[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(factors[4][name], factors[24][name], rtol=1e-5, atol=1e-6)


def test_the_predictives_take_whole_batches_and_the_lora_jacobians_are_laplace_torchs(monkeypatch):
    """The linearised predictive over the LoRA factors takes its Jacobians from one backward pass of the batch
    per score column (``lora_jacobians``), with the mean and covariance that laplace-torch's backend gives, so
    neither predictive bounds the rows of a pass."""
    import bara_pyro.models.weights_laplace as wl

    for predictive in ("glm", "nn"):
        model, task = _trained("diag", predictive=predictive)
        family = model.config.components.weights
        seen = []
        real = wl.laplace_sampled_scores

        def spy(fam, mdl, batch, num_samples, copied=True, real=real):
            seen.append(batch.num_examples // (num_samples if copied else 1))
            return real(fam, mdl, batch, num_samples, copied)

        monkeypatch.setattr(wl, "laplace_sampled_scores", spy)
        pred = predict(model, task, ROWS[:6], num_samples=3, batch_size=6, progress=False)
        monkeypatch.setattr(wl, "laplace_sampled_scores", real)
        assert family.prediction_rows(3) is None
        assert seen == [6]
        assert pred.probs.shape[0] == 6
    model, task = _trained("kron")
    la = laplace_of(model.config.components.weights, model)
    batch = task.collate(ROWS[:6])
    monkeypatch.setattr(wl, "lora_jacobians", lambda model, batch: None)  # declined: laplace-torch's backend
    ref_mu, ref_var = wl._glm(la, batch)
    monkeypatch.undo()
    mu, var = wl._glm(la, batch)
    torch.testing.assert_close(mu, ref_mu, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(var, ref_var, atol=1e-8, rtol=1e-4)
    assert float(var.diagonal(dim1=-2, dim2=-1).min()) > 0


def test_sampled_prediction_under_bf16_autocast_draws_in_float32(monkeypatch):
    """Under bf16 autocast (CUDA has no bf16 Cholesky) the covariance of the linearised predictive, its Cholesky
    factor and the draws are float32, and the sampled scores agree with the float32 prediction's; the
    sampled-weights predictive draws its weights with autocast off."""
    import bara_pyro.models.weights_laplace as wl

    model, task = _trained("kron", prior_precision=1.0)
    la = laplace_of(model.config.components.weights, model)
    batch = task.collate(ROWS[:8])
    seen, real = [], torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a, **kw: seen.append(a.dtype) or real(a, **kw))
    pyro.set_rng_seed(0)
    reference = predict(model, task, ROWS[:8], num_samples=64, progress=False)
    _, ref_var = wl._glm(la, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pyro.set_rng_seed(0)
        pred = predict(model, task, ROWS[:8], num_samples=64, progress=False)
        _, f_var = wl._glm(la, batch)
    assert seen == [torch.float32, torch.float32]
    assert f_var.dtype == torch.float32
    torch.testing.assert_close(f_var, ref_var, atol=1e-3, rtol=5e-2)
    assert bool(torch.isfinite(pred.sample_probs).all())
    torch.testing.assert_close(pred.probs, reference.probs, atol=5e-3, rtol=0)

    model, task = _trained("kron", predictive="nn")
    la = laplace_of(model.config.components.weights, model)
    autocast_on, sample = [], la.sample
    monkeypatch.setattr(la, "sample", lambda n: autocast_on.append(torch.is_autocast_enabled("cpu")) or sample(n))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = predict(model, task, ROWS[:8], num_samples=3, progress=False)
    assert autocast_on == [False] and bool(torch.isfinite(pred.sample_probs).all())


def _validation_nll(model, task, rows, prior_precision: float) -> float:
    """Mean NLL on ``rows`` of the glm predictive at ``prior_precision``, from the predictive's own mean and
    covariance (laplace-torch's ``functional_variance``) and the search's fixed draws, all rows in one batch."""
    from bara_pyro.models.laplace_prior_precision import standard_draws
    from bara_pyro.models.weights_laplace import _glm

    la = laplace_of(model.config.components.weights, model)
    la.prior_precision = prior_precision
    batch = task.collate(rows)
    f_mu, f_var = _glm(la, batch)
    z = standard_draws(f_mu.shape[-1])
    chol = torch.linalg.cholesky(f_var + 1e-9 * torch.eye(f_var.shape[-1]))  # (n, C, C)
    scores = f_mu + (chol @ z.view(len(z), 1, -1, 1)).squeeze(-1)  # (S, n, C): draw z_s for every row
    probs = scores.softmax(-1).mean(0)
    return float(-probs.gather(-1, batch.labels.view(-1, 1)).log().mean())


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_validation_chooses_the_grid_point_of_lowest_validation_nll(structure):
    """``prior_precision_method: validation`` keeps the point of ``logspace(-4, 4, 100)`` whose linearised
    predictive has the lowest NLL on the validation rows (taken in batches of 4 here), as computed point by point
    from the predictive itself; the summary reports the method and the curve.  The MAP model, trained to fit its
    rows, is overconfident on validation rows with two labels flipped: the best point is inside the grid."""
    from bara_pyro.models.laplace_prior_precision import prior_precision_grid

    model, task = _trained(structure, optimize=True, validation=NOISY_VALIDATION, steps=40, fit_batch_size=4,
                           prior_precision_method="validation")
    summary = model.posterior_summary()
    curve = summary["validation_nll"]
    grid = prior_precision_grid()
    assert summary["prior_precision_method"] == "validation" and curve["examples"] == len(VALIDATION)
    torch.testing.assert_close(torch.tensor(curve["prior_precision"], dtype=torch.float64), grid)
    chosen = summary["prior_precision"]
    assert 1e-4 * (1 - 1e-6) <= chosen <= 1e4 * (1 + 1e-6)
    assert float(laplace_of(model.config.components.weights, model).prior_precision) == pytest.approx(chosen)
    nll = torch.tensor([_validation_nll(model, task, NOISY_VALIDATION, float(d)) for d in grid],
                       dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(curve["nll"], dtype=torch.float64), nll, rtol=1e-5, atol=1e-6)
    best = int(nll.argmin())
    assert 0 < best < len(grid) - 1 and float(nll[[0, -1]].min() - nll[best]) > 1e-3  # an interior minimum
    assert chosen == pytest.approx(float(grid[best]), rel=1e-6)


def test_marglik_is_the_default_and_ignores_the_validation_rows():
    """The marginal-likelihood path does not look at the validation rows; a fixed prior precision is reported as
    such; a validation search without validation rows fails before the fit."""
    with_rows, _ = _trained("diag", optimize=True, validation=VALIDATION)
    without, task = _trained("diag", optimize=True)
    assert with_rows.posterior_summary() == without.posterior_summary()
    assert without.posterior_summary()["prior_precision_method"] == "marglik"
    assert without.posterior_summary()["prior_precision"] != pytest.approx(1.0)
    fixed, _ = _trained("diag", optimize=False, validation=VALIDATION, prior_precision_method="validation")
    assert fixed.posterior_summary()["prior_precision"] == pytest.approx(1.0)
    assert fixed.posterior_summary()["prior_precision_method"] == "fixed"
    fixed.config.components.weights.optimize_prior_precision = True
    with pytest.raises(ConfigError, match="prior_precision_method: validation needs validation rows"):
        fixed.fit_posterior(task, ROWS, batch_size=8, validation_rows=[])
