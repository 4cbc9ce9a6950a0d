"""Benchmark datasets as :class:`datasets.DatasetDict` objects with splits ``train``/``validation``/``test``.

See :mod:`bara_pyro.data.registry` for the names, sources and split sizes, and
:mod:`bara_pyro.data.schema` for the row schemas.
"""

from .registry import DATASETS, DatasetInfo, dataset_info, load_task_dataset
from .schema import CLASSIFICATION_FEATURES, MULTIPLE_CHOICE_FEATURES, SPLITS

__all__ = [
    "CLASSIFICATION_FEATURES",
    "DATASETS",
    "DatasetInfo",
    "MULTIPLE_CHOICE_FEATURES",
    "SPLITS",
    "dataset_info",
    "load_task_dataset",
]
