"""``RowShard``: per-token noise of a data-parallel process equal to one process's noise on the global batch.

In data-parallel training (:mod:`~bara_pyro.inference.distributed`) process ``k`` of ``W`` holds rows
``[start, start + n)`` of a global batch of ``total_rows`` sequences padded to ``total_length`` tokens (its own
batch is padded to its own length ``T <= total_length``, on the right).  One process on the global batch draws
its per-token gate noise as ``u ~ U(0, 1)`` of shape ``(total_rows, total_length, r)``; with the same generator
state every process draws that same tensor and keeps its block::

    u_k = u[start : start + n, :T]          # (n, T, r)

so the gates of every row, and hence the summed ELBO and its gradient, equal the one-process values to
floating-point tolerance.  Every process consumes the same random numbers, so the generators stay in step
with each other and with a one-process run (per-layer and global draws are the same on every process).
The cost is ``W`` times the gate noise per process, small next to a backbone pass.

Only draws made inside :func:`drawing_rows` (the gates' per-token draws) are sharded; other per-row noise
(dropout in the backbone or on the adapter input, flipout signs) is drawn per process at its own shape.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["RowShard", "drawing_rows", "active_shard", "uniform"]


@dataclass(frozen=True)
class RowShard:
    """This process's rows ``[start, start + n)`` of a global batch of ``total_rows`` rows, ``total_length`` tokens."""

    start: int
    total_rows: int
    total_length: int

    def uniform(self, shape, dtype: torch.dtype, device, row_dim: int = 0) -> torch.Tensor:
        """``U(0, 1)`` of ``shape`` = ``(*lead, n, [T,] r)`` (rows at ``row_dim``): this process's block of one
        draw of the global shape ``(*lead, total_rows, [total_length,] r)``."""
        shape = tuple(shape)
        n = shape[row_dim]
        has_tokens = len(shape) - row_dim == 3
        if self.start + n > self.total_rows or (has_tokens and shape[row_dim + 1] > self.total_length):
            raise ValueError(f"local noise of shape {shape} does not fit rows [{self.start}, {self.start + n}) of a "
                             f"global batch of {self.total_rows} rows x {self.total_length} tokens")
        full = list(shape)
        full[row_dim] = self.total_rows
        if has_tokens:
            full[row_dim + 1] = self.total_length
        u = torch.rand(full, dtype=dtype, device=device).narrow(row_dim, self.start, n)
        if has_tokens:
            u = u.narrow(row_dim + 1, 0, shape[row_dim + 1])
        return u.contiguous()


_ACTIVE: list[RowShard | None] = [None]


def active_shard() -> RowShard | None:
    """The shard that per-token draws use now (None: draw at the local shape)."""
    return _ACTIVE[0]


@contextlib.contextmanager
def drawing_rows(shard: RowShard | None):
    """Inside the block, :func:`uniform` (and so the gate distributions' ``rsample``) draws through ``shard``."""
    previous, _ACTIVE[0] = _ACTIVE[0], shard
    try:
        yield
    finally:
        _ACTIVE[0] = previous


def uniform(shape, dtype: torch.dtype, device, row_dim: int = 0) -> torch.Tensor:
    """``torch.rand(shape)``, or the active shard's block of the global draw."""
    shard = _ACTIVE[0]
    if shard is None:
        return torch.rand(shape, dtype=dtype, device=device)
    return shard.uniform(shape, dtype, device, row_dim)
