"""Bad input ends with one clear line on stderr and exit status 2, never a stack trace."""

import os
import subprocess
import sys

import pytest

TINY = ["--set", "model=tiny-bert", "--set", "data.max_train_examples=32", "--set", "eval.max_examples=16",
        "--set", "train.steps=2", "--set", "train.device=cpu", "--quiet"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bara_pyro.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["train", "--set", "model=no-such-model"], "unknown model 'no-such-model'"),
    (["train", "--set", "dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--config", "/no/such/file.yaml"], "does not exist"),
    (["train", "--set", "adapter.r=0"], "r must be a positive integer"),
    (["train", "--set", "train.lr=-0.1"], "lr must be a positive number"),
    (["train", "--set", "adapter.temperature=0"], "temperature"),
    (["train", "--set", "train.stepz=3"], "unknown train field"),
    (["train", "--set", "eval.max_examples=0"], "eval.max_examples must be a positive integer or null"),
    (["train", "--set", "train.guide_delay_steps=-1"], "guide_delay_steps must be a non-negative integer"),
    (["train", "--method", "no-such-method"], "no-such-method"),
    (["evaluate", "/no/such/run"], "not a run directory"),
])
def test_bad_input_gives_one_line_error(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\nadapter: [\n")
    proc = run_cli("train", "--config", str(bad))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_target_modules_matching_nothing(tmp_path):
    proc = run_cli("train", *TINY, "--set", "adapter.target_modules=[q_proj]", "--output", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "matched no nn.Linear" in proc.stderr and "Traceback" not in proc.stderr


def test_train_into_a_run_of_another_config(tmp_path):
    out = str(tmp_path / "run")
    assert run_cli("train", *TINY, "--output", out).returncode == 0
    proc = run_cli("train", *TINY, "--set", "train.lr=0.01", "--output", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "holds a run with another config" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--set", "model=/nonexistent/model"], "model folder /nonexistent/model does not exist"),
    (["--set", "model=nonexistent-org/nonexistent-model", "--set", "train.device=cpu"], "cannot load model"),
    (["--set", "model=tiny-bert", "--set", "train.device=cuda:7"], "cuda:7"),
])
def test_model_and_device_that_do_not_exist(tmp_path, args, message):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the hub id case must not wait for a network
    proc = subprocess.run([sys.executable, "-m", "bara_pyro.cli", "train", "--method", "bara", *args, "--quiet",
                           "--output", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
