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
  implementation of the library's fast path); ``bara_singular[adapter.weights.direction_occam=kfac]`` is the
  singular preset with the directions' Occam factor, ``bara_singular@torch`` the preset with its contextual gate
  op by op (the ``bara_singular`` row: :mod:`~bara_pyro.models.fused_contextual`'s default, Triton on a GPU).
  Each training row also reports ``after ms``: what ``fit()`` runs after each optimizer step outside the
  (captured) step, ``after_optimizer_step`` (e.g. the Occam factor's eigenvalue refresh, SWAG's moments),
  amortized over the last 100 steps of a 1000-step run;
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
from pathlib import Path

import torch

from ..inference.graphed_step import on_side_stream
from ..models import get_bara_model
from ..models.config import ConfigError
from ..tasks.base import Batch
from .fit_speed import FIT_METHODS, format_fit_table
from .speed_checks import check_gate_impls, tune_triton
from .speed_results import default_output, format_row, format_table, load_result, relabel, table_rows
from .speed_setup import (  # re-exported: the benchmark's shapes, rows and settings
    EAGER_ONLY_PREDICTION,
    GATE_IMPL_METHODS,
    GATE_IMPLS,
    PRESET_GATE_IMPL,
    PRESET_METHODS,
    ROW_NAMES,
    SETTINGS,
    SHAPES,
    SVI_METHODS,
    TRAIN_METHODS,
    TRAIN_ROWS,
    SkipRow,
    SpeedConfig,
    adapter_config,
    build_backbone,
    cloze_forward,
    make_batch,
)
from .speed_timing import capture_step, count_kernels, peak_gib, sync, time_steps

__all__ = ["SpeedConfig", "SHAPES", "TRAIN_ROWS", "run_speed_benchmark", "format_table", "load_result", "relabel",
           "main"]

# ===================================================================== model and batch
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

    model = get_bara_model(backbone, adapter_config(cfg, method), forward_fn=cloze_forward)
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
        raise SkipRow("this version of bara_pyro has no ctx.gate_impl (fused kernels not wired)")
    model.ctx.gate_impl = impl
    slow = [p for p, g in model.gates if not getattr(g, "_net", ())]
    if slow:
        raise RuntimeError(f"{len(slow)} gates are not on the fast path (e.g. {slow[0]})")


def _model_train_step(model, method: str, impl: str, batch: Batch, cfg: SpeedConfig, device, graphs: bool) -> _Step:
    model.dataset_size = cfg.dataset_size
    model.train()
    if method == "bara_expected" and impl == "reference":
        raise SkipRow("the expected local KL runs on the fast path only (fused globals), not the reference")
    if method in GATE_IMPL_METHODS:
        _use_gate_impl(model, impl)
    model.ctx.gate_impl = PRESET_GATE_IMPL.get(method, model.ctx.gate_impl)
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
    model = get_bara_model(backbone, adapter_config(cfg, method), forward_fn=cloze_forward)
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
    model = get_bara_model(backbone, adapter_config(cfg, "lora" if lora else "bara"), forward_fn=cloze_forward)
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
        sync(device)
        peak, transient = peak_gib(step.run, device)
        out = {"peak_gib": peak, "step_gib": transient}
        if profile:
            out["profile"] = count_kernels(step.run, device)
        fn = step.run
        if setting == "graphs":
            graph = capture_step(step.run, cfg.warmup, device)
            fn = graph.replay
            for _ in range(cfg.warmup):
                fn()
        times = time_steps(fn, steps, device)
        out.update(ms=statistics.median(times), ms_min=min(times), ms_max=max(times), n=len(times))
        if step.model is not None and step.model.training:
            out["after_step_ms"] = _after_step_ms(step.model, device)
        return out
    finally:
        del graph
        step.close()
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _after_step_ms(model, device, steps: int = 100, total: int = 1000) -> float:
    """What ``fit()`` adds after each optimizer step, outside the captured step (``after_optimizer_step``: e.g. a
    refresh of the direction Occam factor's eigenvalues every few steps, SWAG's moments late in the run), in ms per
    step over the last ``steps`` steps of a ``total``-step run."""
    sync(device)
    start = time.perf_counter()
    for k in range(total - steps + 1, total + 1):
        model.after_optimizer_step(k, total)
    sync(device)
    return 1e3 * (time.perf_counter() - start) / steps


# ===================================================================== correctness on the device
def _warm_up(backbone, batch: Batch, cfg: SpeedConfig, device) -> None:
    """Two untimed frozen forward+backward steps, on the default stream and on a side stream, so that no row
    pays the libraries' first-use costs (in runs where the floor was the first row it came out slower than LoRA)."""
    step = _train_step("frozen", "torch", backbone, batch, cfg, device, graphs=False)
    step.run()
    if device.type == "cuda":
        with on_side_stream(device):
            step.run()
    sync(device)


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
        raise ConfigError("the speed benchmark needs a CUDA device (or --device cpu for a smoke run)")
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
                except SkipRow as exc:
                    out = _skipped(result, method, exc)
                except Exception as exc:  # noqa: BLE001  (one failed row must not lose the others)
                    traceback.print_exc()
                    out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                res["train"].setdefault(name, {})[setting] = out
                log(f"[{shape}] train {key}: " + format_row(out))
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
                    if graphs and method in EAGER_ONLY_PREDICTION:
                        raise SkipRow(EAGER_ONLY_PREDICTION[method])
                    out = _measure(lambda: _predict_step(method, impl, backbone, b, cfg, device), cfg, device,
                                   setting, cfg.steps, profile=False)
                except SkipRow as exc:
                    out = _skipped(result, method, exc)
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                res["predict"].setdefault(name, {})[setting] = out
                log(f"[{shape}] predict {name}/{setting}: " + format_row(out))
                _save_partial(result, partial_out)
        backbone = batch = batch_s = None  # free before the next shape
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["table"] = table_rows(result)
    return result


def _skipped(result: dict, method: str, exc: SkipRow) -> dict:
    """A skipped row's entry; the reason goes into the result's notes once per method."""
    note = f"{method}: {exc}"
    if note not in result["notes"]:
        result["notes"].append(note)
    return {"skipped": str(exc)}


def _save_partial(result: dict, path: Path | None) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(result, indent=1, default=str))


