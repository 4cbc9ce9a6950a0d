"""Every method preset trains and evaluates through the run layer on the demo dataset (Rotten Tomatoes ->
SST-2) and on a multiple-choice dataset (ARC-Easy, cloze), with tiny random backbones and tiny budgets."""

import json

import pytest

from bara_pyro.experiment import run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.methods import preset_names

TINY_BUDGET = ["data.max_train_examples=16", "eval.max_examples=8", "eval.num_samples=2", "eval.gate_examples=8",
               "eval.importance_draws=0", "train.steps=2", "train.batch_size=4", "train.checkpoint_every=0",
               "train.device=cpu", "ensemble.members=2"]


# the linearised Laplace predictive takes a Jacobian per choice through the tiny Llama's 49k-word head: minutes
SLOW = {("laplace_lora", "arc_easy"), ("projected_subspace_laplace", "arc_easy")}


@pytest.mark.parametrize("method,dataset,model", [
    pytest.param(method, dataset, model, marks=[pytest.mark.slow] if (method, dataset) in SLOW else [])
    for method in preset_names() for dataset, model in (("rt_sst2", "tiny-bert"), ("arc_easy", "tiny-llama"))])
def test_preset_trains_and_evaluates(method, dataset, model, tmp_path):
    config = load_config(method=method, overrides=TINY_BUDGET + [f"dataset={dataset}", f"model={model}"])
    if method != "ensemble":
        config["ensemble"]["members"] = 1
    metrics = run_experiment(config, tmp_path, progress=False)
    assert metrics["method"] == method
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["nll"] > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["ece"] == pytest.approx(metrics["test"]["ece"])
    assert (tmp_path / "predictions.npz").exists()
    gated = method.startswith("bara")
    assert (tmp_path / "gates.npz").exists() == gated
    assert (metrics["effective_rank"] is not None) == (gated or method == "bayeslora")  # gates, or pruned ranks
    # the spectrum of the mean update: one per single model, none for an ensemble (one update per member)
    assert (metrics["update_rank"] is None) == (method == "ensemble")
    # a post-hoc posterior reports what its fit chose
    laplace = method in ("laplace_lora", "projected_subspace_laplace")
    assert ("posterior" in saved) == laplace
    if laplace:
        (summary,) = saved["posterior"]
        assert summary["kind"] == "laplace" and summary["prior_precision"] > 0 and summary["fit_examples"] == 16
    if method != "ensemble":
        assert 0.0 <= metrics["update_rank"] <= config["adapter"]["r"]
        per_layer = list(saved["update_rank_per_layer"].values())
        assert per_layer and saved["update_rank"] == pytest.approx(sum(per_layer) / len(per_layer))


def test_laplace_lora_can_choose_its_prior_precision_on_the_validation_split(tmp_path):
    """With ``prior_precision_method: validation`` the run searches the prior precision on its validation split
    (``eval.max_examples`` of it) and ``metrics.json`` says so."""
    config = load_config(method="laplace_lora", overrides=TINY_BUDGET + [
        "dataset=rt_sst2", "model=tiny-bert", "ensemble.members=1", "eval.num_samples=0",
        "adapter.weights.prior_precision_method=validation"])
    run_experiment(config, tmp_path, progress=False)
    (summary,) = json.loads((tmp_path / "metrics.json").read_text())["posterior"]
    curve = summary["validation_nll"]
    assert summary["prior_precision_method"] == "validation" and curve["examples"] == 8
    assert summary["prior_precision"] == pytest.approx(curve["prior_precision"][min(
        range(len(curve["nll"])), key=curve["nll"].__getitem__)], rel=1e-6)
