r"""The fused estimator's training step, captured once per batch shape as a CUDA graph and replayed.

One step is ``loss = -ELBO`` (:meth:`~bara_pyro.models.BaRAModel.fused_loss`), ``backward``, the
global-norm clip and AdamW.  Run eagerly, Python launches each of its thousands of small kernels and
the GPU waits for it; a CUDA graph launches the whole recorded step at once.  A graph fixes the
shape and address of every tensor it touches, so in the *static* setting:

* a batch is copied into the input buffers of its shape's graph.  :meth:`Task.pad_batch` (when the
  task has it) rounds sequence lengths and token counts up to a multiple of ``pad_multiple``, so a
  few graphs cover a dataset; padded positions are masked out of the likelihood and of the local KL,
  and cost their share of compute (about ``pad_multiple / 2`` extra tokens per sequence on average);
* the KL weight :math:`\beta` and every learning rate are device tensors filled before each replay
  (the schedule steps on the host; AdamW is ``capturable``); the dataset scale :math:`N / B` is fixed
  by the static batch size;
* the loss, the batch's log-likelihood, the gradient norm and the count of correct predictions stay on the
  device; the trainer reads them on log steps only (no per-step host sync);
* random draws come from the CUDA generator, whose Philox offset advances at each replay exactly as
  in an eager run of the same step, so graphs and eager steps draw the same numbers and the
  checkpointed RNG state stays valid.

The first ``warmup`` steps of each new shape run eagerly on a side stream (library workspaces, AdamW
state), the next one is captured and replayed.  A step that cannot be captured falls back to eager
execution with one log line saying why.  :func:`capture` and :func:`side_stream` are also what
``bara-pyro bench speed`` uses for its graph-captured rows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch

from ..tasks.base import Batch

__all__ = ["TrainStep", "capture", "side_stream", "batch_signature"]

_SIDE_STREAMS: dict[str, "torch.cuda.Stream"] = {}


def side_stream(device) -> "torch.cuda.Stream":
    """One side stream per device for warm-ups and captures.  A new stream per capture would give each its
    own cuBLAS workspace, which stays allocated (and counts in every later measurement's peak memory)."""
    key = str(torch.device(device))
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[key]


@contextlib.contextmanager
def on_side_stream(device):
    """Run the block on :func:`side_stream`, ordered after and before the current stream's work."""
    s = side_stream(device)
    current = torch.cuda.current_stream(device)
    s.wait_stream(current)
    with torch.cuda.stream(s):
        yield
    current.wait_stream(s)


def capture(fn: Callable[[], object], device, warmup: int = 0, pool=None) -> "torch.cuda.CUDAGraph":
    """Run ``fn`` ``warmup`` times on the side stream, then capture one call of it as a CUDA graph (not run:
    ``graph.replay()`` runs it).  ``pool``: a memory pool shared with graphs replayed one after another."""
    if warmup:
        with on_side_stream(device):
            for _ in range(warmup):
                fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=side_stream(device)):
        fn()
    return graph


def _batch_tensors(batch: Batch) -> list[tuple[str, torch.Tensor]]:
    out = [(f"inputs.{k}", v) for k, v in batch.inputs.items()]
    out += [("labels", batch.labels), ("token_mask", batch.token_mask)]
    out += [(f"extras.{k}", v) for k, v in batch.extras.items() if torch.is_tensor(v)]
    return out


def batch_signature(batch: Batch) -> tuple:
    """What a graph of a step on ``batch`` is specific to: every tensor's name, shape and dtype, and the values
    of the non-tensor extras."""
    tensors = tuple((name, tuple(t.shape), t.dtype) for name, t in _batch_tensors(batch))
    others = tuple(sorted((k, repr(v)) for k, v in batch.extras.items() if not torch.is_tensor(v)))
    return tensors + others


def _copy_batch(dst: Batch, src: Batch) -> None:
    for (_, d), (_, s) in zip(_batch_tensors(dst), _batch_tensors(src)):
        d.copy_(s, non_blocking=True)


class _Graph:
    def __init__(self, graph, batch: Batch, ctx_state: dict):
        self.graph, self.batch, self.ctx_state = graph, batch, ctx_state


