r"""Quality and calibration of every method on every task: ``bara-pyro bench quality``.

The Bayesian-LoRA small-scale protocol (:data:`PROTOCOL_NAME`; every default below is that protocol, every
deviation is recorded)::

    backbone      SmolLM2-135M-Instruct (``smollm2-135m``), frozen, fp32
    scoring       cloze: mean log-likelihood of each answer continuation, softmax over the choices
    adapters      rank r = 8, alpha = 16, on q_proj and v_proj of every layer
    budget        the same for every method: AdamW lr 1e-4, no weight decay, 6% linear warm-up then linear
                  decay to 0, gradient-norm clip 1.0, batch 4, 1000 steps (per member for the ensemble)
    tasks         WG-S, ARC-C, ARC-E, WG-M, OBQA, BoolQ (fixed splits of :mod:`bara_pyro.data`, data seed 0)
    methods       LoRA (MLE), MAP, MC-dropout, deep ensemble (M = 5), BLoB, BaRA (the packaged presets)
    seeds         1, 2, 3 (adapter initialisation, data order and posterior draws; the splits are fixed);
                  ensemble member m of seed k: seed k + 1000 m (``ensemble.seed_stride``), so no two seeds'
                  ensembles share a member, and member 0 is the LoRA (MLE) run of seed k
    metrics       on the test split: ACC, NLL, ECE (15 equal-width bins), Brier; joint effective rank of
                  gated methods; the validation split is evaluated and stored too
    selection     every method is evaluated at its final step (no early stopping); hyperparameters are
                  the presets' unless chosen by a validation sweep (``--variant`` methods ranked by
                  ``--best-variant`` on the validation NLL, applied with ``--method-set``); the test
                  split never chooses anything
    OOD (--ood)   each OBQA model is evaluated on the test splits of ARC-C, ARC-E and two MMLU subjects
                  (:data:`MMLU_OOD_SETS`): ACC and ECE there, and the AUROC of predictive entropy and of
                  mutual information (in-distribution = OBQA test, OOD = the other set's test)

Every run is one :func:`~bara_pyro.experiment.run_experiment` call in its own run directory
``<output>/runs/<method>/<task>/seed<k>``; with ``--workers K > 1`` K runs execute at once as Ray tasks
(:mod:`~bara_pyro.bench.scheduler`: a local Ray instance, or the cluster at ``--address``), each running
``python -m bara_pyro.cli train --config <output>/configs/<...>.yaml`` with ``--gpu-share`` of a GPU (default:
the GPUs divided evenly among the K runs; ``--gpus`` chooses a local instance's GPUs).  ``--variant NAME=PRESET`` adds a
method that starts from a packaged preset and ``--method-set METHOD:KEY=VALUE`` gives one method its own
values (a validation sweep of BaRA's hyperparameters, or the chosen values in the full run); both are
recorded as deviations.
A run whose directory already holds ``metrics.json`` is skipped and an interrupted one is resumed from
its checkpoint, so re-running the same command finishes an interrupted benchmark (runs whose training
finished start first, then those that resume, then new ones, longest first); a failed run is
reported (``results.json``/``results.md`` and ``<output>/logs/``) and the others go on.  An ensemble member
whose training equals a finished one-model run in ``<output>/runs`` (member 0 and the LoRA run of the same
seed) is copied from it instead of trained again (``member_<m>/reused_from`` names the source); such
ensembles start after the other runs so that their sources can finish first.  When every member of an
ensemble equals such a run that saved its deterministic test predictions (``predictions.npz``, one eval
split, ``eval.num_samples = 0``), the ensemble is instead assembled from those files, without loading a
model (``metrics.json``'s ``assembled_from`` names them): the mixture of the members' predictives, the
same numbers that evaluating the members would give; likewise its OOD evaluation, from the members'
``ood_predictions.npz``.  So an ensemble's members may train in other calls or on other machines.

Outputs: ``results.json`` (protocol, command line, machine, date, code version, every run's metrics,
aggregates mean +- std over seeds, OOD, the peft anchor and the targets) and ``results.md`` (one table
per metric, rows = methods, columns = tasks + mean; OOD tables; anchor; targets met / missed).

Anchor: peft's LoRA on an H100 with this protocol, seed 1 (:data:`PEFT_LORA_ANCHOR`); the LoRA (MLE)
row must reproduce it within seed noise.  Targets for BaRA against LoRA (MLE), averaged over the tasks
(:data:`TARGETS`): ECE <= 40% of LoRA's; NLL below LoRA's and BLoB's; accuracy at most 0.5 points
below LoRA's; joint effective rank <= r / 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..machine import machine_info
from ..timing import TIMING_NAME, SegmentClock, read_totals
from .quality_report import (  # the labels are re-exported for callers of this module
    METHOD_LABELS,
    METRIC_LABELS,
    TASK_LABELS,
    code_version,
    format_markdown,
    git_commit,
)
from .scheduler import execute

__all__ = [
    "METHODS", "TASKS", "SEEDS", "STEPS", "MODEL", "OOD_TRAIN_TASK", "MMLU_OOD_SETS", "OOD_SETS", "METRICS",
    "PROTOCOL_NAME", "PROTOCOL_OVERRIDES", "QUICK_OVERRIDES", "PEFT_LORA_ANCHOR", "TARGETS", "MODEL_SELECTION",
    "RunSpec", "plan_runs", "evaluate_ood", "aggregate", "format_markdown", "main", "METHOD_LABELS", "TASK_LABELS",
    "METRIC_LABELS",
]

# What results, errors and help call the protocol above (the module docstring defines it).
PROTOCOL_NAME = "the Bayesian-LoRA small-scale protocol"
MODEL = "smollm2-135m"
TASKS = ("winogrande_s", "arc_challenge", "arc_easy", "winogrande_m", "openbookqa", "boolq")
METHODS = ("lora", "lora_map", "mc_dropout", "ensemble", "blob", "bara")
SEEDS = (1, 2, 3)
STEPS = 1000
METRICS = ("accuracy", "nll", "ece", "brier")

OOD_TRAIN_TASK = "openbookqa"
# two MMLU subjects with many test rows and short questions, far from OBQA's elementary science
MMLU_OOD_SETS = ("mmlu_high_school_psychology", "mmlu_miscellaneous")  # 545 and 783 test rows
OOD_SETS = ("arc_challenge", "arc_easy", *MMLU_OOD_SETS)
OOD_PREDICTIONS_NAME = "ood_predictions.npz"

# Applied to every run, after the method preset (so the budget is the same for every method).
PROTOCOL_OVERRIDES = (
    "task.scoring=cloze",
    "adapter.r=8",
    "adapter.alpha=16",
    "adapter.target_modules=[q_proj, v_proj]",
    "train.lr=0.0001",
    "train.weight_decay=0.0",
    "train.warmup_ratio=0.06",
    "train.lr_schedule=linear",
    "train.clip_norm=1.0",
    "train.batch_size=4",
    "eval.ece_bins=15",
    "eval.splits=[validation, test]",
    "eval.batch_size=4",  # S = 10 draws x 4 examples x up to 5 choices per forward: memory, not results
    "data.seed=0",
)
# --quick: a CPU smoke run of the whole pipeline (tiny random Llama with SmolLM2's tokenizer)
QUICK_OVERRIDES = (
    "data.max_train_examples=8",
    "eval.max_examples=16",
    "eval.gate_examples=8",
    "eval.importance_draws=0",
    "train.checkpoint_every=0",
    "train.log_every=1",
)
QUICK_CAPS = {("ensemble", "members"): 2, ("eval", "num_samples"): 2}  # --quick: at most 2 members, S <= 2
QUICK = {"model": "tiny-llama", "steps": 3, "seeds": (1,), "methods": ("lora", "bara"), "tasks": ("winogrande_s",),
         "device": "cpu", "ood_sets": ("arc_easy",)}

# peft's LoRA, same protocol, one seed (1), H100: (ACC %, ECE %)
PEFT_LORA_ANCHOR = {
    "arc_easy": (69.1, 5.2),
    "arc_challenge": (34.1, 16.0),
    "openbookqa": (39.8, 20.4),
    "boolq": (60.4, 5.9),
    "winogrande_s": (54.8, 7.2),
}
ANCHOR_SEED = 1

TARGETS = {
    "ece": "BaRA's ECE at most 40% of LoRA (MLE)'s",
    "nll": "BaRA's NLL below both LoRA (MLE)'s and BLoB's",
    "accuracy": "BaRA's accuracy no more than 0.5 points below LoRA (MLE)'s",
    "effective_rank": "BaRA's joint effective rank at most r / 2",
}
MODEL_SELECTION = ("No early stopping or checkpoint selection: every method is evaluated at its final training step. "
                   "Hyperparameters are the presets' unless a --method-set says otherwise; such values come from a "
                   "sweep of --variant methods ranked on the validation split (--best-variant). The test split "
                   "chooses nothing.")



def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- plan


@dataclass
class RunSpec:
    """One training run: ``method`` x ``task`` x ``seed`` with its resolved config and run directory."""

    method: str
    task: str
    seed: int
    config: dict
    run_dir: Path
    config_path: Path
    log_path: Path

    @property
    def name(self) -> str:
        return f"{self.method}/{self.task}/seed{self.seed}"

    @property
    def cost(self) -> float:
        """Rough relative cost, to start the longest runs first."""
        stochastic = self.config["eval"]["num_samples"] > 0 and self.config["ensemble"]["members"] == 1
        return self.config["ensemble"]["members"] * self.config["train"]["steps"] * (1.2 if stochastic else 1.0)


@dataclass
class Options:
    methods: list[str]
    tasks: list[str]
    seeds: list[int]
    steps: int
    model: str
    device: str
    workers: int
    output: Path
    overrides: list[str]
    ood: bool
    ood_sets: list[str]
    quick: bool
    argv: list[str] = field(default_factory=list)
    variants: dict[str, str] = field(default_factory=dict)  # method name -> the preset it starts from
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # method name -> its own --set values
    task_overrides: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (method, task) -> --set (tuning)
    gpus: list[int] | None = None  # GPUs a local Ray instance spreads the runs over (None: every visible one)
    address: str | None = None  # a running Ray cluster to schedule the runs on (None: this machine)
    gpu_share: float | None = None  # GPUs per run (None: the GPUs shared evenly by --workers runs)
    targets_for: str = "bara"  # the method whose targets (TARGETS) are checked: a BaRA preset or a --variant of one

    def preset(self, method: str) -> str:
        """The packaged preset a method (or a ``--variant``) starts from."""
        return self.variants.get(method, method)

    def run_overrides(self) -> list[str]:
        """Overrides shared by every run, in order (later wins): protocol, quick, budget/device, --set."""
        out = [f"model={self.model}", *PROTOCOL_OVERRIDES]
        if self.quick:
            out += list(QUICK_OVERRIDES)
        out += [f"train.steps={self.steps}", f"train.device={self.device}"]
        return out + list(self.overrides)

    def deviations(self) -> list[str]:
        """How this benchmark differs from :data:`PROTOCOL_NAME` (empty: it is the protocol)."""
        dev = []
        if self.quick:
            dev.append("--quick (smoke-run budget: " + ", ".join(QUICK_OVERRIDES)
                       + ", at most 2 ensemble members and S = 2)")
        if self.model != MODEL:
            dev.append(f"model {self.model} (protocol: {MODEL})")
        if self.steps != STEPS:
            dev.append(f"{self.steps} steps (protocol: {STEPS})")
        if list(self.seeds) != list(SEEDS):
            dev.append(f"seeds {self.seeds} (protocol: {list(SEEDS)})")
        if list(self.tasks) != list(TASKS):
            dev.append(f"tasks {self.tasks} (protocol: {list(TASKS)})")
        if list(self.methods) != list(METHODS):
            dev.append(f"methods {self.methods} (protocol: {list(METHODS)})")
        if self.overrides:
            dev.append("overrides " + " ".join(f"--set {o}" for o in self.overrides))
        for name, base in self.variants.items():
            dev.append(f"method {name} is a variant of the {base} preset")
        for method, values in self.method_overrides.items():
            dev.append(f"{method} only: " + " ".join(f"--set {o}" for o in values))
        for (method, task), values in self.task_overrides.items():
            dev.append(f"{method} on {task}, chosen on validation: " + " ".join(values))
        return dev


def _run_config(opts: Options, method: str, task: str, seed: int) -> dict:
    from ..experiment_config import load_config

    shared = [f"dataset={task}", *opts.run_overrides()[:-len(opts.overrides) or None]]
    user = [*opts.overrides, *opts.method_overrides.get(method, []), *opts.task_overrides.get((method, task), []),
            f"train.seed={seed}"]
    preset = opts.preset(method)
    config = load_config(None, method=preset, overrides=shared + user)
    caps = [f"{a}.{b}={cap}" for (a, b), cap in QUICK_CAPS.items() if opts.quick and config[a][b] > cap]
    if caps:  # before the user's --set overrides (which win) and the seed
        config = load_config(None, method=preset, overrides=shared + caps + user)
    return config


def plan_runs(opts: Options) -> list[RunSpec]:
    """Every (method, task, seed) of the benchmark with its validated config (raises ConfigError early)."""
    specs = []
    for method in opts.methods:
        for task in opts.tasks:
            for seed in opts.seeds:
                config = _run_config(opts, method, task, seed)
                stem = f"{method}__{task}__seed{seed}"
                specs.append(RunSpec(method, task, seed, config, opts.output / "runs" / method / task / f"seed{seed}",
                                     opts.output / "configs" / f"{stem}.yaml", opts.output / "logs" / f"{stem}.log"))
    return specs


# ---------------------------------------------------------------------------------------- execution


def _saved_config_conflict(spec: RunSpec) -> str | None:
    """A message when the run directory holds a run with another config (never mix two protocols)."""
    path = spec.run_dir / "config.yaml"
    if not path.exists():
        return None
    from ..experiment import comparable_config, load_run_config

    try:
        saved = load_run_config(spec.run_dir)
    except Exception as exc:  # noqa: BLE001 - an unreadable config is a conflict too
        return f"{path} cannot be read ({exc}); delete the run directory to redo it"
    if comparable_config(saved) != comparable_config(spec.config):
        return (f"{spec.run_dir} holds a run with a different config; delete it or choose another --output "
                f"(a benchmark never mixes two protocols)")
    return None


def _run_status(spec: RunSpec) -> str:
    """'done' (metrics.json), 'partial' (started: will resume) or 'new'."""
    if (spec.run_dir / "metrics.json").exists():
        return "done"
    return "partial" if (spec.run_dir / "config.yaml").exists() else "new"


def _member_training(config: dict, member: int) -> dict:
    """What determines ensemble member ``m``'s training (a single model: ``m = 0``), as a single-model run has it.

    Backbone, tokenizer, data, task, the adapter without its name (a Pyro param-store prefix, not part of the
    weights) and the train section with the member's seed and without the device.
    """
    from ..experiment import member_seed

    return {**{key: config[key] for key in ("model", "tokenizer", "dataset", "task", "data")},
            "adapter": {k: v for k, v in config["adapter"].items() if k != "name"},
            "train": {**{k: v for k, v in config["train"].items() if k != "device"},
                      "seed": member_seed(config, member)}}


def _member_done(member_dir: Path) -> bool:
    from ..experiment import DONE_MARKER
    from ..models.bara_model import ADAPTER_WEIGHTS_NAME

    return (member_dir / DONE_MARKER).exists() and (member_dir / ADAPTER_WEIGHTS_NAME).exists()


def _finished_single_runs(output: Path, task: str, seed: int, needed: tuple[str, ...] | None = None
                          ) -> list[tuple[Path, dict]]:
    """``(run_dir, config)`` of this benchmark's finished one-model runs of ``task`` with ``seed`` (any method)
    that hold the files ``needed`` (default: the adapter's config and weights) besides metrics and config."""
    from ..experiment import load_run_config
    from ..models.bara_model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

    needed = ("metrics.json", "config.yaml", *(needed or (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)))
    out = []
    for run_dir in sorted((output / "runs").glob(f"*/{task}/seed{seed}")):
        if not all((run_dir / name).is_file() for name in needed):
            continue
        try:
            config = load_run_config(run_dir)
        except Exception:  # noqa: BLE001 - an unreadable run is no source
            continue
        if config["ensemble"]["members"] == 1:
            out.append((run_dir, config))
    return out


def _identical_single_run(spec: RunSpec, output: Path, member: int, needed: tuple[str, ...] | None = None,
                          eval_keys: tuple[str, ...] = ()) -> Path | None:
    """A finished one-model run (holding ``needed``, see :func:`_finished_single_runs`) whose training equals
    member ``member`` of the ensemble ``spec`` and whose ``eval`` agrees with the ensemble's on ``eval_keys``."""
    from ..experiment import member_seed

    wanted, ev = _member_training(spec.config, member), spec.config["eval"]
    runs = _finished_single_runs(output, spec.task, member_seed(spec.config, member), needed)
    return next((run_dir for run_dir, config in runs if _member_training(config, 0) == wanted
                 and all(config["eval"][k] == ev[k] for k in eval_keys)), None)


def _reusable_members(spec: RunSpec, output: Path) -> dict[int, Path]:
    """``{m: run_dir}``: the unfinished members of an ensemble whose training a finished one-model run did."""
    from ..experiment import member_dir

    members = spec.config["ensemble"]["members"]
    if members == 1:
        return {}
    found = {m: _identical_single_run(spec, output, m) for m in range(members)
             if not _member_done(member_dir(spec.run_dir, spec.config, m))}
    return {m: source for m, source in found.items() if source is not None}


def _reuse_single_runs_as_members(spec: RunSpec, output: Path, log=_log) -> int:
    """Copy finished one-model runs of this benchmark into the ensemble members they equal; return how many.

    Exact, not an approximation: :func:`~bara_pyro.experiment.run_experiment` builds and trains member ``m``
    exactly as it builds and trains one model with ``train.seed = member_seed(config, m)``: the same backbone,
    data and task, ``pyro.set_rng_seed`` of that seed before the adapter is built, and the same TrainConfig.
    The adapter name differs (members need distinct param-store names), but it names Pyro parameters only and
    is not in the weights.  So the source's weights are the member's (bitwise on the same deterministic
    device; ``train.device`` is ignored, as for every run of the benchmark).  Member ``m`` gets
    ``adapter_config.json`` (with the member's adapter name), the weights, ``train_log.jsonl`` and a
    ``reused_from`` file naming the source; the DONE marker goes last, so run_experiment loads the member
    instead of training it.  A reused member adds nothing to the ensemble's ``train_time_s``.
    """
    from ..experiment import DONE_MARKER, _adapter_config, member_dir
    from ..experiment_config import save_config
    from ..inference.trainer import TRAIN_LOG_NAME
    from ..models.bara_model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

    sources = _reusable_members(spec, output)
    if sources:  # record the config first, as run_experiment does: another config later is a conflict
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(spec.config, spec.run_dir / "config.yaml")
    for m, source in sources.items():
        target = member_dir(spec.run_dir, spec.config, m)
        target.mkdir(parents=True, exist_ok=True)
        (target / DONE_MARKER).unlink(missing_ok=True)
        adapter = json.loads((source / ADAPTER_CONFIG_NAME).read_text())
        adapter["bara_config"]["name"] = _adapter_config(spec.config, m).name
        (target / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter, indent=2))
        _copy_file(source / ADAPTER_WEIGHTS_NAME, target / ADAPTER_WEIGHTS_NAME)
        if (source / TRAIN_LOG_NAME).exists():
            _copy_file(source / TRAIN_LOG_NAME, target / TRAIN_LOG_NAME)
        else:
            (target / TRAIN_LOG_NAME).unlink(missing_ok=True)  # a partial member's log is not this training's
        name = _relative(source, output)
        (target / "reused_from").write_text(name + "\n")
        (target / DONE_MARKER).write_text(f"reused from {name}\n")
        log(f"{spec.name}: member {m} is {name} (identical training), reused")
    return len(sources)


