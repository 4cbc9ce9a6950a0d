r"""Data-parallel training: one run on ``W`` processes (``torchrun`` or ``accelerate launch``), the global batch split.

Launched by ``torchrun`` or ``accelerate launch`` (both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), :func:`data_parallel` joins the process group (NCCL on CUDA, gloo on CPU)
and every process trains the same model on ``b = B / W`` rows of each global batch of ``B = train.batch_size``.

Objective.  Process ``k`` computes the ELBO estimate of its rows with the data plate's scale ``N / b``:

.. math::
    \mathcal{L}_k = \frac{N}{b} \sum_{i \in k} \log p(y_i \mid g)
                    - \beta \Big[\mathrm{KL}^{global} + \frac{N}{b} \sum_{i \in k} \mathrm{KL}^{local}_i\Big]

and the mean over processes is the one-process ELBO estimate on the global batch,
:math:`\frac{1}{W}\sum_k \mathcal{L}_k = \frac{N}{B} \sum_i \log p(y_i \mid g) - \beta[\mathrm{KL}^{global}
+ \frac{N}{B} \sum_i \mathrm{KL}^{local}_i]` (the global terms are the same draw on every process).  So the
gradients are **averaged** (all-reduce sum / W), as is the logged loss; the KL weight is the global one.

Randomness.  Every process is seeded alike; global variables are drawn identically everywhere, and the
per-token gates through :class:`~bara_pyro.models.row_shard.RowShard` (each process draws the global batch's
noise and keeps its rows), so a run on ``W`` processes reproduces the one-process run on the same global
batch to floating-point tolerance, and a checkpoint resumes on any number of processes.  Dropout (backbone,
adapter input) and flipout signs are drawn per process at its own shape: with them, runs on different ``W``
differ in those draws (each is still a valid estimate).

Not ``DistributedDataParallel``: DDP reduces gradients of a module whose ``forward`` produces the loss, but
the Pyro SVI step calls ``model.model`` / ``model.guide`` and the fused estimator ``fused_loss``, and the
trainable head (``modules_to_save``) lives in the frozen backbone, outside the adapters' module tree.  The
gradients are therefore all-reduced in one flat call after the backward pass, in the optimizer
(:class:`~bara_pyro.inference.optim.TorchOptimizer`); small host-side integers (batch shapes, a stop
request) travel over a gloo group, so that no device synchronisation is added to the step.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DataParallel", "data_parallel", "world_size", "is_main_process"]


@dataclass
class DataParallel:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int
    world_size: int
    local_rank: int
    control: object = None  # a gloo process group for host-side values (the default group itself on gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, global_batch: int) -> slice:
        """This process's slice of a global batch of ``global_batch`` rows (``global_batch % world_size == 0``)."""
        b = global_batch // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def average_gradients(self, params) -> None:
        """Replace every parameter's gradient by its mean over the processes (one flat all-reduce).
        A parameter without a gradient here counts as a zero gradient (so every process sends the same shape)."""
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def broadcast_parameters(self, params) -> None:
        """Copy rank 0's values of ``params`` to every process."""
        for p in params:
            with torch.no_grad():
                dist.broadcast(p.data, src=0)

    def gather_ints(self, values: list[int]) -> torch.Tensor:
        """``(world_size, len(values))``: every process's ``values`` (host-side, over the control group)."""
        mine = torch.tensor(values, dtype=torch.long)
        out = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine, group=self.control)
        return torch.stack(out)

    def mean(self, values: list[float]) -> list[float]:
        """The mean over processes of each of ``values`` (host-side floats)."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.control)
        return (t / self.world_size).tolist()

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def shard_blocks(self, backbone: torch.nn.Module, device: torch.device) -> int:
        """Shard every transformer block of a frozen backbone across the processes with FSDP2 (``fully_shard``):
        each process keeps ``1 / world_size`` of the blocks' weights and gathers a block's weights for its forward
        and backward pass.  The blocks are the modules whose class a transformers model lists in
        ``_no_split_modules``; the adapters (forward hooks on the blocks' linear layers) and the trainable head stay
        whole on every process.  Returns the number of blocks sharded (blocks sharded before are left alone)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from ..models.errors import ConfigError

        names = set(getattr(backbone, "_no_split_modules", None) or [])
        blocks = [m for m in backbone.modules() if type(m).__name__ in names or isinstance(m, FSDPModule)]
        if not blocks:
            raise ConfigError("train.shard_backbone needs a transformers backbone that names its blocks "
                              f"(_no_split_modules); {type(backbone).__name__} names none")
        mesh = init_device_mesh(device.type, (self.world_size,))
        for block in blocks:
            if not isinstance(block, FSDPModule):
                fully_shard(block, mesh=mesh)
        return len(blocks)


_STATE: list[DataParallel | None] = []


def data_parallel() -> DataParallel | None:
    """The data-parallel context of this process, joining the process group on first call; None when the process
    was not launched as one of several (``WORLD_SIZE`` unset or 1)."""
    if _STATE:
        return _STATE[0]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _STATE.append(None)
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(_shutdown)
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    _STATE.append(DataParallel(rank=rank, world_size=world, local_rank=local_rank, control=control))
    return _STATE[0]


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    dp = data_parallel()
    return 1 if dp is None else dp.world_size


def is_main_process() -> bool:
    dp = data_parallel()
    return dp is None or dp.is_main
