r"""GPU speed and memory of BaRA against LoRA: ``bara-pyro bench speed`` / ``python -m bara_pyro.bench.speed``.

For each backbone shape (randomly initialised ``LlamaForCausalLM``; no download), in bf16 autocast
with the gates and KLs in fp32, batch of ``4 examples x 2 choices = 8`` sequences of 256 tokens,
``r = 16`` adapters on ``q_proj`` and ``v_proj``, this measures

* training steps (forward, loss, backward, global-norm clip, AdamW): the frozen backbone's
  forward + backward (``frozen``: the floor, no adapters, gradient to the input embeddings), and the
  method presets by their ``--method`` names, adapters as in the preset: ``lora``, ``bara`` (fused
  estimator, ``train.local_kl=expected``), ``blob``; a variant is named as the preset plus its
  overrides: ``bara[train.local_kl=draw]``, and Pyro SVI, the reference estimator (fewer steps),
  ``bara[train.estimator=svi,train.local_kl=draw]``.  BaRA rows end in ``@IMPL``, the gate path
  measured (``reference``: per-op gate math; else a :mod:`~bara_pyro.models.fused_kernels`
  implementation of the library's fast path);
* peak memory of one training step (``torch.cuda.max_memory_allocated``, reset before);
* prediction: ``bara[eval.num_samples=0]`` (posterior-mean gates) against one LoRA forward (``lora``), and
  ``bara`` (``S = 10`` samples batched as one 80-sequence pass) against one LoRA forward of the 8
  sequences; ``lora[eval.num_samples=10]`` is LoRA's forward of the same 80 sequences.

Result files written before the rows were named after the presets are read back relabelled
(:func:`load_result`; ``--relabel FILE ...`` rewrites them): ``bara`` was
``bara[train.local_kl=draw]``, ``bara_expected`` was ``bara``, ``bara_svi`` was the SVI variant,
``X[impl]`` was ``X@impl``, ``lora_fwd``/``lora_fwd_xS`` and ``bara_s0``/``bara_sS`` were the prediction rows.

The loss is cloze scoring: the full-vocabulary log-likelihood of the last 128 tokens of each
sequence, averaged per sequence; a categorical over the 2 choices (so the LM head is included).
Each row is the median of ``steps`` timed steps after ``warmup`` steps (CUDA events, one sync per
step).  Two settings: ``eager`` (Python launches every kernel) and ``graphs`` (the whole step is
captured once as a CUDA graph and replayed: launch overhead gone for every method alike).  LoRA
gets the same adapter forward, optimizer, settings and graphs as BaRA.

Writes ``benchmarks/results/speed_<device>_<date>.json`` and prints a table per shape and setting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..inference.graphed_step import capture, on_side_stream
from ..models import BaRAConfig, get_bara_model
from ..tasks.base import Batch

__all__ = ["SpeedConfig", "SHAPES", "TRAIN_ROWS", "run_speed_benchmark", "format_table", "load_result", "relabel",
           "main"]

SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}

# row name (a preset, or a preset plus its overrides) -> the step it times
DRAW, SVI = "bara[train.local_kl=draw]", "bara[train.estimator=svi,train.local_kl=draw]"
SVI_JIT = "bara[train.estimator=svi,train.jit=true,train.local_kl=draw]"
# BaRA's spike-and-slab presets and the other Bayesian LoRA methods: adapters (and the local KL) from their
# presets; not in the default row set (--methods NAME)
PRESET_METHODS = ("bara_slab", "bara_singular", "bayesian_lora", "balora", "bayeslora", "projected_subspace",
                  "laplace_lora")
TRAIN_ROWS = {"frozen": "frozen", "lora": "lora", "bara": "bara_expected", DRAW: "bara_draw", SVI: "bara_svi",
              SVI_JIT: "bara_svi_jit", "blob": "blob", **{m: m for m in PRESET_METHODS}}
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
    methods: list[str] = field(default_factory=lambda: [m for m in TRAIN_METHODS if m not in PRESET_METHODS])
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


# ===================================================================== model and batch
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


def _bara_config(cfg: SpeedConfig, method: str) -> BaRAConfig:
    """The adapter section of the step's preset (``lora``, ``blob``, else ``bara``) at the benchmark's r, alpha
    and target modules."""
    from ..methods import load_preset

    preset = method if method in ("lora", "blob", *PRESET_METHODS) else "bara"
    if preset == "blob" and _blob_config_kwargs() is None:
        raise _Skip("BaRAConfig has no 'weights' option (BLoB) in this version of bara_pyro")
    adapter = load_preset(preset).get("adapter", {})
    return BaRAConfig.from_dict({**adapter, "r": cfg.r, "alpha": cfg.alpha, "target_modules": list(cfg.targets)})


class _Skip(Exception):
    pass


# ===================================================================== timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(fn, steps: int, device) -> list[float]:
    """Milliseconds of each of ``steps`` calls (one sync per step: what a training loop that logs sees)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def _peak_gib(fn, device) -> tuple[float | None, float | None]:
    """``(peak, transient)`` GiB of one call: ``max_memory_allocated`` (reset before; weights included) and the
    same minus what was allocated when the call began (the step's own activations, gradients, workspaces)."""
    if device.type != "cuda":
        return None, None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**30, (peak - before) / 2**30


