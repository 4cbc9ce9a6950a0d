"""The quality benchmark's aggregates: mean +- std over seeds per method and task, the across-task mean, the OOD
tables, the peft anchor check and BaRA's targets."""

from __future__ import annotations

import math
import statistics

from .quality_protocol import (
    ANCHOR_SEED,
    BASELINES,
    LAYER_RANK_RANGE,
    METHOD_LABELS,
    METRICS,
    OOD_TRAIN_TASK,
    PEFT_LORA_ANCHOR,
    TARGETS,
    TOKEN_RANK_SPREAD,
)

__all__ = ["aggregate", "anchor_check", "check_targets", "target_label"]


def _stats(values: list) -> dict | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "n": len(vals), "values": vals}


def _table(records: list[dict], methods, columns, value) -> dict:
    """``{method: {column: stats, "mean": stats over columns}}`` for ``value(record, column) -> float | None``.

    The "mean" cell averages the per-column means (only when every column has a value); its std is over
    the seeds that have every column (the per-seed average over columns, ``values``, one per ``seeds``), when
    there are two or more.
    """
    out = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        by_col = {}
        for col in columns:
            pairs = [(r["seed"], value(r, col)) for r in rows]
            by_col[col] = {s: v for s, v in pairs if v is not None}
        cells = {col: _stats(list(by_col[col].values())) for col in columns}
        if columns and all(cells[c] is not None for c in columns):
            seeds = sorted(set.intersection(*(set(by_col[c]) for c in columns)))
            per_seed = [statistics.fmean(by_col[c][s] for c in columns) for s in seeds]
            mean = statistics.fmean(cells[c]["mean"] for c in columns)
            cells["mean"] = {"mean": mean, "std": statistics.stdev(per_seed) if len(per_seed) > 1 else None,
                             "n": len(per_seed), "values": per_seed, "seeds": seeds}
        else:
            cells["mean"] = None
        out[method] = cells
    return out


def _metric_value(split: str, metric: str):
    def value(record, task):
        if record["task"] != task or record["status"] != "ok":
            return None
        m = record.get("metrics") or {}
        if metric in ("effective_rank", "token_rank_spread"):
            return m.get(metric)
        if metric == "layer_rank_range":  # the spread of the per-layer ranks: max - min
            ranks = list((m.get("effective_rank_per_layer") or {}).values())
            return max(ranks) - min(ranks) if len(ranks) > 1 else None
        return (m.get(split) or {}).get(metric)
    return value


def _ood_value(metric: str):
    def value(record, column):
        ood = record.get("ood_metrics")
        if record["task"] != OOD_TRAIN_TASK or not ood:
            return None
        cell = ood["in_distribution"] if column == "in_distribution" else ood["ood"].get(column)
        return None if cell is None else cell.get(metric)
    return value


def _mean(agg: dict, method: str) -> float | None:
    cell = (agg.get(method) or {}).get("mean")
    return None if cell is None else cell["mean"]


def target_label(method: str) -> str:
    """How results name the method the targets are checked for: ``BaRA``, or ``BaRA (name)`` for another BaRA
    preset or a variant."""
    return "BaRA" if method == "bara" else f"BaRA ({method})"


