"""The model and guide with the batch as positional tensors: what Pyro's ``JitTraceMeanField_ELBO`` compiles.

``pyro.ops.jit.trace`` traces ``model(*args, **kwargs)`` with ``torch.jit.trace``: tensors must come
in ``*args``; anything else in ``**kwargs``, and each distinct ``**kwargs`` is compiled once.  A
trace freezes the Python control flow and every shape it saw, so the batch's layout (tensor names,
shapes, the non-tensor extras) is passed as a keyword: each batch shape gets its own trace.  The KL
warm-up weight ``beta`` travels as a tensor argument, so a trace serves every step of the warm-up.
"""

from __future__ import annotations

import torch

from ..models.errors import ConfigError
from ..tasks.base import Batch
from .graphed_step import batch_signature

__all__ = ["FlatBatchModel"]


class FlatBatchModel:
    """``model(*tensors, layout=...)`` and ``guide(*tensors, layout=...)`` for a :class:`BaRAModel`.

    :meth:`flatten` turns ``(batch, beta)`` into those arguments.  The model and the guide of one ELBO
    evaluation receive the same tensors, and get the same :class:`Batch` object back, so the model
    recognises the guide's run and reuses its forward pass (as with an unflattened batch)."""

    def __init__(self, model):
        saved = sorted(getattr(model, "modules_to_save", {}) or {})
        if saved:  # plain nn.Parameters would enter the trace as constants
            raise ConfigError(f"train.jit compiles only Pyro parameters, and this model also trains the backbone "
                              f"modules {saved} (adapter.modules_to_save); set train.jit: false, or "
                              "adapter.modules_to_save: []")
        self.bara = model
        self._last: tuple[tuple, Batch] | None = None

    @staticmethod
    def flatten(batch: Batch, beta: float | torch.Tensor) -> tuple[tuple, dict]:
        device = batch.labels.device
        beta = beta if torch.is_tensor(beta) else torch.tensor(float(beta), device=device)
        tensors = [*batch.inputs.values(), batch.labels, batch.token_mask]
        tensor_extras = [k for k, v in batch.extras.items() if torch.is_tensor(v)]
        tensors += [batch.extras[k] for k in tensor_extras]
        others = tuple((k, v) for k, v in batch.extras.items() if not torch.is_tensor(v))
        layout = (tuple(batch.inputs), tuple(tensor_extras), others, batch_signature(batch))
        return (*tensors, beta), {"layout": layout}

    def _unflatten(self, args: tuple, layout: tuple) -> Batch:
        if self._last is not None and len(self._last[0]) == len(args) and all(
                a is b for a, b in zip(self._last[0], args)):
            batch = self._last[1]
        else:
            input_names, extra_names, others, _ = layout
            n = len(input_names)
            inputs = dict(zip(input_names, args[:n]))
            labels, token_mask = args[n], args[n + 1]
            extras = dict(zip(extra_names, args[n + 2: n + 2 + len(extra_names)]))
            extras.update(others)
            batch = Batch(inputs=inputs, labels=labels, token_mask=token_mask, extras=extras)
            self._last = (args, batch)
        self.bara.kl_beta = args[-1]
        return batch

    def model(self, *args, layout):
        return self.bara.model(self._unflatten(args, layout))

    def guide(self, *args, layout):
        return self.bara.guide(self._unflatten(args, layout))
