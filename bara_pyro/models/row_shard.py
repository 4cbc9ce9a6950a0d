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

``RowGroups``: rows that are one example.  A multiple-choice example scored by cloze is ``C`` sequences, one per
choice, that repeat its context; the likelihood ``p(y | x, g) = softmax_c(score_c(g))`` compares the choices
under one value of the example's latent variables.  With groups, row ``i`` takes the noise of its example
``e_i``::

    u = U(0, 1) of shape (E, T, r)[e]       # (n, T, r): the choices' tokens at one position share a draw

so the gates of a context the choices share are equal in every choice (their hidden states are), and each
row's gates are still marginally exact.  With a shared length (``choice_draws: prefix``) only the positions of
the prefix that all the example's rows have in common take the example's draw; the rest of each row, whose
tokens or contexts differ between choices, draws its own.  With a data-parallel shard the rows draw their own
noise (groups are ignored): a run on several processes then differs from one process in these draws on such
tasks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["CHOICE_DRAWS", "RowGroups", "RowShard", "drawing_rows", "active_shard", "uniform", "row_groups",
           "row_signs"]

#: how the choice sequences of one example share random draws (``BaRAConfig.choice_draws``)
CHOICE_DRAWS = ("example", "prefix", "sequence")


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


@dataclass(frozen=True, eq=False)
class RowGroups:
    """Row ``i`` of a batch belongs to example ``index[i]`` of ``count``; draws share the example's noise, at every
    position, or with ``shared_length`` only at the first ``shared_length[i]`` positions of row ``i`` (the prefix
    its example's rows have in common; later positions draw their own noise)."""

    index: torch.Tensor  # (n,) long, values in [0, count)
    count: int
    shared_length: torch.Tensor | None = None  # (n,) long

    def _check(self, rows: int) -> None:
        if rows != self.index.numel():
            raise ValueError(f"noise for {rows} rows does not fit a batch of {self.index.numel()} rows")

    def shared_positions(self, length: int, device) -> torch.Tensor:
        """``(n, T)`` bool: position ``t`` of row ``i`` takes its example's draw (``t < shared_length[i]``).  Made
        once per groups object and length, since every adapter of a pass draws at the same shape (a pass builds
        its own groups, so a captured step recomputes it from the batch on every replay)."""
        cache = self.__dict__.setdefault("_shared_positions", {})
        key = (length, torch.device(device))
        if key not in cache:
            cache[key] = torch.arange(length, device=device) < self.shared_length.to(device)[:, None]
        return cache[key]

    def uniform(self, shape, dtype: torch.dtype, device, row_dim: int = 0) -> torch.Tensor:
        """``U(0, 1)`` of ``shape`` (rows at ``row_dim``) with every row of one group equal."""
        shape = tuple(shape)
        self._check(shape[row_dim])
        full = list(shape)
        full[row_dim] = self.count
        u = torch.rand(full, dtype=dtype, device=device).index_select(row_dim, self.index)
        if self.shared_length is None or len(shape) - row_dim != 3:  # no token axis: one draw per example
            return u
        rows, length = shape[row_dim], shape[row_dim + 1]
        shared = self.shared_positions(length, device).view((1,) * row_dim + (rows, length, 1))
        return torch.where(shared, u, torch.rand(shape, dtype=dtype, device=device))


def row_signs(rows: int, width: int, dtype: torch.dtype, device, groups: RowGroups | None = None) -> torch.Tensor:
    """``(rows, width)`` random signs, one row per row, or with ``groups`` equal within a group (flipout's
    per-example perturbation)."""
    if groups is not None:
        groups._check(rows)
    count = rows if groups is None else groups.count
    draw = torch.empty(count, width, dtype=dtype, device=device).bernoulli_(0.5).mul_(2).sub_(1)
    return draw if groups is None else draw.index_select(0, groups.index)


def row_groups(example_index: torch.Tensor | None, num_examples: int, mode: str = "example",
               shared_length: torch.Tensor | None = None) -> RowGroups | None:
    """Groups of a batch whose rows are ``example_index``'s examples, as ``mode`` (:data:`CHOICE_DRAWS`) says:
    ``example`` shares every position's draw, ``prefix`` the draws of the first ``shared_length`` positions of each
    row, ``sequence`` none.  None where every row is its own example or nothing is shared."""
    if mode not in CHOICE_DRAWS:
        raise ValueError(f"choice draws must be one of {CHOICE_DRAWS}, got {mode!r}")
    if mode == "sequence" or example_index is None or example_index.numel() == num_examples:
        return None
    if mode == "prefix" and shared_length is None:
        raise ValueError("choice draws 'prefix' needs the batch's shared_length (multiple-choice cloze batches)")
    return RowGroups(example_index, num_examples, shared_length if mode == "prefix" else None)


_ACTIVE: list[tuple[RowShard | None, RowGroups | None]] = [(None, None)]


def active_shard() -> RowShard | None:
    """The shard that per-token draws use now (None: draw at the local shape)."""
    return _ACTIVE[0][0]


@contextlib.contextmanager
def drawing_rows(shard: RowShard | None, groups: RowGroups | None = None):
    """Inside the block, :func:`uniform` (and so the gate distributions' ``rsample``) draws through ``shard``,
    else through ``groups``."""
    previous, _ACTIVE[0] = _ACTIVE[0], (shard, groups)
    try:
        yield
    finally:
        _ACTIVE[0] = previous


def uniform(shape, dtype: torch.dtype, device, row_dim: int = 0) -> torch.Tensor:
    """``torch.rand(shape)``, or the active shard's block of the global draw, or the active groups' draw."""
    shard, groups = _ACTIVE[0]
    if shard is not None:
        return shard.uniform(shape, dtype, device, row_dim)
    if groups is not None:
        return groups.uniform(shape, dtype, device, row_dim)
    return torch.rand(shape, dtype=dtype, device=device)
