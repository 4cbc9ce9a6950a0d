"""The logged running training accuracy late in training: for each run folder (``.../runs/METHOD/TASK/seedN``), the
mean of ``train_log.jsonl[.gz]``'s ``accuracy`` over the steps after ``--from-step``; the table averages the runs of
each method and task.  A method with training noise logs its accuracy under its own draws.

    python benchmarks/train_accuracy_tail.py [--from-step 800] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from bara_pyro.analysis.rundir import read_train_log


def tail_accuracy(run_dir: str | Path, from_step: int) -> float:
    """Mean logged ``accuracy`` of the rows with ``step > from_step``."""
    run_dir = Path(run_dir)
    path = run_dir / "train_log.jsonl"
    if not path.exists():
        path = run_dir / "train_log.jsonl.gz"
    if not path.exists():
        raise SystemExit(f"error: {run_dir} has no train_log.jsonl[.gz]")
    rows = read_train_log(path)
    values = [r["accuracy"] for r in rows if r.get("step", 0) > from_step and r.get("accuracy") is not None]
    if not values:
        raise SystemExit(f"error: {path} logs no accuracy after step {from_step}")
    return statistics.fmean(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-step", type=int, default=800)
    p.add_argument("runs", nargs="+", help="run folders .../runs/METHOD/TASK/seedN")
    args = p.parse_args()
    groups = defaultdict(list)
    for run in args.runs:
        method, task = Path(run).parts[-3:-1]
        groups[(method, task)].append(tail_accuracy(run, args.from_step))
    print(f"| method | task | runs | training accuracy after step {args.from_step} |")
    print("|---|---|---|---|")
    for (method, task), values in sorted(groups.items()):
        print(f"| {method} | {task} | {len(values)} | {statistics.fmean(values):.2f} |")


if __name__ == "__main__":
    main()
