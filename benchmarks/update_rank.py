"""Gate rank against update rank for finished runs: how many components the gates keep on (``sum_k E[z]``,
the ``effective_rank`` of metrics.json) and how many directions the fitted update uses (the entropy
effective rank of the singular values of ``(alpha / r) B diag(c) A``, :mod:`bara_pyro.analysis.update_spectrum`,
with ``c`` the mean expected gate over the tokens recorded in ``gates.npz``).  Runs evaluated by this version
record ``update_rank`` themselves; this recomputes it from the saved adapter for any single-model run.

    python benchmarks/update_rank.py RUN_DIR [RUN_DIR ...]        # one row per run, then per-layer ranks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bara_pyro.analysis import update_ranks
from bara_pyro.experiment import build_backbone_and_task, load_run_config
from bara_pyro.models.bara_model import BaRAModel


def run_update_ranks(run_dir: Path) -> dict[str, float]:
    """``{layer path: spectral effective rank}`` of the run's mean update, gate means folded in."""
    config = load_run_config(run_dir)
    if config["ensemble"]["members"] > 1:
        raise SystemExit(f"error: {run_dir} is an ensemble; its members have one update each")
    backbone, _, task, _ = build_backbone_and_task(config)
    model = BaRAModel.from_pretrained(backbone, run_dir, forward_fn=task.scores)
    gates_path = run_dir / "gates.npz"
    return update_ranks(model, dict(np.load(gates_path)) if gates_path.exists() else None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    rows = ["| run | gate rank | update rank | update rank per layer |", "|---|---|---|---|"]
    for run in args.runs:
        metrics = json.loads((run / "metrics.json").read_text())
        ranks = run_update_ranks(run)
        gate = metrics.get("effective_rank")
        per_layer = " ".join(f"{v:.1f}" for v in ranks.values())
        rows.append(f"| {run.name} | {'-' if gate is None else f'{gate:.2f}'} | {np.mean(list(ranks.values())):.2f} "
                    f"| {per_layer} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
