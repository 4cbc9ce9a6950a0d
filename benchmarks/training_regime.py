"""Which regime a suite's runs are in: how many passes over its training set each run made, how well it fits them late
in training, and whether its test predictions are over- or under-confident.

For each run folder (``.../runs/METHOD/TASK/seedN``): passes = ``train.steps x train.batch_size / |train split|``;
the logged running training accuracy after ``--from-step`` (``train_accuracy_tail.py``); the test split's accuracy,
NLL and mean predictive entropy ``H``, and the calibration gap ``NLL - H``. A model whose labels were drawn from its own
predictive distribution would have an expected NLL equal to its expected entropy, so a positive gap means the model
puts less probability on the true answers than it expects to (over-confident), a negative one more (under-confident).
The table averages the runs of each method and task.

    python benchmarks/training_regime.py [--from-step 800] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml
from train_accuracy_tail import tail_accuracy

from bara_pyro.data import load_task_dataset


def run_regime(run_dir: str | Path, from_step: int, train_sizes: dict) -> dict:
    """One run's passes over its training split, late training accuracy and test accuracy, NLL, entropy and gap."""
    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        test = json.loads((run_dir / "metrics.json").read_text())["test"]
    except (OSError, KeyError) as err:
        raise SystemExit(f"error: {run_dir} has no config.yaml or no test metrics in metrics.json ({err})")
    dataset, seed = config["dataset"], config["data"]["seed"]
    if (dataset, seed) not in train_sizes:
        train_sizes[(dataset, seed)] = len(load_task_dataset(dataset, seed=seed)["train"])
    size = train_sizes[(dataset, seed)]
    limit = config["data"].get("max_train_examples")
    size = min(size, limit) if limit else size
    return {"passes": config["train"]["steps"] * config["train"]["batch_size"] / size,
            "train_accuracy": tail_accuracy(run_dir, from_step), "accuracy": test["accuracy"], "nll": test["nll"],
            "entropy": test["mean_entropy"], "gap": test["nll"] - test["mean_entropy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-step", type=int, default=800)
    p.add_argument("runs", nargs="+", help="run folders .../runs/METHOD/TASK/seedN")
    args = p.parse_args()
    groups, sizes = defaultdict(list), {}
    for run in args.runs:
        method, task = Path(run).parts[-3:-1]
        groups[(method, task)].append(run_regime(run, args.from_step, sizes))
    print(f"| method | task | runs | passes over the training set | training accuracy after step {args.from_step} "
          "| test accuracy | test NLL | test mean entropy | NLL - entropy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (method, task), rows in sorted(groups.items()):
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        print(f"| {method} | {task} | {len(rows)} | {mean['passes']:.1f} | {mean['train_accuracy']:.2f} "
              f"| {mean['accuracy']:.3f} | {mean['nll']:.3f} | {mean['entropy']:.3f} | {mean['gap']:+.3f} |")


if __name__ == "__main__":
    main()