# An ensemble's predictive is the mixture of its members' (experiment.mixture_of_members). When every member
# equals a finished one-model run (_member_training) that saved its deterministic predictions on the same
# rows, the ensemble's predictions and metrics follow from those files: exactly what evaluating the members
# again would give, bitwise (same code, same batches), with no model loaded. So members can train anywhere
# (other calls, other machines) as long as their predictions come back.

# what a member's probabilities depend on
MEMBER_EVAL_KEYS = ("splits", "max_examples", "batch_size", "num_samples", "max_rows_per_pass")


def _member_prediction_sources(spec: RunSpec, output: Path, filename: str) -> dict[int, Path] | None:
    """``{m: run_dir}`` for every member of the ensemble ``spec``, each a finished identical one-model run with
    ``filename`` and the ensemble's eval settings (deterministic: ``eval.num_samples = 0``); else None."""
    members, ev = spec.config["ensemble"]["members"], spec.config["eval"]
    if members == 1 or ev["num_samples"] != 0 or len(ev["splits"]) != 1:
        return None
    found = {m: _identical_single_run(spec, output, m, (filename,), MEMBER_EVAL_KEYS) for m in range(members)}
    return None if None in found.values() else found


def _relative(path: Path, output: Path) -> str:
    return str(path.relative_to(output)) if path.is_relative_to(output) else str(path)


