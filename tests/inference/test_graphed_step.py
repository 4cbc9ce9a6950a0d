"""The graph-ready training step (static buffers, device-tensor beta and learning rates, no host sync) trains
exactly as the plain eager step; padded batches score as unpadded ones."""

import contextlib

import pyro
import pytest
import torch
from builders import TokenTask, make_tiny_bert
from transformers import AutoTokenizer

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.assets import resolve_model
from bara_pyro.backbones import tiny_backbone
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.inference.graphed_step import TrainStep
from bara_pyro.inference.optim import TorchOptimizer, warmup_linear_decay
from bara_pyro.inference.trainer import DataOrder, _param_groups
from bara_pyro.tasks import MultipleChoiceTask, SequenceClassificationTask

STEPS = 6


def toy_rows(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"ids": torch.randint(8, 100, (6,), generator=g), "label": i % 2} for i in range(n)]


def _config(**kw):
    return TrainConfig(steps=STEPS, batch_size=4, lr=3e-3, estimator="fused", kl_warmup_steps=4, log_every=2,
                       checkpoint_every=0, device="cpu", **kw)


def _model(adapter: dict):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    task = TokenTask()
    model = get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, **adapter), forward_fn=task.scores)
    return model, task


def _eager_reference(adapter: dict, config: TrainConfig, rows):
    """The training loop of the fused estimator as written before the graph-ready step (one step at a time,
    gate statistics on log steps, float beta and learning rates)."""
    model, task = _model(adapter)
    model.dataset_size = len(rows)
    pyro.set_rng_seed(config.seed)
    optim = TorchOptimizer(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay,
                           clip_norm=config.clip_norm,
                           lr_lambda=warmup_linear_decay(config.steps, config.warmup_ratio, config.lr_schedule))
    order = DataOrder(len(rows), config.batch_size, config.seed)
    model.train()
    model.backbone.train()
    losses = []
    for step in range(config.steps):
        batch = task.collate([rows[i] for i in order.indices(step)])
        model.kl_beta = min(1.0, (step + 1) / config.kl_warmup_steps)
        model.ctx.collect_stats = (step + 1) % config.log_every == 0 or step + 1 == config.steps
        loss, _ = model.fused_loss(batch)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    model.ctx.collect_stats = False
    return model, losses


def _static_run(adapter: dict, config: TrainConfig, rows):
    """The same run through :class:`TrainStep` in its static (graph-ready) setting, without capture."""
    model, task = _model(adapter)
    model.dataset_size = len(rows)
    pyro.set_rng_seed(config.seed)
    optim = TorchOptimizer(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay,
                           clip_norm=config.clip_norm, tensor_lr=True,
                           lr_lambda=warmup_linear_decay(config.steps, config.warmup_ratio, config.lr_schedule))
    step_fn = TrainStep(model, optim, "cpu", contextlib.nullcontext(), static=True)
    order = DataOrder(len(rows), config.batch_size, config.seed)
    model.train()
    model.backbone.train()
    losses = []
    for step in range(config.steps):
        batch = task.collate([rows[i] for i in order.indices(step)])
        loss = step_fn(batch, min(1.0, (step + 1) / config.kl_warmup_steps), collect_stats=True)
        assert loss is step_fn.loss  # one device buffer, read when the trainer logs
        losses.append(float(loss))
    assert isinstance(model.kl_beta, float) and torch.is_tensor(optim.optimizer.param_groups[0]["lr"])
    return model, losses


ADAPTERS = {
    "bara": {},
    "lora": {"gate": "none"},
    "blob": {"gate": "none", "weights": {"name": "blob_gaussian"}},
    "bara_slab_per_sequence": {"gamma0": 1.0, "prior": {"sparsity": "contextual_beta_process", "magnitude": "none"},
                               "guide": {"local": {"name": "conditional_prior", "per": "sequence"},
                                         "global": {"name": "mean_field", "init_strength": 10.0}},
                               "weights": {"name": "slab_gaussian", "posterior_scale": "relative"}},
}


