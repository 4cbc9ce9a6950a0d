"""Training: ``pyro.infer.SVI`` with ``TraceMeanField_ELBO`` (or the fused estimator), checkpointed.

Every step draws the next minibatch from a seeded per-epoch permutation, sets the KL warm-up
weight ``beta``, and takes one optimizer step.  A checkpoint (trainable weights, optimizer and
schedule state, RNG state, step) is written atomically every ``checkpoint_every`` steps and when
the run is interrupted (Ctrl-C or SIGTERM); ``fit(..., resume=True)`` continues from it and
reproduces the uninterrupted run exactly on the CPU, or on a GPU with ``deterministic`` (same GPU
type).  A signal is honoured at the next step boundary; a SIGKILL loses the steps since the last
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pyro
import torch
from pyro.infer import SVI, JitTraceMeanField_ELBO, TraceMeanField_ELBO
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..models.errors import ConfigError
from ..models.host_copy import to_host
from ..models.row_shard import RowShard
from .determinism import deterministic_algorithms, tf32_matmul
from .distributed import DataParallel, data_parallel
from .graphed_step import TrainStep
from .interrupt import StopRequest, rng_state, set_rng_state, stop_on_signals
from .jit_svi import FlatBatchModel
from .optim import TorchOptimizer, warmup_linear_decay
from .train_config import TrainConfig

__all__ = ["fit", "TrainResult", "resolve_device", "DataOrder", "TRAIN_LOG_NAME", "CHECKPOINT_DIR"]

TRAIN_LOG_NAME = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoint"
STOP_MESSAGE = "interrupted at step {step}; checkpoint saved in {checkpoint}; resume with --resume {run_dir}"


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a ``torch.device`` ('auto': CUDA if available, else CPU; in a data-parallel run,
    'auto' and 'cuda' mean this process's GPU, ``cuda:LOCAL_RANK``); a clear error for a device this machine
    does not have."""
    device = _resolve_device_name(name)
    dp = data_parallel()
    if device.type == "cuda" and device.index is None and dp is not None:
        device = torch.device("cuda", dp.local_rank)
    return device


def _resolve_device_name(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but this machine has no CUDA device; use 'cpu' or 'auto' "
                          "(to resume a run elsewhere, edit train.device in its config.yaml)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device is {name!r} but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s); use 'cuda', 'auto' or 'cuda:N' with N below that count")
    return device


