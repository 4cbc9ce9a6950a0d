"""The training log: the fused step's recorded per-layer gate KLs equal each gate's closed-form KL; the logged NLL
is the batch's, the rest of the loss the KL."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from builders import TokenTask, make_batch, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.inference.graphed_step import TrainStep
from bara_pyro.inference.optim import TorchOptimizer
from bara_pyro.inference.trainer import _gate_global_kls
from bara_pyro.methods import load_preset

CONFIGS = {
    "bara": BaRAConfig(r=4),
    "bara_singular": BaRAConfig(r=4, gamma0=2.0, prior={"sparsity": "contextual_beta_process", "magnitude": "none"},
                                guide={"local": {"name": "conditional_prior"},
                                       "global": {"name": "mean_field", "init_strength": 10.0}},
                                weights={"name": "singular_slab", "ard": "off", "slab": "moment"}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recorded_layer_kls_equal_the_gates_own(name):
    model = get_bara_model(make_tiny_bert(), CONFIGS[name])
    with torch.no_grad():
        for _, gate in model.gates:
            for p in gate.parameters():
                p.add_(torch.randn_like(p) * 0.3)  # every layer's posterior its own
    model.dataset_size = 37
    model.fused_loss(make_batch())
    assert model.ctx.kl_gate_layers is not None  # the fused step recorded them
    recorded = _gate_global_kls(model, model.gates)
    model.ctx.kl_gate_layers = None
    per_gate = _gate_global_kls(model, model.gates)
    assert set(recorded) == set(per_gate) == {p for p, _ in model.gates}
    assert len(set(per_gate.values())) == len(per_gate)
    for path, value in per_gate.items():
        assert recorded[path] == pytest.approx(value, rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- the logged NLL
def _preset_model(name: str, task):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    seen = {}

    def forward(backbone, batch):  # the last scores the likelihood saw, and their labels
        scores = task.scores(backbone, batch)
        seen.update(scores=scores.detach(), labels=batch.labels)
        return scores

    model = get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, **load_preset(name)["adapter"]),
                           forward_fn=forward)
    return model, seen


def _toy_rows(n=24):
    g = torch.Generator().manual_seed(0)
    return [{"ids": torch.randint(8, 100, (6,), generator=g), "label": i % 2} for i in range(n)]


@pytest.mark.parametrize("estimator", ["fused", "svi"])
@pytest.mark.parametrize("name", ["bara_singular", "blob", "lora"])
def test_logged_nll_is_the_batch_nll_and_the_rest_of_the_loss_is_the_kl(name, estimator):
    """Each row's ``nll`` is the log step's batch NLL per example, ``-sum_b log p(y_b) / B``; ``loss - nll`` is every
    KL term (gates and weights) per training example at beta = 1, so 0 for LoRA."""
    task, rows, batch_size = TokenTask(), _toy_rows(), 8
    model, seen = _preset_model(name, task)
    checked = []

    def on_log(row):
        nll = F.cross_entropy(seen["scores"].double(), seen["labels"]).item()  # mean over the batch's B examples
        assert seen["labels"].shape[0] == batch_size
        assert row["nll"] == pytest.approx(nll, rel=1e-5, abs=1e-6)
        if name == "lora":
            assert row["loss"] == pytest.approx(row["nll"], rel=1e-5, abs=1e-6)
        elif estimator == "fused":  # the step's KL terms as the fused estimator recorded them
            ctx, n = model.ctx, len(rows)
            kl = sum(float(v.detach()) for v in ctx.kl_global.values()) + n / batch_size * sum(
                float(v.detach()) for v in ctx.kl_local.values())
            assert kl / n > 1e-3
            assert row["loss"] - row["nll"] == pytest.approx(kl / n, rel=1e-4, abs=1e-5)
        checked.append(row["step"])

    config = TrainConfig(steps=3, batch_size=batch_size, lr=1e-2, estimator=estimator, kl_warmup_steps=0,
                         log_every=1, checkpoint_every=0, device="cpu")
    fit(model, task, rows, config, progress=False, on_log=on_log)
    assert checked == [1, 2, 3]


def test_svi_rows_give_the_global_kls_of_the_parameters_the_step_used():
    """On Pyro's SVI path a row's global gate KL is that of the parameters its loss was computed at (those the
    previous step left), not of the parameters its own optimizer step left."""
    task, rows = TokenTask(), _toy_rows()
    model, _ = _preset_model("bara_singular", task)
    left = []

    def current_kl():
        return sum(_gate_global_kls(model, model.gates).values())

    def on_log(row):
        if left:
            assert row["kl_global"] == pytest.approx(left[-1], rel=1e-6)
            assert row["kl_global"] != pytest.approx(current_kl(), rel=1e-4)  # the step moved the globals
        left.append(current_kl())

    config = TrainConfig(steps=3, batch_size=8, lr=1e-2, estimator="svi", local_kl="draw", kl_warmup_steps=0,
                         log_every=1, checkpoint_every=0, device="cpu")
    fit(model, task, rows, config, progress=False, on_log=on_log)
    assert len(left) == 3


def test_the_static_step_keeps_the_log_likelihood_in_one_buffer():
    """The graph-ready step copies each step's log-likelihood into one device buffer (what a captured graph
    replays), as it does the loss."""
    task, rows = TokenTask(), _toy_rows()
    model, seen = _preset_model("bara_singular", task)
    model.dataset_size = len(rows)
    optim = TorchOptimizer(model.trainable_parameters(), lr=1e-2, tensor_lr=True)
    step = TrainStep(model, optim, "cpu", static=True)
    buffer = step.loglik
    model.train()
    for i in range(2):
        step(task.collate(rows[4 * i:4 * i + 4]), 1.0)
        assert step.loglik is buffer
        nll = F.cross_entropy(seen["scores"].double(), seen["labels"], reduction="sum").item()
        assert float(buffer) == pytest.approx(-nll, rel=1e-5)


@pytest.mark.parametrize("svi", [{"num_particles": 2}, {"jit": True}])
def test_no_nll_where_the_step_does_not_give_it(svi):
    """Several ELBO particles (the loss averages them) or a compiled SVI step (no scores in Python): no ``nll``."""
    pyro.clear_param_store()
    task = TokenTask()
    model = get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(
        r=4, gate="none", weights={"name": "map_gaussian"}, modules_to_save=[]), forward_fn=task.scores)
    config = TrainConfig(steps=2, batch_size=8, estimator="svi", log_every=1, checkpoint_every=0, device="cpu", **svi)
    history = fit(model, task, _toy_rows(), config, progress=False).history
    assert len(history) == 2 and not any("nll" in row for row in history)