def _assemble_ensemble(spec: RunSpec, output: Path, log=_log) -> bool:
    """Write the ensemble run ``spec`` (config, ``predictions.npz``, ``metrics.json``) from its members'
    saved test predictions, if every member has a source (:func:`_member_prediction_sources`); return whether
    it did.  ``metrics.json`` names the sources (``assembled_from``); no training time is counted."""
    import numpy as np

    from ..experiment import PREDICTIONS_NAME, _write_predictions, mixture_of_members, read_prediction
    from ..experiment_config import save_config
    from ..metrics import classification_metrics

    sources = _member_prediction_sources(spec, output, PREDICTIONS_NAME)
    if sources is None:
        return False
    t0 = time.perf_counter()
    preds = []
    for source in sources.values():
        with np.load(source / PREDICTIONS_NAME) as arrays:
            preds.append(read_prediction(arrays))
    pred = mixture_of_members(preds)
    ev = spec.config["eval"]
    metrics = {"num_samples": ev["num_samples"], "ensemble_members": len(preds),
               ev["splits"][0]: {**classification_metrics(pred.probs, pred.labels, n_bins=ev["ece_bins"]),
                                 "num_examples": len(pred.labels)},
               "eval_time_s": time.perf_counter() - t0, "effective_rank": None, "effective_rank_per_layer": {}}
    trainable = []
    for source in sources.values():
        trainable.append(json.loads((source / "metrics.json").read_text()).get("trainable_parameters"))
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(spec.config, spec.run_dir / "config.yaml")
    _write_predictions(spec.run_dir / PREDICTIONS_NAME, pred)
    metrics.update(method=spec.config["method"], model=spec.config["model"], dataset=spec.config["dataset"],
                   trainable_parameters=sum(trainable) if None not in trainable else None, train_time_s=0.0,
                   wall_time_s=time.perf_counter() - t0,
                   assembled_from=[_relative(source, output) for source in sources.values()])
    _write_json(spec.run_dir / "metrics.json", metrics)
    log(f"{spec.name}: assembled from its members' predictions ({', '.join(metrics['assembled_from'])})")
    return True


