"""The time ``fit()`` spends outside its training steps: batch collation and padding, the schedules, the training
log and the checkpoints (the host's work that a captured step cannot hide when it exceeds the GPU's step time).

One complete run (``run_experiment``, as ``bara-pyro train`` runs it) per method; every call of
:class:`~bara_pyro.inference.graphed_step.TrainStep` is timed, and what ``fit()`` spent beside those calls is
reported.  Default: ``model=tiny-llama`` on the CPU, so that the figure is the host's work, not the arithmetic.

    python benchmarks/fit_outside_step.py [--methods lora bara_singular] [--steps 200] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bara_pyro.experiment import run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.inference.graphed_step import TrainStep

DEFAULTS = ["model=tiny-llama", "tokenizer=smollm2-135m", "dataset=arc_easy", "train.estimator=fused",
            "train.batch_size=8", "train.device=cpu", "train.checkpoint_every=100", "eval.splits=[validation]",
            "eval.max_examples=8", "eval.importance_draws=0"]


def outside_step_seconds(method: str, steps: int, overrides: list[str]) -> tuple[float, float]:
    """``(fit seconds, seconds inside the training steps)`` of one run of ``method``."""
    inside = [0.0]
    call = TrainStep.__call__

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return call(self, *args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - t0

    config = load_config(None, method=method, overrides=DEFAULTS + [f"train.steps={steps}"] + overrides)
    TrainStep.__call__ = timed
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            metrics = run_experiment(config, run_dir, progress=False)
    finally:
        TrainStep.__call__ = call
    return metrics["train_time_s"], inside[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["lora", "bara_singular"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="further config overrides")
    args = parser.parse_args()
    print(f"{'method':<16} {'fit s':>8} {'steps s':>8} {'outside s':>9} {'outside ms/step':>15}")
    for method in args.methods:
        fit_s, inside_s = outside_step_seconds(method, args.steps, args.set)
        outside = fit_s - inside_s
        print(f"{method:<16} {fit_s:8.2f} {inside_s:8.2f} {outside:9.2f} {1e3 * outside / args.steps:15.2f}")


if __name__ == "__main__":
    main()
