"""The speed benchmark's results: its table rows, the printed table, the default file name, and result files of
earlier row names read back relabelled."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .speed_setup import DRAW, ROW_NAMES, SETTINGS, SVI, SVI_JIT

__all__ = ["default_output", "format_table", "legacy_row_name", "load_result", "relabel", "table_rows"]


def format_row(out: dict) -> str:
    if "ms" in out:
        peak = f"{out['peak_gib']:.3f} GiB" if out.get("peak_gib") is not None else "-"
        extra = f", {out['profile']['kernels']} kernels" if "profile" in out else ""
        if out.get("after_step_ms") is not None:
            extra += f", after-step {out['after_step_ms']:.2f} ms"
        return f"{out['ms']:.2f} ms (min {out['ms_min']:.2f}), peak {peak}{extra}"
    return json.dumps(out)


def table_rows(result: dict) -> list[dict]:
    """Flat rows: shape, setting, kind, method, ms, ratio to LoRA, peak GiB, peak ratio."""
    rows = []
    for shape, res in result["shapes"].items():
        for kind in ("train", "predict"):
            settings = sorted({s for v in res[kind].values() for s in v}, key=SETTINGS.index)
            for setting in settings:
                ref_name = "lora"
                ref = res[kind].get(ref_name, {}).get(setting, {})
                for name, by_setting in res[kind].items():
                    out = by_setting.get(setting)
                    if out is None:
                        continue
                    row = {"shape": shape, "setting": setting, "kind": kind, "method": name,
                           "ms": out.get("ms"), "ratio": None, "peak_gib": out.get("peak_gib"), "peak_ratio": None,
                           "step_gib": out.get("step_gib"), "after_step_ms": out.get("after_step_ms"),
                           "status": "ok" if "ms" in out else ("skipped" if "skipped" in out else "error")}
                    if out.get("ms") is not None and ref.get("ms"):
                        row["ratio"] = out["ms"] / ref["ms"]
                    if out.get("peak_gib") is not None and ref.get("peak_gib"):
                        row["peak_ratio"] = out["peak_gib"] / ref["peak_gib"]
                    if "profile" in out:
                        row["kernels"] = out["profile"]["kernels"]
                    rows.append(row)
    return rows


_LEGACY_TRAIN_ROWS = {"bara": DRAW, "bara_expected": "bara", "bara_svi": SVI, "bara_svi_jit": SVI_JIT}


def legacy_row_name(name: str, kind: str) -> str:
    """A row name of a result file written before the rows were named after the presets, in today's names."""
    m = re.fullmatch(r"(.+?)\[(\w+)\]", name)  # X[impl]
    base, impl = (m.group(1), m.group(2)) if m else (name, None)
    if kind == "train":
        base = _LEGACY_TRAIN_ROWS.get(base, base)
    elif base == "lora_fwd":
        base = "lora"
    elif m_lora := re.fullmatch(r"lora_fwd_x(\d+)", base):
        base = f"lora[eval.num_samples={m_lora.group(1)}]"
    elif m_bara := re.fullmatch(r"bara_s(\d+)", base):
        n = int(m_bara.group(1))
        base = "bara" if n == 10 else f"bara[eval.num_samples={n}]"
    return base + (f"@{impl}" if impl else "")


def relabel(result: dict) -> dict:
    """``result`` (modified in place and returned) with today's row names; a no-op on a current file."""
    if result.get("row_names") == ROW_NAMES:
        return result
    for res in result.get("shapes", {}).values():
        for kind in ("train", "predict"):
            if kind in res:
                res[kind] = {legacy_row_name(name, kind): rows for name, rows in res[kind].items()}
    for row in result.get("table", []):
        row["method"] = legacy_row_name(row["method"], row["kind"])
    config = result.get("config", {})
    if "methods" in config:
        config["methods"] = [_LEGACY_TRAIN_ROWS.get(m, m) for m in config["methods"]]
    result["row_names"] = ROW_NAMES
    return result


def load_result(path: str | Path) -> dict:
    """A speed result JSON, with today's row names whatever version wrote it."""
    return relabel(json.loads(Path(path).read_text()))


def format_table(result: dict) -> str:
    lines = []
    key = None
    width = max([22, *(len(row["method"]) for row in result["table"])])
    for row in result["table"]:
        k = (row["shape"], row["setting"], row["kind"])
        if k != key:
            key = k
            ref = "LoRA step" if row["kind"] == "train" else "one LoRA forward (8 seq)"
            lines += ["", f"{row['shape']} | {row['setting']} | {row['kind']} (ratios to {ref})",
                      f"{'method':<{width}} {'ms/step':>9} {'xLoRA':>7} {'peak GiB':>9} {'xLoRA':>7} {'step GiB':>9}"
                      f" {'after ms':>9}"]
        if row["status"] != "ok":
            lines.append(f"{row['method']:<{width}} {row['status']}")
            continue

        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"

        lines.append(f"{row['method']:<{width}} {f(row['ms'], '9.2f')} {f(row['ratio'], '7.3f')} "
                     f"{f(row['peak_gib'], '9.3f')} {f(row['peak_ratio'], '7.3f')} {f(row.get('step_gib'), '9.3f')} "
                     f"{f(row.get('after_step_ms'), '9.3f')}")
    return "\n".join(lines)


def default_output(result: dict) -> Path:
    return Path("benchmarks/results") / f"speed_{result['device_slug']}_{result['date']}.json"