def _assemble_ensemble_ood(spec: RunSpec, output: Path, ood_sets: list[str], log=_log) -> bool:
    """The OOD evaluation of the ensemble run ``spec`` from its members' ``ood_predictions.npz`` (each with
    ``ood_sets``), as :func:`evaluate_ood` would compute it; return whether it did."""
    import numpy as np

    from ..experiment import mixture_of_members, read_prediction

    sources = _member_prediction_sources(spec, output, OOD_PREDICTIONS_NAME)
    if sources is None or not all(_ood_done(source, ood_sets) for source in sources.values()):
        return False
    names = ["in_distribution", *ood_sets]
    member_preds = []
    for source in sources.values():
        with np.load(source / OOD_PREDICTIONS_NAME) as arrays:
            member_preds.append({name: read_prediction(arrays, prefix=f"{name}/") for name in names})
    mixed = {name: mixture_of_members([p[name] for p in member_preds]) for name in names}
    id_pred = mixed.pop("in_distribution")
    _write_ood(spec.run_dir, spec.config, len(member_preds), id_pred, mixed)
    log(f"ood:{spec.name}: assembled from its members' OOD predictions")
    return True


def _progress_rank(spec: RunSpec) -> int:
    """0: every member trained (only the evaluation is left), 1: training resumes from a checkpoint, 2: new.

    Runs start in this order (then the longest first): when a call is stopped, what it did is most likely
    finished rather than left half done on a machine that may not come back."""
    from ..experiment import member_dir
    from ..inference.trainer import CHECKPOINT_DIR

    dirs = [member_dir(spec.run_dir, spec.config, m) for m in range(spec.config["ensemble"]["members"])]
    if all(_member_done(d) for d in dirs):
        return 0
    return 1 if any(_member_done(d) or (d / CHECKPOINT_DIR).exists() for d in dirs) else 2


def _count_reusable_members(specs: list[RunSpec], output: Path) -> int:
    """How many ensemble members equal a one-model run of the plan or one finished in ``output`` (for --dry-run)."""
    from ..experiment import member_dir

    singles = [_member_training(s.config, 0) for s in specs if s.config["ensemble"]["members"] == 1]
    count = 0
    for spec in specs:
        members = spec.config["ensemble"]["members"]
        if members == 1 or _run_status(spec) == "done":
            continue
        finished = _reusable_members(spec, output)  # members already trained are not in it
        count += sum(m in finished or (not _member_done(member_dir(spec.run_dir, spec.config, m))
                                       and _member_training(spec.config, m) in singles) for m in range(members))
    return count


def _copy_file(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train_in_process(spec: RunSpec) -> None:
    import pyro

    from ..experiment import run_experiment

    pyro.clear_param_store()
    try:
        run_experiment(spec.config, spec.run_dir, resume=True, progress=False)
    finally:
        pyro.clear_param_store()
        _release_memory()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (e.g. from ``timeout``) ends the benchmark like Ctrl-C: its runs checkpoint, a re-run resumes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("terminated")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_command(spec: RunSpec) -> list[str]:
    if _run_status(spec) == "partial":
        return [sys.executable, "-m", "bara_pyro.cli", "train", "--resume", str(spec.run_dir), "--quiet"]
    return [sys.executable, "-m", "bara_pyro.cli", "train", "--config", str(spec.config_path),
            "--output", str(spec.run_dir), "--quiet"]


def _ood_command(run_dir: Path, ood_sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "bara_pyro.bench.quality", "--ood-run", str(run_dir),
            "--ood-sets", ",".join(ood_sets)]


def _execute(jobs: list, opts: Options, log, before_job: dict | None = None) -> dict[str, dict]:
    """Run the jobs (:func:`~bara_pyro.bench.scheduler.execute`): in this process, or as Ray tasks that each ask
    for ``--gpu-share`` of a GPU (none with ``--device cpu`` or ``cuda:N``)."""
    share = opts.gpu_share if opts.device == "auto" or opts.device == "cuda" else 0.0
    return execute(jobs, opts.workers, log, gpus=opts.gpus, before_job=before_job, address=opts.address,
                   gpu_share=share)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


# ----------------------------------------------------------------------------------------------- OOD


def evaluate_ood(run_dir: str | os.PathLike, ood_sets=OOD_SETS, progress: bool = False) -> dict:
    """Evaluate a finished run's saved adapter(s) in distribution (its test split) and on each OOD test split.

    Uses the run's config: the same backbone, tokenizer, scoring, posterior sample count S, ``eval.max_examples``
    and device.  Per OOD set: ACC, NLL, ECE, Brier, and the AUROC of telling its examples from the
    in-distribution ones by predictive entropy and by mutual information (``None`` for deterministic
    predictions, whose mutual information is 0).  Writes ``ood_metrics.json`` and the predictions behind it,
    ``ood_predictions.npz`` (arrays ``<set>/probs``, ``<set>/labels``, ...; the run's own test split under
    ``in_distribution/``), into the run directory.
    """
    import pyro

    from ..data import load_task_dataset
    from ..experiment import (
        PARTIAL_PREDICTION_PREFIX,
        _ensemble_predict,
        _subset,
        build_backbone_and_task,
        load_members,
        load_run_config,
        remove_partial_predictions,
    )
    from ..inference.trainer import resolve_device
    from ..tasks import get_task

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    ev = config["eval"]
    backbone, tokenizer, task, data = build_backbone_and_task(config)
    backbone.to(resolve_device(config["train"]["device"]))
    models = load_members(run_dir, config, backbone, task)
    pyro.set_rng_seed(config["train"]["seed"])
    partial = run_dir / f"{PARTIAL_PREDICTION_PREFIX}ood_"  # resumable passes: a stopped evaluation goes on
    id_pred = _ensemble_predict(models, task, _subset(data["test"], ev["max_examples"]), config, progress,
                                checkpoint=Path(f"{partial}in_distribution"))
    preds = {}
    for name in ood_sets:
        ood_task = get_task(name, tokenizer, scoring=config["task"]["scoring"], max_length=config["task"]["max_length"])
        for model in models:
            model.forward_fn = ood_task.scores
        rows = _subset(load_task_dataset(name, seed=config["data"]["seed"])["test"], ev["max_examples"])
        preds[name] = _ensemble_predict(models, ood_task, rows, config, progress,
                                        checkpoint=Path(f"{partial}{name}"))
    out = _write_ood(run_dir, config, len(models), id_pred, preds)
    remove_partial_predictions(run_dir)
    del models, backbone
    _release_memory()
    return out


def _write_ood(run_dir: Path, config: dict, members: int, id_pred, preds: dict) -> dict:
    """``ood_metrics.json`` and ``ood_predictions.npz`` from the in-distribution and OOD predictions."""
    import numpy as np

    from ..experiment import prediction_arrays
    from ..metrics import classification_metrics, mutual_information, ood_auroc, predictive_entropy

    ev = config["eval"]

    def scores(pred):
        ent = predictive_entropy(pred.probs)
        mi = mutual_information(pred.sample_probs) if pred.sample_probs is not None else None
        return ent, mi

    id_entropy, id_mi = scores(id_pred)
    out = {"trained_on": config["dataset"], "method": config["method"], "num_samples": ev["num_samples"],
           "ensemble_members": members, "ood_sets": list(preds),
           "in_distribution": {"dataset": config["dataset"], "split": "test", "num_examples": len(id_pred.labels),
                               **classification_metrics(id_pred.probs, id_pred.labels, n_bins=ev["ece_bins"])},
           "ood": {}}
    arrays = prediction_arrays(id_pred, prefix="in_distribution/")
    for name, pred in preds.items():
        entropy, mi = scores(pred)
        out["ood"][name] = {"split": "test", "num_examples": len(pred.labels),
                            **classification_metrics(pred.probs, pred.labels, n_bins=ev["ece_bins"]),
                            "auroc_entropy": ood_auroc(id_entropy, entropy),
                            "auroc_mutual_information": ood_auroc(id_mi, mi)
                            if mi is not None and id_mi is not None else None}
        arrays.update(prediction_arrays(pred, prefix=f"{name}/"))
    np.savez(run_dir / OOD_PREDICTIONS_NAME, **arrays)
    _write_json(run_dir / "ood_metrics.json", out)
    return out


def _ood_done(run_dir: Path, ood_sets: list[str]) -> bool:
    path = run_dir / "ood_metrics.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("ood_sets") == list(ood_sets)
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------- aggregation


def _stats(values: list) -> dict | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "n": len(vals), "values": vals}


