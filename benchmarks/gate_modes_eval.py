"""What a gated run's adapter does without its gates: the validation (or test) metrics of the trained adapter with
the gates at their posterior means (``mode="mean"``, what ``bara-pyro evaluate --num-samples 0`` runs, on the same
rows: the first ``eval.max_examples`` of the split) and with
every gate switched on (``mode="ones"``: the update ``(alpha / r) B diag(lambda) A`` of every component, magnitudes
at their means).  If both score alike, what the gates cost is in what the adapter learned while training with them,
not in the gates at prediction.

    python benchmarks/gate_modes_eval.py RUN_DIR [RUN_DIR ...] [--split validation|test] [--batch-size 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bara_pyro.experiment import build_backbone_and_task, load_run_config
from bara_pyro.metrics import classification_metrics
from bara_pyro.models.bara_model import BaRAModel

MODES = ("mean", "ones")


@torch.no_grad()
def mode_metrics(run_dir: Path, split: str, batch_size: int) -> dict[str, dict[str, float]]:
    """``{mode: {"accuracy", "nll", "ece"}}`` of the run's adapter on ``split``, for each of :data:`MODES`."""
    config = load_run_config(run_dir)
    if config["ensemble"]["members"] > 1:
        raise SystemExit(f"error: {run_dir} is an ensemble; evaluate one member's folder")
    backbone, _, task, data = build_backbone_and_task(config)
    if not len(data[split]):
        raise SystemExit(f"error: {run_dir}'s dataset has no {split} split")
    model = BaRAModel.from_pretrained(backbone, run_dir, forward_fn=task.scores).eval()  # backbone too
    if not any(adapter.gate is not None for _, adapter in model.adapter_items):
        raise SystemExit(f"error: {run_dir} has no gates ({config['method']})")
    rows, limit = data[split], config["eval"]["max_examples"]  # the rows the run itself was evaluated on
    rows = rows if limit is None or limit >= len(rows) else rows.select(range(limit))
    out = {}
    for mode in MODES:
        probs, labels = [], []
        for start in range(0, len(rows), batch_size):
            batch = task.collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            probs.append(torch.softmax(model.scores(batch, mode=mode).float(), -1))
            labels.append(batch.labels)
        metrics = classification_metrics(torch.cat(probs), torch.cat(labels))
        out[mode] = {key: metrics[key] for key in ("accuracy", "nll", "ece")}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be positive, got {args.batch_size}")
    print(f"| run | gates | ACC | NLL | ECE |  ({args.split})")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for mode, m in mode_metrics(run, args.split, args.batch_size).items():
            print(f"| {run.name} | {mode} | {m['accuracy']:.3f} | {m['nll']:.3f} | {m['ece']:.3f} |")


if __name__ == "__main__":
    main()
