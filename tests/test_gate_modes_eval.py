"""benchmarks/gate_modes_eval.py: a gated run's adapter scored with its gates at their means and all switched on."""

import json

import pytest
from builders import benchmark_script

from bara_pyro.experiment import run_experiment
from bara_pyro.experiment_config import load_config

TINY = ["model=tiny-bert", "dataset=rt_sst2", "data.max_train_examples=32", "eval.max_examples=24",
        "eval.num_samples=0", "eval.importance_draws=0", "train.steps=4", "train.batch_size=4", "train.device=cpu",
        "train.lr=0.05", "eval.splits=[validation]"]


def test_mean_gates_are_the_runs_own_evaluation_and_ones_differ(tmp_path):
    run = tmp_path / "run"
    metrics = run_experiment(load_config(method="bara_singular", overrides=TINY), run, progress=False)
    got = benchmark_script("gate_modes_eval").mode_metrics(run, "validation", batch_size=7)
    assert got["mean"]["accuracy"] == pytest.approx(metrics["validation"]["accuracy"])
    assert got["mean"]["nll"] == pytest.approx(metrics["validation"]["nll"], rel=1e-5)
    assert got["ones"]["nll"] != pytest.approx(got["mean"]["nll"], rel=1e-6)  # the gates' means are not all 1
    assert json.loads((run / "metrics.json").read_text())["validation"]["num_examples"] == 24


def test_a_run_without_gates_is_refused(tmp_path):
    run = tmp_path / "lora"
    run_experiment(load_config(method="lora", overrides=TINY), run, progress=False)
    with pytest.raises(SystemExit, match="has no gates"):
        benchmark_script("gate_modes_eval").mode_metrics(run, "validation", batch_size=8)
