"""An example's choices in one row: the prefix they share once, then each choice's own tokens.

A cloze batch holds one sequence per choice, ``[prefix] + context_i + continuation_i``, and the choices of an
example repeat the tokens they have in common (``shared_length`` of them: the question, often more).  Packed, the
example is one row::

    shared tokens | rest of choice 0 | rest of choice 1 | ... | padding

with ``position_ids`` that restart each rest at ``shared_length`` and a ``(B, 1, W, W)`` attention mask in which a
token sees the shared tokens before it and the earlier tokens of its own choice.  Every token then has exactly the
hidden states it has in its own sequence, so the scores are the unpacked scores (to floating-point tolerance) at
``W`` instead of ``C x T`` positions per example.

A per-token random draw (a tied gate, an MC-dropout mask) made on the packed row is one draw per shared token and
one per token of each rest: what ``choice_draws: prefix`` shares.  A per-row draw (a weight sample, flipout signs)
is one per example.  Gate statistics count each shared token once.
"""

from __future__ import annotations

import torch

from .base import Batch, padded_size

__all__ = ["ATTENTION_IMPLEMENTATIONS", "pack_choices", "packed_attention_mask", "packed_widths"]

#: backbone attention implementations that take an arbitrary 4D mask (flash attention does not)
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def packed_widths(batch: Batch) -> torch.Tensor:
    """``(B,)`` the width of each example's packed row: its shared prefix once plus each choice's rest."""
    ex = batch.extras
    rest = batch.token_mask.sum(-1) - ex["shared_length"]  # (n_seq,)
    first = torch.cumsum(ex["num_choices"], 0) - ex["num_choices"]  # (B,) each example's first sequence
    return ex["shared_length"][first] + rest.new_zeros(batch.num_examples).index_add(0, ex["example_index"], rest)


def pack_choices(batch: Batch, pad_token_id: int, multiple: int = 1) -> Batch:
    """The cloze ``batch`` (``n_seq`` sequences of ``T`` tokens, :class:`MultipleChoiceTask`'s extras) as ``B`` packed
    rows of ``W`` tokens: the longest packed row's width, rounded up to a multiple of ``multiple``.

    Inputs: ``input_ids`` and ``position_ids`` ``(B, W)``, ``attention_mask`` ``(B, 1, W, W)`` bool (True: may
    attend; a padding position attends to itself only).  ``token_mask`` ``(B, W)``: real tokens.  Extras: the
    unpacked ones that place scores (``example_index``, ``choice_index``, ``num_choices``, ``width``,
    ``continuation_mask``, ``target_sequence``), plus ``packed_target`` and ``packed_source`` ``(n_tokens,)``: the
    packed columns of each scored token and of the token that predicts it, in row ``example_index[target_sequence]``;
    ``packed``: True.  A batch padded for a captured step (``pad_batch``: its ``target_weight`` and ``choice_mask``,
    which are kept) packs too: its dummy sequences have no real tokens and take no columns.
    """
    ex = batch.extras
    ids = batch.inputs["input_ids"]
    n_seq, length = ids.shape
    lengths = batch.token_mask.sum(-1)  # (n_seq,)
    example = ex["example_index"]
    shared = ex["shared_length"]
    num_examples = batch.num_examples
    # offset of each sequence's rest in its row: shared + the rests of the example's earlier sequences
    rest = lengths - shared
    before = torch.cumsum(rest, 0) - rest  # rests of all earlier sequences
    first = torch.cumsum(ex["num_choices"], 0) - ex["num_choices"]  # (B,) each example's first sequence
    offset = shared + before - before[first][example]  # (n_seq,)
    t = torch.arange(length)
    column = torch.where(t < shared[:, None], t, offset[:, None] + t - shared[:, None])  # (n_seq, T)
    real = t < lengths[:, None]
    # the shared tokens from the example's first sequence, each rest from its own
    keep = real & ((t >= shared[:, None]) | (torch.arange(n_seq) == first[example])[:, None])
    width = padded_size(int(packed_widths(batch).max()), multiple)
    seq_rows, seq_cols = keep.nonzero(as_tuple=True)
    row, col = example[seq_rows], column[seq_rows, seq_cols]
    packed_ids = torch.full((num_examples, width), pad_token_id, dtype=ids.dtype)
    packed_ids[row, col] = ids[seq_rows, seq_cols]
    positions = torch.zeros(num_examples, width, dtype=torch.long)
    positions[row, col] = seq_cols
    segment = torch.full((num_examples, width), -1, dtype=torch.long)  # -1 padding, 0 shared, c + 1 choice c
    choice_segment = torch.where(seq_cols < shared[seq_rows], 0, ex["choice_index"][seq_rows] + 1)
    segment[row, col] = choice_segment
    target_sequence, target_position = ex["target_sequence"], ex["target_position"]
    return Batch(
        inputs={"input_ids": packed_ids, "attention_mask": packed_attention_mask(segment)[:, None],
                "position_ids": positions},
        labels=batch.labels,
        token_mask=segment >= 0,
        extras={
            **{k: ex[k] for k in ("example_index", "choice_index", "num_choices", "width", "continuation_mask",
                                  "target_sequence", "target_weight", "choice_mask") if k in ex},
            "packed_target": column[target_sequence, target_position],
            "packed_source": column[target_sequence, target_position - 1],
            "packed": True,
        },
    )


def packed_attention_mask(segment: torch.Tensor) -> torch.Tensor:
    """``(B, W, W)`` bool from ``segment`` ``(B, W)`` (-1 padding, 0 shared, ``c + 1`` choice ``c``): query ``i`` may
    attend key ``j <= i`` when ``j`` is shared or in ``i``'s segment and both are real; a padding query attends to
    itself only (no empty attention row)."""
    width = segment.shape[-1]
    q = torch.arange(width)
    causal = q[:, None] >= q[None, :]
    key, query = segment[:, None, :], segment[:, :, None]
    mask = causal & ((key == query) | (key == 0)) & (key >= 0) & (query >= 0)
    return mask | torch.eye(width, dtype=torch.bool)

