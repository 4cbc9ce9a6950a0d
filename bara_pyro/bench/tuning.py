r"""``python -m bara_pyro.bench.tuning``: the quality benchmark with each method's hyperparameters tuned per task.

Protocol (the test split chooses nothing):

1. *Grid.*  Every method except those that reuse another's choice (the ensemble's members are LoRA
   runs: it takes LoRA's) trains once per grid point on every task, with the tuning seed(s)
   (default: the benchmark's first seed), at the benchmark's step budget, and is evaluated on the
   validation split only.  The grid is ``train.lr`` in ``--lrs`` (default 1e-4, 3e-4, 1e-3, 3e-3)
   times any ``--grid METHOD:KEY=V1,V2`` (e.g. ``blob:adapter.weights.prior_scale=0.1,0.2``).
2. *Selection.*  Per method and task, the grid point with the best validation ``--select-metric``
   (default NLL; lower is better, accuracy higher), averaged over the tuning seeds.
3. *Final.*  The quality benchmark (``bara-pyro bench quality``, every seed, validation and test)
   with the chosen values as per-task overrides.  ``results.md`` gets two more sections: the chosen
   values and the whole grid's validation table; ``results.json`` a ``tuning`` entry.  With
   ``--test-in-grid`` the grid runs evaluate the test split too (the choice still reads validation
   alone) and the final stage takes each tuning seed's chosen run from the grid instead of training it
   again: the same config and seed.

``--dry-run`` trains nothing: it prints the grid's runs and, once the grid has finished, the final runs at the
chosen values (those the final stage would take from the grid counted as finished).

Every other option is ``bench quality``'s (``--methods``, ``--tasks``, ``--steps``, ``--workers``, ...).
The PEFT anchor check keeps its own settings (lr 1e-4, 1000 steps).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import quality, quality_options
from .atomic_files import write_json

__all__ = ["GRID_LRS", "SHARES_CHOICE", "grid_points", "point_name", "grid_options", "select", "final_options",
           "reuse_grid_runs", "print_final_plan", "tuning_markdown", "main"]

GRID_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
SHARES_CHOICE = {"ensemble": "lora"}  # method -> the method whose chosen values it takes
HIGHER_IS_BETTER = {"accuracy"}


def _fmt(value) -> str:
    """A grid value as an override reads it back (YAML: ``None`` is ``null``)."""
    if value is None:
        return "null"
    return format(value, "g") if isinstance(value, float) else str(value)


def grid_points(method: str, lrs, grids: dict[str, dict[str, list]]) -> list[dict]:
    """``[{key: value}]``: ``train.lr`` over ``lrs`` times each of ``grids[method]``'s keys over its values."""
    axes = {"train.lr": list(lrs), **grids.get(method, {})}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def point_name(method: str, point: dict) -> str:
    """A grid run's method name, e.g. ``lora@lr=0.0003`` (the last part of each key)."""
    return f"{method}@" + ",".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in point.items())


def _overrides(point: dict) -> list[str]:
    return [f"{k}={_fmt(v)}" for k, v in point.items()]


def grid_options(base: quality_options.Options, lrs, grids, seeds: list[int],
                 test_in_grid: bool = False) -> tuple[quality_options.Options, dict]:
    """The grid stage as ``bench quality`` options (one variant per method and point, validation only unless
    ``test_in_grid``, in ``<output>/grid``) and ``{variant name: (method, point)}``."""
    opts = copy.deepcopy(base)
    points = {}
    for method in base.methods:
        if method in SHARES_CHOICE:
            continue
        for point in grid_points(method, lrs, grids):
            points[point_name(method, point)] = (method, point)
    opts.methods = list(points)
    opts.variants = {name: base.preset(method) for name, (method, _) in points.items()}
    opts.method_overrides = {name: [*base.method_overrides.get(method, []), *_overrides(point)]
                             for name, (method, point) in points.items()}
    opts.seeds = list(seeds)
    opts.overrides = [*base.overrides, "eval.splits=[validation, test]" if test_in_grid else "eval.splits=[validation]"]
    opts.ood = False
    opts.output = base.output / "grid"
    opts.targets_for = next((n for n, (m, _) in points.items() if base.preset(m) == "bara"), base.targets_for)
    return opts, points


