"""Data-parallel training on 2 CPU processes (gloo) equals 1 process on the same global batch and seed.

One spawn of 2 processes trains every case below; the parent trains the same cases on 1 process and compares
the adapters, the per-step ELBO and NLL (the mean over processes of each one's estimate) and a checkpoint written
by the 2-process run and resumed on 1 process.  The rows have different lengths, so each process pads its half of the
batch to its own length and the per-token gate noise must be cut from the global batch's draw.
"""

import json
import os
import socket

import pyro
import pytest
import torch
import torch.multiprocessing as mp
from transformers import BertConfig, BertForSequenceClassification

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.experiment import load_run_config, run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.tasks.base import Batch

CASES = {  # name: (method preset, train overrides)
    "lora": ("lora", {"estimator": "fused"}),
    "bara_expected": ("bara", {}),  # the preset: fused estimator, local KL in expectation over the globals
    "bara_draw": ("bara", {"local_kl": "draw"}),
    "bara_svi": ("bara", {"estimator": "svi", "local_kl": "draw"}),
    "bara_singular": ("bara_singular", {}),  # contextual gates tied to their prior, singular slab weights
}
STEPS, BATCH = 3, 8
RESUME_STEPS, STOP_AT = 4, 4


class PaddedTokenTask:
    """Rows ``{"ids": (T_i,), "label"}`` of different lengths, right-padded to the longest row of the batch."""

    name = "padded_toy"

    def collate(self, rows):
        length = max(len(r["ids"]) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["ids"])] = r["ids"]
        mask = (ids > 0).long()
        return Batch(inputs={"input_ids": ids, "attention_mask": mask},
                     labels=torch.tensor([r["label"] for r in rows]), token_mask=mask.bool())

    def scores(self, backbone, batch):
        return backbone(**batch.inputs).logits


def _rows(n=32):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 3 + int(torch.randint(0, 6, (1,), generator=g))
        rows.append({"ids": torch.randint(1, 100, (length,), generator=g), "label": i % 2})
    return rows


def _model(method: str, task):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     num_labels=2, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # dropout is drawn per process: off for exact equality
    backbone = BertForSequenceClassification(cfg).eval()
    adapter = {**load_config(method=method)["adapter"], "r": 4, "gamma0": 2.0}
    pyro.set_rng_seed(0)
    return get_bara_model(backbone, BaRAConfig.from_dict(adapter), forward_fn=task.scores)


def _train_config(overrides: dict, steps: int, **extra) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": BATCH, "lr": 1e-2, "guide_lr": 3e-2, "warmup_ratio": 0.0,
                          "log_every": 1, "checkpoint_every": 0, "device": "cpu", **overrides, **extra})


def _train_all(run_root):
    """Every case for STEPS steps, and one BaRA run stopped at STOP_AT with its checkpoint at step 2."""
    task, rows = PaddedTokenTask(), _rows()
    out = {}
    for name, (method, overrides) in CASES.items():
        model = _model(method, task)
        result = fit(model, task, rows, _train_config(overrides, STEPS), progress=False)
        out[name] = {"state": model.adapter_state_dict(), "loss": [r["loss"] for r in result.history],
                     "nll": [r["nll"] for r in result.history]}

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the backbone's blocks sharded across the processes (FSDP2)
        model = _model("bara", task)
        result = fit(model, task, rows, _train_config({"local_kl": "draw", "shard_backbone": True}, STEPS),
                     progress=False)
        out["bara_draw_sharded"] = {"state": model.adapter_state_dict(), "loss": [r["loss"] for r in result.history]}

    def stop(row):
        if row["step"] == STOP_AT:
            raise KeyboardInterrupt

    model = _model("bara", task)
    with pytest.raises(KeyboardInterrupt):
        fit(model, task, rows, _train_config({}, RESUME_STEPS + 2, checkpoint_every=2, log_every=2),
            run_dir=run_root / "stopped", progress=False, on_log=stop)
    return out


def _experiment_config() -> dict:
    return load_config(method="lora", overrides=["model=tiny-bert", "train.steps=2", "train.batch_size=4",
                                                 "train.device=cpu", "data.max_train_examples=8",
                                                 "eval.max_examples=4"])


def _worker(rank: int, world: int, port: int, root: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from pathlib import Path

    out = _train_all(Path(root))
    out["run_experiment"] = run_experiment(_experiment_config(), Path(root) / "run", progress=False)
    torch.save(out, Path(root) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp2")
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    return root


def test_two_processes_train_the_same_adapter_as_one(two_process_run, tmp_path):
    one = _train_all(tmp_path)
    ranks = [torch.load(two_process_run / f"rank{k}.pt", weights_only=False) for k in (0, 1)]
    for name in CASES:
        for key, value in one[name]["state"].items():
            torch.testing.assert_close(ranks[0][name]["state"][key], ranks[1][name]["state"][key], rtol=0, atol=0,
                                       msg=f"{name}: processes disagree on {key}")
            torch.testing.assert_close(ranks[0][name]["state"][key], value, rtol=1e-4, atol=1e-5,
                                       msg=f"{name}: {key} differs from the one-process run")
        # -ELBO / N and the NLL per example of each step: the mean of the two processes' estimates is the global batch's
        assert ranks[0][name]["loss"] == pytest.approx(one[name]["loss"], rel=1e-5), name
        assert ranks[0][name]["nll"] == pytest.approx(one[name]["nll"], rel=1e-5), name
    sharded = ranks[0]["bara_draw_sharded"]  # FSDP2 on the frozen blocks changes nothing but where weights live
    assert sharded["loss"] == pytest.approx(one["bara_draw"]["loss"], rel=1e-5)
    for key, value in one["bara_draw"]["state"].items():
        torch.testing.assert_close(sharded["state"][key], value, rtol=1e-4, atol=1e-5, msg=f"sharded: {key}")
    assert any(not torch.equal(v, _model("bara", PaddedTokenTask()).adapter_state_dict()[k])
               for k, v in one["bara_draw"]["state"].items()), "training changed nothing"


def test_checkpoint_of_two_processes_resumes_on_one(two_process_run, tmp_path):
    task, rows = PaddedTokenTask(), _rows()
    run_dir = two_process_run / "stopped"
    assert (run_dir / "checkpoint" / "state.json").read_text().startswith('{"step": 2')
    resumed = _model("bara", task)
    fit(resumed, task, rows, _train_config({}, RESUME_STEPS + 2, checkpoint_every=2, log_every=2), run_dir=run_dir,
        resume=True, progress=False)
    straight = _model("bara", task)
    fit(straight, task, rows, _train_config({}, RESUME_STEPS + 2, checkpoint_every=2, log_every=2), progress=False)
    for key, value in straight.adapter_state_dict().items():
        torch.testing.assert_close(resumed.adapter_state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_run_directory_records_the_processes_and_rank_0_reports(two_process_run):
    rank0, rank1 = (torch.load(two_process_run / f"rank{k}.pt", weights_only=False)["run_experiment"] for k in (0, 1))
    assert rank1 == {"world_size": 2, "rank": 1}  # the other ranks train, then leave the evaluation to rank 0
    assert rank0["world_size"] == 2 and "test" in rank0
    run_dir = two_process_run / "run"
    assert load_run_config(run_dir)["train"]["world_size"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    assert (run_dir / "adapter_model.safetensors").exists() and (run_dir / "checkpoint").exists()