def build_parser() -> argparse.ArgumentParser:
    d = SpeedConfig()
    p = argparse.ArgumentParser(prog="bara-pyro bench speed", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=d.shapes, choices=list(SHAPES))
    p.add_argument("--settings", nargs="+", default=d.settings, choices=list(SETTINGS))
    p.add_argument("--methods", nargs="+", default=d.methods, choices=list(TRAIN_METHODS))
    p.add_argument("--gate-impls", nargs="+", choices=list(GATE_IMPLS),
                   help="BaRA gate paths to measure: reference, or a fused_kernels impl of the fast path "
                        f"(default: {' '.join(d.gate_impls)} on a GPU, torch on a CPU)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--svi-steps", type=int, default=d.svi_steps)
    p.add_argument("--samples", type=int, default=d.samples, help="S of the sampled prediction")
    p.add_argument("--examples", type=int, default=d.examples, help="examples per batch (x choices = sequences)")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--cont-len", type=int, default=d.cont_len, help="scored (continuation) tokens per sequence")
    p.add_argument("--r", type=int, default=d.r)
    p.add_argument("--no-predict", action="store_true")
    p.add_argument("--no-check", action="store_true",
                   help="skip the numerical checks (with --fit: also the graphs-against-eager check)")
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
    p.add_argument("--show", nargs="+", metavar="JSON", help="print the tables of saved result files, then exit")
    f = p.add_argument_group("fit, end to end (bench.fit_speed): real training runs, eager and graphs")
    f.add_argument("--fit", action="store_true", help="add the fit rows and the graphs-against-eager check")
    f.add_argument("--fit-only", action="store_true", help="only the fit rows and the check (no step rows)")
    f.add_argument("--fit-model", default="random-smollm2-135m",
                   help="random-smollm2-135m (SmolLM2-135M's shapes, random weights) or smollm2-135m (packaged)")
    f.add_argument("--fit-tokenizer", help="tokenizer of the random model: a folder or a packaged model name")
    f.add_argument("--fit-dataset", default="arc_easy")
    f.add_argument("--fit-methods", nargs="+", default=["lora", "bara"], choices=list(FIT_METHODS))
    f.add_argument("--fit-steps", type=int, default=1000)
    f.add_argument("--fit-eval-examples", type=int, default=200, help="validation examples evaluated per run")
    f.add_argument("--fit-set", nargs="*", default=[], metavar="KEY=VALUE", help="further config overrides")
    return p


def _print_tables(result: dict) -> None:
    """The step rows' table and, when the result has them, the fit rows' (formatted now: today's columns)."""
    print(format_table(result))
    if "fit" in result:
        print("\n" + format_fit_table(result["fit"]["rows"], result["fit"]["config"]["steps"]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.show:
        for path in args.show:
            result = load_result(path)
            print(f"== {path} ({result.get('device')}, {result.get('date')})")
            _print_tables(result)
        return 0
    if args.relabel:
        for path in args.relabel:
            Path(path).write_text(json.dumps(load_result(path), indent=1))
            print(f"relabelled {path}")
        return 0
    on_gpu = torch.device(args.device).type == "cuda"
    gate_impls = args.gate_impls or (SpeedConfig().gate_impls if on_gpu else ["torch"])  # Triton needs a GPU
    cfg = SpeedConfig(shapes=args.shapes, settings=args.settings, methods=args.methods, gate_impls=gate_impls,
                      steps=args.steps, warmup=args.warmup, svi_steps=args.svi_steps, samples=args.samples,
                      examples=args.examples, seq_len=args.seq_len, cont_len=args.cont_len, r=args.r,
                      predict=not args.no_predict, check=not args.no_check, tune=not args.no_tune, profile=args.profile,
                      device=args.device, bf16=not args.fp32, deterministic=args.deterministic)
    if args.fit_only:
        cfg.shapes, cfg.check, cfg.tune = [], False, False
    out = Path(args.out) if args.out else None
    result = run_speed_benchmark(cfg, partial_out=out.with_name(out.stem + ".partial.json") if out else None)
    if args.fit or args.fit_only:
        from .fit_speed import FitSpeedConfig, check_graphs_match_eager, run_fit_rows

        device = torch.device(cfg.device)
        if device.type == "cuda" and not args.no_check:
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
    _print_tables(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