def _table(records: list[dict], methods, columns, value) -> dict:
    """``{method: {column: stats, "mean": stats over columns}}`` for ``value(record, column) -> float | None``.

    The "mean" cell averages the per-column means (only when every column has a value); its std is over
    the seeds that have every column (the per-seed average over columns), when there are two or more.
    """
    out = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        by_col = {}
        for col in columns:
            pairs = [(r["seed"], value(r, col)) for r in rows]
            by_col[col] = {s: v for s, v in pairs if v is not None}
        cells = {col: _stats(list(by_col[col].values())) for col in columns}
        if columns and all(cells[c] is not None for c in columns):
            seeds = sorted(set.intersection(*(set(by_col[c]) for c in columns)))
            per_seed = [statistics.fmean(by_col[c][s] for c in columns) for s in seeds]
            mean = statistics.fmean(cells[c]["mean"] for c in columns)
            cells["mean"] = {"mean": mean, "std": statistics.stdev(per_seed) if len(per_seed) > 1 else None,
                             "n": len(per_seed), "values": per_seed}
        else:
            cells["mean"] = None
        out[method] = cells
    return out


def _metric_value(split: str, metric: str):
    def value(record, task):
        if record["task"] != task or record["status"] != "ok":
            return None
        m = record.get("metrics") or {}
        if metric == "effective_rank":
            return m.get("effective_rank")
        return (m.get(split) or {}).get(metric)
    return value


def _ood_value(metric: str):
    def value(record, column):
        ood = record.get("ood_metrics")
        if record["task"] != OOD_TRAIN_TASK or not ood:
            return None
        cell = ood["in_distribution"] if column == "in_distribution" else ood["ood"].get(column)
        return None if cell is None else cell.get(metric)
    return value


def _mean(agg: dict, method: str) -> float | None:
    cell = (agg.get(method) or {}).get("mean")
    return None if cell is None else cell["mean"]


def target_label(method: str) -> str:
    """How results name the method the targets are checked for: ``BaRA``, or ``BaRA (name)`` for another BaRA
    preset or a variant."""
    return "BaRA" if method == "bara" else f"BaRA ({method})"


def check_targets(aggregates: dict, rank_budget: float | None, method: str = "bara") -> list[dict]:
    """The protocol's targets (:data:`TARGETS`) for BaRA (``method``: a BaRA preset or a variant of one) against
    LoRA (MLE) on the across-task test means: met / missed / not evaluated."""
    name = target_label(method)
    test = aggregates["test"]
    acc, nll, ece = test["accuracy"], test["nll"], test["ece"]
    rank = aggregates["effective_rank"]
    out = []

    def add(key, status, detail):
        out.append({"target": key, "description": TARGETS[key], "status": status, "detail": detail})

    b, lo = _mean(ece, method), _mean(ece, "lora")
    if b is None or lo is None:
        add("ece", "not evaluated", "needs BaRA and LoRA (MLE) on every task")
    else:
        ratio = b / lo if lo > 0 else math.inf
        add("ece", "met" if b <= 0.4 * lo else "missed",
            f"{name} {100 * b:.2f}% vs LoRA {100 * lo:.2f}%: ratio {ratio:.2f} (target <= 0.40)")
    b, lo, bl = _mean(nll, method), _mean(nll, "lora"), _mean(nll, "blob")
    if b is None or lo is None:
        add("nll", "not evaluated", "needs BaRA and LoRA (MLE) on every task")
    elif bl is None:  # not below LoRA already misses the target, whatever BLoB gives; below it, that part is met
        add("nll", "met against LoRA; BLoB not run" if b < lo else "missed",
            f"{name} {b:.4f} vs LoRA {lo:.4f} (diff {b - lo:+.4f}); BLoB was not run on every task")
    else:
        add("nll", "met" if b < lo and b < bl else "missed",
            f"{name} {b:.4f} vs LoRA {lo:.4f} (diff {b - lo:+.4f}) and BLoB {bl:.4f} (diff {b - bl:+.4f})")
    b, lo = _mean(acc, method), _mean(acc, "lora")
    if b is None or lo is None:
        add("accuracy", "not evaluated", "needs BaRA and LoRA (MLE) on every task")
    else:
        diff = 100 * (b - lo)
        add("accuracy", "met" if diff >= -0.5 else "missed",
            f"{name} {100 * b:.2f}% vs LoRA {100 * lo:.2f}%: {diff:+.2f} points (target >= -0.50)")
    b = _mean(rank, method)
    if b is None or rank_budget is None:
        add("effective_rank", "not evaluated", "needs BaRA on every task")
    else:
        add("effective_rank", "met" if b <= rank_budget / 2 else "missed",
            f"{name} {b:.2f} vs r / 2 = {rank_budget / 2:g}")
    return out


def anchor_check(records: list[dict], aggregates: dict, tasks: list[str]) -> list[dict]:
    """The LoRA (MLE) row against peft's LoRA (seed 1); 'within noise' = |diff| <= 2 sqrt(2) x our seed std."""
    rows = []
    # only runs evaluated on the test split (a validation-only run, e.g. of a grid, has no anchor figure)
    lora = [r for r in records if r["method"] == "lora" and r["status"] == "ok" and "test" in r["metrics"]]
    for task in tasks:
        if task not in PEFT_LORA_ANCHOR:
            continue
        peft_acc, peft_ece = PEFT_LORA_ANCHOR[task]
        runs = sorted((r for r in lora if r["task"] == task), key=lambda r: (r["seed"] != ANCHOR_SEED, r["seed"]))
        row = {"task": task, "peft": {"accuracy": peft_acc, "ece": peft_ece}, "seed": None, "ours": None,
               "diff": None, "ours_seeds": {}, "within_noise": {}}
        if runs:
            r = runs[0]
            row["seed"] = r["seed"]
            row["ours"] = {k: 100 * r["metrics"]["test"][k] for k in ("accuracy", "ece")}
            row["diff"] = {k: row["ours"][k] - row["peft"][k] for k in ("accuracy", "ece")}
            for k in ("accuracy", "ece"):
                cell = aggregates["test"][k].get("lora", {}).get(task)
                std = None if cell is None or cell["std"] is None else 100 * cell["std"]
                row["ours_seeds"][k] = None if cell is None else {"mean": 100 * cell["mean"], "std": std,
                                                                  "n": cell["n"]}
                row["within_noise"][k] = None if std is None else abs(row["diff"][k]) <= 2 * math.sqrt(2) * std
        rows.append(row)
    return rows


