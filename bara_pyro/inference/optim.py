"""``TorchOptimizer``: one torch optimizer over all trainable parameters, usable by ``pyro.infer.SVI``.

Pyro's ``PyroOptim`` builds one optimizer per parameter and clips each tensor's gradient on its
own; BaRA wants a single AdamW with a learning-rate schedule and global-norm clipping, the same
on the Pyro SVI path and on the fused path.  SVI computes the loss and gradients and then calls
``optim(params)``: this class steps every trainable parameter of the model (the captured
``params`` must be among them) and clears their gradients.
"""

from __future__ import annotations

import math

import torch
from pyro.optim import PyroOptim

__all__ = ["TorchOptimizer", "warmup_linear_decay"]


def warmup_linear_decay(total_steps: int, warmup_ratio: float, schedule: str = "linear"):
    """LR multiplier: linear warm-up over ``warmup_ratio * total_steps``, then linear decay to 0 (or constant)."""
    warmup = max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


class TorchOptimizer(PyroOptim):
    """A ``PyroOptim`` that owns one ``torch.optim`` optimizer, an LR scheduler and global-norm clipping."""

    def __init__(self, params: list[torch.nn.Parameter] | list[dict], lr: float, weight_decay: float = 0.0,
                 clip_norm: float | None = 1.0, lr_lambda=None, tensor_lr: bool = False):
        """``tensor_lr``: every group's learning rate is a 0-dim tensor on the parameters' device, which the
        schedule fills in place, and AdamW is ``capturable`` on CUDA: the optimizer step can be captured in a
        CUDA graph (:mod:`~bara_pyro.inference.graphed_step`) and the schedule still moves the replayed step."""
        # Deliberately not calling PyroOptim.__init__: it sets up per-parameter optimizers.
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        groups = [dict(g) for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        self._param_ids = {id(p) for p in self.params}
        self.tensor_lr = tensor_lr
        device = self.params[0].device if self.params else torch.device("cpu")
        capturable = tensor_lr and device.type == "cuda"
        if tensor_lr:
            for g in groups:
                g["lr"] = torch.tensor(float(g.get("lr", lr)), device=device)
            lr = torch.tensor(float(lr), device=device)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, capturable=capturable)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda or (lambda step: 1.0))
        self._float_base_lrs()
        self.clip_norm = clip_norm
        self._grad_norm: torch.Tensor | None = None  # kept on the device: reading it every step would sync
        self.gradient_sync = None  # data-parallel runs: called on the parameters before clipping (averages gradients)

    def _float_base_lrs(self) -> None:
        """The schedule's base rates as Python floats, so that it fills tensor rates with a number (no sync)."""
        self.scheduler.base_lrs = [float(b) for b in self.scheduler.base_lrs]

    def _coerce_lrs(self) -> None:
        """Group rates (and ``initial_lr``) as this optimizer keeps them (tensors on the device, or floats) after a
        state saved by the other kind was loaded."""
        for g in self.optimizer.param_groups:
            for key in ("lr", "initial_lr"):
                if key not in g:
                    continue
                value = float(g[key])
                g[key] = torch.tensor(value, device=g["params"][0].device) if self.tensor_lr else value

    def __call__(self, params=None, *args, **kwargs) -> None:
        if params is not None:
            foreign = [p for p in params if id(p) not in self._param_ids and p.requires_grad]
            if foreign:
                raise RuntimeError(f"{len(foreign)} parameter(s) in the Pyro trace are not trainable parameters of "
                                   "the model; were two models given the same Pyro name?")
        self.step()

    def step(self) -> None:
        """Average the gradients over data-parallel processes (if any), clip the global gradient norm, step the
        optimizer and the schedule, clear the gradients."""
        self.step_params()
        self.step_schedule()

    def step_params(self) -> None:
        """Clip the global gradient norm, step the optimizer, clear the gradients: device work only, no host sync
        (what a CUDA graph of the training step captures)."""
        if self.gradient_sync is not None:
            self.gradient_sync(self.params)
        if self.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        else:  # the norm is still logged
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self._grad_norm is not None and self.tensor_lr:
            self._grad_norm.copy_(norm)  # one buffer: a graph's replays write where the trainer reads
        else:
            self._grad_norm = norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step_schedule(self) -> None:
        """Advance the learning-rate schedule by one step (host side; fills tensor rates in place)."""
        self.scheduler.step()

    @property
    def last_grad_norm(self) -> float:
        """Global gradient norm (before any clipping) at the last step; nan before the first step; reading it syncs."""
        return float("nan") if self._grad_norm is None else float(self._grad_norm)

    @property
    def lr(self) -> float:
        """Learning rate of the first group (reading a tensor rate syncs)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def get_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def set_state(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.scheduler.load_state_dict(state_dict["scheduler"])
        self._coerce_lrs()
        self._float_base_lrs()

    def save(self, filename: str) -> None:
        torch.save(self.get_state(), filename)

    def load(self, filename: str, map_location=None) -> None:
        self.set_state(torch.load(filename, map_location=map_location, weights_only=True))