def check_targets(aggregates: dict, rank_budget: float | None, method: str = "bara") -> list[dict]:
    """The protocol's targets (:data:`TARGETS`) for BaRA (``method``: a BaRA preset or a variant of one) against
    LoRA (MLE) on the across-task test means: met / missed / not evaluated."""
    name = target_label(method)
    test = aggregates["test"]
    acc, nll, ece = test["accuracy"], test["nll"], test["ece"]
    rank = aggregates["effective_rank"]
    out = []

    def add(key, status, detail):
        out.append({"target": key, "description": TARGETS[key], "status": status, "detail": detail})

    b, lo = _mean(ece, method), _mean(ece, "lora")
    if b is None or lo is None:
        add("ece", "not evaluated", "needs BaRA and LoRA (MLE) on every task")
    else:
        ratio = b / lo if lo > 0 else math.inf
        add("ece", "met" if b <= 0.4 * lo else "missed",
            f"{name} {100 * b:.2f}% vs LoRA {100 * lo:.2f}%: ratio {ratio:.2f} (target <= 0.40)")
    b, lo, bl = _mean(nll, method), _mean(nll, "lora"), _mean(nll, "blob")
    if b is None or lo is None:
        add("nll", "not evaluated", "needs BaRA and LoRA (MLE) on every task")
    elif bl is None:  # not below LoRA already misses the target, whatever BLoB gives; below it, that part is met
        add("nll", "met against LoRA; BLoB not run" if b < lo else "missed",
            f"{name} {b:.4f} vs LoRA {lo:.4f} (diff {b - lo:+.4f}); BLoB was not run on every task")
    else:
        add("nll", "met" if b < lo and b < bl else "missed",
            f"{name} {b:.4f} vs LoRA {lo:.4f} (diff {b - lo:+.4f}) and BLoB {bl:.4f} (diff {b - bl:+.4f})")
    b, lo = _mean(acc, method), _mean(acc, "lora")
    if b is None or lo is None:
        add("accuracy", "not evaluated", "needs BaRA and LoRA (MLE) on every task")
    else:
        diff = 100 * (b - lo)
        add("accuracy", "met" if diff >= -0.5 else "missed",
            f"{name} {100 * b:.2f}% vs LoRA {100 * lo:.2f}%: {diff:+.2f} points (target >= -0.50)")
    b = _mean(rank, method)
    if b is None or rank_budget is None:
        add("effective_rank", "not evaluated", "needs BaRA on every task")
    else:
        add("effective_rank", "met" if b <= rank_budget / 2 else "missed",
            f"{name} {b:.2f} vs r / 2 = {rank_budget / 2:g}")
    out.append(_rank_structure(name, method, aggregates))
    for metric, table, unit in (("nll", nll, 1.0), ("ece", ece, 100.0)):
        out.append(_below_every_baseline(f"{metric}_every_baseline", name, table, method, unit))
    return out


def _rank_structure(name: str, method: str, aggregates: dict) -> dict:
    """Target ``rank_structure``: on every task (mean over seeds) the per-layer ranks span more than
    :data:`LAYER_RANK_RANGE` components and the per-token rank's spread within a sequence exceeds
    :data:`TOKEN_RANK_SPREAD`."""
    layers, tokens = (aggregates[k].get(method) or {} for k in ("layer_rank_range", "token_rank_spread"))
    cells = [(task, layers[task], tokens.get(task)) for task in layers if task != "mean"]
    if not cells or any(layer is None or token is None for _, layer, token in cells):
        status, detail = "not evaluated", f"needs {name}'s per-layer ranks and token gates on every task"
    else:
        low = [t for t, layer, token in cells
               if layer["mean"] <= LAYER_RANK_RANGE or token["mean"] <= TOKEN_RANK_SPREAD]
        status = "missed" if low else "met"
        detail = (f"{name}: per-layer rank range {min(c[1]['mean'] for c in cells):.2f}-"
                  f"{max(c[1]['mean'] for c in cells):.2f} (target > {LAYER_RANK_RANGE:g}), within-sequence "
                  f"token-rank spread {min(c[2]['mean'] for c in cells):.3f}-{max(c[2]['mean'] for c in cells):.3f} "
                  f"(target > {TOKEN_RANK_SPREAD:g}) over the tasks" + (f"; short on {', '.join(low)}" if low else ""))
    return {"target": "rank_structure", "description": TARGETS["rank_structure"], "status": status, "detail": detail}


def _paired_means(agg: dict, method: str, baseline: str) -> tuple[float, float, list | None] | None:
    """``(method's mean, baseline's mean, seeds)`` over the seeds both ran on every task (None: no such seed).

    ``seeds`` is None when the two ran the same seeds (the means are the tables'); otherwise both means are the
    average over the shared seeds of each seed's across-task mean, so neither side gains from seeds the other
    lacks."""
    cells = [(agg.get(m) or {}).get("mean") for m in (method, baseline)]
    if None in cells:
        return None
    (mine, theirs) = cells
    if mine["seeds"] == theirs["seeds"]:
        return mine["mean"], theirs["mean"], None
    shared = sorted(set(mine["seeds"]) & set(theirs["seeds"]))
    if not shared:
        return None
    at = [dict(zip(c["seeds"], c["values"])) for c in cells]
    return (statistics.fmean(at[0][s] for s in shared), statistics.fmean(at[1][s] for s in shared), shared)