def aggregate(records: list[dict], methods: list[str], tasks: list[str], ood_sets: list[str] | None = None,
              rank_budget: float | None = None, target_method: str = "bara") -> dict:
    """Aggregates (mean +- std over seeds per method x task, plus the across-task mean), OOD, anchor, targets."""
    aggregates = {split: {m: _table(records, methods, tasks, _metric_value(split, m)) for m in METRICS}
                  for split in ("test", "validation")}
    aggregates["effective_rank"] = _table(records, methods, tasks, _metric_value("test", "effective_rank"))
    out = {"aggregates": aggregates}
    if ood_sets:
        id_cols = ["in_distribution", *ood_sets]
        out["ood"] = {
            "trained_on": OOD_TRAIN_TASK, "sets": list(ood_sets),
            "accuracy": _table(records, methods, id_cols, _ood_value("accuracy")),
            "ece": _table(records, methods, id_cols, _ood_value("ece")),
            "nll": _table(records, methods, id_cols, _ood_value("nll")),
            "auroc_entropy": _table(records, methods, list(ood_sets), _ood_value("auroc_entropy")),
            "auroc_mutual_information": _table(records, methods, list(ood_sets),
                                               _ood_value("auroc_mutual_information")),
        }
    out["anchor"] = anchor_check(records, aggregates, tasks)
    out["target_method"] = target_method
    out["targets"] = check_targets(aggregates, rank_budget, target_method)
    return out


# ------------------------------------------------------------------------------------------------ main


def _csv(kind, choices=None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            items = [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}") from None
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"repeated entries in {text!r}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bara-pyro bench quality", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Defaults: {PROTOCOL_NAME} (python -m pydoc bara_pyro.bench.quality).")
    p.add_argument("--methods", type=_csv(str), help=f"method presets (default {','.join(METHODS)})")
    p.add_argument("--tasks", type=_csv(str), help=f"datasets (default {','.join(TASKS)})")
    p.add_argument("--seeds", type=_csv(int), help=f"training seeds (default {','.join(map(str, SEEDS))})")
    p.add_argument("--steps", type=int, help=f"optimizer steps per run (default {STEPS})")
    p.add_argument("--model", help=f"backbone (default {MODEL})")
    p.add_argument("--device", help="'auto' (default; cuda when available), 'cuda', 'cpu', ...")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once: 1 runs them in this process in turn; K > 1 (or --address) runs them as Ray "
                        "tasks, at most K at once")
    p.add_argument("--gpus", type=_csv(int),
                   help="GPU indices a local Ray instance spreads the runs over (default: every visible GPU)")
    p.add_argument("--gpu-share", type=float, metavar="F",
                   help="GPUs each run asks Ray for, e.g. 0.5: two runs per GPU (default: the GPUs divided evenly "
                        "among --workers runs, at most 1)")
    p.add_argument("--address", metavar="RAY_ADDRESS",
                   help="schedule the runs on a running Ray cluster (e.g. 'auto' or host:6379); every node needs "
                        "bara_pyro installed and --output on a shared filesystem")
    p.add_argument("--output", help="benchmark folder (default benchmarks/quality/<date>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run, e.g. --set train.estimator=fused (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PRESET",
                   help="add a method NAME that starts from PRESET (give it its own values with --method-set "
                        "and list it in --methods), e.g. --variant bara_fast=bara (repeatable)")
    p.add_argument("--method-set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="override a config value in METHOD's runs only, after --set, e.g. "
                        "--method-set bara:train.guide_lr=0.01 (repeatable)")
    p.add_argument("--ood", action="store_true", help=f"evaluate the {OOD_TRAIN_TASK} runs out of distribution")
    p.add_argument("--ood-sets", type=_csv(str), help=f"OOD test sets (default {','.join(OOD_SETS)})")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: tiny-llama, 3 steps, 8 train / 16 eval examples, 1 seed, lora and bara")
    p.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    p.add_argument("--aggregate-only", action="store_true", help="train nothing: aggregate the finished runs")
    p.add_argument("--best-variant", metavar="RESULTS_JSON",
                   help="print the --method-set arguments of the sweep's method with the lowest mean validation "
                        "NLL (for --best-variant-for), its ranking on stderr, and exit")
    p.add_argument("--best-variant-for", default="bara", metavar="METHOD",
                   help="the method the chosen values are printed for (default bara)")
    p.add_argument("--targets-for", default="bara", metavar="METHOD",
                   help="the method whose targets are checked: a BaRA preset (bara, bara_slab, bara_singular, ...) "
                        "or a --variant of one (default bara)")
    p.add_argument("--ood-run", help=argparse.SUPPRESS)  # internal: OOD-evaluate one run dir (worker subprocess)
    return p


def _options(args, argv: list[str]) -> Options:
    q = QUICK if args.quick else {}
    opts = Options(
        methods=args.methods or list(q.get("methods", METHODS)),
        tasks=args.tasks or list(q.get("tasks", TASKS)),
        seeds=args.seeds or list(q.get("seeds", SEEDS)),
        steps=args.steps if args.steps is not None else q.get("steps", STEPS),
        model=args.model or q.get("model", MODEL),
        device=args.device or q.get("device", "auto"),
        workers=args.workers,
        output=Path(args.output or Path("benchmarks") / "quality" / datetime.date.today().isoformat()),
        overrides=list(args.set),
        ood=args.ood,
        ood_sets=args.ood_sets or list(q.get("ood_sets", OOD_SETS)),
        quick=args.quick,
        argv=list(argv),
        variants=_parse_variants(args.variant),
        method_overrides=_parse_method_sets(args.method_set),
        gpus=args.gpus,
        address=args.address,
        gpu_share=args.gpu_share,
        targets_for=args.targets_for,
    )
    if not opts.preset(opts.targets_for).startswith("bara"):
        from ..models.config import ConfigError

        raise ConfigError(f"--targets-for {opts.targets_for!r} must be a BaRA preset (bara, bara_slab, "
                          f"bara_singular, ...) or a --variant of one")
    return opts


def _parse_variants(items: list[str]) -> dict[str, str]:
    from ..models.config import ConfigError

    out = {}
    for item in items:
        name, sep, base = item.partition("=")
        if not sep or not name.strip() or not base.strip():
            raise ConfigError(f"--variant {item!r} must look like NAME=PRESET")
        out[name.strip()] = base.strip()
    return out


def _parse_method_sets(items: list[str]) -> dict[str, list[str]]:
    from ..models.config import ConfigError

    out: dict[str, list[str]] = {}
    for item in items:
        method, sep, value = item.partition(":")
        if not sep or not method.strip() or "=" not in value:
            raise ConfigError(f"--method-set {item!r} must look like METHOD:KEY=VALUE")
        out.setdefault(method.strip(), []).append(value.strip())
    return out


