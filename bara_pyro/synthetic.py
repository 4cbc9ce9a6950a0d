"""Synthetic problems with a known truth, for checking what a configuration recovers.

Regression through one linear layer, ``y_t = W0 x_t + dW_t x_t + noise``, each row one token: the
adapter sees ``x_t`` and must learn ``dW_t``.  :func:`low_rank_update` draws ``dW`` of a given rank
for every token; :func:`two_populations` gives two token populations their own rank-``k`` updates,
with the population visible in the update's own input directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .tasks.base import Batch

__all__ = ["OneLinear", "RegressionTask", "SyntheticData", "low_rank_update", "two_populations"]


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


def two_populations(rank: int = 2, d: int = 16, n: int = 1024, noise: float = 0.3, separation: float = 2.5,
                    seed: int = 0) -> SyntheticData:
    """Two token populations, ``x ~ N(+/- separation * v_1, I)``: population 0 gets ``U_0 V_0^T x``, population 1
    ``U_1 V_1^T x``, two rank-``rank`` updates on disjoint orthonormal input directions ``V_0, V_1`` (``v_1`` the
    first column of ``V_0``), so a token's population shows in its projection on the update's own inputs."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = OneLinear(d)
    v = torch.linalg.qr(torch.randn(d, 2 * rank, generator=g))[0]
    u = 1.5 * torch.randn(d, 2 * rank, generator=g)
    population = torch.randint(0, 2, (n,), generator=g)
    sign = 1.0 - 2.0 * population.to(torch.get_default_dtype())
    x = torch.randn(n, d, generator=g) + separation * sign[:, None] * v[:, 0]
    uses = torch.zeros(n, 2 * rank)
    uses[population == 0, :rank] = 1.0
    uses[population == 1, rank:] = 1.0
    return SyntheticData(_rows(backbone, x, ((x @ v) * uses) @ u.T, noise, g), backbone, population, (rank, rank))