def _validation_value(run_dir: Path, metric: str) -> float | None:
    try:
        return float(json.loads((run_dir / "metrics.json").read_text())["validation"][metric])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def select(grid: quality_options.Options, points: dict, metric: str = "nll") -> tuple[dict, dict]:
    """``(choices, table)``: ``choices[(method, task)]`` = the chosen point; ``table[method][task][name]`` = its
    validation ``metric`` averaged over the tuning seeds (None: a run did not finish)."""
    table: dict = {}
    for spec in quality.plan_runs(grid):
        method, _ = points[spec.method]
        cell = table.setdefault(method, {}).setdefault(spec.task, {}).setdefault(spec.method, [])
        cell.append(_validation_value(spec.run_dir, metric))
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    choices = {}
    for method, by_task in table.items():
        for task, by_point in by_task.items():
            for name, values in by_point.items():
                by_point[name] = None if None in values else sum(values) / len(values)
            finished = {n: v for n, v in by_point.items() if v is not None}
            if finished:
                choices[(method, task)] = points[min(finished, key=lambda n: sign * finished[n])][1]
    return choices, table


def final_options(base: quality_options.Options, choices: dict) -> quality_options.Options:
    """The benchmark with each (method, task)'s chosen values (a sharing method takes its source's)."""
    opts = copy.deepcopy(base)
    for method in base.methods:
        source = SHARES_CHOICE.get(method, method)
        for task in base.tasks:
            if (source, task) in choices:
                opts.task_overrides[(method, task)] = _overrides(choices[(source, task)])
    return opts


def reuse_grid_runs(final: quality_options.Options, grid: quality_options.Options, choices: dict) -> list[str]:
    """Copy into ``final``'s folder each run of the grid that is a final run already: the chosen point of its
    method and task, at a final seed, with the test split evaluated and a config equal to the final run's.
    Returns the copied runs' names; a final run that has started is left alone."""
    from ..experiment import comparable_config, load_run_config

    copied = []
    for spec in quality.plan_runs(final):
        if (spec.method, spec.task) not in choices or spec.run_dir.exists():
            continue
        name = point_name(spec.method, choices[(spec.method, spec.task)])
        source = grid.output / "runs" / name / spec.task / f"seed{spec.seed}"
        try:
            has_test = "test" in json.loads((source / "metrics.json").read_text())
            same = comparable_config(load_run_config(source)) == comparable_config(spec.config)
        except (OSError, ValueError):
            continue
        if has_test and same:
            shutil.copytree(source, spec.run_dir)
            copied.append(spec.name)
    return copied


def print_final_plan(final: quality_options.Options, grid: quality_options.Options, choices: dict,
                     test_in_grid: bool) -> None:
    """``--dry-run`` once the grid has finished: the final runs as the final stage would find them, the grid runs it
    would take (``--test-in-grid``) counted as finished.  Nothing is written to the output folder: the preview
    runs in a temporary folder holding links to the finished final runs and copies of the grid runs it takes."""
    with tempfile.TemporaryDirectory() as tmp:
        preview = copy.deepcopy(final)
        preview.output = Path(tmp)
        if (final.output / "runs").is_dir():
            shutil.copytree(final.output.resolve() / "runs", preview.output / "runs", copy_function=os.symlink)
        taken = reuse_grid_runs(preview, grid, choices) if test_in_grid else []
        quality.print_plan(preview)
    if taken:
        print(f"{len(taken)} of them taken from the grid (the same config and seed)")