def _check_options(opts: Options) -> None:
    from ..data import DATASETS
    from ..methods import preset_names
    from ..models.config import ConfigError

    for name, base in opts.variants.items():
        if name in preset_names():
            raise ConfigError(f"--variant {name}={base}: {name!r} is a packaged method; choose another name")
        if base not in preset_names():
            raise ConfigError(f"--variant {name}={base}: unknown preset {base!r}; packaged methods: {preset_names()}")
    unknown = [m for m in opts.methods if m not in preset_names() and m not in opts.variants]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; packaged methods: {preset_names()}"
                          + (f", variants: {sorted(opts.variants)}" if opts.variants else ""))
    stray = sorted(set(opts.method_overrides) - set(opts.methods))
    if stray:
        raise ConfigError(f"--method-set names method(s) {stray} that are not in --methods {opts.methods}")
    if opts.gpus is not None and (not opts.gpus or any(g < 0 for g in opts.gpus)):
        raise ConfigError(f"--gpus must list GPU indices >= 0, got {opts.gpus}")
    for name in [*opts.tasks, *(opts.ood_sets if opts.ood else [])]:
        if name not in DATASETS:
            raise ConfigError(f"unknown dataset {name!r}; known: {sorted(k for k in DATASETS if 'mmlu_' not in k)} "
                              "and mmlu_<subject>")
    if opts.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {opts.workers}")
    if opts.gpu_share is not None and not 0 <= opts.gpu_share:
        raise ConfigError(f"--gpu-share must be >= 0, got {opts.gpu_share}")
    if opts.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {opts.steps}")
    if opts.ood and OOD_TRAIN_TASK not in opts.tasks:
        raise ConfigError(f"--ood evaluates the models trained on {OOD_TRAIN_TASK}: add it to --tasks")


def _run_machines(records: list[dict]) -> list[dict]:
    """The distinct machines (device and versions, as :func:`machine_info` gives them, without the host's platform
    string) that the finished runs recorded in their ``metrics.json``, in order of first appearance."""
    seen = []
    for rec in records:
        machine = (rec.get("metrics") or {}).get("machine")
        if machine:
            machine = {k: v for k, v in machine.items() if k != "platform"}
            if machine not in seen:
                seen.append(machine)
    return seen


def _record(spec: RunSpec, outcome: dict | None, output: Path, ood: bool) -> dict:
    rec = {"method": spec.method, "task": spec.task, "seed": spec.seed,
           "run_dir": str(spec.run_dir.relative_to(output)) if spec.run_dir.is_relative_to(output)
           else str(spec.run_dir), "status": "failed", "error": None, "metrics": None}
    metrics_path = spec.run_dir / "metrics.json"
    if outcome is not None and outcome["status"] != "ok":
        rec["status"] = "stopped" if outcome["status"] == "stopped" else "failed"
        rec["error"] = outcome["error"]
    elif metrics_path.exists():
        rec["status"] = "ok"
        rec["metrics"] = json.loads(metrics_path.read_text())
    else:
        rec["error"] = "not run" if outcome is None else "finished without metrics.json"
    if outcome is not None:
        rec["bench_time_s"] = outcome.get("time_s")
        rec["resumed_or_skipped"] = outcome.get("skipped", False)
    if ood and spec.task == OOD_TRAIN_TASK and (spec.run_dir / "ood_metrics.json").exists():
        rec["ood_metrics"] = json.loads((spec.run_dir / "ood_metrics.json").read_text())
    return rec


def _prepare_assets(specs: list[RunSpec], pending: list[RunSpec], ood_sets: list[str]) -> None:
    """Fetch the model and build the dataset caches that the ``pending`` runs and ``ood_sets`` need, once,
    before parallel workers would race to build them (a finished run's dataset is not needed)."""
    from ..assets import ASSETS, resolve_model
    from ..data import load_task_dataset
    from ..experiment_config import TINY_MODELS

    models = set()
    for spec in specs:
        name, tokenizer = spec.config["model"], spec.config["tokenizer"]
        if name in TINY_MODELS:  # as build_backbone_and_task: a packaged tokenizer
            name = tokenizer or ("minilm-l6" if TINY_MODELS[name] == "bert" else "smollm2-135m")
        models.add(name)
    for name in sorted(models & set(ASSETS)):
        resolve_model(name)
    for name, seed in sorted({(s.task, s.config["data"]["seed"]) for s in pending}
                             | {(name, s.config["data"]["seed"]) for s in specs for name in ood_sets}):
        load_task_dataset(name, seed=seed)


def run_benchmark(opts: Options, log=_log, execute: bool = True) -> dict:
    """Plan, train (skipping finished runs), evaluate OOD, aggregate; write results.json and results.md.

    ``wall_time_s`` in the results adds up every call of the command on ``opts.output`` that could run
    something (``execute``), also calls that were stopped, and ``segments`` counts them (``timing.json``)."""
    clock = SegmentClock(opts.output / TIMING_NAME) if execute else None
    try:
        return _run_benchmark(opts, log, execute, clock)
    finally:
        if clock is not None:
            clock.close()


def _bench_times(clock: SegmentClock | None, output: Path, t0: float) -> dict:
    if clock is not None:
        return {"wall_time_s": clock.total("wall_time_s"), "segments": clock.segments}
    prior = read_totals(output / TIMING_NAME)  # aggregate-only: the calls that ran the runs
    if "wall_time_s" in prior:
        return {"wall_time_s": prior["wall_time_s"], "segments": prior.get("segments", 1)}
    return {"wall_time_s": time.perf_counter() - t0, "segments": 1}


