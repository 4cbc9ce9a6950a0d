"""A user's own dataset: a local file, a folder of split files, or a Hugging Face dataset (``hf:...``).

``dataset:`` in a run config takes, besides a registry name,

* a file ``tickets.csv`` / ``.jsonl`` / ``.json`` / ``.parquet``: its rows are the ``train`` split;
* a folder holding one such file per split, named ``train.*``, ``validation.*`` (or ``valid``, ``val``,
  ``dev``) and ``test.*``;
* ``hf:NAME[:CONFIG[:SPLIT,...]]``: ``datasets.load_dataset(NAME, CONFIG)`` (NAME may be a local folder, so
  it works offline), its splits mapped by the same names; ``SPLIT,...`` keeps only those.

The ``data`` section says how to read it: ``kind`` (``classification``, ``multiple_choice`` or
``instruction``; default: told from the columns), ``columns`` (our column name -> the table's, see
:mod:`bara_pyro.data.columns`), ``classes`` (the class order), ``num_choices`` (a fixed choice count to
enforce) and ``validation_fraction``.  A missing validation split is carved from train with ``data.seed``:
``max(1, round(validation_fraction * n_train))`` rows (default 10%); a missing test split stays empty
(training needs none).  Skipped rows are counted per split in the summary (:attr:`UserDataset.summary`).

The processed copy is cached under ``<cache>/datasets/`` keyed by the sha256 of the files' content (for a hub
dataset, by its ``datasets`` fingerprints) and the ``data`` options, so an edited file is read again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..assets import cache_dir, files_digest
from .columns import DataError, infer_kind, map_rows, resolve_classes, source_columns
from .schema import MULTIPLE_CHOICE_FEATURES, SPLITS, make_dataset_dict

__all__ = ["DATA_FORMATS", "DATA_OPTIONS", "HF_PREFIX", "UserDataset", "check_user_dataset", "is_user_dataset",
           "load_user_dataset", "resolve_dataset"]

logger = logging.getLogger(__name__)

DATA_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
HF_PREFIX = "hf:"
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test"}
DATA_OPTIONS = {"kind": None, "columns": {}, "classes": None, "num_choices": None, "validation_fraction": 0.1}
USER_DATA_VERSION = 1  # bump when the processing changes, so stale cached copies are not reused

CLASSIFICATION_PAIR_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "text": datasets.Value("string"), "text_pair": datasets.Value("string"),
    "label": datasets.Value("int64")})
INSTRUCTION_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "prompt": datasets.Value("string"), "response": datasets.Value("string")})
FEATURES = {"classification": CLASSIFICATION_PAIR_FEATURES, "multiple_choice": MULTIPLE_CHOICE_FEATURES,
            "instruction": INSTRUCTION_FEATURES}


@dataclass
class UserDataset:
    """``data``: the processed splits; ``kind``; ``num_classes`` (classes, the largest choice count, or 0 for
    instruction data); ``summary``: sources, class order, split sizes, carved validation rows, skipped rows."""

    data: datasets.DatasetDict
    kind: str
    num_classes: int
    summary: dict

    def describe(self) -> str:
        """One line for the run log."""
        s = self.summary
        sizes = ", ".join(f"{k} {v}" for k, v in s["sizes"].items())
        parts = [f"data: {s['kind']} from {s['source']} ({sizes})"]
        if s.get("classes"):
            parts.append(f"classes in index order {s['classes']}")
        if s.get("carved_validation"):
            parts.append(f"validation = {s['carved_validation']} rows carved from train with seed {s['seed']}")
        skipped = {split: n for split, n in s["skipped"].items() if n}
        if skipped:
            why = "; ".join(sorted({r for reasons in s["skip_reasons"].values() for r in reasons}))
            parts.append("skipped " + ", ".join(f"{n} rows of {split}" for split, n in skipped.items()) + f" ({why})")
        return "; ".join(parts)


def is_user_dataset(name: str) -> bool:
    """Whether ``dataset: name`` means a file, folder or ``hf:`` dataset rather than a registry name."""
    return name.startswith(HF_PREFIX) or os.sep in name or "/" in name or bool(Path(name).suffix) \
        or Path(name).expanduser().exists()


def check_user_dataset(name: str, options: dict) -> None:
    """The cheap checks made when the config is loaded: the file or folder exists, its format is known, and
    the ``data`` options are well formed."""
    _check_options(options)
    if name.startswith(HF_PREFIX):
        if not name[len(HF_PREFIX):].split(":")[0]:
            raise DataError(f"dataset {name!r}: give hf:NAME[:CONFIG[:SPLIT,...]]")
        return
    _split_files(Path(name).expanduser())


def _check_options(options: dict) -> None:
    kind = options.get("kind")
    if kind is not None and kind not in FEATURES:
        raise DataError(f"data.kind must be one of {sorted(FEATURES)} or null, got {kind!r}")
    columns = options.get("columns")
    if not isinstance(columns, dict) or not all(isinstance(v, (str, list)) for v in columns.values()):
        raise DataError(f"data.columns must map column names to the table's names, got {columns!r}")
    classes = options.get("classes")
    if classes is not None and not (isinstance(classes, list) and len(classes) >= 2
                                    and len({str(c) for c in classes}) == len(classes)):
        raise DataError(f"data.classes must be a list of at least 2 distinct class names, got {classes!r}")
    nc = options.get("num_choices")
    if nc is not None and not (isinstance(nc, int) and nc >= 2):
        raise DataError(f"data.num_choices must be an integer >= 2 or null, got {nc!r}")
    fraction = options.get("validation_fraction")
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise DataError(f"data.validation_fraction must be a number in (0, 1), got {fraction!r}")


# --------------------------------------------------------------------------- reading


def _split_files(path: Path) -> dict[str, Path]:
    """``{split: file}`` of a file (train) or a folder of split files."""
    if path.is_file():
        _format(path)
        return {"train": path}
    if path.is_dir():
        files = {}
        for child in sorted(path.iterdir()):
            split = SPLIT_NAMES.get(child.name.split(".")[0].lower())
            if child.is_file() and split and child.suffix.lower() in DATA_FORMATS:
                if split in files:
                    raise DataError(f"{path} holds two files for split {split}: {files[split].name}, {child.name}")
                files[split] = child
        if not files:
            raise DataError(f"folder {path} holds no split files (train/validation/test with a suffix of "
                            f"{', '.join(DATA_FORMATS)})")
        return files
    if path.suffix and path.suffix.lower() not in DATA_FORMATS:
        _format(path)
    raise DataError(f"data file {path} does not exist")


def _format(path: Path) -> str:
    try:
        return DATA_FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"unknown data format {path.suffix or '(no suffix)'!r} of {path}; supported: "
                        f"{', '.join(DATA_FORMATS)}") from None


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as "
                        "UTF-8") from None


def read_table(path: Path) -> tuple[list[dict], list[str]]:
    """Rows (dicts, file order) and column names of one CSV / JSON Lines / JSON / Parquet file."""
    import pandas as pd

    fmt = _format(path)
    try:
        if fmt == "csv":
            frame = pd.read_csv(io.StringIO(_decode(path)))
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            text = _decode(path)
            if fmt == "json" and text.lstrip().startswith("["):
                records = json.loads(text)
            else:
                records = []
                for number, line in enumerate(text.splitlines(), start=1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise DataError(f"{path}, line {number}: not a JSON object ({exc.msg})") from None
            if not all(isinstance(r, dict) for r in records):
                raise DataError(f"{path}: every JSON record must be an object of column values")
            frame = pd.DataFrame.from_records(records)
    except DataError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DataError(f"cannot read {path} as {fmt}: {reason}") from None
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict(orient="records"), [str(c) for c in frame.columns]


def _read_hf(spec: str) -> tuple[dict[str, tuple[list[dict], list[str]]], str]:
    """``{split: (rows, columns)}`` of ``hf:NAME[:CONFIG[:SPLIT,...]]`` and a fingerprint of its content."""
    name, config, wanted = (spec[len(HF_PREFIX):].split(":", 2) + ["", ""])[:3]
    keep = [s.strip() for s in wanted.split(",") if s.strip()]
    try:
        loaded = datasets.load_dataset(name, config or None)
    except UnicodeDecodeError as exc:
        raise DataError(f"dataset {spec!r} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except (OSError, ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DataError(f"cannot load dataset {spec!r} with datasets.load_dataset: {reason}") from None
    missing = [s for s in keep if s not in loaded]
    if missing:
        raise DataError(f"dataset {spec!r} has no split(s) {missing}; its splits: {list(loaded)}")
    splits, prints = {}, []
    for theirs in keep or list(loaded):
        ours = SPLIT_NAMES.get(theirs.lower())
        if ours is None:
            logger.warning("dataset %s: split %r is not train/validation/test and is not used", spec, theirs)
            continue
        if ours in splits:
            raise DataError(f"dataset {spec!r} has two splits for {ours}; name the ones to use: "
                            f"hf:{name}:{config}:train,validation")
        table = loaded[theirs]
        splits[ours] = (table.to_list(), list(table.column_names))
        prints.append(f"{ours}={table._fingerprint}")
    return splits, ";".join(prints)


# --------------------------------------------------------------------------- processing and cache


def _content_key(name: str, options: dict, seed: int) -> tuple[str, dict | None, dict[str, Path] | None]:
    """The cache key, with what :func:`_build` reads (hub splits, already loaded, or the split files)."""
    if name.startswith(HF_PREFIX):
        tables, content = _read_hf(name)
        files = None
    else:
        files = _split_files(Path(name).expanduser())
        tables, content = None, files_digest(files)
    payload = json.dumps({"version": USER_DATA_VERSION, "content": content, "options": options, "seed": seed,
                          "source": name if name.startswith(HF_PREFIX) else None}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24], tables, files


def _build(name: str, options: dict, seed: int, tables: dict | None, files: dict[str, Path] | None) -> UserDataset:
    if tables is None:
        tables = {split: read_table(path) for split, path in files.items()}
    if "train" not in tables:
        raise DataError(f"dataset {name!r} has no train split (splits: {list(tables)})")
    kind = options["kind"] or infer_kind(tables["train"][1], options["columns"])
    where = {split: str(files[split]) if files else f"{name} ({split})" for split in tables}
    columns = {split: source_columns(kind, options["columns"], cols, where[split])
               for split, (_, cols) in tables.items()}
    classes = None
    if kind == "classification":
        labels = [row[columns[s]["label"]] for s, (rows, _) in tables.items() for row in rows]
        labels = [v for v in labels if v is not None and not (isinstance(v, str) and not v.strip())
                  and not (isinstance(v, float) and np.isnan(v))]
        classes = resolve_classes(labels, options["classes"])
        if len(classes) < 2:
            raise DataError(f"dataset {name!r} has labels of only one class {classes}; classification needs two")
    mapped = {split: map_rows(kind, rows, columns[split], split, where[split], classes=classes,
                              num_choices=options["num_choices"]) for split, (rows, _) in tables.items()}
    for split, part in mapped.items():
        if not part.rows:
            raise DataError(f"split {split} of {where[split]} is empty" + (
                f" ({part.skipped} rows skipped: {', '.join(part.reasons)})" if part.skipped else ""))
    splits = {split: part.rows for split, part in mapped.items()}
    carved = 0
    if "validation" not in splits:
        train = splits["train"]
        if len(train) < 2:
            raise DataError(f"{where['train']} has {len(train)} usable row(s); carving a validation split needs 2")
        carved = min(len(train) - 1, max(1, round(options["validation_fraction"] * len(train))))
        order = np.random.default_rng(seed).permutation(len(train))
        splits["validation"] = [train[i] for i in sorted(order[:carved])]
        splits["train"] = [train[i] for i in sorted(order[carved:])]
    data = make_dataset_dict(splits, FEATURES[kind])
    if kind == "classification":
        num_classes = len(classes)
    elif kind == "multiple_choice":
        num_classes = max(len(row["choices"]) for rows in splits.values() for row in rows)
    else:
        num_classes = 0
    summary = {"source": name, "kind": kind, "classes": classes, "seed": seed, "carved_validation": carved,
               "sizes": {split: len(data[split]) for split in SPLITS},
               "skipped": {split: part.skipped for split, part in mapped.items()},
               "skip_reasons": {split: part.reasons for split, part in mapped.items()},
               "num_classes": num_classes}
    return UserDataset(data, kind, num_classes, summary)


def load_user_dataset(name: str, options: dict | None = None, seed: int = 0, rebuild: bool = False) -> UserDataset:
    """Read, map, split and cache a user's dataset (see the module docstring); errors are :class:`DataError`."""
    from .registry import _save_atomically

    options = {**DATA_OPTIONS, **{k: v for k, v in (options or {}).items() if k in DATA_OPTIONS}}
    check_user_dataset(name, options)
    key, tables, files = _content_key(name, options, seed)
    path = cache_dir() / "datasets" / f"user-v{USER_DATA_VERSION}" / key
    summary_path = path.with_name(key + ".json")
    if path.exists() and summary_path.exists() and not rebuild:
        try:
            summary = json.loads(summary_path.read_text())
            return UserDataset(datasets.load_from_disk(str(path)), summary["kind"], summary["num_classes"], summary)
        except Exception as err:  # noqa: BLE001 - a damaged derived cache is rebuilt, not fatal
            logger.warning("rebuilding damaged dataset cache %s (%s)", path, err)
    built = _build(name, options, seed, tables, files)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(built.summary, indent=1))
    os.replace(tmp, summary_path)
    _save_atomically(built.data, path)
    return UserDataset(datasets.load_from_disk(str(path)), built.kind, built.num_classes, built.summary)


def resolve_dataset(name: str, options: dict | None = None, seed: int = 0):
    """``(DatasetInfo, DatasetDict, summary line or None)`` for ``dataset: name``: a registry dataset, or a
    user's file, folder or ``hf:`` dataset read with the ``data`` options."""
    from .registry import DatasetInfo, dataset_info, load_task_dataset

    if not is_user_dataset(name):
        return dataset_info(name), load_task_dataset(name, seed=seed), None
    user = load_user_dataset(name, options, seed=seed)
    info = DatasetInfo(name=Path(name).stem if not name.startswith(HF_PREFIX) else name, kind=user.kind,
                       num_classes=user.num_classes, build=lambda _seed: user.data, seeded=True,
                       description=user.describe())
    return info, user.data, user.describe()
