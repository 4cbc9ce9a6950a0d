"""Instruction fine-tuning of a causal LM: next-token prediction of the response given the prompt.

Each row ``{"prompt", "response"}`` becomes one sequence ``[prefix] + prompt + response + [EOS]``
(right-padded).  The example's observation ``y_b`` is its response token sequence
``(x_{P+1}, ..., x_{P+L_b})`` (EOS included when the tokenizer has one), and

.. math::

    \\log p(y_b \\mid x_b) = \\sum_{t = P+1}^{P+L_b} \\log p(x_t \\mid x_{<t}),

so the loss is the next-token NLL of the response tokens only: prompt and padding are masked.  The data
plate counts sequences (examples), not tokens: ``N`` is the number of training rows and the minibatch
scale is ``N / B`` sequences.

Scores are ``(B, L, V)``: the logits that predict the ``L = max_b L_b`` response positions of each example.
A padded position ``l >= L_b`` holds logits ``[0, -inf, ..., -inf]`` and target 0, so its log-likelihood is
exactly 0 and :class:`~bara_pyro.models.likelihoods.TokenSequenceLikelihood` (``Categorical(logits)``
with the ``L`` positions as one event) sums the real tokens only.  Prompts are truncated from the left and
responses from the right so a sequence fits ``max_length``.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from .base import Batch
from .multiple_choice import _logits_at, _pad_right, _special_prefix

__all__ = ["InstructionTask", "PAD_TARGET"]

PAD_TARGET = 0  # target id of a padded response position (its logits make its log-likelihood 0)


class InstructionTask:
    """Rows ``{"prompt": str, "response": str}`` -> ``(B, L, V)`` next-token logits of the response positions.

    :param tokenizer: the backbone's tokenizer.
    :param max_length: maximum tokens per sequence (prompt truncated from the left, then the response).
    :param name: task name reported to the trainer.

    ``Batch.labels``: ``(B, L)`` response token ids (``PAD_TARGET`` beyond an example's length).
    ``Batch.extras``: ``response_mask`` ``(B, L)`` bool; ``target_sequence`` / ``target_position``
    ``(n_tokens,)`` where each response token sits in ``input_ids``; ``response_index`` ``(n_tokens,)`` its
    position ``l`` in the response.
    """

    kind = "instruction"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 256, name: str = "instruction"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = 0 if pad_id is None else pad_id
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.prefix_ids = _special_prefix(tokenizer)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def collate(self, rows: list[dict]) -> Batch:
        prompts = self._encode([row["prompt"] for row in rows])
        responses = self._encode([row["response"] for row in rows])
        sequences, spans = [], []
        for prompt_ids, response_ids in zip(prompts, responses):
            response_ids = (response_ids + self.eos_ids)[: self.max_length - 1]
            if not response_ids:
                raise ValueError("a response encodes to zero tokens and the tokenizer has no EOS token")
            context = (self.prefix_ids + prompt_ids)[-(self.max_length - len(response_ids)):]
            if not context:
                raise ValueError("instruction tuning needs at least one token before the response")
            sequences.append(context + response_ids)
            spans.append((len(context), len(response_ids)))
        input_ids, attention_mask = _pad_right(sequences, self.pad_token_id)
        lengths = torch.tensor([n for _, n in spans], dtype=torch.long)
        width = int(lengths.max())
        response_mask = torch.arange(width) < lengths[:, None]  # (B, L)
        target_sequence, response_index = response_mask.nonzero(as_tuple=True)
        starts = torch.tensor([s for s, _ in spans], dtype=torch.long)
        target_position = starts[target_sequence] + response_index
        labels = torch.full((len(rows), width), PAD_TARGET, dtype=torch.long)
        labels[target_sequence, response_index] = input_ids[target_sequence, target_position]
        return Batch(
            inputs={"input_ids": input_ids, "attention_mask": attention_mask},
            labels=labels,
            token_mask=attention_mask.bool(),
            extras={"response_mask": response_mask, "target_sequence": target_sequence,
                    "target_position": target_position, "response_index": response_index},
        )

    def scores(self, backbone: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``(B, L, V)`` logits predicting each response token (position ``t - 1`` predicts token ``t``);
        padded response positions hold ``[0, -inf, ...]`` (log-likelihood 0 at ``PAD_TARGET``)."""
        extras = batch.extras
        sequence, index = extras["target_sequence"], extras["response_index"]
        logits = _logits_at(backbone, batch.inputs, sequence, extras["target_position"] - 1)  # (n_tokens, V)
        num_examples, width = extras["response_mask"].shape
        pad_row = torch.full((logits.shape[-1],), float("-inf"), dtype=logits.dtype, device=logits.device)
        pad_row[PAD_TARGET] = 0.0
        out = pad_row.expand(num_examples, width, -1).clone()
        return out.index_put((sequence, index), logits)