def _run_benchmark(opts: Options, log, execute: bool, clock: SegmentClock | None) -> dict:
    from ..experiment import assembled_from
    from ..experiment_config import save_config

    t0 = time.perf_counter()
    specs = plan_runs(opts)
    opts.output.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, dict] = {}
    ran_here = False  # whether this call trains or evaluates anything (else the runs' machine is another's)
    for spec in specs:
        conflict = _saved_config_conflict(spec)
        if conflict:
            outcome[spec.name] = {"status": "failed", "error": conflict, "time_s": 0.0}
            log(f"{spec.name}: {conflict}")
    if execute:
        for spec in specs:  # finished, or an ensemble whose members all finished elsewhere, with their predictions
            if spec.name not in outcome and (_run_status(spec) == "done" or _assemble_ensemble(spec, opts.output, log)):
                outcome[spec.name] = {"status": "ok", "error": None, "time_s": 0.0, "skipped": True}
        pending = [s for s in specs if s.name not in outcome]
        resumed = sum(_run_status(s) == "partial" for s in pending)
        ensembles = [s for s in pending if s.config["ensemble"]["members"] > 1]
        reused = sum(_reuse_single_runs_as_members(s, opts.output, log) for s in ensembles)
        # an ensemble with a member that a pending one-model run will train starts after the other runs and
        # looks for finished ones again when it starts (before_job): then it reuses them instead of retraining
        singles = [_member_training(s.config, 0) for s in pending if s.config["ensemble"]["members"] == 1]
        waits = {s.name for s in ensembles
                 if any(_member_training(s.config, m) in singles for m in range(s.config["ensemble"]["members"]))}
        before_job = {s.name: (lambda s=s: _reuse_single_runs_as_members(s, opts.output, log)) for s in ensembles}
        jobs = []
        for spec in sorted(pending, key=lambda s: (s.name in waits, _progress_rank(s), -s.cost)):
            spec.config_path.parent.mkdir(parents=True, exist_ok=True)
            save_config(spec.config, spec.config_path)
            jobs.append((spec.name, partial(_train_in_process, spec), partial(_train_command, spec), spec.log_path))
        need_ood = opts.ood and any(s.task == OOD_TRAIN_TASK and not _ood_done(s.run_dir, opts.ood_sets)
                                    for s in specs)
        if opts.workers > 1 and (jobs or need_ood):
            _prepare_assets(specs, pending, opts.ood_sets if need_ood else [])
        done = len(specs) - len(jobs) - sum(o["status"] != "ok" for o in outcome.values())
        log(f"quality benchmark: {len(specs)} runs ({done} already finished, {len(jobs)} to run of which {resumed} "
            f"resume from a checkpoint; {opts.workers} at a time) -> {opts.output}"
            + (f"; {reused} ensemble member(s) reused from identical one-model runs" if reused else ""))
        ran_here = bool(jobs)
        outcome.update(_execute(jobs, opts, log, before_job=before_job))
        if opts.ood:
            ood_jobs, ood_outcome_failed = [], {}
            for spec in specs:
                if spec.task != OOD_TRAIN_TASK or outcome.get(spec.name, {}).get("status") != "ok":
                    continue
                if (_ood_done(spec.run_dir, opts.ood_sets)
                        or _assemble_ensemble_ood(spec, opts.output, opts.ood_sets, log)):
                    continue
                if assembled_from(spec.run_dir):  # no member weights here: only the members' OOD predictions can do
                    error = ("assembled from its members' predictions, so it needs their OOD predictions: run --ood "
                             "for the member runs (method, task and seeds in its metrics.json's assembled_from) first")
                    ood_outcome_failed[f"ood:{spec.name}"] = {"status": "failed", "time_s": 0.0, "error": error}
                    log(f"ood:{spec.name} failed: {error}")
                    continue
                ood_jobs.append((f"ood:{spec.name}", (lambda s=spec: evaluate_ood(s.run_dir, opts.ood_sets)),
                                 _ood_command(spec.run_dir, opts.ood_sets),
                                 spec.log_path.with_name(spec.log_path.stem + "__ood.log")))
            if ood_jobs:
                log(f"OOD evaluation of {len(ood_jobs)} {OOD_TRAIN_TASK} run(s) on {', '.join(opts.ood_sets)}")
            ran_here = ran_here or bool(ood_jobs)
            ood_outcome = {**ood_outcome_failed, **_execute(ood_jobs, opts, log)}
        else:
            ood_outcome = {}
    else:
        ood_outcome = {}

    records = [_record(s, outcome.get(s.name), opts.output, opts.ood) for s in specs]
    if not execute:  # aggregate-only: whatever finished with this benchmark's config
        for rec in records:
            if rec["status"] != "ok" and rec["error"] == "not run":
                rec["error"] = "not finished"
    for name, res in ood_outcome.items():
        if res["status"] != "ok":
            rec = next(r for r in records if f"ood:{r['method']}/{r['task']}/seed{r['seed']}" == name)
            rec["ood_error"] = res["error"]

    rank_budget = next((s.config["adapter"]["r"] for s in specs if s.method == opts.targets_for), None)
    results = {
        "benchmark": "quality",
        "command": "bara-pyro bench quality " + shlex.join(opts.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(opts.device),
        "code": code_version(),
        "git_commit": git_commit(),
        "protocol": {"model": opts.model, "steps": opts.steps, "seeds": opts.seeds,
                     "overrides": opts.run_overrides()[1:], "model_selection": MODEL_SELECTION,
                     "deviations": opts.deviations(), "docstring": __doc__},
        "methods": opts.methods, "tasks": opts.tasks, "seeds": opts.seeds,
        "variants": opts.variants, "method_overrides": opts.method_overrides,
        "ood_sets": opts.ood_sets if opts.ood else None,
        "runs": records,
        **aggregate(records, opts.methods, opts.tasks, opts.ood_sets if opts.ood else None, rank_budget,
                    opts.targets_for),
        **_bench_times(clock, opts.output, t0),
    }
    previous = opts.output / "results.json"
    run_machines = _run_machines(records)
    trained_on = run_machines[0] if len(run_machines) == 1 else None
    if run_machines:
        results["run_machines"] = run_machines
    elif not ran_here and previous.exists():  # runs that did not record their machine, aggregated without running
        # anything: they trained where the last call that ran something ran
        try:
            trained_on = json.loads(previous.read_text()).get("machine")
        except ValueError:
            trained_on = None
    if trained_on and trained_on != results["machine"]:
        results["aggregated_on"] = results["machine"]
        results["machine"] = trained_on
    _write_json(opts.output / "results.json", results)
    (opts.output / "results.md").write_text(format_markdown(results))
    failed = [r for r in records if r["status"] != "ok"] + [r for r in records if r.get("ood_error")]
    log(f"results: {opts.output / 'results.json'}\n         {opts.output / 'results.md'}"
        + (f"\n{len(failed)} run(s) failed: see results.md and {opts.output / 'logs'}" if failed else ""))
    for t in results["targets"]:
        log(f"target {t['target']}: {t['status']} ({t['detail']})")
    return results


def best_variant(results: dict, split: str = "validation", metric: str = "nll") -> tuple[str, list[str], dict]:
    """The method of a sweep's ``results.json`` with the lowest across-task mean ``metric`` on ``split``.

    Returns ``(name, its --method-set values, {method: mean})``; methods without a value on every task
    are left out.  Selection uses the validation split only (the protocol: the test split chooses nothing).
    """
    table = results["aggregates"][split][metric]
    means = {m: cell["mean"]["mean"] for m, cell in table.items() if cell.get("mean") is not None}
    if not means:
        raise ValueError(f"no method has a {split} {metric} on every task")
    name = min(means, key=means.get)
    return name, list((results.get("method_overrides") or {}).get(name, [])), means


def print_plan(opts: Options) -> None:
    """Print the runs `opts` plans, each with its status, and what is left to train (``--dry-run``)."""
    from ..experiment import PREDICTIONS_NAME

    specs = plan_runs(opts)
    run_status = {spec.name: _run_status(spec) for spec in specs}
    assemblable = {spec.name for spec in specs if run_status[spec.name] != "done"
                   and _member_prediction_sources(spec, opts.output, PREDICTIONS_NAME) is not None}
    for spec in specs:
        status = ("conflict: other config" if _saved_config_conflict(spec)
                  else "assembled from its members' predictions" if spec.name in assemblable
                  else run_status[spec.name])
        print(f"{spec.name:<40} members {spec.config['ensemble']['members']}  "
              f"steps {spec.config['train']['steps']}  S {spec.config['eval']['num_samples']}  [{status}]")
    trainings = sum(s.config["ensemble"]["members"] for s in specs if s.name not in assemblable)
    ood_runs = [s for s in specs if s.task == OOD_TRAIN_TASK] if opts.ood else []
    runs_done = sum(status == "done" for status in run_status.values())
    ood_done = sum(_ood_done(s.run_dir, opts.ood_sets) for s in ood_runs)
    print(f"{len(specs)} runs ({trainings} trainings of {opts.steps} steps), {len(ood_runs)} OOD evaluations; "
          f"finished: {runs_done} runs, {ood_done} OOD evaluations")
    specs = [s for s in specs if s.name not in assemblable]
    reusable = _count_reusable_members(specs, opts.output)
    if reusable:
        print(f"{reusable} ensemble member(s) can reuse an identical one-model run of this benchmark "
              f"({trainings - reusable} trainings)")


def main(argv: list[str] | None = None) -> int:
    """``bara-pyro bench quality [options]``: 0 if every run finished, 1 if some failed (reported), 2 on bad input."""
    from ..models.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.ood_run:
            evaluate_ood(args.ood_run, args.ood_sets or list(OOD_SETS))
            return 0
        if args.best_variant:
            path = Path(args.best_variant)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            name, values, means = best_variant(json.loads(path.read_text()))
            for method, mean in sorted(means.items(), key=lambda kv: kv[1]):
                print(f"{method:<24} validation NLL {mean:.4f}", file=sys.stderr)
            target = args.best_variant_for
            print(" ".join(shlex.quote(f"--method-set={target}:{v}") for v in values))
            print(f"chosen: {name}", file=sys.stderr)
            return 0
        opts = _options(args, argv)
        _check_options(opts)
        if args.dry_run:
            print_plan(opts)
            return 0
        with _terminate_as_interrupt():
            results = run_benchmark(opts, execute=not args.aggregate_only)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume (finished runs are kept)", file=sys.stderr)
        return 130
    failed = any(r["status"] != "ok" or r.get("ood_error") for r in results["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
