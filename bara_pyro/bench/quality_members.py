"""Ensemble members that need no training of their own: a deep ensemble's member ``m`` trains exactly as a one-model
run with the member's seed, so a finished run of the benchmark is copied into the member it equals, and when
every member's test predictions were saved the ensemble is assembled from them without loading a model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic_files import copy_file, write_json
from .quality_ood import OOD_PREDICTIONS_NAME, ood_done, write_ood

if TYPE_CHECKING:
    from .quality import RunSpec

__all__ = ["MEMBER_EVAL_KEYS", "assemble_ensemble", "assemble_ensemble_ood", "holds_weights", "member_done",
           "member_prediction_sources", "member_training", "reusable_members", "reuse_single_runs_as_members"]


def _log(msg: str) -> None:
    print(msg, flush=True)


def member_training(config: dict, member: int) -> dict:
    """What determines ensemble member ``m``'s training (a single model: ``m = 0``), as a single-model run has it.

    Backbone, tokenizer, data, task, the adapter without its name (a Pyro param-store prefix, not part of the
    weights) and the train section with the member's seed and without the device.
    """
    from ..experiment import member_seed

    return {**{key: config[key] for key in ("model", "tokenizer", "dataset", "task", "data")},
            "adapter": {k: v for k, v in config["adapter"].items() if k != "name"},
            "train": {**{k: v for k, v in config["train"].items() if k != "device"},
                      "seed": member_seed(config, member)}}


def member_done(member_dir: Path) -> bool:
    from ..experiment import DONE_MARKER
    from ..models.bara_model import ADAPTER_WEIGHTS_NAME

    return (member_dir / DONE_MARKER).exists() and (member_dir / ADAPTER_WEIGHTS_NAME).exists()


def holds_weights(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an adapter (its config and weights) that an ensemble member can be copied from."""
    from ..models.bara_model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

    return all((run_dir / name).is_file() for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME))


def _finished_single_runs(output: Path, task: str, seed: int, needed: tuple[str, ...] | None = None
                          ) -> list[tuple[Path, dict]]:
    """``(run_dir, config)`` of this benchmark's finished one-model runs of ``task`` with ``seed`` (any method)
    that hold the files ``needed`` (default: the adapter's config and weights) besides metrics and config."""
    from ..experiment import load_run_config

    files = ("metrics.json", "config.yaml", *(needed or ()))
    out = []
    for run_dir in sorted((output / "runs").glob(f"*/{task}/seed{seed}")):
        if not all((run_dir / name).is_file() for name in files) or (needed is None and not holds_weights(run_dir)):
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

    wanted, ev = member_training(spec.config, member), spec.config["eval"]
    runs = _finished_single_runs(output, spec.task, member_seed(spec.config, member), needed)
    return next((run_dir for run_dir, config in runs if member_training(config, 0) == wanted
                 and all(config["eval"][k] == ev[k] for k in eval_keys)), None)


def reusable_members(spec: RunSpec, output: Path) -> dict[int, Path]:
    """``{m: run_dir}``: the unfinished members of an ensemble whose training a finished one-model run did."""
    from ..experiment import member_dir

    members = spec.config["ensemble"]["members"]
    if members == 1:
        return {}
    found = {m: _identical_single_run(spec, output, m) for m in range(members)
             if not member_done(member_dir(spec.run_dir, spec.config, m))}
    return {m: source for m, source in found.items() if source is not None}


def reuse_single_runs_as_members(spec: RunSpec, output: Path, log=_log) -> int:
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

    sources = reusable_members(spec, output)
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
        copy_file(source / ADAPTER_WEIGHTS_NAME, target / ADAPTER_WEIGHTS_NAME)
        if (source / TRAIN_LOG_NAME).exists():
            copy_file(source / TRAIN_LOG_NAME, target / TRAIN_LOG_NAME)
        else:
            (target / TRAIN_LOG_NAME).unlink(missing_ok=True)  # a partial member's log is not this training's
        name = _relative(source, output)
        (target / "reused_from").write_text(name + "\n")
        (target / DONE_MARKER).write_text(f"reused from {name}\n")
        log(f"{spec.name}: member {m} is {name} (identical training), reused")
    return len(sources)


# An ensemble's predictive is the mixture of its members' (experiment.mixture_of_members). When every member
# equals a finished one-model run (member_training) that saved its deterministic predictions on the same
# rows, the ensemble's predictions and metrics follow from those files: exactly what evaluating the members
# again would give, bitwise (same code, same batches), with no model loaded. So members can train anywhere
# (other calls, other machines) as long as their predictions come back.

# what a member's probabilities depend on
MEMBER_EVAL_KEYS = ("splits", "max_examples", "batch_size", "num_samples", "max_rows_per_pass")


def member_prediction_sources(spec: RunSpec, output: Path, filename: str) -> dict[int, Path] | None:
    """``{m: run_dir}`` for every member of the ensemble ``spec``, each a finished identical one-model run with
    ``filename`` and the ensemble's eval settings (deterministic: ``eval.num_samples = 0``); else None."""
    members, ev = spec.config["ensemble"]["members"], spec.config["eval"]
    if members == 1 or ev["num_samples"] != 0 or len(ev["splits"]) != 1:
        return None
    found = {m: _identical_single_run(spec, output, m, (filename,), MEMBER_EVAL_KEYS) for m in range(members)}
    return None if None in found.values() else found


def _relative(path: Path, output: Path) -> str:
    return str(path.relative_to(output)) if path.is_relative_to(output) else str(path)


def assemble_ensemble(spec: RunSpec, output: Path, log=_log) -> bool:
    """Write the ensemble run ``spec`` (config, ``predictions.npz``, ``metrics.json``) from its members'
    saved test predictions, if every member has a source (:func:`member_prediction_sources`); return whether
    it did.  ``metrics.json`` names the sources (``assembled_from``); no training time is counted."""
    import numpy as np

    from ..experiment import PREDICTIONS_NAME, _write_predictions, mixture_of_members, read_prediction
    from ..experiment_config import save_config
    from ..metrics import classification_metrics

    sources = member_prediction_sources(spec, output, PREDICTIONS_NAME)
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
    write_json(spec.run_dir / "metrics.json", metrics)
    log(f"{spec.name}: assembled from its members' predictions ({', '.join(metrics['assembled_from'])})")
    return True


def assemble_ensemble_ood(spec: RunSpec, output: Path, ood_sets: list[str], log=_log) -> bool:
    """The OOD evaluation of the ensemble run ``spec`` from its members' ``ood_predictions.npz`` (each with
    ``ood_sets``), as :func:`evaluate_ood` would compute it; return whether it did."""
    import numpy as np

    from ..experiment import mixture_of_members, read_prediction

    sources = member_prediction_sources(spec, output, OOD_PREDICTIONS_NAME)
    if sources is None or not all(ood_done(source, ood_sets) for source in sources.values()):
        return False
    names = ["in_distribution", *ood_sets]
    member_preds = []
    for source in sources.values():
        with np.load(source / OOD_PREDICTIONS_NAME) as arrays:
            member_preds.append({name: read_prediction(arrays, prefix=f"{name}/") for name in names})
    mixed = {name: mixture_of_members([p[name] for p in member_preds]) for name in names}
    id_pred = mixed.pop("in_distribution")
    write_ood(spec.run_dir, spec.config, len(member_preds), id_pred, mixed)
    log(f"ood:{spec.name}: assembled from its members' OOD predictions")
    return True