def _capture(fn, warmup: int, device):
    """Warm ``fn`` up on the shared side stream (one for every row and for :func:`_warm_up`: a new stream per
    row would keep its own cuBLAS workspace, counted in every later row's peak), capture it as a CUDA graph."""
    graph = capture(fn, device, warmup=max(warmup, 2))
    _sync(device)
    return graph


# aten operators that launch no kernel (views, metadata, allocations): left out of a CPU step's count
_NO_KERNEL_OPS = frozenset(f"aten::{name}" for name in (
    "alias", "as_strided", "broadcast_tensors", "chunk", "contiguous", "detach", "diagonal", "empty", "empty_like",
    "empty_strided", "expand", "expand_as", "flatten", "lift_fresh", "movedim", "narrow", "new_empty",
    "new_empty_strided", "permute", "reshape", "resolve_conj", "resolve_neg", "result_type", "select", "slice",
    "split", "split_with_sizes", "squeeze", "t", "to", "transpose", "unbind", "unflatten", "unsqueeze", "view",
    "view_as", "_reshape_alias", "_to_copy", "_unsafe_view"))


def _count_kernels(fn, device) -> dict:
    """Kernels of one call of ``fn``: CUDA kernels on a GPU; on the CPU, aten operators that do work (those with
    no operator under them, views and allocations left out), a stand-in for the kernels a GPU would launch."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        _sync(device)
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        kernels = [e for e in prof.events() if e.name.startswith("aten::") and e.name not in _NO_KERNEL_OPS
                   and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    averages = prof.key_averages()
    busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) for e in averages)
    top = ""
    for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
        try:
            top = averages.table(sort_by=key, row_limit=30)
            break
        except Exception:  # noqa: BLE001  (the sort key was renamed across torch versions)
            continue
    return {"kernels": len(kernels), "kernel_time_ms": busy / 1e3, "top": top}


# ===================================================================== steps
class _Step:
    """One method on one backbone: ``run()`` does a step; ``close()`` detaches the adapters."""

    def __init__(self, run, close=lambda: None, params=(), model=None):
        self.run, self.close, self.params, self.model = run, close, list(params), model


def _autocast(cfg: SpeedConfig, device):
    if cfg.bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _make_optimizer(params, device, capturable: bool):
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=device.type == "cuda",
                             capturable=capturable and device.type == "cuda")


def _train_step(method: str, impl: str, backbone, batch: Batch, cfg: SpeedConfig, device, graphs: bool) -> _Step:
    if method == "frozen":
        emb = backbone.get_input_embeddings()
        with torch.no_grad():
            x = emb(batch.inputs["input_ids"]).detach()
        x.requires_grad_(True)
        fbatch = Batch(inputs={"inputs_embeds": x}, labels=batch.labels, token_mask=batch.token_mask,
                       extras=batch.extras)

        def run():
            with _autocast(cfg, device):
                scores = cloze_forward(backbone, fbatch)
                loss = -torch.log_softmax(scores.float(), -1).gather(-1, batch.labels[:, None]).sum()
            loss.backward()
            x.grad = None

        return _Step(run, params=[x])

    model = get_bara_model(backbone, _bara_config(cfg, method), forward_fn=cloze_forward)
    try:
        return _model_train_step(model, method, impl, batch, cfg, device, graphs)
    except BaseException:
        model.remove_hooks()
        raise


def _use_gate_impl(model, impl: str) -> None:
    """``impl``: a :mod:`~bara_pyro.models.fused_kernels` implementation for the library's fast gate path, or
    ``reference`` (every gate through its per-op ``forward`` and per-gate global draws: the path before fusion)."""
    if impl == "reference":
        for _, gate in model.gates:
            gate._net = ()
            gate.fast_globals = False
        return
    if not hasattr(model.ctx, "gate_impl"):
        raise _Skip("this version of bara_pyro has no ctx.gate_impl (fused kernels not wired)")
    model.ctx.gate_impl = impl
    slow = [p for p, g in model.gates if not getattr(g, "_net", ())]
    if slow:
        raise RuntimeError(f"{len(slow)} gates are not on the fast path (e.g. {slow[0]})")


def _model_train_step(model, method: str, impl: str, batch: Batch, cfg: SpeedConfig, device, graphs: bool) -> _Step:
    model.dataset_size = cfg.dataset_size
    model.train()
    if method == "bara_expected" and impl == "reference":
        raise _Skip("the expected local KL runs on the fast path only (fused globals), not the reference")
    if method in GATE_IMPL_METHODS:
        _use_gate_impl(model, impl)
    model.ctx.expected_globals = method == "bara_expected"  # the local KL in expectation over the globals
    params = model.trainable_parameters()
    if method in SVI_METHODS:
        import pyro
        from pyro.infer import SVI, JitTraceMeanField_ELBO, TraceMeanField_ELBO

        from ..inference.jit_svi import FlatBatchModel
        from ..inference.optim import TorchOptimizer

        pyro.clear_param_store()
        optim = TorchOptimizer(params, lr=1e-4, clip_norm=1.0)
        if method == "bara_svi_jit":  # Pyro's compiled ELBO: the batch as tensors (train.jit)
            flat = FlatBatchModel(model)
            svi = SVI(flat.model, flat.guide, optim, loss=JitTraceMeanField_ELBO(max_plate_nesting=2))
            args, kwargs = flat.flatten(batch, 1.0)
        else:
            svi = SVI(model.model, model.guide, optim, loss=TraceMeanField_ELBO(max_plate_nesting=2))
            args, kwargs = (batch,), {}

        def run():
            with _autocast(cfg, device):
                svi.step(*args, **kwargs)

        return _Step(run, model.remove_hooks, params, model)

    opt = _make_optimizer(params, device, capturable=graphs)

    def run():
        with _autocast(cfg, device):
            loss, _ = model.fused_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=device.type == "cuda")
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _Step(run, model.remove_hooks, params, model)


def _preset_predict_step(method: str, backbone, batch: Batch, cfg: SpeedConfig) -> _Step:
    """Sampled prediction (S copies of the batch) of a preset method.  A post-hoc posterior is fitted on the batch
    itself first (Laplace) and SWAG gets ``swag_rank`` stand-in iterates: the timing is what counts here."""
    model = get_bara_model(backbone, _bara_config(cfg, method), forward_fn=cloze_forward)
    model.eval()
    num_samples = batch.num_examples // cfg.examples
    try:
        family = model.config.components.weights
        one = _first_copy_rows(batch, num_samples)

        class _FixedTask:  # the rows are positions; collate returns the batch itself
            @staticmethod
            def collate(rows):
                return one

        with _autocast(cfg, device=next(backbone.parameters()).device):  # the bf16 backbone, as in run()
            family.fit_posterior(model, _FixedTask(), list(range(one.num_examples)), one.num_examples)
        if getattr(family, "posterior_kind", None) == "swag":
            with torch.no_grad():
                for _, adapter in model.adapter_items:
                    adapter.swag_deviations.normal_(0, 1e-3)
                    adapter.swag_count.fill_(family.swag_rank)
    except BaseException:
        model.remove_hooks()
        raise

    one_copy = model.draws_from_one_copy(num_samples)  # as predict runs it: each row once (Laplace's glm)

    @torch.no_grad()
    def run():
        with _autocast(cfg, device=next(backbone.parameters()).device):
            if one_copy:
                model.scores(one, mode="sample", num_samples=num_samples, copied=False)
            else:
                model.scores(batch, mode="sample", num_samples=num_samples)

    return _Step(run, model.remove_hooks, model=model)


def _first_copy_rows(batch: Batch, num_samples: int) -> Batch:
    """The first of the sample-major copies of :func:`make_batch` (``repeat`` copies of every tensor row)."""
    cut = lambda t: t[: t.shape[0] // num_samples]  # noqa: E731
    return Batch(inputs={k: cut(v) for k, v in batch.inputs.items()}, labels=cut(batch.labels),
                 token_mask=cut(batch.token_mask),
                 extras={k: cut(v) if torch.is_tensor(v) else v for k, v in batch.extras.items()})


def _predict_step(method: str, impl: str, backbone, batch: Batch, cfg: SpeedConfig, device) -> _Step:
    if method in PRESET_METHODS:
        return _preset_predict_step(method, backbone, batch, cfg)
    lora = method.startswith("lora")
    model = get_bara_model(backbone, _bara_config(cfg, "lora" if lora else "bara"), forward_fn=cloze_forward)
    model.eval()
    try:
        if not lora:
            _use_gate_impl(model, impl)
    except BaseException:
        model.remove_hooks()
        raise
    mode = "sample" if method == "bara_s10" else "mean"
    kwargs = {"num_samples": batch.num_examples // cfg.examples} if mode == "sample" else {}

    @torch.no_grad()
    def run():
        with _autocast(cfg, device):
            model.scores(batch, mode=mode, **kwargs)

    return _Step(run, model.remove_hooks, model=model)


def _measure(make, cfg: SpeedConfig, device, setting: str, steps: int, profile: bool) -> dict:
    """Build a step, warm it up, (capture it), time it, take its peak memory; always detach it afterwards."""
    step = make()
    graph = None
    try:
        for _ in range(cfg.warmup):
            step.run()
        _sync(device)
        peak, transient = _peak_gib(step.run, device)
        out = {"peak_gib": peak, "step_gib": transient}
        if profile:
            out["profile"] = _count_kernels(step.run, device)
        fn = step.run
        if setting == "graphs":
            graph = _capture(step.run, cfg.warmup, device)
            fn = graph.replay
            for _ in range(cfg.warmup):
                fn()
        times = _time_steps(fn, steps, device)
        out.update(ms=statistics.median(times), ms_min=min(times), ms_max=max(times), n=len(times))
        return out
    finally:
        del graph
        step.close()
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ===================================================================== correctness on the device
def check_gate_impls(device, impls: list[str]) -> dict:
    """Max relative error of each gate implementation against the torch reference (values and gradients)."""
    from ..models import fused_kernels as fk

    results = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    r, hidden, n_seq, t = 16, 32, 8, 256

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(device)

    for dtype in (torch.float32, torch.bfloat16):
        h = rnd(n_seq, t, r, s=2.0).to(dtype).requires_grad_()
        w = [rnd(hidden, r, s=0.5), rnd(hidden, s=0.1), rnd(3 * r, hidden, s=0.3), rnd(3 * r, s=0.5)]
        w = [x.requires_grad_() for x in w]
        pi = (torch.rand(r, generator=g) * 0.9 + 0.05).to(device).requires_grad_()
        lam = (torch.rand(r, generator=g) + 0.5).to(device).requires_grad_()
        a = torch.tensor(4.0, device=device)
        mask = (torch.rand(n_seq, t, generator=g) > 0.2).to(device)
        u = torch.rand(2, n_seq, t, r, generator=g).to(device)
        gy = rnd(n_seq, t, r).to(dtype)
        ref = None
        for impl in ["torch", *[i for i in impls if i != "torch"]]:
            try:
                pi_view = torch.stack([pi, 1 - pi], -1)[..., 0]  # strided, as the library's Beta draw arrives
                y, kl = fk.bara_gated_local(h, *w, pi_view, lam, a, 0.67, mask=mask, u=u, impl=impl)
                loss = (y.float() * gy.float()).sum() + 0.3 * kl
                grads = torch.autograd.grad(loss, [h, *w, pi, lam])
                with torch.no_grad():
                    mean = fk.bara_gated_mean(h, *w, impl=impl)
                vals = [y.detach(), kl.detach(), mean, *grads]
            except Exception as exc:  # noqa: BLE001  (report, do not stop the benchmark)
                results[f"{impl}/{str(dtype)[6:]}"] = {"error": repr(exc)}
                continue
            if ref is None:
                ref = vals
                continue
            names = ["y", "kl", "mean_gate", "d_h", "d_w1", "d_b1", "d_w2", "d_b2", "d_pi", "d_lambda"]
            results[f"{impl}/{str(dtype)[6:]}"] = {
                n: float((v.float() - rv.float()).norm() / rv.float().norm().clamp_min(1e-30))
                for n, v, rv in zip(names, vals, ref)}
    for impl in [i for i in impls if i != "torch"]:
        try:
            results[f"library-fused-loss/{impl}"] = _check_library_path(device, impl)
        except Exception as exc:  # noqa: BLE001
            results[f"library-fused-loss/{impl}"] = {"error": repr(exc)}
    return results


def tune_triton(device, configs=((32, 4), (16, 4), (16, 2), (32, 8)), calls: int = 60) -> dict:
    """Time the Triton gate kernels alone (one adapter of the benchmark's shape, ``calls`` back-to-back calls in
    a CUDA graph) for each ``(BLOCK_TOKENS, NUM_WARPS)``; sets the fastest training configuration and returns
    ``{config: {"train_us": fwd+bwd per call, "mean_us": posterior-mean forward per call}, "best": ...}``."""
    from ..models import fused_kernels as fk

    g = torch.Generator(device="cpu").manual_seed(0)
    r, hidden, n_seq, t = 16, 32, 8, 256
    h = (torch.randn(n_seq, t, r, generator=g) * 2).to(device, torch.bfloat16).requires_grad_()
    w = [(torch.randn(*s_, generator=g) * 0.3).to(device).requires_grad_()
         for s_ in ((hidden, r), (hidden,), (3 * r, hidden), (3 * r,))]
    pi = (torch.rand(r, generator=g) * 0.9 + 0.05).to(device).requires_grad_()
    lam = (torch.rand(r, generator=g) + 0.5).to(device).requires_grad_()
    a = torch.tensor(4.0, device=device)
    mask = torch.ones(n_seq, t, dtype=torch.bool, device=device)
    gy = torch.randn(n_seq, t, r, generator=g).to(device, torch.bfloat16)
    one = torch.ones((), device=device)
    inputs = [h, *w, pi, lam]

    def train():
        y, kl = fk.bara_gated_local(h, *w, pi, lam, a, 0.67, mask=mask, impl="triton")
        torch.autograd.grad([y, kl], inputs, [gy, one])

    @torch.no_grad()
    def mean():
        fk.bara_gated_mean(h, *w, impl="triton")

    def per_call_us(fn):
        graph = _capture(lambda: [fn() for _ in range(calls)], 1, device)
        times = _time_steps(graph.replay, 5, device)
        return 1e3 * statistics.median(times) / calls

    old = fk.BLOCK_TOKENS, fk.NUM_WARPS
    out = {}
    for bt, nw in configs:
        fk.BLOCK_TOKENS, fk.NUM_WARPS = bt, nw
        try:
            out[f"{bt}x{nw}"] = {"block_tokens": bt, "num_warps": nw, "train_us": per_call_us(train),
                                 "mean_us": per_call_us(mean)}
        except Exception as exc:  # noqa: BLE001
            out[f"{bt}x{nw}"] = {"error": repr(exc)[:300]}
    ok = {k: v for k, v in out.items() if "train_us" in v}
    if ok:
        best = min(ok, key=lambda k: ok[k]["train_us"] + ok[k]["mean_us"])
        fk.BLOCK_TOKENS, fk.NUM_WARPS = ok[best]["block_tokens"], ok[best]["num_warps"]
        out["best"] = best
    else:
        fk.BLOCK_TOKENS, fk.NUM_WARPS = old
    return out


def _warm_up(backbone, batch: Batch, cfg: SpeedConfig, device) -> None:
    """Two untimed frozen forward+backward steps, on the default stream and on a side stream, so that no row
    pays the libraries' first-use costs (in runs where the floor was the first row it came out slower than LoRA)."""
    step = _train_step("frozen", "torch", backbone, batch, cfg, device, graphs=False)
    step.run()
    if device.type == "cuda":
        with on_side_stream(device):
            step.run()
    _sync(device)


