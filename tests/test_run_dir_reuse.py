"""A run directory is reused only by a run of the same config: another config is an error, or is replaced."""

import pytest
from safetensors.torch import load_file

from bara_pyro.experiment import run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.models.errors import ConfigError

TINY = ["model=tiny-bert", "dataset=rt_sst2", "data.max_train_examples=32", "eval.max_examples=16",
        "eval.num_samples=2", "train.steps=3", "train.batch_size=4", "train.device=cpu", "train.log_every=1"]


def _config(lr: float) -> dict:
    return load_config(method="bara", overrides=TINY + [f"train.lr={lr}"])


def test_a_run_of_another_config_is_never_reused(tmp_path):
    run = tmp_path / "run"
    run_experiment(_config(1e-3), run, progress=False)
    first_weights = load_file(run / "adapter_model.safetensors")

    with pytest.raises(ConfigError, match="holds a run with another config"):
        run_experiment(_config(2e-2), run, progress=False)
    assert "lr: 0.001" in (run / "config.yaml").read_text()  # the refused run changed nothing

    replaced = run_experiment(_config(2e-2), run, progress=False, replace=True)
    assert replaced["train_time_s"] > 0  # trained again, not loaded
    assert "lr: 0.02" in (run / "config.yaml").read_text()
    weights = load_file(run / "adapter_model.safetensors")
    assert any(not (weights[k] == first_weights[k]).all() for k in weights)

    again = run_experiment(_config(2e-2), run, progress=False)  # the same config: the trained adapter is reused
    assert again["train_time_s"] == 0.0 and again["test"]["accuracy"] == replaced["test"]["accuracy"]


def test_no_gate_examples_means_no_gate_export(tmp_path):
    """eval.gate_examples=0 skips the gate export (no gates.npz, no effective rank) instead of predicting on no rows."""
    config = load_config(method="bara", overrides=TINY + ["eval.gate_examples=0", "eval.importance_draws=0"])
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    assert metrics["effective_rank"] is None and metrics["update_rank"] is None
    assert not (tmp_path / "run" / "gates.npz").exists()
    assert metrics["test"]["num_examples"] == 16


def test_the_estimator_does_not_make_another_run():
    """``svi`` and ``fused`` optimise the same ELBO, as the device computes it anywhere: a run saved with one is
    the same run for the other (results of either estimator aggregate together); the learning rate is not."""
    from bara_pyro.experiment import comparable_config

    svi = load_config(method="lora", overrides=TINY + ["train.estimator=svi"])
    fused = load_config(method="lora", overrides=TINY + ["train.estimator=fused"])
    assert svi["train"]["estimator"] == "svi" and fused["train"]["estimator"] == "fused"
    assert comparable_config(svi) == comparable_config(fused)
    assert comparable_config(_config(1e-3)) != comparable_config(_config(2e-2))


def test_evaluating_a_run_again_gives_the_same_numbers(tmp_path):
    """The sampled predictive draws from a seeded stream: a run whose adapter is reused, or evaluated again with
    ``bara-pyro evaluate``, reports what its first evaluation reported (not only the accuracy: NLL, ECE, Brier)."""
    from bara_pyro.experiment import evaluate_run

    run = tmp_path / "run"
    first = run_experiment(_config(1e-3), run, progress=False)
    again = run_experiment(_config(1e-3), run, progress=False)
    assert again["train_time_s"] == 0.0
    assert again["test"] == first["test"]
    evaluated = evaluate_run(run, progress=False)
    assert evaluated["test"] == first["test"]