def _below_every_baseline(key: str, name: str, table: dict, method: str, unit: float) -> dict:
    """Target ``key``: the BaRA method's across-task mean of ``table`` below each baseline's that ran on every
    task, on the seeds the two share (:func:`_paired_means`).

    Met only when every baseline ran; with some missing, below the others is "met against the N that ran".
    """
    ran = {m: p for m in BASELINES if (p := _paired_means(table, method, m)) is not None}
    missing = [m for m in BASELINES if m not in ran]
    if _mean(table, method) is None or not ran:
        return {"target": key, "description": TARGETS[key], "status": "not evaluated",
                "detail": f"needs {name} and at least one baseline on every task"}
    fmt = (lambda v: f"{unit * v:.4f}") if unit == 1.0 else (lambda v: f"{unit * v:.2f}%")
    parts = []
    for m, (mine, theirs, seeds) in ran.items():
        part = f"{METHOD_LABELS[m]} {fmt(theirs)}"
        if seeds is not None:
            part += f" (on seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, where {name} {fmt(mine)})"
        parts.append(part)
    detail = f"{name} {fmt(_mean(table, method))} vs " + ", ".join(parts)
    if missing:
        detail += "; not run on every task: " + ", ".join(METHOD_LABELS[m] for m in missing)
    above = [m for m, (mine, theirs, _) in ran.items() if not mine < theirs]
    if above:
        status = "missed"
    else:
        status = "met" if not missing else f"met against the {len(ran)} that ran"
    return {"target": key, "description": TARGETS[key], "status": status, "detail": detail}


def anchor_check(records: list[dict], aggregates: dict, tasks: list[str]) -> list[dict]:
    """The LoRA (MLE) row against peft's LoRA (seed 1); 'within noise' = |diff| <= 2 sqrt(2) x our seed std."""
    rows = []
    # only runs evaluated on the test split (a validation-only run, e.g. of a grid, has no anchor figure)
    lora = [r for r in records if r["method"] == "lora" and r["status"] == "ok" and "test" in r["metrics"]]
    for task in tasks:
        if task not in PEFT_LORA_ANCHOR:
            continue
        peft_acc, peft_ece = PEFT_LORA_ANCHOR[task]
        runs = sorted((r for r in lora if r["task"] == task), key=lambda r: (r["seed"] != ANCHOR_SEED, r["seed"]))
        row = {"task": task, "peft": {"accuracy": peft_acc, "ece": peft_ece}, "seed": None, "ours": None,
               "diff": None, "ours_seeds": {}, "within_noise": {}}
        if runs:
            r = runs[0]
            row["seed"] = r["seed"]
            row["ours"] = {k: 100 * r["metrics"]["test"][k] for k in ("accuracy", "ece")}
            row["diff"] = {k: row["ours"][k] - row["peft"][k] for k in ("accuracy", "ece")}
            for k in ("accuracy", "ece"):
                cell = aggregates["test"][k].get("lora", {}).get(task)
                std = None if cell is None or cell["std"] is None else 100 * cell["std"]
                row["ours_seeds"][k] = None if cell is None else {"mean": 100 * cell["mean"], "std": std,
                                                                  "n": cell["n"]}
                row["within_noise"][k] = None if std is None else abs(row["diff"][k]) <= 2 * math.sqrt(2) * std
        rows.append(row)
    return rows


def aggregate(records: list[dict], methods: list[str], tasks: list[str], ood_sets: list[str] | None = None,
              rank_budget: float | None = None, target_method: str = "bara") -> dict:
    """Aggregates (mean +- std over seeds per method x task, plus the across-task mean), OOD, anchor, targets."""
    aggregates = {split: {m: _table(records, methods, tasks, _metric_value(split, m)) for m in METRICS}
                  for split in ("test", "validation")}
    for key in ("effective_rank", "layer_rank_range", "token_rank_spread"):
        aggregates[key] = _table(records, methods, tasks, _metric_value("test", key))
    out = {"aggregates": aggregates}
    if ood_sets:
        id_cols = ["in_distribution", *ood_sets]
        out["ood"] = {
            "trained_on": OOD_TRAIN_TASK, "sets": list(ood_sets),
            "accuracy": _table(records, methods, id_cols, _ood_value("accuracy")),
            "ece": _table(records, methods, id_cols, _ood_value("ece")),
            "nll": _table(records, methods, id_cols, _ood_value("nll")),
            "auroc_entropy": _table(records, methods, list(ood_sets), _ood_value("auroc_entropy")),
            "auroc_mutual_information": _table(records, methods, list(ood_sets),
                                               _ood_value("auroc_mutual_information")),
        }
    out["anchor"] = anchor_check(records, aggregates, tasks)
    out["target_method"] = target_method
    out["targets"] = check_targets(aggregates, rank_budget, target_method)
    return out
