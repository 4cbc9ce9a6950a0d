"""train.deterministic: deterministic kernels inside the run, the previous settings after it, and a clear
error when CUDA already runs without cuBLAS's fixed workspace."""

import os

import pytest
import torch

from bara_pyro.experiment_config import load_config
from bara_pyro.inference import determinism
from bara_pyro.inference.determinism import CUBLAS_WORKSPACE_CONFIG, DeterminismError, deterministic_algorithms
from bara_pyro.models.config import ConfigError


def test_settings_inside_and_restored_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_too_late_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(DeterminismError, match=f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE_CONFIG} in the environment"):
        with deterministic_algorithms():
            pass
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # set by the user before CUDA started: fine
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
    assert issubclass(DeterminismError, ConfigError) and determinism.__all__


def test_config_key():
    assert load_config(overrides=["model=tiny-bert"])["train"]["deterministic"] is False
    assert load_config(overrides=["model=tiny-bert", "train.deterministic=true"])["train"]["deterministic"] is True
    with pytest.raises(ConfigError, match="deterministic must be true or false"):
        load_config(overrides=["model=tiny-bert", "train.deterministic=1"])


def test_training_runs_under_deterministic_algorithms(monkeypatch):
    """fit() turns the setting on for its steps (seen from inside the model's forward) and off afterwards."""
    from builders import TokenTask, make_tiny_bert

    from bara_pyro import BaRAConfig, get_bara_model
    from bara_pyro.inference import TrainConfig, fit

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    task, seen = TokenTask(), []

    def scores(backbone, batch):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return task.scores(backbone, batch)

    model = get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=2), forward_fn=scores)
    g = torch.Generator().manual_seed(0)
    rows = [{"ids": torch.randint(1, 100, (5,), generator=g), "label": i % 2} for i in range(8)]
    fit(model, task, rows, TrainConfig(steps=2, batch_size=4, estimator="fused", device="cpu", deterministic=True),
        progress=False)
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
