"""The contract between a task (data -> tensors -> class scores) and the Bayesian adapters.

A task turns raw dataset rows into a :class:`Batch` and turns the backbone's outputs into
the logits of a categorical predictive distribution over ``C`` classes or choices.  The
adapters never see task details: they only need the per-token ``token_mask`` (which tokens
carry local gates) and the number of *examples* ``B`` (the data plate's subsample size).

Shapes: ``B`` examples, ``n_seq`` sequences fed to the backbone (``B`` for classification,
the total number of choices for cloze scoring), ``T`` padded tokens, ``C`` classes/choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["LENGTH_CHUNK", "Batch", "Task", "pad_dim", "padded_size"]

LENGTH_CHUNK = 256  # rows collated at once by a task's row_lengths


@dataclass
class Batch:
    """One minibatch, ready for the backbone.

    :param inputs: keyword tensors for ``backbone(**inputs)``, each ``(n_seq, T)``.
    :param labels: ``(B,)`` class or choice index (long), or ``(B, ...)`` float targets.
    :param token_mask: ``(n_seq, T)`` bool, True for real (non-padding) tokens.
    :param extras: task-specific tensors used by :meth:`Task.scores` (e.g. continuation masks).
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    token_mask: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> "Batch":
        def move(v):
            return v.to(device) if torch.is_tensor(v) else v

        return Batch(
            inputs={k: move(v) for k, v in self.inputs.items()},
            labels=move(self.labels),
            token_mask=move(self.token_mask),
            extras={k: move(v) for k, v in self.extras.items()},
        )


def padded_size(n: int, multiple: int, minimum: int = 1) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (at least ``minimum``)."""
    return max(minimum, -(-n // multiple) * multiple)


def pad_dim(t: torch.Tensor, dim: int, size: int, value=0) -> torch.Tensor:
    """``t`` extended along ``dim`` to ``size`` entries filled with ``value`` (unchanged if already that long)."""
    extra = size - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_full(shape, value)], dim=dim)


@runtime_checkable
class Task(Protocol):
    """What the trainer and the Bayesian model need from a task."""

    name: str

    def collate(self, rows: list[dict]) -> Batch:
        """Tokenise and pad a list of dataset rows into a :class:`Batch`."""
        ...

    def scores(self, backbone: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Run the backbone once and return ``(B, C)`` logits of the predictive categorical.

        Missing choices (examples with fewer than ``C`` options) get ``-inf``.
        """
        ...

    # Optional: ``row_lengths(rows, packed=False) -> list[int]``, each row's length ``T`` in ``collate([row])`` (with
    # ``packed``, in ``pack(collate([row]))``), by which prediction batches rows of similar length
    # (:func:`bara_pyro.inference.predictive.length_order`).
    # Optional: ``pad_batch(batch, multiple) -> Batch``, the same batch with lengths padded up to multiples of
    # ``multiple`` (padding masked out, the same scores), so that a captured training step (CUDA graphs) meets
    # few distinct shapes; see :mod:`bara_pyro.inference.graphed_step`.