def _check_library_path(device, impl: str) -> dict:
    """``BaRAModel.fused_loss`` on a tiny fp32 Llama: loss and gradients with ``impl`` vs the torch gate path."""
    cfg = SpeedConfig(examples=2, seq_len=32, cont_len=8)
    backbone = build_backbone("tiny", device, torch.float32, seed=0)
    batch = make_batch(cfg, backbone.config.vocab_size, device)
    model = get_bara_model(backbone, BaRAConfig(r=16, alpha=32.0, target_modules=["q_proj", "v_proj"]),
                           forward_fn=cloze_forward)
    try:
        model.dataset_size = 100
        with torch.no_grad():
            for _, adapter in model.adapter_items:
                adapter.lora_B.weight.normal_(0, 0.05)
        params = model.trainable_parameters()
        outs = {}
        for which in ("torch", impl):
            model.ctx.gate_impl = which
            torch.manual_seed(123)
            loss, _ = model.fused_loss(batch)
            outs[which] = [loss.detach(), *torch.autograd.grad(loss, params, allow_unused=True)]
        pairs = [(a, b) for a, b in zip(outs[impl], outs["torch"]) if a is not None and b is not None]
        return {"loss": float((pairs[0][0] - pairs[0][1]).abs() / pairs[0][1].abs()),
                "grads_max_rel": max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in pairs[1:])}
    finally:
        model.remove_hooks()


