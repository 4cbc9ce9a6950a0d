"""What the speed benchmark measures on: model shapes, the rows (methods) it can time, its settings
(:class:`SpeedConfig`), and the random-weight backbone and batch every row shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..models import BaRAConfig
from ..tasks.base import Batch

__all__ = ["DRAW", "GATE_IMPLS", "GATE_IMPL_METHODS", "PRESET_GATE_IMPL", "PRESET_METHODS", "PRESET_VARIANTS",
           "ROW_NAMES", "SETTINGS", "SHAPES", "SINGULAR_OCCAM", "SINGULAR_TORCH_GATE", "SVI", "SVI_JIT", "SVI_METHODS",
           "SpeedConfig", "TRAIN_METHODS", "TRAIN_ROWS", "build_backbone", "cloze_forward", "make_batch"]

SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}

# row name (a preset, or a preset plus its overrides) -> the step it times
DRAW = "bara[train.local_kl=draw]"
SVI = "bara[train.estimator=svi,train.local_kl=draw]"
SVI_JIT = "bara[train.estimator=svi,train.jit=true,train.local_kl=draw]"
SINGULAR_OCCAM = "bara_singular[adapter.weights.direction_occam=kfac]"
SINGULAR_TORCH_GATE = "bara_singular@torch"  # its contextual gate op by op (the preset row: auto, Triton on a GPU)
# BaRA's spike-and-slab presets and the other Bayesian LoRA methods: adapters (and the local KL) from their
# presets; not in the default row set (--methods NAME)
PRESET_METHODS = ("bara_slab", "bara_singular", "bayesian_lora", "balora", "bayeslora", "projected_subspace",
                  "laplace_lora")
TRAIN_ROWS = {"frozen": "frozen", "lora": "lora", "bara": "bara_expected", DRAW: "bara_draw", SVI: "bara_svi",
              SVI_JIT: "bara_svi_jit", "blob": "blob", **{m: m for m in PRESET_METHODS},
              SINGULAR_OCCAM: "bara_singular_occam", SINGULAR_TORCH_GATE: "bara_singular_torch_gate"}
# rows that are a preset with adapter overrides: method -> (preset, overrides of its adapter.weights)
PRESET_VARIANTS = {"bara_singular_occam": ("bara_singular", {"direction_occam": "kfac"}),
                   "bara_singular_torch_gate": ("bara_singular", {})}
# rows that fix the gate implementation (GateContext.gate_impl) of a preset: method -> implementation
PRESET_GATE_IMPL = {"bara_singular_torch_gate": "torch"}
TRAIN_METHODS = tuple(TRAIN_ROWS)
SVI_METHODS = ("bara_svi", "bara_svi_jit")  # eager only, fewer steps
GATE_IMPL_METHODS = ("bara_draw", "bara_expected")  # steps with one row per gate implementation
ROW_NAMES = "presets"  # results' "row_names": rows named after the presets (older files: see load_result)
GATE_IMPLS = ("reference", "torch", "compile", "triton", "auto")
SETTINGS = ("eager", "graphs")


@dataclass
class SpeedConfig:
    shapes: list[str] = field(default_factory=lambda: ["smollm2-135m", "llama-1b"])
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    methods: list[str] = field(default_factory=lambda: [m for m in TRAIN_METHODS if m not in PRESET_METHODS
                                                        and TRAIN_ROWS[m] not in PRESET_VARIANTS])
    # BaRA gate paths measured: 'reference' (per-op gate math, per-gate globals: the path before fusion) and the
    # fused_kernels implementations ('torch', 'compile', 'triton', 'auto') of the library's fast path
    gate_impls: list[str] = field(default_factory=lambda: ["triton"])
    examples: int = 4
    choices: int = 2
    seq_len: int = 256
    cont_len: int = 128
    r: int = 16
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    samples: int = 10
    steps: int = 20
    warmup: int = 2
    svi_steps: int = 3
    predict: bool = True
    profile: bool = False  # count kernels (CPU: aten ops) of one eager step per method (first shape only)
    check: bool = True  # compare the gate implementations against the torch reference on this device
    tune: bool = True  # time the Triton kernels' launch configurations first (CUDA) and use the fastest
    device: str = "cuda"
    bf16: bool = True
    dataset_size: int = 1000
    seed: int = 0
    deterministic: bool = False  # train.deterministic's settings (inference/determinism.py) for every row


def build_backbone(shape: str, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, use_cache=False, max_position_embeddings=4096,
                      attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).train()


def cloze_forward(backbone, batch: Batch) -> torch.Tensor:
    """``(B, C)`` scores: mean log-likelihood of the last ``cont_len`` tokens of each sequence, full vocabulary."""
    logits = backbone(**batch.inputs).logits  # (n_seq, T, V)
    k = batch.extras["cont_len"]
    pred = logits[:, -k - 1:-1].float()
    target = batch.extras["target_ids"][:, -k:]
    token_ll = pred.gather(-1, target.unsqueeze(-1)).squeeze(-1) - pred.logsumexp(-1)
    return token_ll.mean(-1).view(-1, batch.extras["choices"])


def make_batch(cfg: SpeedConfig, vocab: int, device, repeat: int = 1, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = cfg.examples * cfg.choices
    ids = torch.randint(0, vocab, (n, cfg.seq_len), generator=g).repeat(repeat, 1)
    labels = torch.randint(0, cfg.choices, (cfg.examples,), generator=g).repeat(repeat)
    return Batch(inputs={"input_ids": ids.to(device)}, labels=labels.to(device),
                 token_mask=torch.ones(n * repeat, cfg.seq_len, dtype=torch.bool, device=device),
                 extras={"cont_len": cfg.cont_len, "target_ids": ids.to(device), "choices": cfg.choices})


def _blob_config_kwargs() -> dict | None:
    names = {f.name for f in dataclasses.fields(BaRAConfig)}
    if "weights" not in names:
        return None
    return {"weights": {"name": "blob_gaussian"}}


def adapter_config(cfg: SpeedConfig, method: str) -> BaRAConfig:
    """The adapter section of the step's preset (``lora``, ``blob``, else ``bara``) at the benchmark's r, alpha
    and target modules."""
    from ..methods import load_preset

    preset, weights = PRESET_VARIANTS.get(method, (method, {}))
    preset = preset if preset in ("lora", "blob", *PRESET_METHODS) else "bara"
    if preset == "blob" and _blob_config_kwargs() is None:
        raise SkipRow("BaRAConfig has no 'weights' option (BLoB) in this version of bara_pyro")
    adapter = load_preset(preset).get("adapter", {})
    if weights:
        adapter = {**adapter, "weights": {**adapter.get("weights", {}), **weights}}
    return BaRAConfig.from_dict({**adapter, "r": cfg.r, "alpha": cfg.alpha, "target_modules": list(cfg.targets)})


class SkipRow(Exception):
    pass


# methods whose sampled prediction cannot be captured as a CUDA graph, with the reason (their rows: --settings eager)
EAGER_ONLY_PREDICTION = {
    "laplace_lora": "its linearised predictive takes a backward pass per score column and reads on the host "
                    "whether the posterior is fitted, which capture refuses: its prediction row is timed eagerly",
}
