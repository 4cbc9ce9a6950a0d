"""Out-of-distribution evaluation of a finished quality-benchmark run: its test split against other tasks' test
splits, with the predictions kept (``ood_predictions.npz``) and the metrics written (``ood_metrics.json``)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from .atomic_files import write_json
from .quality_protocol import OOD_SETS

__all__ = ["OOD_PREDICTIONS_NAME", "evaluate_ood", "ood_done", "release_memory", "write_ood"]

OOD_PREDICTIONS_NAME = "ood_predictions.npz"


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    from ..inference.determinism import tf32_matmul
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
    preds = {}
    with tf32_matmul(ev["tf32"]):  # as the run's own evaluation
        id_pred = _ensemble_predict(models, task, _subset(data["test"], ev["max_examples"]), config, progress,
                                    checkpoint=Path(f"{partial}in_distribution"))
        for name in ood_sets:
            ood_task = get_task(name, tokenizer, scoring=config["task"]["scoring"],
                                max_length=config["task"]["max_length"])
            for model in models:
                model.forward_fn = ood_task.scores
            rows = _subset(load_task_dataset(name, seed=config["data"]["seed"])["test"], ev["max_examples"])
            preds[name] = _ensemble_predict(models, ood_task, rows, config, progress,
                                            checkpoint=Path(f"{partial}{name}"))
    out = write_ood(run_dir, config, len(models), id_pred, preds)
    remove_partial_predictions(run_dir)
    del models, backbone
    release_memory()
    return out


def write_ood(run_dir: Path, config: dict, members: int, id_pred, preds: dict) -> dict:
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
    write_json(run_dir / "ood_metrics.json", out)
    return out


def ood_done(run_dir: Path, ood_sets: list[str]) -> bool:
    path = run_dir / "ood_metrics.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("ood_sets") == list(ood_sets)
    except ValueError:
        return False
