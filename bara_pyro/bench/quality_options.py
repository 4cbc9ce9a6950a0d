"""What a quality benchmark is asked to do: its methods, tasks, seeds, budget, overrides and machines
(:class:`Options`), read from the command line and checked before any run starts."""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass, field
from pathlib import Path

from .quality_protocol import (
    METHODS,
    MODEL,
    OOD_SETS,
    OOD_TRAIN_TASK,
    PROTOCOL_OVERRIDES,
    QUICK,
    QUICK_OVERRIDES,
    SEEDS,
    STEPS,
    TASKS,
)

__all__ = ["Options", "check_options", "csv_list", "options_from_args"]


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
    program: str = "bara-pyro bench quality"  # the command that ran, as results.md names it
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


def csv_list(kind, choices=None):
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


def options_from_args(args, argv: list[str]) -> Options:
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


def check_options(opts: Options) -> None:
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