# ===================================================================== driver
def _device_name(device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_speed_benchmark(cfg: SpeedConfig, log=_log, partial_out: Path | None = None) -> dict:
    """Run every measurement of ``cfg``; returns the results dict (also the JSON written by :func:`main`).

    ``partial_out``: rewrite the results so far to this JSON file after every row (a run cut short keeps them).
    ``cfg.deterministic``: every row with deterministic kernels, as ``train.deterministic: true`` trains."""
    from ..inference.determinism import deterministic_algorithms

    with deterministic_algorithms(cfg.deterministic):
        return _run_speed_benchmark(cfg, log, partial_out)


def _run_speed_benchmark(cfg: SpeedConfig, log, partial_out: Path | None) -> dict:
    import pyro

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the speed benchmark needs a CUDA device (or --device cpu for a smoke run)")
    pyro.enable_validation(False)  # distribution argument checks sync the GPU and cannot be captured
    dtype = torch.bfloat16 if (cfg.bf16 and device.type == "cuda") else torch.float32
    import transformers

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "device_slug": _device_name(device),
        "date": datetime.date.today().isoformat(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "pyro": pyro.__version__, "python": platform.python_version()},
        "config": dataclasses.asdict(cfg),
        "row_names": ROW_NAMES,
        "shapes": {},
        "notes": [],
    }
    if cfg.tune and device.type == "cuda" and "triton" in cfg.gate_impls:
        log("timing the Triton kernels' launch configurations ...")
        result["tuning"] = tune_triton(device)
        log(json.dumps(result["tuning"], indent=1))
    if "triton" in cfg.gate_impls:
        from ..models import fused_kernels as fk

        result["triton_launch"] = {"block_tokens": fk.BLOCK_TOKENS, "num_warps": fk.NUM_WARPS}
    if cfg.check and device.type == "cuda":
        log("checking gate implementations against the torch reference ...")
        result["checks"] = check_gate_impls(device, [i for i in cfg.gate_impls if i not in ("torch", "reference")])
        log(json.dumps(result["checks"], indent=1))
    for si, shape in enumerate(cfg.shapes):
        backbone = build_backbone(shape, device, dtype, cfg.seed)
        vocab = backbone.config.vocab_size
        batch = make_batch(cfg, vocab, device)
        _warm_up(backbone, batch, cfg, device)
        layers = backbone.config.num_hidden_layers
        res = {"layers": layers, "adapters": layers * len(cfg.targets), "train": {}, "predict": {}}
        result["shapes"][shape] = res
        variants = []
        for row in cfg.methods:
            method = TRAIN_ROWS[row]
            if method in GATE_IMPL_METHODS:
                variants += [(f"{row}@{impl}", method, impl) for impl in cfg.gate_impls]
            else:
                variants.append((row, method, "torch"))
        for setting in cfg.settings:
            graphs = setting == "graphs"
            if graphs and device.type != "cuda":
                continue
            for name, method, impl in variants:
                if graphs and method in SVI_METHODS:
                    continue  # Pyro's per-site Python machinery is the point of that row: eager only
                steps = cfg.svi_steps if method in SVI_METHODS else cfg.steps
                key = f"{name}/{setting}"
                try:
                    out = _measure(lambda: _train_step(method, impl, backbone, batch, cfg, device, graphs), cfg,
                                   device, setting, steps, profile=cfg.profile and si == 0 and setting == "eager")
                except _Skip as exc:
                    out = {"skipped": str(exc)}
                    if str(exc) not in result["notes"]:
                        result["notes"].append(f"{method}: {exc}")
                except Exception as exc:  # noqa: BLE001  (one failed row must not lose the others)
                    traceback.print_exc()
                    out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                res["train"].setdefault(name, {})[setting] = out
                log(f"[{shape}] train {key}: " + _fmt_row(out))
                _save_partial(result, partial_out)
            if not cfg.predict:
                continue
            batch_s = make_batch(cfg, vocab, device, repeat=cfg.samples)
            sampled = "" if cfg.samples == 10 else f"[eval.num_samples={cfg.samples}]"  # the bara preset: S = 10
            pvariants = [("lora", "lora", "torch", batch), (f"lora[eval.num_samples={cfg.samples}]", "lora", "torch",
                                                              batch_s)]
            for impl in [i for i in cfg.gate_impls if i != "reference"] or ["reference"]:
                pvariants += [(f"bara[eval.num_samples=0]@{impl}", "bara_s0", impl, batch),
                              (f"bara{sampled}@{impl}", "bara_s10", impl, batch_s)]
            pvariants += [(f"{m}{sampled}", m, "torch", batch_s) for m in cfg.methods if m in PRESET_METHODS]
            for name, method, impl, b in pvariants:
                try:
                    out = _measure(lambda: _predict_step(method, impl, backbone, b, cfg, device), cfg, device,
                                   setting, cfg.steps, profile=False)
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                res["predict"].setdefault(name, {})[setting] = out
                log(f"[{shape}] predict {name}/{setting}: " + _fmt_row(out))
                _save_partial(result, partial_out)
        backbone = batch = batch_s = None  # free before the next shape
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["table"] = table_rows(result)
    return result


