"""How far training moved the LoRA factors: the root mean square of each run's trained ``A`` and ``B`` (the
posterior means of random factors), averaged over the adapted layers, read from ``adapter_model.safetensors``.
LoRA starts ``A`` Kaiming-uniform (root mean square ``1 / sqrt(3 d_in)``) and ``B`` at zero.

    python benchmarks/factor_norms.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from bara_pyro.models.bara_model import ADAPTER_WEIGHTS_NAME


def factor_rms(run_dir: Path) -> dict[str, float]:
    """``{"lora_A": rms, "lora_B": rms}``, each the mean over adapters of ``sqrt(mean(W^2))``."""
    path = run_dir / ADAPTER_WEIGHTS_NAME
    if not path.exists():
        raise SystemExit(f"error: no trained adapter in {run_dir} ({ADAPTER_WEIGHTS_NAME} missing)")
    state = load_file(str(path))
    out = {}
    for factor in ("lora_A", "lora_B"):
        values = [t.float().pow(2).mean().sqrt() for k, t in state.items() if k.endswith(f".{factor}.weight")]
        out[factor] = float(torch.stack(values).mean()) if values else float("nan")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| run | A rms | B rms |\n|---|---|---|")
    for run in args.runs:
        rms = factor_rms(run)
        print(f"| {run} | {rms['lora_A']:.4f} | {rms['lora_B']:.5f} |")


if __name__ == "__main__":
    main()
