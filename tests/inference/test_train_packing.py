"""``train.pack_choices``: a multiple-choice example's choices train as one row, with the loss of the unpacked batch
where the model's draws allow it."""

import contextlib

import pyro
import pytest
import torch
from builders import question_rows

from bara_pyro import get_bara_model
from bara_pyro.experiment import _adapter_config, build_backbone_and_task, task_likelihood
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.inference.graphed_step import TrainStep
from bara_pyro.inference.optim import TorchOptimizer, warmup_linear_decay
from bara_pyro.inference.trainer import DataOrder, _param_groups, _train_packing


def _preset(method: str):
    """``(model, task, rows)``: the preset on a tiny Llama (sdpa attention), cloze rows sharing long prefixes."""
    config = load_config(method=method, overrides=["model=tiny-llama", "dataset=arc_easy", "task.scoring=cloze"])
    backbone, _, task, _ = build_backbone_and_task(config)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores,
                           likelihood=task_likelihood(task))
    for _, adapter in model.adapter_items:
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.05)
    return model, task, question_rows(12, mixed=True)


def _config(**kw):
    return TrainConfig(**{"steps": 4, "batch_size": 3, "lr": 3e-3, "estimator": "fused", "log_every": 2,
                          "checkpoint_every": 0, "device": "cpu", **kw})


@pytest.mark.parametrize("method", ["lora", "laplace_lora", "projected_subspace_laplace"])
def test_point_fits_train_the_same_packed(method):
    """LoRA, and the point fits behind the post-hoc Laplace posteriors (whose linearised predictive does not pack):
    the packed rows' loss is the unpacked batch's, so four steps end at the same weights."""
    states = {}
    for pack in (False, True):
        model, task, rows = _preset(method)
        assert _train_packing(_config(pack_choices=pack), task, model, None) == (pack, None)
        fit(model, task, rows, _config(pack_choices=pack), progress=False)
        states[pack] = model.adapter_state_dict()
    for name, value in states[False].items():
        torch.testing.assert_close(states[True][name], value, rtol=1e-4, atol=1e-5, msg=name)  # Adam on rounding


def test_the_captured_steps_packed_batch_trains_as_its_padded_batch():
    """The graph-ready step (static buffers, run eagerly on the CPU) on ``pack_padded`` batches against
    ``pad_batch``'s: the batches a captured step takes, packed and not."""
    states = {}
    for pack in (False, True):
        model, task, rows = _preset("lora")
        config = _config()
        model.dataset_size = len(rows)
        optim = TorchOptimizer(_param_groups(model, config), lr=config.lr, clip_norm=config.clip_norm, tensor_lr=True,
                               lr_lambda=warmup_linear_decay(config.steps, config.warmup_ratio, config.lr_schedule))
        step_fn = TrainStep(model, optim, "cpu", contextlib.nullcontext(), static=True)
        order = DataOrder(len(rows), config.batch_size, config.seed)
        model.train()
        for step in range(config.steps):
            batch = task.collate([rows[i] for i in order.indices(step)])
            batch = task.pack_padded(batch, 16) if pack else task.pad_batch(batch, 16)
            step_fn(batch, 1.0)
        states[pack] = model.adapter_state_dict()
    for name, value in states[False].items():
        torch.testing.assert_close(states[True][name], value, rtol=1e-4, atol=1e-5, msg=name)  # Adam on rounding


@pytest.mark.parametrize("method, packs", [("lora", True), ("blob", True), ("bara_singular", True),
                                           ("laplace_lora", True), ("bara", False), ("balora", False)])
def test_packing_is_used_where_the_draws_allow_it(method, packs, capsys):
    model, task, rows = _preset(method)
    pack, why_not = _train_packing(_config(pack_choices=True), task, model, None)
    assert pack == packs and (why_not is None) == packs
    assert _train_packing(_config(), task, model, None) == (False, None)  # off unless asked for
    result = fit(model, task, rows, _config(pack_choices=True, steps=2), progress=True)
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))
    assert ("train.pack_choices: training unpacked" in capsys.readouterr().err) == (not packs)


@pytest.mark.parametrize("name", ["pack_choices", "bf16"])
def test_a_switch_that_is_not_true_or_false_is_refused(name):
    from bara_pyro.models.config import ConfigError

    with pytest.raises(ConfigError, match=f"{name} must be true or false, got 'maybe'"):
        TrainConfig(**{name: "maybe"})


def test_a_stochastic_models_packed_loss_has_the_unpacked_loss_distribution(smollm_tokenizer):
    """Tied gates with choice_draws: prefix (what bara_singular trains with): the packed row draws the shared prefix's
    gates once and each choice's own, as the unpacked choices share them, so the loss over 200 draws has the same
    mean (to Monte Carlo error) and spread."""
    from builders import tiny_cloze_model

    model, task = tiny_cloze_model(smollm_tokenizer, choice_draws="prefix",
                                   guide={"local": {"name": "conditional_prior"}},
                                   prior={"sparsity": {"name": "contextual_beta_process"}})
    assert model.packs_choices(1)
    batch = task.collate(question_rows(6, mixed=True))
    model.dataset_size, model.kl_beta = 6, 1.0
    model.train()
    losses = {}
    with torch.no_grad():
        for pack in (False, True):
            pyro.set_rng_seed(int(pack))
            b = task.pack(batch) if pack else batch
            losses[pack] = torch.stack([model.fused_loss(b)[0] for _ in range(200)])
    unpacked, packed = losses[False], losses[True]
    assert unpacked.std() > 0  # the draws move the loss
    assert (packed.mean() - unpacked.mean()).abs() < 4 * unpacked.std() * (2 / 200) ** 0.5
    assert 0.7 < float(packed.std() / unpacked.std()) < 1.4