class TrainStep:
    r"""One optimizer step of the fused estimator: eager, static (graph-ready buffers, run eagerly), or replayed.

    :param model: a :class:`~bara_pyro.models.BaRAModel` (``fused_loss``, ``kl_beta``, ``ctx``).
    :param optim: a :class:`~bara_pyro.inference.optim.TorchOptimizer` (``tensor_lr=True`` when static).
    :param autocast: context manager entered around the forward pass.
    :param static: keep ``beta``, the loss and the accuracy count in device buffers (graph-ready); False: the
        plain eager step.
    :param capture: capture each batch shape's step as a CUDA graph after ``warmup`` eager steps of that
        shape (needs ``static`` and a CUDA device).
    :param correct: a device counter that each step adds its number of correct predictions to.
    :param log: where the one line about a step that cannot be captured goes.
    :param max_graphs: shapes beyond this many run eagerly (each graph keeps its input buffers).

    After a step, :attr:`loglik` holds its batch's summed log-likelihood :math:`\sum_b \log p(y_b \mid \theta)` at
    the step's draw (``parts["loglik"]`` of :meth:`~bara_pyro.models.BaRAModel.fused_loss`), on the device: in the
    static setting a buffer that each step (and each replay of a graph) overwrites, like :attr:`loss`.
    """

    def __init__(self, model, optim, device, autocast=None, static: bool = False, capture: bool = False,
                 correct: torch.Tensor | None = None, warmup: int = 1, max_graphs: int = 32,
                 log: Callable[[str], None] = print):
        device = torch.device(device)
        if capture and (not static or device.type != "cuda"):
            raise ValueError("CUDA-graph capture needs static=True and a CUDA device")
        self.model, self.optim, self.device = model, optim, device
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()
        self.static, self.capture = static, capture
        self.correct = correct if correct is not None else torch.zeros((), dtype=torch.long, device=device)
        self.warmup, self.max_graphs, self.log = warmup, max_graphs, log
        self.loss = torch.zeros((), device=device)
        self.loglik = torch.zeros((), device=device)
        self.beta = torch.ones((), device=device)
        self._graphs: dict[tuple, _Graph] = {}
        self._seen: dict[tuple, int] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._told_full = False
        # with capture on: the steps not replayed (each new shape's eager warm-ups and capture), timed with the device
        # synchronised around them (they are few), and the first step (first use of every kernel) alone
        self.setup_steps, self.setup_s, self.first_step_s = 0, 0.0, None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def _step(self, batch: Batch) -> torch.Tensor:
        """Forward, loss, backward, clip, AdamW; the accuracy count and :attr:`loglik`.  Device work only in the
        static setting."""
        with self.autocast:
            loss, parts = self.model.fused_loss(batch)
        loss.backward()
        self.optim.step_params()
        scores = parts["scores"]
        if scores is not None and scores.dim() == 2 and batch.labels.dtype == torch.long:
            self.correct += (scores.argmax(-1) == batch.labels).sum()
        loss = loss.detach()
        if self.static:
            self.loss.copy_(loss)
            self.loglik.copy_(parts["loglik"])
            return self.loss
        self.loglik = parts["loglik"]
        return loss

    def __call__(self, batch: Batch, beta: float, collect_stats: bool = False) -> torch.Tensor:
        """Take one step on ``batch`` (on the device) with KL weight ``beta``; returns the loss (on the device).

        ``collect_stats``: record gate statistics for the training log (eager only: it switches the gates
        to their per-op path, which the static setting never does)."""
        model = self.model
        if not self.static:
            model.kl_beta = beta
            model.ctx.collect_stats = collect_stats
            loss = self._step(batch)
            self.optim.step_schedule()
            return loss
        model.ctx.collect_stats = False
        self.beta.fill_(beta)
        held, model.kl_beta = model.kl_beta, self.beta
        try:
            return self._static_step(batch)
        finally:
            model.kl_beta = held

    @property
    def setup(self) -> dict | None:
        """With capture on: ``{"shapes", "setup_steps", "setup_s", "first_step_s"}`` (graphs captured, steps not
        replayed and their wall time, the first step's); None otherwise."""
        if not self.capture and not self._graphs:
            return None
        return {"shapes": self.num_graphs, "setup_steps": self.setup_steps, "setup_s": self.setup_s,
                "first_step_s": self.first_step_s}

    def _static_step(self, batch: Batch) -> torch.Tensor:
        key = batch_signature(batch)
        entry = self._graphs.get(key)
        if entry is not None:
            _copy_batch(entry.batch, batch)
            entry.graph.replay()
            self.model.ctx.__dict__.update(entry.ctx_state)  # the graph's outputs, for the log row
            self.optim.step_schedule()
            return self.loss
        if not self.capture:
            return self._unreplayed_step(batch, key)
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            return self._unreplayed_step(batch, key)
        finally:
            torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            self.setup_steps += 1
            self.setup_s += seconds
            if self.first_step_s is None:
                self.first_step_s = seconds

    def _unreplayed_step(self, batch: Batch, key: tuple) -> torch.Tensor:
        """A step on a shape without a graph yet: captured and replayed once enough eager steps of it ran, else
        eager (on the side stream when capturing)."""
        if self.capture and self._seen.get(key, 0) >= self.warmup:
            if len(self._graphs) < self.max_graphs:
                entry = self._try_capture(batch, key)
                if entry is not None:
                    entry.graph.replay()
                    self.optim.step_schedule()
                    return self.loss
            elif not self._told_full:
                self._told_full = True
                self.log(f"train.graphs: {self.max_graphs} batch shapes captured; steps on further shapes run "
                         "eagerly (raise train.pad_multiple for fewer shapes)")
        self._seen[key] = self._seen.get(key, 0) + 1
        with on_side_stream(self.device) if self.capture else contextlib.nullcontext():
            loss = self._step(batch)
        self.optim.step_schedule()
        return loss

    def _try_capture(self, batch: Batch, key: tuple) -> _Graph | None:
        try:
            graph = capture(lambda: self._step(batch), self.device, pool=self._pool)
        except Exception as exc:  # noqa: BLE001  (any failure: fall back to the eager step, say why once)
            self.capture = False
            self.optim.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(self.device)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log(f"train.graphs: this model's training step cannot be captured as a CUDA graph "
                     f"({type(exc).__name__}: {reason[:200]}); training eagerly")
            return None
        entry = _Graph(graph, batch, dict(self.model.ctx.__dict__))
        self._graphs[key] = entry
        return entry