def _save_partial(result: dict, path: Path | None) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(result, indent=1, default=str))


def _fmt_row(out: dict) -> str:
    if "ms" in out:
        peak = f"{out['peak_gib']:.3f} GiB" if out.get("peak_gib") is not None else "-"
        extra = f", {out['profile']['kernels']} kernels" if "profile" in out else ""
        return f"{out['ms']:.2f} ms (min {out['ms_min']:.2f}), peak {peak}{extra}"
    return json.dumps(out)


def table_rows(result: dict) -> list[dict]:
    """Flat rows: shape, setting, kind, method, ms, ratio to LoRA, peak GiB, peak ratio."""
    rows = []
    for shape, res in result["shapes"].items():
        for kind in ("train", "predict"):
            settings = sorted({s for v in res[kind].values() for s in v}, key=SETTINGS.index)
            for setting in settings:
                ref_name = "lora"
                ref = res[kind].get(ref_name, {}).get(setting, {})
                for name, by_setting in res[kind].items():
                    out = by_setting.get(setting)
                    if out is None:
                        continue
                    row = {"shape": shape, "setting": setting, "kind": kind, "method": name,
                           "ms": out.get("ms"), "ratio": None, "peak_gib": out.get("peak_gib"), "peak_ratio": None,
                           "step_gib": out.get("step_gib"),
                           "status": "ok" if "ms" in out else ("skipped" if "skipped" in out else "error")}
                    if out.get("ms") is not None and ref.get("ms"):
                        row["ratio"] = out["ms"] / ref["ms"]
                    if out.get("peak_gib") is not None and ref.get("peak_gib"):
                        row["peak_ratio"] = out["peak_gib"] / ref["peak_gib"]
                    if "profile" in out:
                        row["kernels"] = out["profile"]["kernels"]
                    rows.append(row)
    return rows


