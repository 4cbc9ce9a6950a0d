"""Synthetic problems with a known truth, for checking what a configuration recovers.

Regression through one linear layer, ``y_t = W0 x_t + dW_t x_t + noise``, each row one token: the
adapter sees ``x_t`` and must learn ``dW_t``.  :func:`low_rank_update` draws ``dW`` of a given rank
for every token; :func:`two_populations` gives two token populations their own rank-``k`` updates,
with the population visible in the update's own input directions.  :func:`two_sequence_populations` does
the same for sequences of tokens (:class:`SequenceRegressionTask`): every token of a sequence belongs to the
sequence's population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .tasks.base import Batch, pad_dim

__all__ = ["OneLinear", "RegressionTask", "SequenceRegressionTask", "SyntheticData", "low_rank_update",
           "two_populations", "two_sequence_populations"]


class OneLinear(nn.Module):
    """A backbone with one frozen ``d x d`` linear layer, ``proj``."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, d)


class RegressionTask:
    """Rows ``{"x": (d,), "y": (d,)}``; scores are ``proj(x)``, for a :class:`~bara_pyro.models.GaussianLikelihood`."""

    name = "synthetic"

    def collate(self, rows):
        return Batch(inputs={"x": torch.stack([r["x"] for r in rows])}, labels=torch.stack([r["y"] for r in rows]),
                     token_mask=torch.ones(len(rows), dtype=torch.bool))

    def scores(self, backbone, batch):
        return backbone.proj(batch.inputs["x"])


class SequenceRegressionTask:
    """Rows ``{"x": (T_n, d), "y": (T_n, d)}``, one sequence each, padded on the right with zeros to the batch's
    longest (``token_mask`` ``(n, T)``); scores are ``proj(x)`` ``(n, T, d)`` at the real tokens and the target
    itself at padding (a constant log-likelihood), for a :class:`~bara_pyro.models.GaussianLikelihood`."""

    name = "synthetic_sequences"

    def collate(self, rows):
        length = max(len(r["x"]) for r in rows)
        mask = torch.stack([torch.arange(length) < len(r["x"]) for r in rows])
        return Batch(inputs={"x": torch.stack([pad_dim(r["x"], 0, length) for r in rows])},
                     labels=torch.stack([pad_dim(r["y"], 0, length) for r in rows]), token_mask=mask)

    def scores(self, backbone, batch):
        return torch.where(batch.token_mask.unsqueeze(-1), backbone.proj(batch.inputs["x"]), batch.labels)


@dataclass
class SyntheticData:
    """``rows`` for the task, the backbone they were generated with, and the truth: ``population`` ``(n,)``
    (all zeros for one population), ``rank`` per population and, for one population, its update ``delta``
    ``(d, d)``."""

    rows: list[dict]
    backbone: OneLinear
    population: torch.Tensor
    rank: tuple[int, ...]
    delta: torch.Tensor | None = None


def _rows(backbone: OneLinear, x: torch.Tensor, update: torch.Tensor, noise: float, g: torch.Generator):
    with torch.no_grad():
        y = backbone.proj(x) + update + noise * torch.randn(x.shape, generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(len(x))]


def low_rank_update(rank: int, d: int = 16, n: int = 512, noise: float = 0.3, seed: int = 0) -> SyntheticData:
    """``dW = U V^T / sqrt(d)`` with ``U, V`` ``(d, rank)`` standard normal, the same for every token."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = OneLinear(d)
    x = torch.randn(n, d, generator=g)
    delta = torch.randn(d, rank, generator=g) @ torch.randn(rank, d, generator=g) / d ** 0.5
    return SyntheticData(_rows(backbone, x, x @ delta.T, noise, g), backbone, torch.zeros(n, dtype=torch.long),
                         (rank,), delta)


def _population_updates(rank: int, d: int, g: torch.Generator,
                        orthogonal_outputs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``V`` ``(d, 2 rank)`` orthonormal (population ``p`` uses columns ``[p rank, (p + 1) rank)``) and ``U``: Gaussian
    columns (scale 1.5), or with ``orthogonal_outputs`` orthogonal columns of the same expected length
    ``1.5 sqrt(d)`` (the same random draws)."""
    v = torch.linalg.qr(torch.randn(d, 2 * rank, generator=g))[0]
    u = torch.randn(d, 2 * rank, generator=g)
    return v, (torch.linalg.qr(u)[0] * math.sqrt(d) if orthogonal_outputs else u) * 1.5


def _two_population_inputs(population: torch.Tensor, v: torch.Tensor, rank: int, separation: float,
                           g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``x ~ N(+/- separation * v_1, I)`` of the given populations, and the update ``(U_p V_p^T x)`` mask."""
    sign = 1.0 - 2.0 * population.to(torch.get_default_dtype())
    x = torch.randn(len(population), v.shape[0], generator=g) + separation * sign[:, None] * v[:, 0]
    uses = torch.zeros(len(population), 2 * rank)
    uses[population == 0, :rank] = 1.0
    uses[population == 1, rank:] = 1.0
    return x, uses


def two_populations(rank: int = 2, d: int = 16, n: int = 1024, noise: float = 0.3, separation: float = 2.5,
                    seed: int = 0, orthogonal_outputs: bool = False) -> SyntheticData:
    """Two token populations, ``x ~ N(+/- separation * v_1, I)``: population 0 gets ``U_0 V_0^T x``, population 1
    ``U_1 V_1^T x``, two rank-``rank`` updates on disjoint orthonormal input directions ``V_0, V_1`` (``v_1`` the
    first column of ``V_0``), so a token's population shows in its projection on the update's own inputs.  With
    ``orthogonal_outputs`` the columns of ``U_0, U_1`` are orthogonal too: the two updates are disjoint sets of
    singular components of one rank-``2 rank`` matrix (with Gaussian ``U``, an adapter with orthonormal factors
    needs more than ``rank`` components for one of the populations)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = OneLinear(d)
    v, u = _population_updates(rank, d, g, orthogonal_outputs)
    population = torch.randint(0, 2, (n,), generator=g)
    x, uses = _two_population_inputs(population, v, rank, separation, g)
    return SyntheticData(_rows(backbone, x, ((x @ v) * uses) @ u.T, noise, g), backbone, population, (rank, rank))


def two_sequence_populations(rank: int = 2, d: int = 16, n: int = 256, lengths: tuple[int, int] = (4, 12),
                             noise: float = 0.3, separation: float = 1.0, seed: int = 0) -> SyntheticData:
    """:func:`two_populations` for sequences: ``n`` sequences of ``lengths[0]..lengths[1]`` tokens (uniform), each
    drawn from one population (``population`` ``(n,)``), all its tokens from that population's inputs and
    update.  With a small ``separation`` single tokens overlap between the populations; their mean over a
    sequence does not.  Rows for :class:`SequenceRegressionTask`."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = OneLinear(d)
    v, u = _population_updates(rank, d, g)
    population = torch.randint(0, 2, (n,), generator=g)
    size = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g)
    x, uses = _two_population_inputs(population.repeat_interleave(size), v, rank, separation, g)
    tokens = _rows(backbone, x, ((x @ v) * uses) @ u.T, noise, g)
    rows, start = [], 0
    for length in size.tolist():
        chunk = tokens[start:start + length]
        rows.append({"x": torch.stack([t["x"] for t in chunk]), "y": torch.stack([t["y"] for t in chunk])})
        start += length
    return SyntheticData(rows, backbone, population, (rank, rank))
