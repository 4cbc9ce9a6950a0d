"""Step-time cost of ``train.deterministic: true``: ``bench speed`` without and with ``--deterministic``.

    python benchmarks/deterministic_cost.py                      # on a CUDA machine: both shapes
    python benchmarks/deterministic_cost.py --shapes smollm2-135m --out-dir /tmp/det

Each of the two measurements runs in its own process (cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when CUDA
starts).  Rows: ``lora`` and the ``bara`` preset, eager (``fit()`` does not capture CUDA graphs), the
gate path that training takes (``auto``).  Writes ``speed_deterministic_{off,on}.json`` to ``--out-dir``
and prints ms / step without and with deterministic kernels and their ratio.  Further arguments go to
``bara_pyro.bench.speed`` (e.g. ``--device cpu --fp32 --shapes tiny`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEED = ["--settings", "eager", "--methods", "lora", "bara", "--gate-impls", "auto", "--no-predict", "--no-check",
         "--no-tune"]


def measure(out: Path, extra: list[str], deterministic: bool) -> dict:
    cmd = [sys.executable, "-m", "bara_pyro.bench.speed", *SPEED, *extra, "--out", str(out)]
    subprocess.run(cmd + (["--deterministic"] if deterministic else []), check=True, cwd=ROOT)
    return json.loads(out.read_text())


def compare(off: dict, on: dict) -> list[str]:
    lines = ["| shape | row | ms / step | ms / step, deterministic | ratio |", "|---|---|---:|---:|---:|"]
    for shape, res in off["shapes"].items():
        for name, by_setting in res["train"].items():
            a = by_setting.get("eager", {}).get("ms")
            b = on["shapes"].get(shape, {}).get("train", {}).get(name, {}).get("eager", {})
            if a is None or b.get("ms") is None:
                lines.append(f"| {shape} | {name} | {a} | {b.get('error') or b.get('skipped') or '-'} | - |")
                continue
            lines.append(f"| {shape} | {name} | {a:.2f} | {b['ms']:.2f} | {b['ms'] / a:.3f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="benchmarks/results", help="where the two result JSONs go")
    args, extra = p.parse_known_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    off = measure(out_dir / "speed_deterministic_off.json", extra, deterministic=False)
    on = measure(out_dir / "speed_deterministic_on.json", extra, deterministic=True)
    print("\n".join(compare(off, on)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
