"""Sentence classification with a sequence-classification backbone (e.g. MiniLM + linear head)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from .base import LENGTH_CHUNK, Batch, pad_dim, padded_size

__all__ = ["SequenceClassificationTask"]


class SequenceClassificationTask:
    """Rows ``{"text": str, "label": int}`` (and an optional ``"text_pair"``, encoded as the second segment)
    -> ``(B, num_labels)`` logits of ``backbone(**inputs).logits``.

    :param tokenizer: tokenizer with a pad token (see :func:`bara_pyro.backbones.load_backbone`).
    :param num_labels: number of classes ``C``.
    :param max_length: texts are truncated to this many tokens (special tokens included).
    :param name: task name reported to the trainer.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_labels: int = 2,
        max_length: int = 128,
        name: str = "sequence_classification",
    ):
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (load_backbone does)")
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        self.max_length = max_length
        self.name = name

    def collate(self, rows: list[dict]) -> Batch:
        """Tokenise and right-pad to the longest text of the batch: inputs ``(B, T)``, labels ``(B,)``."""
        pairs = [row.get("text_pair") for row in rows]
        encoding = self.tokenizer(
            [row["text"] for row in rows],
            text_pair=pairs if any(p is not None for p in pairs) else None,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            padding_side="right",
            return_tensors="pt",
        )
        inputs = dict(encoding)
        return Batch(
            inputs=inputs,
            labels=torch.tensor([row["label"] for row in rows], dtype=torch.long),
            token_mask=inputs["attention_mask"].bool(),
        )

    def row_lengths(self, rows: list[dict], packed: bool = False) -> list[int]:
        """Per row, its number of tokens (special tokens included, truncated as :meth:`collate` does): the ``T`` of
        ``collate([row])``.  ``packed`` changes nothing (one sequence per row)."""
        return [n for start in range(0, len(rows), LENGTH_CHUNK)
                for n in self.collate(rows[start:start + LENGTH_CHUNK]).token_mask.sum(-1).tolist()]

    def pad_batch(self, batch: Batch, multiple: int) -> Batch:
        """``batch`` right-padded to a length that is a multiple of ``multiple`` (masked: the same logits)."""
        length = padded_size(batch.token_mask.shape[1], multiple)
        pad_ids = {"input_ids": self.tokenizer.pad_token_id}
        return Batch(inputs={k: pad_dim(v, 1, length, pad_ids.get(k, 0)) for k, v in batch.inputs.items()},
                     labels=batch.labels, token_mask=pad_dim(batch.token_mask, 1, length, False),
                     extras=batch.extras)

    def scores(self, backbone: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``(B, num_labels)`` class logits from one forward pass."""
        logits = backbone(**batch.inputs).logits
        if logits.shape[-1] != self.num_labels:
            raise ValueError(f"backbone returns {logits.shape[-1]} logits, the task has {self.num_labels} labels")
        return logits
