"""Fit a finished Laplace run's posterior again with other Laplace options, on a copy of the run, and evaluate it.

The trained adapters are kept (so runs compare posteriors of the same weights); the copy's ``config.yaml`` and
saved adapter say which options its posterior was fitted with.  Options are the ``adapter.weights`` fields of
the ``laplace`` family (docs/methods.md), e.g. ``kfac_approx=reduce``, ``hessian_structure=diag`` or
``prior_precision_method=validation`` (on the run's validation split, ``eval.max_examples`` of it).

    python benchmarks/laplace_refit.py RUN_DIR OUT_DIR kfac_approx=reduce [--num-samples S] [--device cpu]
"""

import argparse
import json
import shutil
from pathlib import Path

import yaml

from bara_pyro.experiment import (
    _subset,
    _write_json,
    build_backbone_and_task,
    evaluate_run,
    load_members,
    load_run_config,
    member_dir,
)
from bara_pyro.inference.trainer import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("options", nargs="+", help="FIELD=VALUE of adapter.weights (YAML values)")
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    options = dict(item.split("=", 1) for item in args.options)
    options = {key: yaml.safe_load(value) for key, value in options.items()}
    out = Path(args.out_dir)
    if out.exists():
        raise SystemExit(f"error: {out} exists")
    shutil.copytree(args.run_dir, out)
    raw = yaml.safe_load((out / "config.yaml").read_text())
    raw["adapter"]["weights"].update(options)
    if args.device:
        raw["train"]["device"] = args.device
    (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_run_config(out)
    backbone, _, task, data = build_backbone_and_task(config)
    backbone.to(resolve_device(config["train"]["device"]))
    train_rows = _subset(data["train"], config["data"]["max_train_examples"])
    summaries = []
    for m, model in enumerate(load_members(out, config, backbone, task)):
        family = model.config.components.weights
        for key, value in options.items():
            setattr(family, key, value)
        family.resolve(model.config)
        model.dataset_size = len(train_rows)
        model.fit_posterior(task, train_rows, batch_size=config["train"]["batch_size"],
                            validation_rows=_subset(data["validation"], config["eval"]["max_examples"]))
        model.save_pretrained(member_dir(out, config, m))
        summaries.append(model.posterior_summary())
        print(json.dumps(summaries[-1]))
    metrics = evaluate_run(out, num_samples=args.num_samples, progress=False)
    metrics["posterior"] = summaries  # the refitted posteriors', not the copied run's
    _write_json(out / "metrics.json", metrics)
    for split in config["eval"]["splits"]:
        print(split, json.dumps({k: metrics[split][k] for k in ("accuracy", "nll", "ece", "brier", "mean_entropy")
                                 if k in metrics.get(split, {})}))


if __name__ == "__main__":
    main()
