"""Row schemas shared by every loader: sentence classification and multiple choice.

Classification row::

    {"id": str, "text": str, "label": int}              # label in {0: negative, 1: positive}

Multiple-choice row (``n`` choices, ``n`` varies between rows of one dataset)::

    {"id": str,
     "contexts": list[str],       # n prompts; choice i is scored as continuations[i] after contexts[i]
     "continuations": list[str],  # n continuations, each starting with the separating space
     "label": int,                # index of the correct choice
     "question": str,             # the stem, for the lettered-options prompt
     "choices": list[str]}        # n bare option texts, for the lettered-options prompt

Every :class:`datasets.DatasetDict` has exactly the splits ``train``, ``validation`` and
``test``; a split a dataset does not provide is present and empty, with the same features.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

__all__ = [
    "CLASSIFICATION_FEATURES",
    "MULTIPLE_CHOICE_FEATURES",
    "SPLITS",
    "make_dataset_dict",
    "mc_row",
]

SPLITS = ("train", "validation", "test")

SENTIMENT_LABELS = ("negative", "positive")

CLASSIFICATION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(SENTIMENT_LABELS)),
    }
)

MULTIPLE_CHOICE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "contexts": datasets.List(datasets.Value("string")),
        "continuations": datasets.List(datasets.Value("string")),
        "label": datasets.Value("int64"),
        "question": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
    }
)


def mc_row(
    id: str,
    contexts: Sequence[str],
    continuations: Sequence[str],
    label: int,
    question: str,
    choices: Sequence[str],
) -> dict:
    """Build and check one multiple-choice row (equal lengths, label in range)."""
    if not len(contexts) == len(continuations) == len(choices) >= 2:
        raise ValueError(f"row {id}: contexts, continuations and choices must have the same length >= 2")
    if not 0 <= label < len(choices):
        raise ValueError(f"row {id}: label {label} out of range for {len(choices)} choices")
    return {
        "id": id,
        "contexts": list(contexts),
        "continuations": list(continuations),
        "label": int(label),
        "question": question,
        "choices": list(choices),
    }


def make_dataset_dict(splits: dict[str, list[dict]], features: datasets.Features) -> datasets.DatasetDict:
    """A :class:`~datasets.DatasetDict` with all of :data:`SPLITS`; missing splits are empty."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; expected {SPLITS}")
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(splits[split], features=features)
            if splits.get(split)
            else datasets.Dataset.from_dict({column: [] for column in features}, features=features)
            for split in SPLITS
        }
    )
