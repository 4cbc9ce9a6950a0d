"""A training process killed mid-run resumes from its checkpoint and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ARGS = ["--set", "model=tiny-bert", "--set", "dataset=rt_sst2", "--set", "data.max_train_examples=256",
        "--set", "eval.max_examples=32", "--set", "eval.num_samples=2", "--set", "eval.gate_examples=16",
        "--set", "eval.importance_draws=0", "--set", "train.steps=160", "--set", "train.batch_size=8",
        "--set", "train.checkpoint_every=20", "--set", "train.log_every=10", "--set", "train.device=cpu",
        "--set", "train.lr=0.01", "--set", "adapter.r=4", "--quiet"]


def train(out, *extra):
    return [sys.executable, "-m", "bara_pyro.cli", "train", *extra, "--output", str(out)]


def checkpoint_step(run_dir):
    state = run_dir / "checkpoint" / "state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_training_resumes_to_the_same_result(tmp_path, sig):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(train(reference, *ARGS), check=True, timeout=600, capture_output=True)

    proc = subprocess.Popen(train(killed, *ARGS), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while checkpoint_step(killed) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    step = checkpoint_step(killed)
    assert 40 <= step < 160
    assert not (killed / "adapter_model.safetensors").exists()
    stopped = json.loads((killed / "timing.json").read_text()) if sig == signal.SIGTERM else None
    if stopped is not None:  # a stopped segment leaves its times; a killed one cannot
        assert stopped["segments"] == 1 and stopped["train_time_s"] > 0

    done = subprocess.run([sys.executable, "-m", "bara_pyro.cli", "train", "--resume", str(killed), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a = load_file(str(reference / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    steps = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 160
    ref_metrics = json.loads((reference / "metrics.json").read_text())["test"]
    metrics = json.loads((killed / "metrics.json").read_text())["test"]
    assert metrics["nll"] == pytest.approx(ref_metrics["nll"], rel=1e-6)
    # the times add up over the segments: the stopped one and the resume
    resumed = json.loads((killed / "metrics.json").read_text())
    if stopped is not None:
        assert resumed["segments"] == 2
        assert resumed["train_time_s"] > stopped["train_time_s"]
        assert resumed["wall_time_s"] > stopped["wall_time_s"]
    else:
        assert resumed["segments"] == 1
    assert json.loads((reference / "metrics.json").read_text())["segments"] == 1
