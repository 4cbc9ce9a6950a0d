"""A prediction pass stopped by SIGTERM resumes from its checkpoint to the uninterrupted pass, bit for bit;
so does a run whose evaluation was stopped."""

import json
import signal

import pyro
import pytest
import torch
from builders import TokenTask, make_tiny_bert

from bara_pyro import BaRAConfig, experiment, get_bara_model
from bara_pyro.experiment import PARTIAL_PREDICTION_PREFIX, run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import predict


class SignalAt:
    """Wraps a task; the ``at``-th collate (1-based) sends this process SIGTERM, as ``timeout`` would."""

    def __init__(self, task, at):
        self.task, self.at, self.calls = task, at, 0

    def collate(self, rows):
        self.calls += 1
        if self.calls == self.at:
            signal.raise_signal(signal.SIGTERM)
        return self.task.collate(rows)

    def __getattr__(self, name):
        return getattr(self.task, name)


def rows(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"ids": torch.randint(1, 100, (6,), generator=g), "label": i % 2} for i in range(n)]


@pytest.fixture
def model():
    task = TokenTask()
    return get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, gamma0=2.0), forward_fn=task.scores)


def same(a, b):
    assert torch.equal(a.probs, b.probs) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.sample_probs, b.sample_probs)
    assert a.effective_rank == b.effective_rank


@pytest.mark.parametrize("stop_at", [2, 5])  # mid-pass, and on the last batch
def test_stopped_prediction_resumes_to_the_uninterrupted_pass(model, tmp_path, stop_at):
    task, data, path = TokenTask(), rows(37), tmp_path / "pass.pt"
    kwargs = dict(num_samples=3, batch_size=8, progress=False)
    pyro.set_rng_seed(0)
    reference = predict(model, task, data, **kwargs)
    after_reference = torch.rand(4)  # where the uninterrupted pass leaves the random stream

    pyro.set_rng_seed(0)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=f"after {min(stop_at * 8, 37)} of 37 examples"):
        predict(model, SignalAt(task, stop_at), data, checkpoint=path, **kwargs)
    assert path.exists()
    assert signal.getsignal(signal.SIGTERM) is handler  # put back
    torch.rand(100)  # a new process: the stream is elsewhere
    resumed = predict(model, task, data, checkpoint=path, **kwargs)
    same(resumed, reference)
    assert torch.equal(torch.rand(4), after_reference)

    torch.rand(100)
    again = predict(model, task, data, checkpoint=path, **kwargs)  # a finished pass is returned as it was
    same(again, reference)
    assert torch.equal(torch.rand(4), after_reference)


def test_a_checkpoint_of_other_rows_or_settings_is_ignored(model, tmp_path):
    task, path = TokenTask(), tmp_path / "pass.pt"
    pyro.set_rng_seed(0)
    with pytest.raises(KeyboardInterrupt):
        predict(model, SignalAt(task, 2), rows(20), num_samples=3, batch_size=8, progress=False, checkpoint=path)
    for data, s in ((rows(20, seed=1), 3), (rows(20), 2)):
        pyro.set_rng_seed(1)
        fresh = predict(model, task, data, num_samples=s, batch_size=8, progress=False)
        pyro.set_rng_seed(1)
        from_file = predict(model, task, data, num_samples=s, batch_size=8, progress=False, checkpoint=path)
        same(from_file, fresh)


def test_without_a_checkpoint_a_signal_is_not_caught(model):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("outer"))
    try:
        predict(model, SignalAt(TokenTask(), 2), rows(20), num_samples=2, batch_size=8, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["outer"]


TINY = ["model=tiny-bert", "dataset=rt_sst2", "data.max_train_examples=8", "eval.max_examples=24",
        "eval.batch_size=4", "eval.num_samples=3", "eval.splits=[validation,test]", "eval.importance_draws=0",
        "eval.gate_examples=4", "train.steps=2", "train.batch_size=4", "train.checkpoint_every=0",
        "train.device=cpu"]


def test_run_whose_evaluation_was_stopped_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    config = load_config(method="bara", overrides=TINY)
    reference = run_experiment(config, tmp_path / "reference", progress=False)

    real_predict, calls = experiment.predict, []

    def stopped_once(model, task, data, **kwargs):
        calls.append(1)
        return real_predict(model, SignalAt(task, 3) if len(calls) == 2 else task, data, **kwargs)

    monkeypatch.setattr(experiment, "predict", stopped_once)  # the 2nd pass: the test split
    run_dir = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt, match="prediction interrupted after 12 of 24 examples"):
        run_experiment(config, run_dir, progress=False)
    assert (run_dir / f"{PARTIAL_PREDICTION_PREFIX}test.m0.pt").exists()
    assert (run_dir / f"{PARTIAL_PREDICTION_PREFIX}validation.m0.pt").exists()
    monkeypatch.setattr(experiment, "predict", real_predict)
    torch.rand(100)
    resumed = run_experiment(config, run_dir, resume=True, progress=False)
    for split in ("validation", "test"):
        assert resumed[split] == reference[split], split
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == reference["test"]
    assert not list(run_dir.glob(PARTIAL_PREDICTION_PREFIX + "*"))


def test_run_trained_before_is_evaluated_on_the_training_device(tmp_path, monkeypatch):
    """A run whose training finished in an earlier process (DONE, weights saved) is loaded and evaluated on
    ``train.device``, as a run that trains in the same process is, not on the device the backbone loads on."""
    config = load_config(method="bara", overrides=TINY)
    run_dir = tmp_path / "run"
    run_experiment(config, run_dir, progress=False)
    (run_dir / "metrics.json").unlink()

    class Evaluated(Exception):
        pass

    seen = []

    def record_devices(models, *args):
        seen.extend({p.device.type for p in m.parameters()} | {p.device.type for p in m.backbone.parameters()}
                    for m in models)
        raise Evaluated

    monkeypatch.setattr(experiment, "resolve_device", lambda name: torch.device("meta"))
    monkeypatch.setattr(experiment, "_evaluate", record_devices)
    with pytest.raises(Evaluated):
        run_experiment(config, run_dir, resume=True, progress=False)
    assert seen == [{"meta"}]
