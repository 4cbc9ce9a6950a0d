"""Means over seeds of the demo-scale ablation, and each variant's paired difference from a reference.

Reads ``BASE/seed<k>/<variant>/metrics.json`` as written by::

    SEED=k VARIANTS="..." bash benchmarks/bara_slab_ablation.sh BASE/seed<k>

and prints one row per variant: the seeds it ran, the mean validation ACC, NLL and ECE, the mean gate rank and
the share of undecided per-token gate probabilities (in [0.2, 0.8], from ``gates.npz``:
:func:`bara_pyro.analysis.gate_confidence`), each with its standard error over seeds (``sd / sqrt(n)``), and the
mean paired difference in ACC and NLL from
the reference variant (``--reference``, default ``lora``) over the seeds both ran, with its standard error.
Seeds share the data order and the validation examples, so the paired difference removes what the seeds have in
common and its standard error is the one to compare methods by.

    python benchmarks/ablation_seeds.py BASE [--variants lora preset_moment_g2 ...] [--reference lora]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

METRICS = ("accuracy", "nll", "ece")


def read_runs(base: Path) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: {"accuracy", "nll", "ece", "gate_rank"}}}`` of every finished run under ``base``."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(base.glob("seed*/*/metrics.json")):
        match = re.fullmatch(r"seed(\d+)", path.parent.parent.name)
        if match is None:
            continue
        metrics = json.loads(path.read_text())
        row = {name: metrics["validation"][name] for name in METRICS}
        row["gate_rank"] = metrics.get("effective_rank")
        gates = path.parent / "gates.npz"
        row["undecided"] = _undecided(gates) if gates.exists() else None
        runs.setdefault(path.parent.name, {})[int(match.group(1))] = row
    return runs


def _undecided(gates: Path) -> float | None:
    """The share of the run's per-token gate probabilities in the undecided band (None without them)."""
    import numpy as np

    from bara_pyro.analysis import gate_confidence

    with np.load(gates, allow_pickle=False) as arrays:
        return gate_confidence(arrays).undecided if "token_gate_prob" in arrays.files else None


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (``None`` from one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def summarize(runs: dict[str, dict[int, dict]], variants: list[str], reference: str) -> list[dict]:
    """One dict per variant: ``seeds``, ``(mean, se)`` per metric and gate rank, and the paired ``diff_accuracy``
    / ``diff_nll`` from ``reference`` (``None`` for the reference itself or without a common seed)."""
    rows = []
    ref = runs.get(reference, {})
    for name in variants:
        seeds = runs.get(name, {})
        if not seeds:
            continue
        row = {"variant": name, "seeds": sorted(seeds)}
        for key in (*METRICS, "gate_rank", "undecided"):
            values = [seeds[s][key] for s in row["seeds"] if seeds[s][key] is not None]
            row[key] = mean_se(values) if values else None
        common = sorted(set(seeds) & set(ref))
        for key in ("accuracy", "nll"):
            diffs = [seeds[s][key] - ref[s][key] for s in common]
            row[f"diff_{key}"] = mean_se(diffs) if diffs and name != reference else None
        rows.append(row)
    return rows


def _cell(value: tuple[float, float | None] | None, scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "-"
    mean, se = value
    return f"{scale * mean:.{digits}f}" + ("" if se is None else f" ± {scale * se:.{digits}f}")


def format_table(rows: list[dict], reference: str) -> str:
    lines = ["| variant | seeds | ACC | NLL | ECE | gate rank | undecided gates "
             f"| ACC - {reference} (paired) | NLL - {reference} (paired) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {','.join(map(str, row['seeds']))} | {_cell(row['accuracy'])} | "
                     f"{_cell(row['nll'])} | {_cell(row['ece'])} | {_cell(row['gate_rank'], digits=2)} | "
                     f"{_cell(row.get('undecided'), digits=2)} | "
                     f"{_cell(row['diff_accuracy'])} | {_cell(row['diff_nll'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path, help="folder holding seed<k>/<variant>/metrics.json")
    p.add_argument("--variants", nargs="+", help="rows, in order (default: every variant found)")
    p.add_argument("--reference", default="lora", help="the variant the paired differences are taken from")
    args = p.parse_args(argv)
    runs = read_runs(args.base)
    if not runs:
        print(f"error: no seed<k>/<variant>/metrics.json under {args.base}", file=sys.stderr)
        return 2
    variants = args.variants or sorted(runs)
    print(format_table(summarize(runs, variants, args.reference), args.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