_LEGACY_TRAIN_ROWS = {"bara": DRAW, "bara_expected": "bara", "bara_svi": SVI, "bara_svi_jit": SVI_JIT}


def legacy_row_name(name: str, kind: str) -> str:
    """A row name of a result file written before the rows were named after the presets, in today's names."""
    m = re.fullmatch(r"(.+?)\[(\w+)\]", name)  # X[impl]
    base, impl = (m.group(1), m.group(2)) if m else (name, None)
    if kind == "train":
        base = _LEGACY_TRAIN_ROWS.get(base, base)
    elif base == "lora_fwd":
        base = "lora"
    elif m_lora := re.fullmatch(r"lora_fwd_x(\d+)", base):
        base = f"lora[eval.num_samples={m_lora.group(1)}]"
    elif m_bara := re.fullmatch(r"bara_s(\d+)", base):
        n = int(m_bara.group(1))
        base = "bara" if n == 10 else f"bara[eval.num_samples={n}]"
    return base + (f"@{impl}" if impl else "")


def relabel(result: dict) -> dict:
    """``result`` (modified in place and returned) with today's row names; a no-op on a current file."""
    if result.get("row_names") == ROW_NAMES:
        return result
    for res in result.get("shapes", {}).values():
        for kind in ("train", "predict"):
            if kind in res:
                res[kind] = {legacy_row_name(name, kind): rows for name, rows in res[kind].items()}
    for row in result.get("table", []):
        row["method"] = legacy_row_name(row["method"], row["kind"])
    config = result.get("config", {})
    if "methods" in config:
        config["methods"] = [_LEGACY_TRAIN_ROWS.get(m, m) for m in config["methods"]]
    result["row_names"] = ROW_NAMES
    return result


