"""``get_bara_model``: attach BaRA adapters to any transformers (or plain torch) model, PEFT-style."""

from __future__ import annotations

from torch import nn

from .bara_model import BaRAModel, ForwardFn
from .config import BaRAConfig
from .targets import find_target_modules

__all__ = ["get_bara_model"]


def get_bara_model(model: nn.Module, config: BaRAConfig | None = None, forward_fn: ForwardFn | None = None,
                   likelihood=None) -> BaRAModel:
    """Freeze ``model`` and attach one :class:`~bara_pyro.models.adapter.BaRAAdapter` per target ``nn.Linear``.

    :param model: the backbone; left in place (adapters are forward hooks), its weights frozen.
    :param config: :class:`BaRAConfig`; ``target_modules=None`` uses the architecture's defaults.
    :param forward_fn: ``forward_fn(backbone, batch) -> scores (B, C)``; default ``backbone(**batch.inputs).logits``.
    :param likelihood: observation model for the scores; default categorical.
    """
    config = config or BaRAConfig()
    paths = find_target_modules(model, config.target_modules, config.exclude_modules)
    return BaRAModel(model, config, paths, forward_fn=forward_fn, likelihood=likelihood)
