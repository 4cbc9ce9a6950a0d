"""A user's own data: files, folders and hf: datasets, column mapping, splits, cache, and every bad input."""

import json

import pandas as pd
import pytest

from bara_pyro.data import load_user_dataset
from bara_pyro.data.user_data import resolve_dataset


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BARA_PYRO_CACHE", str(tmp_path / "cache"))


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


TICKETS = [{"body": f"ticket number {i}", "category": ["billing", "bug", "account"][i % 3]} for i in range(20)]


def test_csv_with_mapping_string_classes_and_carved_validation(tmp_path):
    path = write_csv(tmp_path / "tickets.csv", TICKETS + [{"body": "", "category": "bug"}])  # one empty text
    user = load_user_dataset(str(path), {"columns": {"text": "body", "label": "category"}}, seed=0)
    s = user.summary
    assert user.kind == "classification" and s["classes"] == ["account", "billing", "bug"]  # sorted order
    assert s["sizes"] == {"train": 18, "validation": 2, "test": 0} and s["carved_validation"] == 2
    assert s["skipped"]["train"] == 1 and "skipped 1 rows of train" in user.describe()
    row = user.data["train"][0]
    assert TICKETS[int(row["text"].split()[-1])]["category"] == s["classes"][row["label"]]
    # stated order, and the same split for the same seed
    ordered = load_user_dataset(str(path), {"columns": {"text": "body", "label": "category"},
                                            "classes": ["bug", "billing", "account"]}, seed=0)
    assert ordered.data["validation"]["id"] == user.data["validation"]["id"]
    assert ordered.data["train"][0]["label"] == ["bug", "billing", "account"].index(TICKETS[int(
        ordered.data["train"][0]["text"].split()[-1])]["category"])


def test_cache_is_keyed_by_content(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"text": f"t{i}", "label": i % 2} for i in range(10)])
    first = load_user_dataset(str(path))
    assert first.summary["classes"] == ["0", "1"]  # int labels are their own index
    assert load_user_dataset(str(path)).data["train"]["text"] == first.data["train"]["text"]  # cached copy
    write_csv(path, [{"text": f"edited {i}", "label": i % 2} for i in range(10)])
    assert all(t.startswith("edited") for t in load_user_dataset(str(path)).data["train"]["text"])


def test_jsonl_multiple_choice_list_and_text_answers(tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [{"question": f"q{i}", "choices": ["a", "b", "c"], "answer": ["a", 1, "c"][i % 3]} for i in range(9)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    user = load_user_dataset(str(path), seed=1)
    assert user.kind == "multiple_choice" and user.num_classes == 3
    labels = {row["question"]: row["label"] for split in ("train", "validation") for row in user.data[split]}
    assert labels["Question: q0"] == 0 and labels["Question: q1"] == 1 and labels["Question: q2"] == 2
    assert user.data["train"][0]["continuations"] == [" a", " b", " c"]


def test_parquet_folder_with_choice_columns_and_all_splits(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    for split, n in (("train", 6), ("dev", 3), ("test", 2)):
        pd.DataFrame([{"q": f"{split}{i}", "A": "x", "B": "y", "gold": i % 2} for i in range(n)]).to_parquet(
            folder / f"{split}.parquet")
    user = load_user_dataset(str(folder), {"kind": "multiple_choice",
                                           "columns": {"question": "q", "choices": ["A", "B"], "answer": "gold"}})
    assert user.summary["sizes"] == {"train": 6, "validation": 3, "test": 2} and user.summary["carved_validation"] == 0


def test_hf_dataset_from_a_local_folder_with_text_pairs(tmp_path):
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    for split in ("train", "test"):
        write_csv(folder / f"{split}.csv", [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2}
                                            for i in range(8)])
    columns = {"columns": {"text": "premise", "text_pair": "hypothesis"}}
    info, data, summary = resolve_dataset(f"hf:{folder}", columns)
    assert info.kind == "classification" and info.num_classes == 2 and "carved from train" in summary
    assert len(data["test"]) == 8 and data["train"][0]["text_pair"].startswith("h")
    _, only_train, _ = resolve_dataset(f"hf:{folder}::train", columns)
    assert len(only_train["test"]) == 0


def test_instruction_rows(tmp_path):
    path = write_csv(tmp_path / "sft.csv", [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(5)])
    user = load_user_dataset(str(path), {"columns": {"prompt": "instruction", "response": "output"}})
    assert user.kind == "instruction" and user.data["train"][0].keys() >= {"prompt", "response"}


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _bad_input(tmp_path, case):
    """(dataset, extra --set overrides) of one bad input."""
    if case == "missing file":
        return tmp_path / "nope.csv", []
    if case == "unknown format":
        (tmp_path / "d.xlsx").write_text("x")
        return tmp_path / "d.xlsx", []
    if case == "mapped column":
        return write_csv(tmp_path / "t.csv", TICKETS), ["data.columns.text=text_body", "data.columns.label=category"]
    if case == "empty split":
        return write_csv(tmp_path / "e.csv", [{"text": "", "label": 1}] * 3), []
    if case == "label outside classes":
        return write_csv(tmp_path / "l.csv", [{"text": "x", "label": "c"}] * 3), ["data.classes=[a, b]"]
    if case == "answer not among choices":
        return _jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": "z"}] * 3), []
    if case == "mixed choice counts":
        return _jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": 0},
                                              {"question": "q", "choices": ["x", "y", "w"], "answer": 0}]), \
            ["data.num_choices=2"]
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,1\nok,0\n".encode("latin-1"))
    return tmp_path / "latin1.csv", []


@pytest.mark.parametrize("case,message", [
    ("missing file", "does not exist"),
    ("unknown format", "unknown data format '.xlsx'"),
    ("mapped column", "data.columns.text = 'text_body' is not a column; the columns are ['body', 'category']"),
    ("empty split", "is empty (3 rows skipped: empty text or label)"),
    ("label outside classes", "label 'c' is not among the classes ['a', 'b']"),
    ("answer not among choices", "answer 'z' is not among the row's choices ['x', 'y']"),
    ("mixed choice counts", "mixed choice counts: the row has 3 choices, data.num_choices is 2"),
    ("not utf-8", "is not UTF-8 text (byte 0xe9 on line 2)"),
])
def test_bad_input_is_one_line_cli_error(tmp_path, capsys, case, message):
    from bara_pyro.cli import main

    dataset, overrides = _bad_input(tmp_path, case)
    sets = [arg for item in [f"dataset={dataset}", "model=tiny-bert", "train.device=cpu", *overrides]
            for arg in ("--set", item)]
    status = main(["train", "--method", "lora", *sets, "--quiet", "--output", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert message in lines[0], lines[0]
