"""Multiple choice with a causal LM: cloze (continuation likelihood) or lettered-options scoring.

Cloze (``scoring="cloze"``): every choice ``i`` of every example becomes one sequence
``[prefix] + context_i + continuation_i`` (right-padded; ``n_seq`` = total number of choices of
the batch, so one backbone pass scores the whole batch).  The score of a choice is the mean
log-likelihood of its ``L_i`` continuation tokens,

.. math::

    s_i = \\frac{1}{L_i} \\sum_{t \\in \\text{cont}_i} \\log p(x_t \\mid x_{<t}),

read off the logits at position ``t - 1``.  Scores are scattered into ``(B, C)`` with ``-inf`` for
choices an example does not have.

Lettered (``scoring="lettered"``): one sequence per example in OLMES' "mc" format,
``question + "\\n A. {choice 0}\\n B. {choice 1}..." + "\\nAnswer:"``, scored by the next-token
logits of ``" A"``, ``" B"``, ... at the last real position.

Contexts are truncated from the left when a sequence exceeds ``max_length``, so the continuation
(or the ``Answer:`` cue) is always kept.
"""

from __future__ import annotations

import string

import torch
from transformers import PreTrainedTokenizerBase

from .base import LENGTH_CHUNK, Batch, pad_dim, padded_size
from .packed_choices import ATTENTION_IMPLEMENTATIONS, pack_choices, packed_widths

__all__ = ["MultipleChoiceTask", "SCORING_MODES"]

