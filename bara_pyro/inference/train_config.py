"""``TrainConfig``: optimisation settings shared by every method."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..methods import preset_section
from ..models.errors import ConfigError, dataclass_from_dict

__all__ = ["TrainConfig", "ESTIMATORS", "LOCAL_KL"]

ESTIMATORS = ("svi", "fused")
LOCAL_KL = ("draw", "expected")


@dataclass
class TrainConfig:
    """How :func:`~bara_pyro.inference.fit` trains: steps, batch, optimiser, estimator and local KL; each
    field's ``help`` metadata says what it means."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    lr: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate"})
    guide_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the gate priors' variational parameters and the amortized gate networks "
                "(null: same as lr); variational parameters often need a larger step than the LoRA factors"})
    guide_delay_steps: int = field(default=0, metadata={
        "help": "the gates' variational parameters and gate networks hold still (learning rate 0) for these first "
                "steps, while the update they gate grows from zero"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of steps of linear LR warm-up"})
    lr_schedule: str = field(default="linear", metadata={"help": "'linear' decay to 0 after warm-up, or 'constant'"})
    kl_warmup_steps: int = field(default=0, metadata={"help": "KL weight beta rises linearly 0 -> 1 over these steps"})
    clip_norm: float | None = field(default=1.0, metadata={"help": "global gradient-norm clip (null: none)"})
    seed: int = field(default=0, metadata={"help": "seed of torch, pyro, numpy and the data order"})
    estimator: str = field(default="fused", metadata={
        "help": "'fused': TraceMeanField_ELBO's objective in plain torch, one backbone pass, CUDA-graph capturable "
                "(default); 'svi': pyro.infer.SVI with TraceMeanField_ELBO itself (the reference, always eager)"})
    num_particles: int = field(default=1, metadata={"help": "ELBO particles per step (svi estimator)"})
    jit: bool = field(default=False, metadata={
        "help": "svi estimator: JitTraceMeanField_ELBO (Pyro compiles the model and guide with torch.jit) instead "
                "of TraceMeanField_ELBO"})
    graphs: bool = field(default=True, metadata={
        "help": "fused estimator on a CUDA device: capture the training step once per batch shape as a CUDA graph "
                "and replay it (false: launch every kernel from Python)"})
    pad_multiple: int = field(default=64, metadata={
        "help": "with graphs: sequence lengths and scored-token counts are padded up to a multiple of this "
                "(fewer shapes, fewer graphs; padding costs its share of compute)"})
    pack_choices: bool = field(default=False, metadata={
        "help": "multiple-choice cloze tasks, fused estimator: each example's choices train as one row, the prefix "
                "they share fed once (as prediction packs them), where the model's draws allow it (the same loss "
                "without draws); fewer tokens per step"})
    local_kl: str = field(default="draw", metadata={
        "help": "'draw': each per-token gate KL at one draw of the layer's globals pi, lambda from q "
                "(TraceMeanField_ELBO's estimate); 'expected': its expectation under q(pi) q(lambda) in closed "
                "form (the same ELBO, without the globals' sampling noise; fused estimator, default BaRA gates)"})
    log_every: int = field(default=10, metadata={"help": "steps between training-log rows"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints (0: only at the end)"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast on GPU (gates and KLs stay fp32)"})
    tf32: bool = field(default=False, metadata={
        "help": "fp32 matrix products on TF32 tensor cores while training (eval.tf32: while evaluating; "
                "torch.backends.cuda.matmul.allow_tf32, "
                "restored after; Ampere or newer GPUs): faster, with 10-bit mantissas in the products' inputs"})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda', ..."})
    shard_backbone: bool = field(default=False, metadata={
        "help": "data-parallel runs: shard the frozen backbone's transformer blocks across the processes (FSDP2 "
                "fully_shard), so that each holds 1/world_size of their weights; the adapters stay whole"})
    world_size: int = field(default=1, metadata={
        "help": "processes the run trained on, data-parallel (recorded from the launcher, torchrun or accelerate "
                "launch; batch_size is the global batch, split across them)"})
    deterministic: bool = field(default=False, metadata={
        "help": "deterministic kernels (torch.use_deterministic_algorithms, cuBLAS's fixed workspace): the same seed "
                "gives the same bits on the same GPU type and software; CPU runs are reproducible without it"})

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(msg)

        for name in ("steps", "batch_size", "num_particles", "log_every", "world_size", "pad_multiple"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"{name} must be a positive integer, got {v!r}")
        for name in ("kl_warmup_steps", "guide_delay_steps", "checkpoint_every", "seed"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                 f"{name} must be a non-negative integer, got {v!r}")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
             f"lr must be a positive number, got {self.lr!r}")
        need(self.guide_lr is None or (isinstance(self.guide_lr, (int, float)) and math.isfinite(self.guide_lr)
                                       and self.guide_lr > 0),
             f"guide_lr must be a positive number or null, got {self.guide_lr!r}")
        need(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio < 1,
             f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        need(self.lr_schedule in ("linear", "constant"),
             f"lr_schedule must be 'linear' or 'constant', got {self.lr_schedule!r}")
        need(self.clip_norm is None or (isinstance(self.clip_norm, (int, float)) and self.clip_norm > 0),
             f"clip_norm must be a positive number or null, got {self.clip_norm!r}")
        need(isinstance(self.shard_backbone, bool),
             f"shard_backbone must be true or false, got {self.shard_backbone!r}")
        for name in ("jit", "graphs", "pack_choices", "bf16", "tf32"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        need(isinstance(self.deterministic, bool), f"deterministic must be true or false, got {self.deterministic!r}")
        need(self.estimator in ESTIMATORS, f"estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}")
        need(not self.jit or self.estimator == "svi",
             "jit: true compiles Pyro's SVI (JitTraceMeanField_ELBO): it needs estimator: svi")
        need(self.local_kl in LOCAL_KL, f"local_kl must be one of {list(LOCAL_KL)}, got {self.local_kl!r}")
        need(self.local_kl == "draw" or self.estimator == "fused",
             "local_kl: expected needs estimator: fused (Pyro's TraceMeanField_ELBO evaluates the local KL at "
             "its draw of the globals); for estimator: svi set local_kl: draw too")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, data, "train")

    @classmethod
    def from_preset(cls, name: str, **fields: Any) -> "TrainConfig":
        """The ``train`` block of the packaged preset ``name`` (its estimator, local KL, gate learning rate, ...)
        with ``fields`` on top: ``TrainConfig.from_preset("bara_singular", steps=200, lr=2e-3)``."""
        return cls.from_dict(preset_section(name, "train", fields))
