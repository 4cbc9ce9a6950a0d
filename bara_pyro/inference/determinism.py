"""``train.deterministic``: the same seed gives the same bits on the same device type and software.

PyTorch is bitwise reproducible on the CPU for a fixed seed, machine and software.  On a GPU it is not
by default: some kernels (cuBLAS's split reductions, atomics in scatter/index backward passes) may sum
in a different order from run to run, and at a high learning rate differences of 1e-7 in a loss grow
into different models.  :func:`deterministic_algorithms` turns on

* ``torch.use_deterministic_algorithms(True)``: deterministic kernels, and an error for an operation that
  has none (instead of a silent difference);
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: the fixed cuBLAS workspace that deterministic cuBLAS needs.  cuBLAS
  reads it when CUDA starts in the process, so it must be set before then; when CUDA is already in use
  and the variable is missing, :class:`DeterminismError` says how to set it;
* ``torch.backends.cudnn.benchmark = False`` (no run-time choice between kernels).

Different GPU types, drivers or library versions still give different bits.

:func:`tf32_matmul` is a run's other switch on its arithmetic (``train.tf32``, ``eval.tf32``): TF32 tensor cores
for fp32 matrix products, faster and not bitwise equal to fp32.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..models.errors import ConfigError

__all__ = ["deterministic_algorithms", "DeterminismError", "CUBLAS_WORKSPACE_CONFIG", "tf32_matmul"]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")


class DeterminismError(ConfigError):
    """``train.deterministic`` was asked for too late: CUDA already runs without cuBLAS's fixed workspace."""


def _ensure_cublas_workspace() -> None:
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in _DETERMINISTIC_WORKSPACES:
        return
    if torch.cuda.is_initialized():
        raise DeterminismError(
            "train.deterministic needs CUBLAS_WORKSPACE_CONFIG set before CUDA starts, and CUDA is already in use "
            f"in this process; run it with CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE_CONFIG} in the environment")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """Deterministic kernels inside the block (see the module docstring); a no-op when not ``enabled``.
    The previous settings come back on exit (the workspace variable stays: cuBLAS has read it)."""
    if not enabled:
        yield
        return
    _ensure_cublas_workspace()
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


@contextlib.contextmanager
def tf32_matmul(enabled: bool):
    """``train.tf32`` / ``eval.tf32``: CUDA fp32 matrix products on TF32 tensor cores inside the block (10-bit
    mantissa inputs, fp32 accumulation), the previous setting after.  No effect on the CPU."""
    if not enabled:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
