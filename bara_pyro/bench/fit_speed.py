r"""``bara-pyro bench speed --fit``: the wall time of real training runs, and graphs against eager steps.

*Fit, end to end*: for each method (the ``lora`` and ``bara`` presets by default, ``bara_singular`` on request; all
with the fused estimator) and
setting (``eager``: ``train.graphs=false``; ``graphs``: the training step replayed from CUDA graphs),
one complete :func:`~bara_pyro.experiment.run_experiment` (what ``bara-pyro train`` runs: backbone and
data loading, ``train.steps`` optimizer steps with the training log and checkpoints, then evaluation
on at most ``eval_examples`` validation examples) on a real task.  The model is ``random-smollm2-135m``
(SmolLM2-135M's shapes, random weights: no download) or the packaged ``smollm2-135m``.  Reported: the
run's wall time, the time inside ``fit()`` (and per step), the evaluation time and validation accuracy; with graphs
also the batch shapes captured, the seconds of the steps not replayed (each shape's eager warm-up and capture) and
of the first step (first use of every kernel, Triton's compilation included).

*Graphs against eager*: the same few training steps (same initialisation, same batch, same seed) run
eagerly and replayed from a CUDA graph through :class:`~bara_pyro.inference.graphed_step.TrainStep`;
their losses and final adapter weights must agree to bf16 tolerance.  Both draw the same random numbers
(the CUDA generator's offsets advance identically), so stochastic methods are compared draw for draw.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["FitSpeedConfig", "run_fit_rows", "check_graphs_match_eager", "format_fit_table"]

FIT_METHODS = ("lora", "bara", "bara_singular")  # the presets a fit row may run


@dataclass
class FitSpeedConfig:
    methods: list[str] = field(default_factory=lambda: ["lora", "bara"])
    settings: list[str] = field(default_factory=lambda: ["eager", "graphs"])
    model: str = "random-smollm2-135m"
    tokenizer: str | None = None  # for random-smollm2-135m: a folder or packaged name with SmolLM2's tokenizer
    dataset: str = "arc_easy"
    steps: int = 1000
    batch_size: int = 8
    eval_examples: int = 200
    overrides: list[str] = field(default_factory=list)
    out_dir: str | None = None  # where the run directories go (default: a temporary folder, removed)


def _run_config(cfg: FitSpeedConfig, method: str, setting: str) -> dict:
    from ..experiment_config import load_config

    overrides = [f"model={cfg.model}", f"dataset={cfg.dataset}", "train.estimator=fused",
                 f"train.steps={cfg.steps}", f"train.batch_size={cfg.batch_size}",
                 f"train.graphs={'true' if setting == 'graphs' else 'false'}", "train.bf16=true",
                 "train.device=cuda" if torch.cuda.is_available() else "train.device=cpu",
                 "eval.splits=[validation]", f"eval.max_examples={cfg.eval_examples}"]
    if cfg.tokenizer:
        overrides.append(f"tokenizer={cfg.tokenizer}")
    return load_config(None, method=method, overrides=overrides + list(cfg.overrides))


def run_fit_rows(cfg: FitSpeedConfig, log=print) -> dict:
    """``{method: {setting: row}}`` with ``wall_s``, ``train_s``, ``ms_per_step``, ``eval_s``, ``val_accuracy``."""
    from ..experiment import run_experiment

    root = Path(cfg.out_dir) if cfg.out_dir else Path(tempfile.mkdtemp(prefix="bara_fit_speed_"))
    out: dict = {}
    try:
        for method in cfg.methods:
            for setting in cfg.settings:
                run_dir = root / f"{method}_{setting}"
                shutil.rmtree(run_dir, ignore_errors=True)
                config = _run_config(cfg, method, setting)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                try:
                    metrics = run_experiment(config, run_dir, progress=False)
                except Exception as exc:  # noqa: BLE001  (one failed row must not lose the others)
                    row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                else:
                    wall = time.perf_counter() - t0
                    row = {"wall_s": wall, "train_s": metrics["train_time_s"],
                           "ms_per_step": 1e3 * metrics["train_time_s"] / cfg.steps,
                           "eval_s": metrics.get("eval_time_s"),
                           "val_accuracy": metrics.get("validation", {}).get("accuracy")}
                    setup = (metrics.get("train_graphs") or [None])[0]
                    if setup is not None:  # the steps not replayed: each shape's warm-up and capture, the first step
                        row.update(graph_shapes=setup["shapes"], setup_steps=setup["setup_steps"],
                                   setup_s=setup["setup_s"], first_step_s=setup["first_step_s"])
                out.setdefault(method, {})[setting] = row
                log(f"fit {method}/{setting}: {row}")
    finally:
        if not cfg.out_dir:
            shutil.rmtree(root, ignore_errors=True)
    return out


def _replay_ms(row: dict, steps: int) -> float | None:
    """Milliseconds per replayed step (graphs): the fit time less the setup steps' over the other steps."""
    setup_steps, setup_s = row.get("setup_steps"), row.get("setup_s")
    if setup_steps is None or setup_s is None or steps <= setup_steps:
        return None
    return 1000.0 * (row["train_s"] - setup_s) / (steps - setup_steps)


