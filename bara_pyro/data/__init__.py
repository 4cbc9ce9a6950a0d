"""Benchmark datasets as :class:`datasets.DatasetDict` objects with splits ``train``/``validation``/``test``.

See :mod:`bara_pyro.data.registry` for the names, sources and split sizes,
:mod:`bara_pyro.data.schema` for the row schemas, and :mod:`bara_pyro.data.user_data` for a user's own
files (CSV, JSON Lines, Parquet) and Hugging Face datasets.
"""

from .columns import DataError
from .registry import DATASETS, DatasetInfo, dataset_info, load_task_dataset
from .schema import CLASSIFICATION_FEATURES, MULTIPLE_CHOICE_FEATURES, SPLITS
from .user_data import UserDataset, is_user_dataset, load_user_dataset, resolve_dataset

__all__ = [
    "CLASSIFICATION_FEATURES",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "MULTIPLE_CHOICE_FEATURES",
    "SPLITS",
    "dataset_info",
    "UserDataset",
    "is_user_dataset",
    "load_task_dataset",
    "load_user_dataset",
    "resolve_dataset",
]
