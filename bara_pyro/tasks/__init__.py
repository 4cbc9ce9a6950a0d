"""Tasks: dataset rows -> :class:`Batch` -> ``(B, C)`` logits of the predictive categorical."""

from .base import Batch, Task
from .classification import SequenceClassificationTask
from .multiple_choice import SCORING_MODES, MultipleChoiceTask
from .registry import get_task

__all__ = ["Batch", "MultipleChoiceTask", "SCORING_MODES", "SequenceClassificationTask", "Task", "get_task"]