def format_fit_table(rows: dict, steps: int) -> str:
    """The fit rows as a text table.  ``ms/step``: the time inside ``fit()`` over every step; ``replay ms``: with
    graphs, over the replayed steps only (``(fit s - setup s) / (steps - setup steps)``: without each shape's eager
    warm-up and capture), the step's cost in a long run."""
    lines = [f"fit, end to end ({steps} steps) | ratios: to LoRA in the same setting; speed-up: eager / graphs",
             f"{'method':<8} {'setting':<7} {'wall s':>8} {'fit s':>8} {'ms/step':>8} {'xLoRA':>6} {'speedup':>7} "
             f"{'eval s':>7} {'val acc':>7} {'shapes':>6} {'setup s':>7} {'first s':>7} {'replay ms':>9}"]
    for method, by_setting in rows.items():
        for setting, row in by_setting.items():
            if "error" in row:
                lines.append(f"{method:<8} {setting:<7} error: {row['error'][:80]}")
                continue
            lora = rows.get("lora", {}).get(setting, {})
            ratio = row["train_s"] / lora["train_s"] if lora.get("train_s") else None
            eager = by_setting.get("eager", {})
            speedup = eager["train_s"] / row["train_s"] if eager.get("train_s") else None

            def f(v, fmt):
                return format(v, fmt) if v is not None else "-"

            lines.append(f"{method:<8} {setting:<7} {row['wall_s']:8.1f} {row['train_s']:8.1f} "
                         f"{row['ms_per_step']:8.1f} {f(ratio, '6.3f')} {f(speedup, '7.2f')} "
                         f"{f(row['eval_s'], '7.1f')} {f(row['val_accuracy'], '7.3f')} "
                         f"{f(row.get('graph_shapes'), '6d')} {f(row.get('setup_s'), '7.2f')} "
                         f"{f(row.get('first_step_s'), '7.2f')} {f(_replay_ms(row, steps), '9.1f')}")
    return "\n".join(lines)


# ===================================================================== graphs against eager
def check_graphs_match_eager(device, shape: str = "smollm2-135m", methods=("lora", "bara", "blob", "bara_singular"),
                             steps: int = 6, seed: int = 0) -> dict:
    """Per method: the largest relative loss difference over ``steps`` steps and the relative norm of the
    adapter weights' difference after them, eager against graph replays (bf16 autocast, fp32 adapters)."""
    from ..inference.graphed_step import TrainStep
    from ..inference.optim import TorchOptimizer, warmup_linear_decay
    from ..models import BaRAConfig, get_bara_model
    from .speed_setup import SpeedConfig, adapter_config, build_backbone, cloze_forward, make_batch

    device = torch.device(device)
    cfg = SpeedConfig()
    results = {}
    for method in methods:
        runs = {}
        try:
            for graphs in (False, True):
                backbone = build_backbone(shape, device, torch.bfloat16, seed)
                batch = make_batch(cfg, backbone.config.vocab_size, device)
                kw = dict(r=cfg.r, alpha=cfg.alpha, target_modules=list(cfg.targets))
                if method == "lora":
                    kw["gate"] = "none"
                elif method == "blob":
                    kw.update(gate="none", weights={"name": "blob_gaussian"})
                torch.manual_seed(seed)
                config = adapter_config(cfg, method) if method == "bara_singular" else BaRAConfig(**kw)
                model = get_bara_model(backbone, config, forward_fn=cloze_forward)
                model.dataset_size = cfg.dataset_size
                model.ctx.expected_globals = method == "bara"
                model.train()
                optim = TorchOptimizer(model.trainable_parameters(), lr=1e-3, clip_norm=1.0, tensor_lr=True,
                                       lr_lambda=warmup_linear_decay(steps, 0.2))
                autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
                step_fn = TrainStep(model, optim, device, autocast, static=True, capture=graphs,
                                    log=lambda msg: print(msg))
                torch.manual_seed(seed + 1)
                losses = []
                for i in range(steps):
                    losses.append(float(step_fn(batch, min(1.0, (i + 1) / 3))))
                runs[graphs] = (torch.tensor(losses), model.adapter_state_dict(), step_fn.num_graphs)
                model.remove_hooks()
                del backbone, model, optim, step_fn
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            results[method] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        (le, pe, _), (lg, pg, n_graphs) = runs[False], runs[True]
        diff = sum(float((pg[k].float() - pe[k].float()).norm() ** 2) for k in pe) ** 0.5
        norm = sum(float(pe[k].float().norm() ** 2) for k in pe) ** 0.5
        results[method] = {"loss_max_rel": float(((lg - le).abs() / le.abs().clamp_min(1e-30)).max()),
                           "weights_rel": diff / max(norm, 1e-30), "graphs_captured": n_graphs,
                           "losses_eager": le.tolist(), "losses_graphs": lg.tolist()}
    return results