SCORING_MODES = ("cloze", "lettered")
LETTERS = string.ascii_uppercase
SCORED_TOKENS_FLOOR = 4  # pad_batch pads the cloze task's scored tokens to at least this many pad_multiples


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids the tokenizer puts before a text by default (BOS, ``[CLS]``; often none)."""
    probe = "probe"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start]
    return []


def _pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, T)`` ids right-padded with ``pad_id`` and the ``(n, T)`` long attention mask."""
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class MultipleChoiceTask:
    """Rows of :data:`bara_pyro.data.MULTIPLE_CHOICE_FEATURES` -> ``(B, C)`` choice logits from a causal LM.

    :param tokenizer: the backbone's tokenizer.
    :param scoring: ``"cloze"`` (mean continuation log-likelihood) or ``"lettered"`` (letter logits).
    :param max_length: maximum tokens per sequence.
    :param num_choices: ``C`` of the returned scores; ``None`` = the largest choice count in the batch.
        Set it (e.g. to :attr:`DatasetInfo.num_classes`) for a fixed width across batches.
    :param name: task name reported to the trainer.

    ``Batch.extras`` for cloze: ``continuation_mask`` ``(n_seq, T)`` bool (True on continuation
    tokens); ``target_sequence`` and ``target_position`` ``(n_tokens,)``, the coordinates of those
    tokens (precomputed so that scoring needs no host sync); ``example_index`` and ``choice_index``
    ``(n_seq,)`` (where each sequence's score goes); ``shared_length`` ``(n_seq,)``, the number of leading tokens
    a sequence has in common with every other choice of its example; ``num_choices`` ``(B,)``; ``width`` (int ``C``).
    For lettered: ``last_position`` ``(B,)``, ``letter_ids`` ``(C,)``, ``choice_mask`` ``(B, C)`` bool.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        scoring: str = "cloze",
        max_length: int = 256,
        num_choices: int | None = None,
        name: str = "multiple_choice",
    ):
        if scoring not in SCORING_MODES:
            raise ValueError(f"unknown scoring {scoring!r}; expected one of {SCORING_MODES}")
        self.tokenizer = tokenizer
        self.scoring = scoring
        self.max_length = max_length
        self.num_choices = num_choices
        self.name = name
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = 0 if pad_id is None else pad_id
        self.prefix_ids = _special_prefix(tokenizer)
        self._letter_ids: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ collate

    def collate(self, rows: list[dict]) -> Batch:
        """Tokenise a list of rows; see the class docstring for the ``extras`` of each scoring mode."""
        labels = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        counts = [len(row["choices"]) for row in rows]
        width = max(counts) if self.num_choices is None else self.num_choices
        if max(counts) > width:
            raise ValueError(f"a row has {max(counts)} choices, more than num_choices={width}")
        if self.scoring == "cloze":
            return self._collate_cloze(rows, labels, counts, width)
        return self._collate_lettered(rows, labels, counts, width)

    def row_lengths(self, rows: list[dict], packed: bool = False) -> list[int]:
        """Per row, the ``T`` of ``collate([row])`` (its longest choice sequence), or with ``packed`` the width of its
        packed row (:meth:`pack`: the shared prefix once and each choice's rest); rows tokenised a chunk at a time."""
        out = []
        for start in range(0, len(rows), LENGTH_CHUNK):
            batch = self.collate(rows[start:start + LENGTH_CHUNK])
            if packed:
                per_row = packed_widths(batch)
            else:
                per_row = torch.zeros(batch.num_examples, batch.extras["width"], dtype=torch.long).index_put(
                    (batch.extras["example_index"], batch.extras["choice_index"]), batch.token_mask.sum(-1)).amax(-1)
            out += per_row.tolist()
        return out

    def packs(self, backbone: torch.nn.Module) -> bool:
        """Whether :meth:`pack` batches can be scored with ``backbone``: cloze scoring and an attention implementation
        that takes a 4D mask (:data:`~bara_pyro.tasks.packed_choices.ATTENTION_IMPLEMENTATIONS`)."""
        implementation = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
        return self.scoring == "cloze" and implementation in ATTENTION_IMPLEMENTATIONS

    def pack(self, batch: Batch, multiple: int = 1) -> Batch:
        """A cloze batch with each example's choices in one row (:func:`~bara_pyro.tasks.packed_choices.pack_choices`,
        the rows' width a multiple of ``multiple``): the same scores from fewer positions."""
        if self.scoring != "cloze":
            raise ValueError("only cloze batches can be packed")
        return pack_choices(batch, self.pad_token_id, multiple)

    def pack_padded(self, batch: Batch, multiple: int) -> Batch:
        """A cloze batch packed for a captured training step: :meth:`pad_batch`'s padding (sequence slots, the
        scored-token list), each example's choices in one row (:meth:`pack`), the rows' width rounded up to a
        multiple of ``multiple``.  The same scores as :meth:`pad_batch`'s batch."""
        return self.pack(self.pad_batch(batch, multiple), multiple)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens; repeated texts (shared contexts) are tokenised once."""
        unique = list(dict.fromkeys(texts))
        ids = dict(zip(unique, self.tokenizer(unique, add_special_tokens=False)["input_ids"]))
        return [ids[text] for text in texts]

    def _collate_cloze(self, rows: list[dict], labels: torch.Tensor, counts: list[int], width: int) -> Batch:
        contexts = [context for row in rows for context in row["contexts"]]
        continuations = [continuation for row in rows for continuation in row["continuations"]]
        sequences, continuation_spans = [], []
        for context_ids, continuation_ids in zip(self._encode(contexts), self._encode(continuations)):
            if not continuation_ids:
                raise ValueError("a continuation encodes to zero tokens; cloze scoring needs at least one")
            continuation_ids = continuation_ids[: self.max_length - 1]
            context_ids = (self.prefix_ids + context_ids)[-(self.max_length - len(continuation_ids)) :]
            if not context_ids:  # no prefix and an empty context: the first token has no prediction
                raise ValueError("cloze scoring needs at least one token before the continuation")
            sequences.append(context_ids + continuation_ids)
            continuation_spans.append((len(context_ids), len(context_ids) + len(continuation_ids)))

        input_ids, attention_mask = _pad_right(sequences, self.pad_token_id)
        positions = torch.arange(input_ids.shape[1])
        spans = torch.tensor(continuation_spans, dtype=torch.long)
        continuation_mask = (positions >= spans[:, :1]) & (positions < spans[:, 1:])
        target_sequence, target_position = continuation_mask.nonzero(as_tuple=True)
        example_index = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
        choice_index = torch.cat([torch.arange(count) for count in counts])
        shared_length = torch.tensor(_shared_prefix_lengths(sequences, counts), dtype=torch.long)
        return Batch(
            inputs={"input_ids": input_ids, "attention_mask": attention_mask},
            labels=labels,
            token_mask=attention_mask.bool(),
            extras={
                "continuation_mask": continuation_mask,
                "target_sequence": target_sequence,
                "target_position": target_position,
                "example_index": example_index,
                "choice_index": choice_index,
                "shared_length": shared_length,
                "num_choices": torch.tensor(counts, dtype=torch.long),
                "width": width,
            },
        )

    def pad_batch(self, batch: Batch, multiple: int) -> Batch:
        """The same batch, its lengths rounded up to multiples of ``multiple``, for a captured training step.

        Sequences are right-padded (masked).  Cloze: the number of sequences is rounded up to a multiple of
        8 (at most ``B * width``) with one-token dummy sequences (no gate tokens) in the slots of missing
        choices, whose scores ``choice_mask`` sets to ``-inf``; the scored-token list is padded to the next
        power of two (at least ``SCORED_TOKENS_FLOOR * multiple``, so that a few sizes cover a dataset; its entries
        cost one LM-head row each) with entries of ``target_weight`` 0.  The scores are the same."""
        ids, attention = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        length = padded_size(ids.shape[1], multiple, minimum=2)
        ids, attention = pad_dim(ids, 1, length, self.pad_token_id), pad_dim(attention, 1, length, 0)
        token_mask = pad_dim(batch.token_mask, 1, length, False)
        extras = dict(batch.extras)
        if self.scoring == "cloze":
            width = extras["width"]
            present = torch.arange(width) < extras["num_choices"][:, None]  # (B, width)
            missing_example, missing_choice = (~present).nonzero(as_tuple=True)
            n_seq = min(padded_size(ids.shape[0], 8), len(present) * width)
            dummies = n_seq - ids.shape[0]
            missing_example, missing_choice = missing_example[:dummies], missing_choice[:dummies]
            dummy_attention = torch.zeros(len(missing_example), length, dtype=attention.dtype)
            dummy_attention[:, 0] = 1  # one attended token: no fully masked attention row
            dummy_continuation = torch.zeros(len(missing_example), length, dtype=torch.bool)
            dummy_continuation[:, 1] = True  # a non-zero denominator for the dummy's (unused) mean
            ids = pad_dim(ids, 0, n_seq, self.pad_token_id)
            attention = torch.cat([attention, dummy_attention])
            token_mask = pad_dim(token_mask, 0, n_seq, False)
            n_tokens = extras["target_sequence"].shape[0]
            n_padded = max(SCORED_TOKENS_FLOOR * multiple, 1 << max(0, n_tokens - 1).bit_length())
            extras.update(
                continuation_mask=torch.cat([pad_dim(extras["continuation_mask"], 1, length, False),
                                             dummy_continuation]),
                target_sequence=pad_dim(extras["target_sequence"], 0, n_padded, 0),
                target_position=pad_dim(extras["target_position"], 0, n_padded, 1),
                target_weight=(torch.arange(n_padded) < n_tokens).float(),
                example_index=torch.cat([extras["example_index"], missing_example]),
                choice_index=torch.cat([extras["choice_index"], missing_choice]),
                shared_length=pad_dim(extras["shared_length"], 0, n_seq, 0),
                choice_mask=present,
            )
        return Batch(inputs={"input_ids": ids, "attention_mask": attention}, labels=batch.labels,
                     token_mask=token_mask, extras=extras)

    def lettered_prompt(self, row: dict) -> str:
        """``question + "\\n A. ...\\n B. ..." + "\\nAnswer:"`` (OLMES multiple-choice format)."""
        options = "".join(f"\n {letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
        return f"{row['question']}{options}\nAnswer:"

    def letter_token_ids(self, count: int) -> torch.Tensor:
        """``(count,)`` ids of the single tokens ``" A"``, ``" B"``, ...; errors if a letter is not one token."""
        if count in self._letter_ids:
            return self._letter_ids[count]
        ids = []
        for letter in LETTERS[:count]:
            encoded = self.tokenizer(f" {letter}", add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ValueError(f"' {letter}' is {len(encoded)} tokens for this tokenizer; lettered scoring needs 1")
            ids.append(encoded[0])
        if len(set(ids)) != len(ids):
            raise ValueError("letter tokens are not distinct for this tokenizer")
        self._letter_ids[count] = torch.tensor(ids, dtype=torch.long)
        return self._letter_ids[count]

    def _collate_lettered(self, rows: list[dict], labels: torch.Tensor, counts: list[int], width: int) -> Batch:
        prompts = self._encode([self.lettered_prompt(row) for row in rows])
        sequences = [(self.prefix_ids + ids)[-self.max_length :] for ids in prompts]
        input_ids, attention_mask = _pad_right(sequences, self.pad_token_id)
        return Batch(
            inputs={"input_ids": input_ids, "attention_mask": attention_mask},
            labels=labels,
            token_mask=attention_mask.bool(),
            extras={
                "last_position": attention_mask.sum(dim=1) - 1,
                "letter_ids": self.letter_token_ids(width),
                "choice_mask": torch.arange(width) < torch.tensor(counts)[:, None],
            },
        )

    # ------------------------------------------------------------------ scores

    def scores(self, backbone: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``(B, C)`` choice logits from one backbone pass; ``-inf`` for missing choices.

        Only the positions that are scored go through the LM head (the continuation-predicting
        positions for cloze, the last real position for lettered), so memory and time grow with the
        scored tokens, not with ``n_seq * T * V``."""
        extras = batch.extras
        inputs = batch.inputs
        if extras.get("packed"):
            sequence = extras["example_index"][extras["target_sequence"]]
            position = extras["packed_source"]
            if backbone.config._attn_implementation == "eager":  # an additive mask
                dtype = backbone.get_input_embeddings().weight.dtype
                inputs = {**inputs, "attention_mask": torch.zeros((), dtype=dtype).masked_fill(
                    ~inputs["attention_mask"], torch.finfo(dtype).min)}
        elif self.scoring == "cloze":
            sequence, position = extras["target_sequence"], extras["target_position"] - 1
        else:
            sequence = torch.arange(batch.inputs["input_ids"].shape[0], device=extras["last_position"].device)
            position = extras["last_position"]
        logits = _logits_at(backbone, inputs, sequence, position)  # (n_positions, V)
        if self.scoring == "cloze":
            return self._cloze_scores(logits, batch)
        letter_logits = logits[:, extras["letter_ids"]]  # (B, C)
        return letter_logits.masked_fill(~extras["choice_mask"], float("-inf"))

    @staticmethod
    def _cloze_scores(predicting: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``predicting``: ``(n_tokens, V)`` logits at the positions that predict continuation tokens."""
        extras = batch.extras
        input_ids = batch.inputs["input_ids"]
        # Continuation token t is predicted at position t - 1 (of its sequence; packed: the column before it in
        # its choice).
        sequence = extras["target_sequence"]
        logits = predicting
        predicting = predicting.float()
        if extras.get("packed"):
            targets = input_ids[extras["example_index"][sequence], extras["packed_target"]]
        else:
            targets = input_ids[sequence, extras["target_position"]]  # (n_tokens,)
        token_log_lik = predicting.gather(-1, targets[:, None]).squeeze(-1) - predicting.logsumexp(-1)
        if "target_weight" in extras:  # a padded batch (pad_batch): padding entries weigh 0
            token_log_lik = token_log_lik * extras["target_weight"]
        n_seq = extras["example_index"].shape[0]
        total = torch.zeros(n_seq, dtype=token_log_lik.dtype, device=logits.device).index_add(
            0, sequence, token_log_lik
        )
        mean_log_lik = total / extras["continuation_mask"].sum(dim=1)  # (n_seq,)

        num_examples = batch.num_examples
        scores = torch.full(
            (num_examples, extras["width"]), float("-inf"), dtype=mean_log_lik.dtype, device=logits.device
        )
        scores = scores.index_put((extras["example_index"], extras["choice_index"]), mean_log_lik)
        if "choice_mask" in extras:  # a padded batch: the dummy sequences of missing choices
            scores = scores.masked_fill(~extras["choice_mask"], float("-inf"))
        return scores


def _logits_at(backbone: torch.nn.Module, inputs: dict, sequence: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Next-token logits at ``(sequence[i], position[i])``: ``(n, V)``.

    For decoder LMs whose logits are ``lm_head(final hidden state)`` (Llama, Mistral, Qwen, ...), the
    base model runs once and the LM head is applied only at those positions; any other model (an extra
    head transform, logit soft-capping) computes the full logits and indexes them.
    """
    lm_head = getattr(backbone, "lm_head", None)
    base = getattr(backbone, "model", None)
    config = getattr(backbone, "config", None)
    plain_head = (isinstance(lm_head, torch.nn.Linear) and base is not None
                  and getattr(config, "final_logit_softcapping", None) is None
                  and getattr(config, "logit_scale", None) is None)
    if plain_head:
        hidden = base(**inputs).last_hidden_state  # (n_seq, T, H)
        return lm_head(hidden[sequence, position])
    return backbone(**inputs).logits[sequence, position]


def _shared_prefix_lengths(sequences: list[list[int]], counts: list[int]) -> list[int]:
    """Per sequence, the length of the longest prefix shared by all the sequences of its example (the example's
    ``counts[e]`` consecutive sequences): the tokens whose hidden states are equal in every choice."""
    out, start = [], 0
    for count in counts:
        group = sequences[start:start + count]
        length = 0
        for tokens in zip(*group):
            if any(t != tokens[0] for t in tokens[1:]):
                break
            length += 1
        out += [length] * count
        start += count
    return out
