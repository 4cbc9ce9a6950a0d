"""Pick the task that matches a named dataset."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .base import Task
from .classification import SequenceClassificationTask
from .multiple_choice import MultipleChoiceTask

__all__ = ["get_task"]


def get_task(
    dataset_name: str,
    tokenizer: PreTrainedTokenizerBase,
    scoring: str = "cloze",
    max_length: int | None = None,
) -> Task:
    """The :class:`~bara_pyro.tasks.base.Task` for a dataset of :data:`bara_pyro.data.DATASETS`.

    Classification datasets get a :class:`SequenceClassificationTask` (``max_length`` default 128);
    multiple-choice datasets a :class:`MultipleChoiceTask` with ``scoring`` ("cloze" or "lettered"),
    ``max_length`` default 256 and a fixed score width ``C`` = the dataset's largest choice count.
    """
    from ..data import dataset_info  # deferred: `datasets` is only needed once a dataset is named

    info = dataset_info(dataset_name)
    lengths = {} if max_length is None else {"max_length": max_length}
    if info.kind == "classification":
        return SequenceClassificationTask(tokenizer, num_labels=info.num_classes, name=info.name, **lengths)
    return MultipleChoiceTask(tokenizer, scoring=scoring, num_choices=info.num_classes, name=info.name, **lengths)
