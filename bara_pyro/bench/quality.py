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
(:mod:`~bara_pyro.bench.scheduler`: a local Ray instance, or the cluster at ``--address``; local subprocesses
where Ray is not installed), each running
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
ensembles start after those runs have ended.  With several workers, the other members also train as one-model
runs of their own (``runs/<method>_members/<task>/seed<member seed>``, validation split only), so that the
workers share an ensemble's trainings, and the ensemble copies them.  When every member of an
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
below LoRA's; joint effective rank <= r / 2, with per-layer ranks more than 0.5 apart and the per-token rank
varying within a sequence on every task; NLL and ECE each below every baseline's (LoRA, MAP, MC-dropout,
ensemble, BLoB), each on the seeds the two ran.

The parts: the protocol's constants (:mod:`~bara_pyro.bench.quality_protocol`), the options and their checks
(:mod:`~bara_pyro.bench.quality_options`), ensemble members taken from finished runs
(:mod:`~bara_pyro.bench.quality_members`), the OOD evaluation (:mod:`~bara_pyro.bench.quality_ood`), the aggregates
and targets (:mod:`~bara_pyro.bench.quality_aggregate`) and ``results.md`` (:mod:`~bara_pyro.bench.quality_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..experiment_config import model_folders_unchecked
from ..machine import machine_info
from ..timing import TIMING_NAME, SegmentClock, read_totals
from .atomic_files import write_json
from .quality_aggregate import aggregate
from .quality_members import (
    assemble_ensemble,
    assemble_ensemble_ood,
    holds_weights,
    member_done,
    member_prediction_sources,
    member_training,
    reusable_members,
    reuse_single_runs_as_members,
)
from .quality_ood import evaluate_ood, ood_done, release_memory
from .quality_options import Options, check_options, csv_list, options_from_args
from .quality_protocol import (  # the protocol's names are re-exported for callers of this module
    METHODS,
    METRICS,
    MMLU_OOD_SETS,
    MODEL,
    MODEL_SELECTION,
    OOD_SETS,
    OOD_TRAIN_TASK,
    PEFT_LORA_ANCHOR,
    PROTOCOL_NAME,
    PROTOCOL_OVERRIDES,
    QUICK_CAPS,
    QUICK_OVERRIDES,
    SEEDS,
    STEPS,
    TARGETS,
    TASKS,
)
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


MEMBER_RUNS_SUFFIX = "_members"


def member_runs(ensembles: list[RunSpec], pending: list[RunSpec], output: Path) -> list[RunSpec]:
    """One-model runs that train the ``ensembles``' members apart, so that parallel workers share an ensemble's
    trainings instead of one worker training them in turn.

    Member ``m`` of an ensemble becomes a run with the member's seed in ``runs/<method>_members/<task>/``, its
    config the ensemble's with one member (evaluated on the validation split only); the ensemble, which starts
    after it, copies its weights (:func:`~bara_pyro.bench.quality_members.reuse_single_runs_as_members`) and
    evaluates.  Members already trained (call it after the finished runs were copied into the members), or that
    a pending one-model run trains (member 0 and the LoRA run of the seed), get none; nor does one whose folder
    holds a run with another config.
    """
    import copy

    from ..experiment import member_dir, member_seed

    singles = [member_training(s.config, 0) for s in pending if s.config["ensemble"]["members"] == 1]
    out = []
    for spec in ensembles:
        for m in range(spec.config["ensemble"]["members"]):
            if member_done(member_dir(spec.run_dir, spec.config, m)) or member_training(spec.config, m) in singles:
                continue
            config, seed = copy.deepcopy(spec.config), member_seed(spec.config, m)
            config["ensemble"]["members"], config["train"]["seed"] = 1, seed
            config["eval"]["splits"] = ["validation"]
            method = spec.method + MEMBER_RUNS_SUFFIX
            stem = f"{method}__{spec.task}__seed{seed}"
            run = RunSpec(method, spec.task, seed, config, output / "runs" / method / spec.task / f"seed{seed}",
                          output / "configs" / f"{stem}.yaml", output / "logs" / f"{stem}.log")
            if _saved_config_conflict(run) is None and _run_status(run) != "done":
                out.append(run)
    return out


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


def _progress_rank(spec: RunSpec) -> int:
    """0: every member trained (only the evaluation is left), 1: training resumes from a checkpoint, 2: new.

    Runs start in this order (then the longest first): when a call is stopped, what it did is most likely
    finished rather than left half done on a machine that may not come back."""
    from ..experiment import member_dir
    from ..inference.trainer import CHECKPOINT_DIR

    dirs = [member_dir(spec.run_dir, spec.config, m) for m in range(spec.config["ensemble"]["members"])]
    if all(member_done(d) for d in dirs):
        return 0
    return 1 if any(member_done(d) or (d / CHECKPOINT_DIR).exists() for d in dirs) else 2


def _count_reusable_members(specs: list[RunSpec], output: Path) -> int:
    """How many ensemble members equal a one-model run of the plan or one finished in ``output`` (for --dry-run).

    A finished one-model run counts only with its adapter's weights: one copied without them (e.g. a grid run
    whose weights were not kept) cannot stand in for a member, which then trains.
    """
    from ..experiment import member_dir

    singles = [member_training(s.config, 0) for s in specs if s.config["ensemble"]["members"] == 1
               and (_run_status(s) != "done" or holds_weights(s.run_dir))]
    count = 0
    for spec in specs:
        members = spec.config["ensemble"]["members"]
        if members == 1 or _run_status(spec) == "done":
            continue
        finished = reusable_members(spec, output)  # members already trained are not in it
        count += sum(m in finished or (not member_done(member_dir(spec.run_dir, spec.config, m))
                                       and member_training(spec.config, m) in singles) for m in range(members))
    return count


def _train_in_process(spec: RunSpec) -> None:
    import pyro

    from ..experiment import run_experiment

    pyro.clear_param_store()
    try:
        run_experiment(spec.config, spec.run_dir, resume=True, progress=False)
    finally:
        pyro.clear_param_store()
        release_memory()


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


def _execute(jobs: list, opts: Options, log, before_job: dict | None = None,
             after: dict | None = None) -> dict[str, dict]:
    """Run the jobs (:func:`~bara_pyro.bench.scheduler.execute`): in this process, or as Ray tasks that each ask
    for ``--gpu-share`` of a GPU (none with ``--device cpu`` or ``cuda:N``)."""
    share = opts.gpu_share if opts.device == "auto" or opts.device == "cuda" else 0.0
    return execute(jobs, opts.workers, log, gpus=opts.gpus, before_job=before_job, address=opts.address,
                   gpu_share=share, after=after)


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bara-pyro bench quality", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Defaults: {PROTOCOL_NAME} (python -m pydoc bara_pyro.bench.quality).")
    p.add_argument("--methods", type=csv_list(str), help=f"method presets (default {','.join(METHODS)})")
    p.add_argument("--tasks", type=csv_list(str), help=f"datasets (default {','.join(TASKS)})")
    p.add_argument("--seeds", type=csv_list(int), help=f"training seeds (default {','.join(map(str, SEEDS))})")
    p.add_argument("--steps", type=int, help=f"optimizer steps per run (default {STEPS})")
    p.add_argument("--model", help=f"backbone (default {MODEL})")
    p.add_argument("--device", help="'auto' (default; cuda when available), 'cuda', 'cpu', ...")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once: 1 runs them in this process in turn; K > 1 (or --address) runs them as Ray "
                        "tasks, at most K at once (without Ray installed: K local subprocesses, each on the visible "
                        "GPU fewest of them share)")
    p.add_argument("--gpus", type=csv_list(int),
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
    p.add_argument("--ood-sets", type=csv_list(str), help=f"OOD test sets (default {','.join(OOD_SETS)})")
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


def _bench_times(clock: SegmentClock | None, output: Path) -> dict:
    if clock is not None:
        return {"wall_time_s": clock.total("wall_time_s"), "segments": clock.segments}
    prior = read_totals(output / TIMING_NAME)  # aggregate-only: the calls that ran the runs
    if "wall_time_s" in prior:
        return {"wall_time_s": prior["wall_time_s"], "segments": prior.get("segments", 1)}
    return {"wall_time_s": None, "segments": 0}  # the runs were made elsewhere: no time to report


def _run_benchmark(opts: Options, log, execute: bool, clock: SegmentClock | None) -> dict:
    from ..experiment import assembled_from
    from ..experiment_config import save_config

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
            if spec.name not in outcome and (_run_status(spec) == "done" or assemble_ensemble(spec, opts.output, log)):
                outcome[spec.name] = {"status": "ok", "error": None, "time_s": 0.0, "skipped": True}
        pending = [s for s in specs if s.name not in outcome]
        resumed = sum(_run_status(s) == "partial" for s in pending)
        ensembles = [s for s in pending if s.config["ensemble"]["members"] > 1]
        reused = sum(reuse_single_runs_as_members(s, opts.output, log) for s in ensembles)
        members = member_runs(ensembles, pending, opts.output) if opts.workers > 1 or opts.address else []
        pending += members
        # an ensemble with a member that a pending one-model run will train starts after that run has ended and
        # looks for finished ones again when it starts (before_job): then it reuses them instead of retraining
        singles = {s.name: member_training(s.config, 0) for s in pending if s.config["ensemble"]["members"] == 1}
        after = {s.name: {name for name, training in singles.items()
                          if any(member_training(s.config, m) == training
                                 for m in range(s.config["ensemble"]["members"]))} for s in ensembles}
        waits = {name for name, names in after.items() if names}
        before_job = {s.name: (lambda s=s: reuse_single_runs_as_members(s, opts.output, log)) for s in ensembles}
        jobs = []
        for spec in sorted(pending, key=lambda s: (s.name in waits, _progress_rank(s), -s.cost)):
            spec.config_path.parent.mkdir(parents=True, exist_ok=True)
            save_config(spec.config, spec.config_path)
            jobs.append((spec.name, partial(_train_in_process, spec), partial(_train_command, spec), spec.log_path))
        need_ood = opts.ood and any(s.task == OOD_TRAIN_TASK and not ood_done(s.run_dir, opts.ood_sets)
                                    for s in specs)
        if opts.workers > 1 and (jobs or need_ood):
            _prepare_assets(specs, pending, opts.ood_sets if need_ood else [])
        done = len(specs) - (len(jobs) - len(members)) - sum(o["status"] != "ok" for o in outcome.values())
        log(f"quality benchmark: {len(specs)} runs ({done} already finished, {len(jobs)} to run of which {resumed} "
            f"resume from a checkpoint; {opts.workers} at a time) -> {opts.output}"
            + (f"; {reused} ensemble member(s) reused from identical one-model runs" if reused else "")
            + (f"; {len(members)} ensemble member(s) train as runs of their own (runs/*{MEMBER_RUNS_SUFFIX}/), "
               f"each ensemble after its members" if members else ""))
        ran_here = bool(jobs)
        outcome.update(_execute(jobs, opts, log, before_job=before_job, after=after))
        for spec in members:  # not the benchmark's runs: their outcome is their ensemble's
            outcome.pop(spec.name, None)
        if opts.ood:
            ood_jobs, ood_outcome_failed = [], {}
            for spec in specs:
                if spec.task != OOD_TRAIN_TASK or outcome.get(spec.name, {}).get("status") != "ok":
                    continue
                if (ood_done(spec.run_dir, opts.ood_sets)
                        or assemble_ensemble_ood(spec, opts.output, opts.ood_sets, log)):
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
        "command": f"{opts.program} " + shlex.join(opts.argv),
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
        **_bench_times(clock, opts.output),
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
    write_json(opts.output / "results.json", results)
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
                   and member_prediction_sources(spec, opts.output, PREDICTIONS_NAME) is not None}
    for spec in specs:
        status = ("conflict: other config" if _saved_config_conflict(spec)
                  else "assembled from its members' predictions" if spec.name in assemblable
                  else run_status[spec.name])
        print(f"{spec.name:<40} members {spec.config['ensemble']['members']}  "
              f"steps {spec.config['train']['steps']}  S {spec.config['eval']['num_samples']}  [{status}]")
    trainings = sum(s.config["ensemble"]["members"] for s in specs if s.name not in assemblable)
    ood_runs = [s for s in specs if s.task == OOD_TRAIN_TASK] if opts.ood else []
    runs_done = sum(status == "done" for status in run_status.values())
    ood_finished = sum(ood_done(s.run_dir, opts.ood_sets) for s in ood_runs)
    print(f"{len(specs)} runs ({trainings} trainings of {opts.steps} steps), {len(ood_runs)} OOD evaluations; "
          f"finished: {runs_done} runs, {ood_finished} OOD evaluations")
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
        # aggregating saved runs loads no model: their configs may name a model folder of the machine they ran on
        with model_folders_unchecked() if args.aggregate_only else contextlib.nullcontext():
            opts = options_from_args(args, argv)
            check_options(opts)
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