def tuning_markdown(choices: dict, table: dict, metric: str, tasks: list[str], lrs, grids, seeds) -> str:
    label = quality.METRIC_LABELS.get(metric, (metric, 1.0, 3))
    name, scale, digits = label
    lines = ["", "## Tuning (validation split only)", "",
             f"Grid: `train.lr` in {', '.join(_fmt(x) for x in lrs)}"
             + "".join(f"; {m}: `{k}` in {', '.join(map(_fmt, v))}" for m, g in grids.items() for k, v in g.items())
             + f". Tuning seed(s): {', '.join(map(str, seeds))}. Chosen per method and task by validation {name} "
             + ("(higher is better)." if metric in HIGHER_IS_BETTER else "(lower is better).")
             + " " + "; ".join(f"{m} takes {s}'s choice" for m, s in SHARES_CHOICE.items()) + ".", "",
             "### Chosen values", "", "| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for method in table:
        cells = [", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in choices[(method, t)].items())
                 if (method, t) in choices else "-" for t in tasks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"### Grid: validation {name}", "", "| method | grid point | " + " | ".join(tasks) + " |",
              "|---" * (len(tasks) + 2) + "|"]
    for method, by_task in table.items():
        names = list(dict.fromkeys(n for t in tasks for n in by_task.get(t, {})))
        for point in names:
            cells = []
            for t in tasks:
                v = by_task.get(t, {}).get(point)
                chosen = (method, t) in choices and point_name(method, choices[(method, t)]) == point
                text = "-" if v is None else format(v * scale, f".{digits}f")
                cells.append(f"**{text}**" if chosen else text)
            lines.append(f"| {method} | {point.split('@', 1)[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parse_grids(items: list[str]) -> dict[str, dict[str, list]]:
    import yaml

    from ..models.config import ConfigError

    out: dict[str, dict[str, list]] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        key, eq, values = rest.partition("=")
        if not sep or not eq or not method.strip() or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r} must look like METHOD:KEY=V1,V2")
        out.setdefault(method.strip(), {})[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return out


def build_parser():
    p = quality.build_parser()
    p.prog = "python -m bara_pyro.bench.tuning"
    p.description = __doc__.splitlines()[0]
    t = p.add_argument_group("tuning")
    t.add_argument("--lrs", type=quality_options.csv_list(float), default=list(GRID_LRS), help="learning-rate grid")
    t.add_argument("--grid", action="append", default=[], metavar="METHOD:KEY=V1,V2",
                   help="a further grid axis for one method (repeatable)")
    t.add_argument("--tune-seeds", type=quality_options.csv_list(int),
                   help="seeds of the grid runs (default: the first seed)")
    t.add_argument("--select-metric", default="nll", choices=list(quality.METRICS))
    t.add_argument("--grid-only", action="store_true", help="run the grid and print the choices; no final runs")
    t.add_argument("--test-in-grid", action="store_true",
                   help="grid runs evaluate the test split too (never read for the choice); the final stage takes "
                        "the tuning seeds' chosen runs from the grid instead of training them again")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..models.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        base = quality_options.options_from_args(args, argv)
        base.program = "python -m bara_pyro.bench.tuning"
        quality_options.check_options(base)
        grids = _parse_grids(args.grid)
        stray = sorted(set(grids) - set(base.methods))
        if stray:
            raise ConfigError(f"--grid names method(s) {stray} that are not in --methods {base.methods}")
        seeds = args.tune_seeds or base.seeds[:1]
        grid, points = grid_options(base, args.lrs, grids, seeds, test_in_grid=args.test_in_grid)
        quality_options.check_options(grid)
        if args.dry_run:
            quality.print_plan(grid)
            choices, _ = select(grid, points, args.select_metric)
            tuned = {(method, task) for method, _ in points.values() for task in base.tasks}
            if not tuned <= set(choices):
                print("the final runs (each method at its chosen values) are planned when the grid has finished")
                return 0
            print("\nthe final runs, each method at its chosen values:")
            print_final_plan(final_options(base, choices), grid, choices, args.test_in_grid)
            return 0
        with quality._terminate_as_interrupt():
            quality.run_benchmark(grid, execute=not args.aggregate_only)
            choices, table = select(grid, points, args.select_metric)
            text = tuning_markdown(choices, table, args.select_metric, base.tasks, args.lrs, grids, seeds)
            if args.grid_only:
                print(text)
                return 0
            final = final_options(base, choices)
            if args.test_in_grid:
                copied = reuse_grid_runs(final, grid, choices)
                if copied:
                    print(f"taken from the grid (the same config and seed): {', '.join(copied)}")
            results = quality.run_benchmark(final, execute=not args.aggregate_only)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume (finished runs are kept)", file=sys.stderr)
        return 130
    results["tuning"] = {"lrs": list(args.lrs), "grids": grids, "seeds": seeds, "metric": args.select_metric,
                         "choices": [{"method": m, "task": t, "values": v} for (m, t), v in choices.items()],
                         "grid_validation": table, "grid_output": str(grid.output)}
    write_json(final.output / "results.json", results)
    with open(final.output / "results.md", "a") as f:
        f.write(text)
    print(text)
    failed = any(r["status"] != "ok" or r.get("ood_error") for r in results["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