def load_result(path: str | Path) -> dict:
    """A speed result JSON, with today's row names whatever version wrote it."""
    return relabel(json.loads(Path(path).read_text()))


def format_table(result: dict) -> str:
    lines = []
    key = None
    width = max([22, *(len(row["method"]) for row in result["table"])])
    for row in result["table"]:
        k = (row["shape"], row["setting"], row["kind"])
        if k != key:
            key = k
            ref = "LoRA step" if row["kind"] == "train" else "one LoRA forward (8 seq)"
            lines += ["", f"{row['shape']} | {row['setting']} | {row['kind']} (ratios to {ref})",
                      f"{'method':<{width}} {'ms/step':>9} {'xLoRA':>7} {'peak GiB':>9} {'xLoRA':>7} {'step GiB':>9}"]
        if row["status"] != "ok":
            lines.append(f"{row['method']:<{width}} {row['status']}")
            continue

        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"

        lines.append(f"{row['method']:<{width}} {f(row['ms'], '9.2f')} {f(row['ratio'], '7.3f')} "
                     f"{f(row['peak_gib'], '9.3f')} {f(row['peak_ratio'], '7.3f')} {f(row.get('step_gib'), '9.3f')}")
    return "\n".join(lines)


def default_output(result: dict) -> Path:
    return Path("benchmarks/results") / f"speed_{result['device_slug']}_{result['date']}.json"


