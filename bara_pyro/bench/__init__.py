"""Benchmarks: ``speed`` (GPU step time, memory and prediction time against LoRA) and ``quality``.

Run them as ``bara-pyro bench speed`` / ``python -m bara_pyro.bench.speed``; the submodules are
imported lazily, so ``python -m`` does not import a module twice.
"""

from __future__ import annotations

__all__ = ["SpeedConfig", "run_speed_benchmark"]


def __getattr__(name: str):
    if name in __all__:
        from . import speed

        return getattr(speed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