class DataOrder:
    """Row indices of step ``s``: consecutive slices of seeded per-epoch permutations (deterministic in s)."""

    def __init__(self, num_rows: int, batch_size: int, seed: int):
        if num_rows < 1:
            raise ValueError("the training set is empty")
        self.n, self.batch_size, self.seed = num_rows, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [int(self._perm(j // self.n)[j % self.n]) for j in range(start, start + self.batch_size)]


def _train_packing(config: TrainConfig, task, model, dp) -> tuple[bool, str | None]:
    """``(pack, why not)``: whether ``train.pack_choices`` packs each example's choices in one row, and if it was
    asked for but cannot, why.  Packing is used where it computes the same loss: the fused estimator, a task and
    backbone that pack (``task.packs``), one process, and a model whose draws a packed row shares as the unpacked
    choices do (``model.packs_choices(1, training=True)``: no per-sequence gate, per-token draws shared on the
    prefix; a post-hoc posterior such as Laplace trains its point fit packed)."""
    if not config.pack_choices:
        return False, None
    if config.estimator != "fused":
        return False, "only the fused estimator trains packed rows"
    if not callable(getattr(task, "pack", None)) or not task.packs(model.backbone):
        return False, "the task is not multiple-choice cloze, or the backbone's attention takes no 4D mask"
    if dp is not None:
        return False, "a data-parallel run splits a batch's choice sequences over its processes"
    packs = getattr(model, "packs_choices", None)
    if packs is None or not packs(1, training=True):
        return False, ("the model draws per choice sequence (a per-sequence gate, a per-token gate KL, or "
                       "choice_draws other than prefix)")
    return True, None


@dataclass
class TrainResult:
    """What :func:`fit` returns: the steps taken, the wall time and the training log's rows (``history``)."""

    steps: int
    wall_time_s: float
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False
    #: with ``train.graphs`` on a GPU: the batch shapes captured, the steps not replayed (each new shape's eager
    #: warm-up and capture) and their wall time, and the first step's (:attr:`TrainStep.setup`)
    graphs: dict | None = None


def fit(model, task, train_rows: Sequence[dict], config: TrainConfig, run_dir: str | os.PathLike | None = None,
        resume: bool = False, elbo=None, progress: bool = True,
        on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` (a :class:`~bara_pyro.models.BaRAModel` or a method with the same interface).

    :param task: turns rows into batches (:class:`~bara_pyro.tasks.base.Task`).
    :param train_rows: indexable rows (a ``datasets.Dataset`` or a list of dicts); ``N = len(train_rows)``.
    :param run_dir: where ``train_log.jsonl`` and ``checkpoint/`` go (None: no files).
    :param resume: continue from ``run_dir/checkpoint`` if it exists.
    :param elbo: the ELBO for the ``svi`` estimator (default ``TraceMeanField_ELBO``).

    Launched on several processes (:mod:`~bara_pyro.inference.distributed`), each trains on its rows of every
    global batch of ``config.batch_size``, the gradients are averaged, and only rank 0 writes to ``run_dir``
    (log and checkpoints); every process reads the checkpoint to resume, on any number of processes.
    """
    expected_globals = config.local_kl == "expected"
    if expected_globals and not getattr(model, "supports_expected_globals", False):
        from ..models.bara_model import EXPECTED_GLOBALS_UNSUPPORTED

        raise ConfigError(EXPECTED_GLOBALS_UNSUPPORTED)
    if hasattr(model, "ctx"):
        model.ctx.expected_globals = expected_globals
    dp = data_parallel()
    if dp is not None and config.batch_size % dp.world_size:
        raise ConfigError(f"train.batch_size {config.batch_size} is the global batch; it must be a multiple of the "
                          f"{dp.world_size} processes")
    device = resolve_device(config.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    write_dir = run_dir if dp is None or dp.is_main else None  # only rank 0 writes
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    model.backbone.to(device)
    if config.shard_backbone:
        if dp is None:
            raise ConfigError("train.shard_backbone shards the backbone across the processes of a data-parallel run; "
                              "launch it with torchrun or accelerate launch on several processes")
        dp.shard_blocks(model.backbone, device)
    model.dataset_size = len(train_rows)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)

    use_svi = config.estimator == "svi"
    # CUDA graphs for the fused estimator on one GPU (the SVI path stays eager: Pyro's traces run in Python)
    wants_graphs = config.graphs and device.type == "cuda"
    graphs = wants_graphs and not use_svi and dp is None
    if wants_graphs and use_svi and progress:
        tqdm.write("train.graphs: estimator: svi runs Pyro's traces in Python, which a CUDA graph cannot hold; "
                   "training eagerly (estimator: fused is the same ELBO, captured)", file=sys.stderr)
    groups = _param_groups(model, config)
    schedule = warmup_linear_decay(config.steps, config.warmup_ratio, config.lr_schedule)
    optim = TorchOptimizer(groups, lr=config.lr, weight_decay=config.weight_decay, clip_norm=config.clip_norm,
                           lr_lambda=[_delayed(schedule, config.guide_delay_steps) if g.get("gates") else schedule
                                      for g in groups],
                           tensor_lr=graphs)
    start_step = 0
    if resume and run_dir is not None:
        start_step = _load_checkpoint(run_dir, model, optim, device)
    if dp is not None:
        dp.broadcast_parameters(model.trainable_parameters())
        optim.gradient_sync = dp.average_gradients
    log_path = write_dir / TRAIN_LOG_NAME if write_dir is not None else None
    history = _read_log(log_path, upto=start_step) if log_path is not None else []
    if log_path is not None:
        _write_log(log_path, history)

    svi = flat = None
    if use_svi:
        elbo_class = JitTraceMeanField_ELBO if config.jit else TraceMeanField_ELBO
        elbo = elbo or elbo_class(num_particles=config.num_particles, max_plate_nesting=2)
        if isinstance(elbo, JitTraceMeanField_ELBO):  # compiled: the batch travels as tensors (jit_svi)
            flat = FlatBatchModel(model)
            svi = SVI(flat.model, flat.guide, optim, loss=elbo)
        else:
            svi = SVI(model.model, model.guide, optim, loss=elbo)
    order = DataOrder(len(train_rows), config.batch_size, config.seed)
    # no autocast weight cache under graphs: a cast cached during capture would outlive its graph
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=not graphs)
                if config.bf16 and device.type == "cuda" else contextlib.nullcontext())
    # Per-step quantities stay on the device and are read on log steps only: a read each step would make
    # the CPU wait for the GPU and lose the overlap of kernel launches with execution.
    correct = torch.zeros((), dtype=torch.long, device=device)
    pad = getattr(task, "pad_batch", None) if graphs else None
    pack, why_not = _train_packing(config, task, model, dp)
    if why_not is not None and progress:
        tqdm.write(f"train.pack_choices: training unpacked: {why_not}", file=sys.stderr)
    train_step = None if use_svi else TrainStep(model, optim, device, autocast, static=graphs, capture=graphs,
                                                correct=correct, log=lambda msg: tqdm.write(msg, file=sys.stderr))
    seen = 0
    step = start_step
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start_step, disable=not progress or write_dir is None and dp is not None,
               desc="train", dynamic_ncols=True)
    interrupted = aborted = False
    stop = StopRequest()
    model.train()  # the backbone's dropout too, as in any fine-tuning run; its weights stay frozen
    try:
        with stop_on_signals(stop), deterministic_algorithms(config.deterministic), tf32_matmul(config.tf32):
            while step < config.steps and (dp is not None or not stop.requested):  # processes stop together
                indices = order.indices(step)
                if dp is not None:
                    indices = indices[dp.local_rows(config.batch_size)]
                batch = task.collate([train_rows[i] for i in indices])
                if pack:
                    batch = task.pack_padded(batch, config.pad_multiple) if pad is not None else task.pack(batch)
                elif pad is not None:
                    batch = pad(batch, config.pad_multiple)
                batch = batch.to(device)
                if dp is not None and _shard_rows(model, batch, dp, stop):
                    break
                beta = min(1.0, (step + 1) / config.kl_warmup_steps) if config.kl_warmup_steps else 1.0
                model.kl_beta = beta
                log_now = (step + 1) % config.log_every == 0 or step + 1 == config.steps
                kl_before = None  # the SVI path's global gate KLs at the step's parameters (fused: recorded)
                if train_step is not None:
                    loss = train_step(batch, beta, collect_stats=log_now)
                    loglik = train_step.loglik  # on the device: read on log steps only
                    if batch.labels.dim() == 1 and batch.labels.dtype == torch.long:
                        seen += batch.num_examples
                else:
                    model.ctx.collect_stats = log_now
                    if log_now and getattr(model, "gates", None):
                        kl_before = _gate_global_kls(model, model.gates)
                    with autocast:
                        try:
                            if flat is not None:
                                args, kwargs = flat.flatten(batch, beta)
                                loss = svi.step(*args, **kwargs)
                                model.kl_beta = beta
                            else:
                                loss = svi.step(batch)
                        except ValueError as exc:  # Pyro's argument validation sees the NaN first
                            if "invalid values" not in str(exc):
                                raise
                            raise FloatingPointError(f"a distribution received NaN or infinite parameters at step "
                                                     f"{step}; lower the learning rate or raise kl_warmup_steps"
                                                     ) from exc
                    scores = model.last_scores if flat is None else None  # a compiled step runs no Python
                    if scores is not None and scores.dim() == 2 and batch.labels.dtype == torch.long:
                        correct += (scores.detach().argmax(-1) == batch.labels).sum()
                        seen += batch.num_examples
                    # the obs site's log-likelihood at the step's draw (with several particles the loss averages them)
                    loglik = (model.likelihood.dist(scores).log_prob(batch.labels).sum()
                              if log_now and scores is not None and elbo.num_particles == 1 else None)
                if hasattr(model, "after_optimizer_step"):
                    model.after_optimizer_step(step + 1, config.steps)
                step += 1
                checkpoint_now = (run_dir is not None and config.checkpoint_every
                                  and step % config.checkpoint_every == 0)
                if log_now or checkpoint_now or use_svi:
                    loss = float(loss) if dp is None else dp.mean([float(loss)])[0]  # the global batch's loss
                    if not math.isfinite(loss):  # checked before any checkpoint can store a broken state
                        raise FloatingPointError(f"the loss became {loss} at step {step - 1} (or up to "
                                                 f"{config.log_every - 1} steps before it); lower the learning "
                                                 "rate or raise kl_warmup_steps")
                if log_now:
                    counts = [int(correct), seen] if dp is None else [c * dp.world_size for c in
                                                                       dp.mean([int(correct), seen])]
                    accuracy = float("nan") if flat is not None else counts[0] / max(counts[1], 1)  # nan: not counted
                    nll = None if loglik is None else -float(loglik) / batch.num_examples
                    row = _log_row(model, step, loss, optim, accuracy, nll, kl_global=kl_before)
                    if dp is not None:
                        row = _mean_over_processes(row, dp)
                    correct.zero_()
                    seen = 0
                    history.append(row)
                    if log_path is not None:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    if on_log is not None:
                        on_log(row)
                    postfix = {"elbo": f"{-row['loss']:.3g}"}
                    if "nll" in row:
                        postfix["nll"] = f"{row['nll']:.3g}"
                    postfix["acc"] = f"{row['accuracy']:.2f}"
                    if "kl" in row:
                        postfix["kl"] = f"{row['kl']:.3g}"
                    bar.set_postfix(postfix)
                bar.update(1)
                if checkpoint_now and write_dir is not None:
                    _save_checkpoint(write_dir, model, optim, step)
    except KeyboardInterrupt:  # a second Ctrl-C: the step in flight is lost, the last checkpoint stays
        interrupted = aborted = True
        if run_dir is not None:
            bar.write(f"aborted at step {step}; resume from the last checkpoint with --resume {run_dir}")
    finally:
        bar.close()
        model.ctx.collect_stats = False
        model.ctx.row_shard = None
        model.eval()
    if stop.requested and not interrupted:
        interrupted = True
        if write_dir is not None:
            _save_checkpoint(write_dir, model, optim, step)
            print(STOP_MESSAGE.format(step=step, checkpoint=write_dir / CHECKPOINT_DIR, run_dir=write_dir),
                  file=sys.stderr)
    elif write_dir is not None and not interrupted:
        _save_checkpoint(write_dir, model, optim, step)
    if dp is not None and not aborted:  # the others wait for rank 0's files
        dp.barrier()
    result = TrainResult(steps=step, wall_time_s=time.perf_counter() - t0, history=history, interrupted=interrupted,
                         graphs=train_step.setup if train_step is not None else None)
    if interrupted:
        raise KeyboardInterrupt(f"training interrupted at step {step}")
    return result


def _shard_rows(model, batch, dp: DataParallel, stop: StopRequest) -> bool:
    """Tell every process the others' batch shapes and stop requests; set this process's row shard of the global
    batch (``model.ctx.row_shard``).  Returns True when any process was asked to stop (all then stop here)."""
    mask = batch.token_mask
    length = mask.shape[1] if mask is not None and mask.dim() > 1 else 0
    rows = mask.shape[0] if mask is not None else batch.num_examples
    shapes = dp.gather_ints([rows, length, int(stop.requested)])
    if bool(shapes[:, 2].any()):
        stop.requested = True
        return True
    model.ctx.row_shard = RowShard(start=int(shapes[:dp.rank, 0].sum()), total_rows=int(shapes[:, 0].sum()),
                                   total_length=int(shapes[:, 1].max()))
    return False


def _mean_over_processes(row: dict, dp: DataParallel) -> dict:
    """A log row of the global batch: each process's per-batch estimates (loss already reduced, NLL, local KL,
    effective rank) averaged over the processes; the global KL, lr and gradient norm are the same everywhere."""
    keys = [k for k in ("nll", "kl_local", "kl", "effective_rank") if k in row]
    layers = list(row.get("kl_per_layer", {}))
    values = dp.mean([row[k] for k in keys] + [row["kl_per_layer"][p] for p in layers])
    out = {**row, **dict(zip(keys, values))}
    if layers:
        out["kl_per_layer"] = dict(zip(layers, values[len(keys):]))
    return out


def _param_groups(model, config: TrainConfig) -> list[dict]:
    """Two AdamW groups: the gates' variational parameters (at ``guide_lr``, marked ``gates``) and everything else
    (at ``lr``); one group when neither ``guide_lr`` nor ``guide_delay_steps`` sets them apart."""
    params = model.trainable_parameters()
    if config.guide_lr is None and not config.guide_delay_steps:
        return [{"params": params}]
    gate_ids = {id(p) for _, g in getattr(model, "gates", []) for p in g.parameters()}
    gate = [p for p in params if id(p) in gate_ids]
    rest = [p for p in params if id(p) not in gate_ids]
    gate_group = {"params": gate, "gates": True, **({"lr": config.guide_lr} if config.guide_lr is not None else {})}
    return [g for g in ({"params": rest}, gate_group) if g["params"]]


def _delayed(schedule, delay: int):
    """``schedule`` held at 0 for the first ``delay`` steps."""
    return schedule if not delay else (lambda step: 0.0 if step < delay else schedule(step))


def _log_row(model, step: int, loss: float, optim: TorchOptimizer, accuracy: float, nll: float | None = None,
             kl_global: dict[str, float] | None = None) -> dict:
    r"""One row of the training log, per training example (``N`` of them) for the step's batch of ``B``.

    ``loss``: the step's :math:`-\mathcal{L} / N = -\frac{1}{B}\sum_b \log p(y_b \mid \theta) + \beta\,\mathrm{KL}/N`,
    every KL term (the gates' and the weights') in ``KL``; ``nll``: :math:`-\frac{1}{B}\sum_b \log p(y_b \mid \theta)`
    at the step's draw, so ``loss - nll`` is :math:`\beta\,\mathrm{KL}/N` (absent where the step's log-likelihood
    is unknown: the compiled SVI step, several ELBO particles).  ``B`` is ``batch.num_examples``: sequences for
    next-token tasks, whose log-likelihood sums their tokens as the ELBO does (a per-sequence NLL, not per token).
    ``kl``: the gates' KL alone, :math:`(\mathrm{KL}^{global} + \frac{N}{B}\mathrm{KL}^{local}) / N`.  The global
    KLs (``kl_global``, per gate) are those of the step's parameters: the fused step records its own; Pyro's SVI
    path passes them, computed before its optimizer step.
    """
    n = model.dataset_size or 1
    row = {"step": step, "loss": loss / n, **({"nll": nll} if nll is not None else {}), "beta": model.kl_beta,
           "lr": optim.lr, "accuracy": accuracy, "grad_norm": optim.last_grad_norm}
    stats = model.ctx.stats
    gates = getattr(model, "gates", [])
    if gates:
        kl_global = _gate_global_kls(model, gates) if kl_global is None else kl_global
        kl_local = {p: s["kl_local"] for p, s in stats.items() if "kl_local" in s}
        fused = not kl_local
        if fused:  # fused path: the per-layer local KLs are in the context
            kl_local = {p: v.detach() for p, v in model.ctx.kl_local.items()}
        kl_local = dict(zip(kl_local, _read_all(list(kl_local.values()))))
        offset = model.ctx.kl_local_offset if fused else None  # expected globals: each layer's per-token constant
        if offset is not None:
            tokens = float(model.local_token_count())
            per_layer = dict(zip((p for p, _ in model.adapter_items), offset.detach().tolist()))
            kl_local = {p: v + per_layer[p] * tokens for p, v in kl_local.items()}
        scale = model.ctx.local_scale
        row["kl_global"] = sum(kl_global.values())
        row["kl_local"] = scale * sum(kl_local.values())  # scaled to the dataset, as in the ELBO
        row["kl"] = (row["kl_global"] + row["kl_local"]) / n
        row["kl_per_layer"] = {p: kl_global[p] + scale * kl_local.get(p, 0.0) for p in kl_global}
    rank = model.effective_rank() if hasattr(model, "effective_rank") else {}
    if rank:  # gates, or a weight family that records its kept components (rank-wise dropout)
        row["effective_rank"] = rank["joint"]
    return row


def _gate_global_kls(model, gates) -> dict[str, float]:
    """Each gate's global KL: the fused step's own per-layer values where it recorded them (``ctx.kl_gate_layers``),
    else computed gate by gate; read from the device in one transfer."""
    recorded = model.ctx.kl_gate_layers  # in adapter order, recorded when every adapter has a gate
    paths = [p for p, _ in gates]
    if recorded is not None and len(recorded) == len(model.adapter_items) == len(paths):
        return dict(zip((p for p, _ in model.adapter_items), recorded.tolist()))
    with torch.no_grad(), pyro.validation_enabled(False):  # no argument checks: each would read a device flag
        return dict(zip(paths, _read_all([g.global_kl() for _, g in gates])))


def _read_all(values: list) -> list[float]:
    """Scalars (tensors on one device, or numbers) as floats, read from the device in one transfer."""
    if not values:
        return []
    return torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()) for v in values]).tolist()


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if row.get("step", 0) <= upto:
            rows.append(row)
    return rows


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _save_checkpoint(run_dir: Path, model, optim: TorchOptimizer, step: int) -> None:
    """Write ``checkpoint/`` atomically: build ``checkpoint.tmp``, then swap directories."""
    final, tmp, old = run_dir / CHECKPOINT_DIR, run_dir / (CHECKPOINT_DIR + ".tmp"), run_dir / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model.adapter_state_dict(), str(tmp / "trainable.safetensors"))
    state = {"optim": to_host(optim.get_state()), **rng_state()}
    torch.save(state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "kl_beta": model.kl_beta}))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(run_dir: Path, model, optim: TorchOptimizer, device) -> int:
    ckpt = run_dir / CHECKPOINT_DIR
    if not ckpt.exists() and (run_dir / (CHECKPOINT_DIR + ".old")).exists():
        ckpt = run_dir / (CHECKPOINT_DIR + ".old")  # killed between the two renames
    if not ckpt.exists():
        return 0
    try:
        step = json.loads((ckpt / "state.json").read_text())["step"]
        model.load_adapter_state_dict({k: v.to(device) for k, v in load_file(str(ckpt / "trainable.safetensors"))
                                       .items()})
        state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        raise RuntimeError(f"the checkpoint in {ckpt} is damaged ({exc}); delete it to start over") from exc
    optim.set_state(state["optim"])
    set_rng_state(state)
    return int(step)
