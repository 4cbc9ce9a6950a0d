"""``results.md`` of the quality benchmark, and the provenance recorded with it (machine, code version).

The code version is recorded always, with or without a git checkout: the package version and a SHA-256
over the package's own files (``bara_pyro/**/*.py`` and the preset YAMLs, by relative path and content),
plus the git commit where one can be read.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from .quality_aggregate import target_label
from .quality_protocol import ANCHOR_SEED, METHOD_LABELS, METRICS, PROTOCOL_NAME, TASKS

__all__ = ["format_markdown", "code_version", "git_commit", "effective_overrides", "METHOD_LABELS",
           "TASK_LABELS", "METRIC_LABELS"]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

TASK_LABELS = {"winogrande_s": "WG-S", "winogrande_m": "WG-M", "arc_challenge": "ARC-C", "arc_easy": "ARC-E",
               "openbookqa": "OBQA", "boolq": "BoolQ", "mmlu_high_school_psychology": "MMLU HS psych.",
               "mmlu_miscellaneous": "MMLU misc."}
METRIC_LABELS = {"accuracy": ("ACC (%)", 100.0, 1), "nll": ("NLL", 1.0, 3), "ece": ("ECE (%)", 100.0, 1),
                 "brier": ("Brier", 1.0, 3), "effective_rank": ("Joint effective rank", 1.0, 2),
                 "layer_rank_range": ("Per-layer rank range", 1.0, 2),
                 "token_rank_spread": ("Within-sequence token-rank spread", 1.0, 3),
                 "auroc_entropy": ("OOD AUROC of predictive entropy (%)", 100.0, 1),
                 "auroc_mutual_information": ("OOD AUROC of mutual information (%)", 100.0, 1)}


def _cell(stats: dict | None, scale: float, digits: int, n_expected: int | None = None) -> str:
    if stats is None:
        return "–"
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {scale * stats['std']:.{digits}f}"
    if n_expected is not None and stats["n"] < n_expected:
        text += f" (n={stats['n']})"
    return text


def _md_table(table: dict, methods: list[str], columns: list[str], metric: str, n_expected: int | None,
              with_mean: bool = True, column_labels: dict | None = None) -> list[str]:
    _, scale, digits = METRIC_LABELS[metric]
    labels = {**TASK_LABELS, **(column_labels or {})}
    cols = columns + (["mean"] if with_mean else [])
    head = ["Method", *[labels.get(c, c) for c in columns]] + (["Mean"] if with_mean else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        cells = [_cell(table.get(method, {}).get(c), scale, digits, n_expected) for c in cols]
        lines.append("| " + " | ".join([METHOD_LABELS.get(method, method), *cells]) + " |")
    return lines


def effective_overrides(overrides: list[str]) -> list[str]:
    """``key=value`` overrides applied in order, each key once with the value that wins (the last), at the
    place of its first occurrence."""
    values: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        values[key.strip()] = value
    return [f"{key}={value}" for key, value in values.items()]


def _code_line(results: dict) -> str:
    code = results.get("code")
    commit = results.get("git_commit")
    if code is None:  # results written before the code version was recorded
        return f"- git commit: {commit or 'not recorded'}"
    text = f"- code: bara_pyro {code['version']}, package files sha256 `{code['files_sha256'][:16]}`"
    return text + (f", git commit {commit}" if commit else "")


def _wall_time_line(results: dict) -> str:
    segments = results.get("segments", 1)
    if results.get("wall_time_s") is None:
        return "- wall time: not recorded (aggregated from runs made elsewhere; each run's timing.json has its own)"
    text = f"- wall time: {results['wall_time_s'] / 60:.1f} min"
    return text + (f" (over {segments} invocations of the command)" if segments > 1 else "")


def _machine_line(results: dict) -> str:
    """``- machine: ...``: where the runs trained (each distinct machine the runs recorded), and where the tables
    were aggregated when that was elsewhere."""
    def describe(m: dict) -> str:
        return f"{m['device']} (torch {m['torch']}, python {m['python']})"

    machines = results.get("run_machines") or [results["machine"]]
    line = "- machine: " + "; ".join(describe(m) for m in machines)
    if results.get("aggregated_on"):
        line += f"; tables aggregated on {describe(results['aggregated_on'])}"
    return line


def format_markdown(results: dict) -> str:
    """``results.md``: provenance, protocol, one table per metric, OOD tables, anchor, targets, failures."""
    methods, tasks, seeds = results["methods"], results["tasks"], results["seeds"]
    n_seeds = len(seeds)
    lines = ["# Quality benchmark", "",
             f"- date: {results['date']}",
             _machine_line(results),
             _code_line(results),
             f"- command: `{results['command']}`",
             _wall_time_line(results),
             "",
             "## Protocol", "",
             f"- model: {results['protocol']['model']}; steps: {results['protocol']['steps']}; "
             f"seeds: {', '.join(map(str, seeds))}",
             "- every run: " + ", ".join(f"`{o}`" for o in effective_overrides(results["protocol"]["overrides"])),
             f"- model selection: {results['protocol']['model_selection']}",
             "- cells: mean ± std over seeds (sample std; no ± with one seed; (n=k) when fewer seeds finished); "
             "Mean: the average of the task means, ± over seeds with every task",
             ""]
    if results["protocol"]["deviations"]:
        lines += [f"**This benchmark deviates from {PROTOCOL_NAME}**, so its numbers are not the protocol's "
                  "(the anchor and targets below are shown for the pipeline only):", ""]
        lines += [f"- {d}" for d in results["protocol"]["deviations"]] + [""]
    failed = [r for r in results["runs"] if r["status"] != "ok"]
    lines += [f"Runs: {len(results['runs']) - len(failed)} of {len(results['runs'])} finished."]
    if failed:
        kind = "Failed runs" if all(r["status"] != "stopped" for r in failed) else "Failed or stopped runs"
        lines += ["", f"{kind} (not in the tables):", ""]
        lines += [f"- {r['method']}/{r['task']}/seed{r['seed']}: {(r.get('error') or '').splitlines()[0]}"
                  for r in failed]
    lines += [""]

    agg = results["aggregates"]
    def has_values(split):
        return any(cell is not None for table in agg[split].values() for row in table.values()
                   for cell in row.values())

    for split in [sp for sp in ("test", "validation") if sp == "test" or has_values(sp)]:
        for metric in METRICS:
            lines += [f"## {METRIC_LABELS[metric][0]}, {split}", ""]
            lines += _md_table(agg[split][metric], methods, tasks, metric, n_seeds) + [""]
    gated = [m for m in methods if any(v is not None for v in agg["effective_rank"].get(m, {}).values())]
    if gated:
        lines += ["## Joint effective rank (gated methods; expected number of active components per layer)", ""]
        lines += _md_table(agg["effective_rank"], gated, tasks, "effective_rank", n_seeds) + [""]
        for key, what in (("layer_rank_range", "the largest per-layer effective rank less the smallest"),
                          ("token_rank_spread", "standard deviation of the per-token rank over a sequence's tokens, "
                                                "mean over sequences and layers")):
            table = agg.get(key) or {}
            if any(v is not None for m in gated for v in table.get(m, {}).values()):
                lines += [f"## {METRIC_LABELS[key][0]} ({what})", ""]
                lines += _md_table(table, gated, tasks, key, n_seeds) + [""]

    ood = results.get("ood")
    if ood:
        sets = ood["sets"]
        id_label = {"in_distribution": f"{TASK_LABELS.get(ood['trained_on'], ood['trained_on'])} (ID)"}
        lines += [f"## Out of distribution: trained on {TASK_LABELS.get(ood['trained_on'])}, test splits", "",
                  "In-distribution = the OBQA test split; AUROC: OOD examples as positives, scored by predictive "
                  "entropy or by mutual information (– for deterministic predictions, whose mutual information "
                  "is 0).", ""]
        for metric in ("accuracy", "ece"):
            lines += [f"### OOD {METRIC_LABELS[metric][0]}", ""]
            lines += _md_table(ood[metric], methods, ["in_distribution", *sets], metric, n_seeds, with_mean=False,
                               column_labels=id_label) + [""]
        for metric in ("auroc_entropy", "auroc_mutual_information"):
            lines += [f"### {METRIC_LABELS[metric][0]}", ""]
            lines += _md_table(ood[metric], methods, sets, metric, n_seeds) + [""]

    lines += ["## Anchor: LoRA (MLE) against peft's LoRA", "",
              f"peft's LoRA on an H100 with this protocol, one seed ({ANCHOR_SEED}); ours: the LoRA (MLE) preset, "
              f"seed {ANCHOR_SEED} (diff = ours - peft, points), and mean ± std over our seeds. Within noise: "
              "|diff| <= 2·√2 × our seed std (two standard deviations of the difference of two single-seed runs).",
              ""]
    if not results["anchor"]:
        lines += ["(no anchored task in this benchmark)", ""]
    else:
        lines += ["| Task | ACC peft | ACC ours | diff | ACC ours (seeds) | ECE peft | ECE ours | diff | "
                  "ECE ours (seeds) | within noise (ACC / ECE) |", "|" + "---|" * 10]
        for row in results["anchor"]:
            label = TASK_LABELS.get(row["task"], row["task"])
            if row["ours"] is None:
                lines.append(f"| {label} | {row['peft']['accuracy']:.1f} | – | – | – | {row['peft']['ece']:.1f} | – "
                             "| – | – | – |")
                continue
            seed_note = "" if row["seed"] == ANCHOR_SEED else f" (seed {row['seed']})"

            def seeds_cell(k):
                c = row["ours_seeds"].get(k)
                if c is None:
                    return "–"
                return f"{c['mean']:.1f}" + ("" if c["std"] is None else f" ± {c['std']:.1f}")

            def noise(k):
                v = row["within_noise"].get(k)
                return "n/a (one seed)" if v is None else ("yes" if v else "no")

            lines.append(f"| {label} | {row['peft']['accuracy']:.1f} | {row['ours']['accuracy']:.1f}{seed_note} | "
                         f"{row['diff']['accuracy']:+.1f} | {seeds_cell('accuracy')} | {row['peft']['ece']:.1f} | "
                         f"{row['ours']['ece']:.1f}{seed_note} | {row['diff']['ece']:+.1f} | {seeds_cell('ece')} | "
                         f"{noise('accuracy')} / {noise('ece')} |")
        lines += [""]

    lines += [f"## Targets: {target_label(results.get('target_method', 'bara'))} against LoRA (MLE), averaged over "
              f"{len(tasks)} task(s) "
              f"(protocol: {len(TASKS)})", ""]
    for t in results["targets"]:
        lines.append(f"- {t['description']}: **{t['status']}** ({t['detail']})")
    return "\n".join(lines) + "\n"


def package_files_sha256(root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 over the package's ``*.py`` and ``*.yaml`` files: each relative path, a NUL, its bytes, a NUL."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def git_commit(root: Path = PACKAGE_ROOT.parent) -> str | None:
    """The checkout's HEAD (noting uncommitted changes), or None without a readable git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> dict:
    """``{"version", "files_sha256"}`` of the running bara_pyro package (see the module docstring)."""
    from .. import __version__

    return {"version": __version__, "files_sha256": package_files_sha256()}
