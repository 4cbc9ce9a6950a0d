"""Column mapping: a user's table rows -> the rows of :mod:`bara_pyro.data.schema` for one task kind.

Task kinds and their columns (``data.columns`` maps these names to the table's own; the names below
need no mapping)::

    classification   text, [text_pair], label        label: int class index or a string class
    multiple_choice  question, choices, answer       choices: one list column or a list of columns;
                                                     answer: 0-based index or the text of a choice
    instruction      prompt, response                response: the tokens the model learns to produce

Class order (classification): ``data.classes`` when given (string labels map to their position there,
int labels must lie in ``range(len(classes))``); otherwise int labels are their own index
(``num_classes = max + 1``) and string labels take the sorted order of the distinct strings.

A row whose text, label, question, answer, prompt or response is missing (null or empty) is skipped and
counted; every other problem (a label outside the classes, an answer that is not among the row's choices,
choice counts that differ where a fixed number is needed) is a :class:`DataError` naming the row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..models.errors import ConfigError
from .multiple_choice import ANSWER_SUFFIX
from .schema import mc_row

__all__ = ["DataError", "KIND_COLUMNS", "MappedSplit", "infer_kind", "map_rows", "resolve_classes"]

KIND_COLUMNS = {
    "classification": ("text", "text_pair", "label"),
    "multiple_choice": ("question", "choices", "answer"),
    "instruction": ("prompt", "response"),
}
REQUIRED_COLUMNS = {"classification": ("text", "label"), "multiple_choice": ("question", "choices", "answer"),
                    "instruction": ("prompt", "response")}


class DataError(ConfigError):
    """A user's data file cannot be used as asked; the message names the file, split, row or column."""


@dataclass
class MappedSplit:
    rows: list[dict]
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                and not value.strip())


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def infer_kind(columns: Sequence[str], mapping: dict) -> str:
    """The task kind whose required columns the table has (after the mapping), or a :class:`DataError`."""
    for kind in KIND_COLUMNS:
        if set(mapping) & set(KIND_COLUMNS[kind]):
            return kind
    for kind in ("instruction", "multiple_choice", "classification"):
        if all(name in columns for name in REQUIRED_COLUMNS[kind]):
            return kind
    raise DataError(f"cannot tell the task from the columns {list(columns)}; set data.kind (classification, "
                    "multiple_choice or instruction) and map the columns with data.columns")


def source_columns(kind: str, mapping: dict, columns: Sequence[str], where: str) -> dict:
    """``{our name: the table's column(s)}`` for ``kind``; a mapped or required column that is absent is an error
    that lists the columns there are."""
    unknown = sorted(set(mapping) - set(KIND_COLUMNS[kind]))
    if unknown:
        raise DataError(f"data.columns has {unknown}, which {kind} does not use; its columns: "
                        f"{list(KIND_COLUMNS[kind])}")
    resolved = {}
    for name in KIND_COLUMNS[kind]:
        source = mapping.get(name, name)
        wanted = list(source) if isinstance(source, (list, tuple)) else [source]
        if name not in mapping and name not in REQUIRED_COLUMNS[kind] and source not in columns:
            continue  # an optional column that is neither mapped nor present
        absent = [c for c in wanted if c not in columns]
        if absent:
            how = f"data.columns.{name} = {source!r}" if name in mapping else f"the default column {name!r}"
            raise DataError(f"{where}: {how} is not a column; the columns are {list(columns)}")
        resolved[name] = source
    return resolved


def resolve_classes(labels: list, classes: list | None) -> list[str]:
    """Class names in index order (see the module docstring)."""
    if classes is not None:
        return [str(c) for c in classes]
    values = [_label_value(v) for v in labels]
    if all(isinstance(v, int) for v in values):
        return [str(i) for i in range(max(values, default=1) + 1)]
    if any(isinstance(v, int) for v in values):
        raise DataError("the label column mixes integers and strings; give data.classes to state the class order")
    return sorted(set(values))


def _label_value(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else str(value).strip()


def _label_index(value, classes: list[str], where: str) -> int:
    value = _label_value(value)
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise DataError(f"{where}: label {value} is outside the classes 0..{len(classes) - 1} ({classes})")
        return value
    if value not in classes:
        raise DataError(f"{where}: label {value!r} is not among the classes {classes}")
    return classes.index(value)


def map_rows(kind: str, rows: list[dict], columns: dict, split: str, source: str, classes: list[str] | None = None,
             num_choices: int | None = None) -> MappedSplit:
    """Rows of ``kind`` from table ``rows`` with ``columns`` from :func:`source_columns`; ids are
    ``{split}-{row number}`` (0-based, in file order)."""
    out = MappedSplit(rows=[])
    for index, row in enumerate(rows):
        where = f"{source}, split {split}, row {index}"
        if kind == "classification":
            _classification_row(row, columns, classes, f"{split}-{index}", where, out)
        elif kind == "multiple_choice":
            _multiple_choice_row(row, columns, num_choices, f"{split}-{index}", where, out)
        else:
            prompt, response = row[columns["prompt"]], row[columns["response"]]
            if _missing(prompt) or _missing(response):
                out.skip("empty prompt or response")
                continue
            out.rows.append({"id": f"{split}-{index}", "prompt": _text(prompt), "response": _text(response)})
    return out


def _classification_row(row, columns, classes, row_id, where, out: MappedSplit) -> None:
    text, label = row[columns["text"]], row[columns["label"]]
    pair = row[columns["text_pair"]] if "text_pair" in columns else None
    if _missing(text) or _missing(label) or ("text_pair" in columns and _missing(pair)):
        out.skip("empty text or label")
        return
    out.rows.append({"id": row_id, "text": _text(text), "text_pair": None if pair is None else _text(pair),
                     "label": _label_index(label, classes, where)})


def _multiple_choice_row(row, columns, num_choices, row_id, where, out: MappedSplit) -> None:
    question, answer, source = row[columns["question"]], row[columns["answer"]], columns["choices"]
    if _missing(question) or _missing(answer):
        out.skip("empty question or answer")
        return
    if isinstance(source, (list, tuple)):  # one column per choice: a fixed number of choices
        choices = [row[c] for c in source]
        if any(_missing(c) for c in choices):
            raise DataError(f"{where}: mixed choice counts: {sum(not _missing(c) for c in choices)} of the "
                            f"{len(source)} choice columns {list(source)} are filled; choices given as columns "
                            "need every column filled")
    else:
        choices = row[source]
        if hasattr(choices, "tolist"):
            choices = choices.tolist()
        if not isinstance(choices, (list, tuple)):
            raise DataError(f"{where}: the choices column {source!r} holds {type(choices).__name__}, not a list; "
                            "for one column per choice give data.columns.choices a list of column names")
    choices = [_text(c).strip() for c in choices]
    if num_choices is not None and len(choices) != num_choices:
        raise DataError(f"{where}: mixed choice counts: the row has {len(choices)} choices, data.num_choices is "
                        f"{num_choices}")
    if len(choices) < 2:
        raise DataError(f"{where}: a multiple-choice row needs at least 2 choices, it has {len(choices)}")
    answer = _label_value(answer)
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise DataError(f"{where}: answer index {answer} is not among the row's {len(choices)} choices")
        label = answer
    else:
        if answer not in choices:
            raise DataError(f"{where}: answer {answer!r} is not among the row's choices {choices}")
        label = choices.index(answer)
    stem = f"Question: {_text(question).strip()}"
    out.rows.append(mc_row(id=row_id, contexts=[stem + ANSWER_SUFFIX] * len(choices),
                           continuations=[f" {c}" for c in choices], label=label, question=stem, choices=choices))
