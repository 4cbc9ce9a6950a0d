"""Tasks: dataset rows -> :class:`Batch` -> ``(B, C)`` logits of the predictive categorical (``(B, L, V)`` for
instruction tuning)."""

from .base import Batch, Task
from .classification import SequenceClassificationTask
from .instruction import InstructionTask
from .multiple_choice import SCORING_MODES, MultipleChoiceTask
from .registry import get_task

__all__ = ["Batch", "InstructionTask", "MultipleChoiceTask", "SCORING_MODES", "SequenceClassificationTask", "Task",
           "get_task"]
