"""``GateContext``: the per-call state every adapter of one model reads during a forward pass.

One object is shared by all adapters of a :class:`~bara_pyro.models.bara_model.BaRAModel`; the
model sets it before running the backbone, so the adapters (called from forward hooks deep
inside a transformers model) know how to draw their gates without extra arguments.

Modes:
    ``guide``  gates sampled from q through ``pyro.sample`` (Pyro SVI, guide side);
    ``model``  gates sampled from the prior through ``pyro.sample`` (prior predictive, or replay);
    ``fused``  gates sampled from q with plain torch, closed-form KLs accumulated (fast path);
    ``sample`` gates sampled from q, no KL (posterior predictive);
    ``mean``   posterior-mean gates E[z] E[theta] and weights (deterministic fast prediction);
    ``given``  gates read from ``cache`` (the model's own draws when it is not a replay of the guide);
    ``ones``   every gate fixed to 1 (the adapter is then plain LoRA);
    ``off``    adapters disabled: the frozen backbone alone.

In mode ``sample`` the batch holds ``num_samples`` independent posterior draws, sample-major
(rows ``[i * n / S, (i + 1) * n / S)`` belong to draw ``i``, as :func:`~bara_pyro.inference.predict`
lays them out): per-token gates are drawn per row anyway, while variables shared by many tokens
(per-layer gates, weight samples) are drawn once per draw and spread over its rows with
:func:`rows_of_sample` / :func:`per_sample_linear`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pyro
import torch

from .row_shard import RowGroups, RowShard

__all__ = ["GateContext", "MODES", "per_sample_linear", "rows_of_sample"]

MODES = ("guide", "model", "fused", "sample", "mean", "given", "ones", "off")


@dataclass
class GateContext:
    mode: str = "mean"
    token_mask: torch.Tensor | None = None  # (n_seq, T) bool, or None when every position is real
    local_scale: float = 1.0  # N / B: scales local KL (and likelihood) from the minibatch to the dataset
    kl_beta: float = 1.0  # KL warm-up weight
    num_samples: int = 1  # posterior draws held by the batch in mode 'sample' (sample-major rows)
    gate_impl: str = "auto"  # fused_kernels implementation of the fast gate path: auto, torch, compile, triton
    expected_globals: bool = False  # fused mode: local KL in expectation over q(globals) (train.local_kl=expected)
    globals: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # path -> {site: value}, e.g. pi, lambda
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # path -> {lora_A/lora_B: drawn value}
    kl_global: dict[str, torch.Tensor] = field(default_factory=dict)  # path (or 'globals') -> KL counted once (fused)
    kl_local: dict[str, torch.Tensor] = field(default_factory=dict)  # path -> unscaled masked local KL sum
    kl_local_offset: torch.Tensor | None = None  # (adapters,) local KL per real token, added to the KL at the
    #   globals' values (expected_globals: bara_globals_expected's offset), in the model's adapter order
    kl_gate_layers: torch.Tensor | None = None  # fused globals: (adapters,) each gate's global KL at the step,
    #   detached, in the model's adapter order (the training log reads it instead of recomputing it layer by layer)
    local_positions: int = 0  # positions of a local gate input (n_seq x T), for the offset when token_mask is None
    cache: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # path -> {z, theta} drawn
    local_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # path -> adapter projection h the guide
    #   drew the local gates for (a contextual local prior in the replaying model is a function of it)
    collect_stats: bool = False  # record gate statistics (detached) into ``stats``
    stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    record_tokens: bool = False  # keep per-token q(z=1) and E[g] (for analysis)
    plates: dict[str, pyro.plate] = field(default_factory=dict)  # local plates, built once per model/guide run
    row_shard: RowShard | None = None  # data-parallel training: this process's rows of the global batch, through
    #   which per-token gate noise is drawn (see row_shard); kept across reset()
    row_groups: RowGroups | None = None  # the batch's rows that are one example (a multiple-choice example's choice
    #   sequences): its per-token gate noise and flipout signs are shared by them (see row_shard); set per batch

    def reset(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown gate mode {mode!r}; legal modes: {list(MODES)}")
        self.mode = mode
        self.num_samples = 1
        self.globals = {}
        self.weights = {}
        self.kl_global = {}
        self.kl_local = {}
        self.kl_local_offset = None
        self.kl_gate_layers = None
        self.local_positions = 0
        self.cache = {}
        self.local_inputs = {}
        self.stats = {}
        self.plates = {}

    def local_plates(self, batch_shape: torch.Size, tokens: bool = True) -> contextlib.ExitStack:
        """Enter plates ``sequences`` (dim -2) and ``tokens`` (dim -1) over the tokens' batch dims ``batch_shape``
        (``tokens=False``: ``sequences`` alone, at the same dim, for per-sequence sites of batch shape ``(n, 1)``).

        The plate objects are created once per model/guide run and shared by every adapter, so each
        plate is one site of the trace (a 2-D adapter input gets ``sequences`` alone, at dim -1)."""
        if len(batch_shape) not in (1, 2):
            raise ValueError(f"local gate sites need 1 or 2 batch dims (sequences[, tokens]); got {tuple(batch_shape)}")
        stack = contextlib.ExitStack()
        for i, (name, size) in enumerate(zip(("sequences", "tokens")[:2 if tokens else 1], batch_shape)):
            dim = i - len(batch_shape)
            plate = self.plates.get(name)
            if plate is None:
                plate = self.plates[name] = pyro.plate(name, size, dim=dim)
            elif plate.size != size or plate.dim != dim:
                raise ValueError(f"adapters of one model see inputs of different leading shapes ({name}: "
                                 f"{plate.size} vs {size}); gates need one (sequences, tokens) layout per pass")
            stack.enter_context(plate)
        return stack


def rows_of_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Spread per-draw values ``(S, r)`` over the sample-major rows of ``like`` ``(n, [T,] r)``:
    returns ``(n, [1,] r)`` where row ``j`` holds draw ``j // (n / S)``."""
    num_samples, n = values.shape[0], like.shape[0]
    if n % num_samples:
        raise ValueError(f"{n} rows cannot hold {num_samples} sample-major draws")
    rows = values.repeat_interleave(n // num_samples, dim=0)
    return rows.reshape(rows.shape[:1] + (1,) * (like.dim() - 2) + rows.shape[1:])


def per_sample_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x W_s^T`` with draw ``s`` of ``weight`` ``(S, d_out, d_in)`` applied to its sample-major rows of
    ``x`` ``(n, [T,] d_in)``; returns ``(n, [T,] d_out)``."""
    num_samples, n = weight.shape[0], x.shape[0]
    if n % num_samples:
        raise ValueError(f"{n} rows cannot hold {num_samples} sample-major draws")
    y = torch.matmul(x.reshape(num_samples, -1, x.shape[-1]), weight.transpose(-1, -2))
    return y.reshape(x.shape[:-1] + (weight.shape[-2],))