@pytest.mark.parametrize("method", list(ADAPTERS))
def test_static_and_fit_steps_match_the_eager_reference(method):
    rows = toy_rows()
    config = _config()
    ref_model, ref_losses = _eager_reference(ADAPTERS[method], config, rows)
    ref = {k: v.clone() for k, v in ref_model.adapter_state_dict().items()}

    model, task = _model(ADAPTERS[method])
    result = fit(model, task, rows, config, progress=False)
    got = model.adapter_state_dict()
    assert result.steps == STEPS
    assert result.graphs is None  # nothing captured on a CPU: no graph set-up to report
    for name, value in ref.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=f"fit: {name}")
    torch.testing.assert_close(result.history[-1]["loss"] * len(rows), ref_losses[-1], rtol=1e-6, atol=1e-6)

    static_model, static_losses = _static_run(ADAPTERS[method], config, rows)
    got = static_model.adapter_state_dict()
    for name, value in ref.items():  # a float32 learning-rate tensor: equal to float32 rounding
        torch.testing.assert_close(got[name], value, rtol=2e-5, atol=1e-7, msg=f"static: {name}")
    torch.testing.assert_close(torch.tensor(static_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)


def test_optimizer_state_moves_between_float_and_tensor_learning_rates():
    model, _ = _model({"gate": "none"})
    params = model.trainable_parameters()
    eager = TorchOptimizer(params, lr=1e-3, lr_lambda=warmup_linear_decay(10, 0.2))
    static = TorchOptimizer(params, lr=1e-3, lr_lambda=warmup_linear_decay(10, 0.2), tensor_lr=True)
    for opt in (eager, static):
        for _ in range(3):
            opt.step_schedule()
    assert eager.lr == pytest.approx(static.lr, rel=1e-6)
    static.set_state(eager.get_state())
    assert torch.is_tensor(static.optimizer.param_groups[0]["lr"])
    eager.set_state(static.get_state())
    assert isinstance(eager.optimizer.param_groups[0]["lr"], float)
    assert eager.lr == pytest.approx(static.lr, rel=1e-6)


def test_train_config_graph_options_are_checked():
    assert TrainConfig().graphs is True and TrainConfig().jit is False
    from bara_pyro.models.errors import ConfigError

    with pytest.raises(ConfigError, match="pad_multiple"):
        TrainConfig(pad_multiple=0)
    with pytest.raises(ConfigError, match="graphs"):
        TrainConfig(graphs="yes")
    with pytest.raises(ConfigError, match="jit: true .* needs estimator: svi"):
        TrainConfig(jit=True)  # the fused estimator has no Pyro trace to compile


def test_every_method_trains_with_the_capturable_estimator_by_default():
    """``fit()`` captures the fused estimator's step on a GPU, never Pyro's SVI: the default and every packaged
    preset (the baselines included) train with it unless a user asks for ``svi``."""
    from bara_pyro.methods import load_preset, preset_names

    assert TrainConfig().estimator == "fused"
    for method in preset_names():
        train = TrainConfig.from_dict(load_preset(method).get("train", {}))
        assert train.estimator == "fused" and train.graphs, method


def test_capture_needs_a_cuda_device():
    model, _ = _model({"gate": "none"})
    optim = TorchOptimizer(model.trainable_parameters(), lr=1e-3, tensor_lr=True)
    with pytest.raises(ValueError, match="CUDA"):
        TrainStep(model, optim, "cpu", static=True, capture=True)


# ----------------------------------------------------------------------------- padding
MC_ROWS = [
    {"contexts": ["Question: Which is a planet?\nAnswer:"] * 3, "continuations": [" Mars", " the Moon", " a comet"],
     "label": 0},
    {"contexts": ["Passage about water.\nQuestion: is water wet?\nAnswer:"] * 4,
     "continuations": [" yes", " no", " maybe, it depends on what you mean by wet", " no"], "label": 1},
    {"contexts": ["A B C"] * 2, "continuations": [" D", " E F"], "label": 1},
]


@pytest.mark.parametrize("scoring", ["cloze", "lettered"])
def test_padded_multiple_choice_batches_score_the_same(smollm_tokenizer, scoring):
    backbone = tiny_backbone("causal_lm", "llama", tokenizer=smollm_tokenizer).eval()
    task = MultipleChoiceTask(smollm_tokenizer, scoring=scoring)
    rows = [dict(r, question="Q?", choices=[c.strip() for c in r["continuations"]]) for r in MC_ROWS]
    batch = task.collate(rows)
    padded = task.pad_batch(batch, 16)
    assert padded.inputs["input_ids"].shape[1] % 16 == 0
    if scoring == "cloze":
        assert padded.inputs["input_ids"].shape[0] == 12  # 9 sequences -> 16, capped at B * width = 3 * 4
        n_tokens = padded.extras["target_sequence"].shape[0]
        assert n_tokens >= 4 * 16 and n_tokens & (n_tokens - 1) == 0
        assert padded.token_mask.sum() == batch.token_mask.sum()  # dummies carry no gate tokens
    with torch.no_grad():
        torch.testing.assert_close(task.scores(backbone, padded), task.scores(backbone, batch), atol=1e-5, rtol=1e-5)


def test_padded_classification_batch_scores_the_same():
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    backbone = tiny_backbone("sequence_classification", "bert", tokenizer=tok).eval()
    task = SequenceClassificationTask(tok, num_labels=2)
    batch = task.collate([{"text": "a short one", "label": 0}, {"text": "a somewhat longer sentence here", "label": 1}])
    padded = task.pad_batch(batch, 32)
    assert padded.inputs["input_ids"].shape[1] == 32
    with torch.no_grad():
        torch.testing.assert_close(task.scores(backbone, padded), task.scores(backbone, batch), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- Pyro's compiled ELBO
def test_jit_elbo_equals_the_uncompiled_elbo():
    """JitTraceMeanField_ELBO on the flattened batch (train.jit) gives TraceMeanField_ELBO's loss and gradients at
    the same draws, for every warm-up weight beta (a tensor argument: not frozen into the trace).  BLoB with the
    shared sampler: Gaussian weight draws, closed-form KL.  (The gates' Beta and Gamma globals are drawn by
    rejection samplers whose compiled replays use the random stream differently: equal in distribution only.)"""
    from pyro.infer import JitTraceMeanField_ELBO, TraceMeanField_ELBO

    from bara_pyro.inference.jit_svi import FlatBatchModel

    model, task = _model({"gate": "none", "weights": {"name": "blob_gaussian", "sampler": "shared"},
                          "modules_to_save": []})  # train.jit: Pyro parameters only
    rows = toy_rows()
    model.dataset_size = len(rows)
    batch = task.collate(rows[:4])
    flat = FlatBatchModel(model)
    params = model.trainable_parameters()
    jit_elbo, elbo = JitTraceMeanField_ELBO(max_plate_nesting=2), TraceMeanField_ELBO(max_plate_nesting=2)
    with pyro.validation_enabled(False):
        args, kwargs = flat.flatten(batch, 0.5)
        jit_elbo.differentiable_loss(flat.model, flat.guide, *args, **kwargs)  # compiles
        for beta in (0.25, 1.0):
            pyro.set_rng_seed(7)
            args, kwargs = flat.flatten(batch, beta)
            compiled = jit_elbo.differentiable_loss(flat.model, flat.guide, *args, **kwargs)
            compiled_grads = torch.autograd.grad(compiled, params, allow_unused=True)
            pyro.set_rng_seed(7)
            model.kl_beta = beta
            plain = elbo.differentiable_loss(model.model, model.guide, batch)
            plain_grads = torch.autograd.grad(plain, params, allow_unused=True)
            torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-5)
            for a, b in zip(compiled_grads, plain_grads):
                if b is not None:  # summation orders differ: float32 rounding at the loss's scale
                    assert float((a - b).abs().max()) <= 1e-3 * float(b.abs().max()) + 5e-7 * float(plain.abs())


def test_jit_svi_trains_a_deterministic_model_as_plain_svi():
    rows = toy_rows()
    runs = {}
    for jit in (False, True):
        model, task = _model({"gate": "none", "weights": {"name": "map_gaussian"}, "modules_to_save": []})
        for module in model.backbone.modules():  # no dropout: nothing random, so the runs must agree
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        config = TrainConfig(steps=4, batch_size=4, lr=3e-3, estimator="svi", jit=jit, kl_warmup_steps=4,
                             log_every=1, checkpoint_every=0, device="cpu")
        result = fit(model, task, rows, config, progress=False)
        runs[jit] = ([r["loss"] for r in result.history], model.adapter_state_dict())
    torch.testing.assert_close(torch.tensor(runs[True][0]), torch.tensor(runs[False][0]), rtol=1e-5, atol=1e-6)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_jit_refuses_trainable_backbone_modules():
    from bara_pyro.models.errors import ConfigError

    model, task = _model({})
    with pytest.raises(ConfigError, match="modules_to_save"):
        fit(model, task, toy_rows(), TrainConfig(steps=1, estimator="svi", jit=True, device="cpu",
                                                 checkpoint_every=0), progress=False)
