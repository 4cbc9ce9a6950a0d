"""Pick the task that matches a named dataset."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .base import Task
from .classification import SequenceClassificationTask
from .instruction import InstructionTask
from .multiple_choice import MultipleChoiceTask

__all__ = ["get_task"]


def get_task(
    dataset_name,
    tokenizer: PreTrainedTokenizerBase,
    scoring: str = "cloze",
    max_length: int | None = None,
) -> Task:
    """The :class:`~bara_pyro.tasks.base.Task` for a dataset of :data:`bara_pyro.data.DATASETS` (its name) or a
    :class:`~bara_pyro.data.DatasetInfo` (e.g. of a user's dataset).

    Classification datasets get a :class:`SequenceClassificationTask` (``max_length`` default 128);
    multiple-choice datasets a :class:`MultipleChoiceTask` with ``scoring`` ("cloze" or "lettered"),
    ``max_length`` default 256 and a fixed score width ``C`` = the dataset's largest choice count;
    instruction datasets an :class:`InstructionTask` (``max_length`` default 256).
    """
    from ..data import dataset_info  # deferred: `datasets` is only needed once a dataset is named

    info = dataset_info(dataset_name) if isinstance(dataset_name, str) else dataset_name
    lengths = {} if max_length is None else {"max_length": max_length}
    if info.kind == "instruction":
        return InstructionTask(tokenizer, name=info.name, **lengths)
    if info.kind == "classification":
        return SequenceClassificationTask(tokenizer, num_labels=info.num_classes, name=info.name, **lengths)
    return MultipleChoiceTask(tokenizer, scoring=scoring, num_choices=info.num_classes, name=info.name, **lengths)
