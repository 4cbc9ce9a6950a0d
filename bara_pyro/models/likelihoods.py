"""Observation models: turn the backbone's task scores into the distribution of the labels."""

from __future__ import annotations

import pyro.distributions as dist
import torch

__all__ = ["CategoricalLikelihood", "GaussianLikelihood", "TokenSequenceLikelihood", "likelihood_from_dict"]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class CategoricalLikelihood:
    """``y_b ~ Categorical(softmax(scores_b))``; scores ``(B, C)``, missing choices at ``-inf``."""

    def dist(self, scores: torch.Tensor) -> dist.Categorical:
        return dist.Categorical(logits=_at_least_fp32(scores))

    def to_dict(self) -> dict:
        return {"name": "categorical"}


class GaussianLikelihood:
    """``y_b ~ Normal(scores_b, scale^2 I)``; scores ``(B, D)``, one event per example."""

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"GaussianLikelihood scale must be positive, got {scale!r}")
        self.scale = float(scale)

    def dist(self, scores: torch.Tensor) -> dist.Normal:
        return dist.Normal(_at_least_fp32(scores), self.scale).to_event(scores.dim() - 1)

    def to_dict(self) -> dict:
        return {"name": "gaussian", "scale": self.scale}


class TokenSequenceLikelihood:
    """``y_b = (y_b1, ..., y_bL)``, ``y_bl ~ Categorical(softmax(scores_bl))`` independently, the ``L`` positions one
    event: scores ``(B, L, V)``, labels ``(B, L)``; one example (sequence) per element of the data plate.  A padded
    position carries logits that give its label log-probability 0 (see :mod:`bara_pyro.tasks.instruction`)."""

    def dist(self, scores: torch.Tensor) -> dist.Independent:
        return dist.Categorical(logits=_at_least_fp32(scores)).to_event(1)

    def to_dict(self) -> dict:
        return {"name": "token_sequence"}


def likelihood_from_dict(data: dict):
    """The likelihood that ``to_dict`` described (a missing entry: categorical)."""
    name = data.get("name", "categorical")
    if name == "gaussian":
        return GaussianLikelihood(data["scale"])
    if name == "token_sequence":
        return TokenSequenceLikelihood()
    return CategoricalLikelihood()