def build_parser() -> argparse.ArgumentParser:
    d = SpeedConfig()
    p = argparse.ArgumentParser(prog="bara-pyro bench speed", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=d.shapes, choices=list(SHAPES))
    p.add_argument("--settings", nargs="+", default=d.settings, choices=list(SETTINGS))
    p.add_argument("--methods", nargs="+", default=d.methods, choices=list(TRAIN_METHODS))
    p.add_argument("--gate-impls", nargs="+", default=d.gate_impls, choices=list(GATE_IMPLS),
                   help="BaRA gate paths to measure: reference, or a fused_kernels impl of the fast path")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--svi-steps", type=int, default=d.svi_steps)
    p.add_argument("--samples", type=int, default=d.samples, help="S of the sampled prediction")
    p.add_argument("--examples", type=int, default=d.examples, help="examples per batch (x choices = sequences)")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--cont-len", type=int, default=d.cont_len, help="scored (continuation) tokens per sequence")
    p.add_argument("--r", type=int, default=d.r)
    p.add_argument("--no-predict", action="store_true")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--no-tune", action="store_true",
                   help="keep the default Triton launch configuration (default: time the candidates, use the best)")
    p.add_argument("--profile", action="store_true",
                   help="count kernels of one eager step per method (first shape; CPU: aten operators that do work)")
    p.add_argument("--profile-out", help="write the profiler tables to this file")
    p.add_argument("--device", default=d.device)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast (CPU smoke runs)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/speed_<device>_<date>.json)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels, as train.deterministic: true (torch.use_deterministic_algorithms, "
                        "CUBLAS_WORKSPACE_CONFIG); compare with a run without it for the cost")
    p.add_argument("--relabel", nargs="+", metavar="JSON",
                   help="rewrite result files of older versions with today's row names (preset names), then exit")
    f = p.add_argument_group("fit, end to end (bench.fit_speed): real training runs, eager and graphs")
    f.add_argument("--fit", action="store_true", help="add the fit rows and the graphs-against-eager check")
    f.add_argument("--fit-only", action="store_true", help="only the fit rows and the check (no step rows)")
    f.add_argument("--fit-model", default="random-smollm2-135m",
                   help="random-smollm2-135m (SmolLM2-135M's shapes, random weights) or smollm2-135m (packaged)")
    f.add_argument("--fit-tokenizer", help="tokenizer of the random model: a folder or a packaged model name")
    f.add_argument("--fit-dataset", default="arc_easy")
    f.add_argument("--fit-methods", nargs="+", default=["lora", "bara"], choices=["lora", "bara"])
    f.add_argument("--fit-steps", type=int, default=1000)
    f.add_argument("--fit-eval-examples", type=int, default=200, help="validation examples evaluated per run")
    f.add_argument("--fit-set", nargs="*", default=[], metavar="KEY=VALUE", help="further config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.relabel:
        for path in args.relabel:
            Path(path).write_text(json.dumps(load_result(path), indent=1))
            print(f"relabelled {path}")
        return 0
    cfg = SpeedConfig(shapes=args.shapes, settings=args.settings, methods=args.methods, gate_impls=args.gate_impls,
                      steps=args.steps, warmup=args.warmup, svi_steps=args.svi_steps, samples=args.samples,
                      examples=args.examples, seq_len=args.seq_len, cont_len=args.cont_len, r=args.r,
                      predict=not args.no_predict, check=not args.no_check, tune=not args.no_tune, profile=args.profile,
                      device=args.device, bf16=not args.fp32, deterministic=args.deterministic)
    if args.fit_only:
        cfg.shapes, cfg.check, cfg.tune = [], False, False
    out = Path(args.out) if args.out else None
    result = run_speed_benchmark(cfg, partial_out=out.with_name(out.stem + ".partial.json") if out else None)
    if args.fit or args.fit_only:
        from .fit_speed import FitSpeedConfig, check_graphs_match_eager, format_fit_table, run_fit_rows

        device = torch.device(cfg.device)
        if device.type == "cuda":
            _log("graphs against eager: the same training steps, replayed and launched ...")
            result["graph_check"] = check_graphs_match_eager(device)
            _log(json.dumps({k: {n: v for n, v in r.items() if not n.startswith("losses")}
                             for k, r in result["graph_check"].items()}, indent=1))
        fit_cfg = FitSpeedConfig(methods=args.fit_methods, model=args.fit_model, tokenizer=args.fit_tokenizer,
                                 dataset=args.fit_dataset, steps=args.fit_steps, eval_examples=args.fit_eval_examples,
                                 overrides=args.fit_set,
                                 settings=[s for s in cfg.settings if s == "eager" or device.type == "cuda"])
        result["fit"] = {"config": dataclasses.asdict(fit_cfg), "rows": run_fit_rows(fit_cfg, log=_log)}
        result["fit"]["table"] = format_fit_table(result["fit"]["rows"], fit_cfg.steps)
    profiles = {}
    for shape, res in result["shapes"].items():
        for name, by_setting in res["train"].items():
            prof = by_setting.get("eager", {}).pop("profile", None)
            if prof is not None:
                profiles[f"{shape} {name}"] = prof.pop("top")
                by_setting["eager"]["kernels"] = prof["kernels"]
                by_setting["eager"]["kernel_time_ms"] = prof["kernel_time_ms"]
    if args.profile_out and profiles:
        Path(args.profile_out).write_text("\n\n".join(f"== {k}\n{v}" for k, v in profiles.items()))
    if out is not None:
        out.with_name(out.stem + ".partial.json").unlink(missing_ok=True)
    out = out or default_output(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    if "fit" in result:
        print("\n" + result["fit"]["table"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
