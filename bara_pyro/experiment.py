"""One experiment = config -> data, backbone, task, adapters -> fit -> predict -> metrics and run-dir files.

Run directory (what ``bara-pyro train`` writes and ``bara-pyro report`` reads)::

    config.yaml                  resolved config
    adapter_config.json          adapter (safetensors, no pickle); ensembles: member_<i>/...
    adapter_model.safetensors
    train_log.jsonl              one row per logged step (loss = -ELBO / N, KL terms, beta, lr, ...)
    checkpoint/                  latest checkpoint (resume with --resume)
    metrics.json                 per split: accuracy, nll, ece, brier; effective rank; parameters; times
                                 (train_time_s, eval_time_s, wall_time_s: totals over the run's segments, i.e.
                                 its first start and every resume; segments: how many)
    timing.json                  those totals, updated whenever a segment ends (also when it is stopped)
    predictions.npz              probs (N, C), labels (N,), sample_probs (S, N, C), sample_loglik (S, N)
    gates.npz                    gate posterior (Bayesian gated methods only; see :func:`export_gates`)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyro
import torch

from .experiment_config import DEFAULTS, TINY_MODELS, save_config
from .inference.determinism import deterministic_algorithms, tf32_matmul
from .inference.predictive import Prediction, predict
from .inference.train_config import TrainConfig
from .inference.trainer import CHECKPOINT_DIR, fit, resolve_device
from .machine import machine_info
from .metrics import classification_metrics
from .models.bara_model import ADAPTER_WEIGHTS_NAME
from .models.config import BaRAConfig
from .models.errors import ConfigError
from .timing import TIMING_NAME, SegmentClock

__all__ = ["run_experiment", "evaluate_run", "build_backbone_and_task", "load_run_config", "member_seed",
           "member_dir"]

DONE_MARKER = "DONE"
LEGACY_SEED_STRIDE = 1  # run configs saved before ensemble.seed_stride existed: member m trained with seed + m


def member_seed(config: dict, member: int) -> int:
    """Seed of ensemble member ``m``: ``train.seed + m * ensemble.seed_stride`` (member 0: ``train.seed``).

    It seeds the adapter initialisation and :class:`TrainConfig` (data order, noise).  With stride 1000,
    ensembles of different seeds below 1000 share no member, and member 0 is the single-model run of the seed.
    """
    return config["train"]["seed"] + member * config["ensemble"]["seed_stride"]


def member_dir(run_dir: str | os.PathLike, config: dict, member: int) -> Path:
    """Where member ``m`` lives: the run directory itself for one model, else ``run_dir/member_<m>``."""
    return Path(run_dir) if config["ensemble"]["members"] == 1 else Path(run_dir) / f"member_{member}"


def load_members(run_dir: str | os.PathLike, config: dict, backbone, task) -> list:
    """The trained model of a run, one per ensemble member (each member on its own copy of ``backbone``)."""
    from .models.bara_model import BaRAModel

    members = config["ensemble"]["members"]
    models = []
    for m in range(members):
        out_dir = member_dir(run_dir, config, m)
        if not (out_dir / ADAPTER_WEIGHTS_NAME).exists():
            sources = assembled_from(run_dir)
            if sources:
                raise FileNotFoundError(f"{run_dir} was assembled from its members' predictions and holds no "
                                        f"adapters; its members are the runs {', '.join(sources)} (under the "
                                        f"benchmark's output directory)")
            raise FileNotFoundError(f"no trained adapter in {out_dir}; finish training first "
                                    f"(bara-pyro train --resume {run_dir})")
        models.append(BaRAModel.from_pretrained(copy.deepcopy(backbone) if members > 1 else backbone, out_dir,
                                                forward_fn=task.scores))
    return models


def assembled_from(run_dir: str | os.PathLike) -> list[str] | None:
    """The member runs an ensemble run was assembled from (``metrics.json``'s ``assembled_from``; the quality
    benchmark writes it), or None: a run that trained its own members, or one not finished."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text()).get("assembled_from")
    except (OSError, ValueError):
        return None


def build_backbone_and_task(config: dict, report_data: bool = False):
    """``(backbone, tokenizer, task, dataset_dict)`` for a resolved config (``report_data``: print the summary of a
    user's dataset: source, class order, carved validation split, skipped rows)."""
    from .backbones import load_backbone, tiny_backbone
    from .data import resolve_dataset
    from .tasks import get_task

    info, data, summary = resolve_dataset(config["dataset"], config["data"], seed=config["data"]["seed"])
    if summary and report_data:
        print(summary)
    kind = "sequence_classification" if info.kind == "classification" else "causal_lm"
    num_labels = info.num_classes if kind == "sequence_classification" else None
    name = config["model"]
    if name in TINY_MODELS:
        from transformers import AutoTokenizer

        from .assets import resolve_model

        tok_source = config.get("tokenizer") or ("minilm-l6" if TINY_MODELS[name] == "bert" else "smollm2-135m")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(tok_source))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        backbone = tiny_backbone(kind, TINY_MODELS[name], tokenizer=tokenizer, num_labels=num_labels or 2)
    else:
        backbone, tokenizer = load_backbone(name, kind, num_labels=num_labels)
    task = get_task(info, tokenizer, scoring=config["task"]["scoring"], max_length=config["task"]["max_length"])
    return backbone, tokenizer, task, data


def _adapter_config(config: dict, member: int) -> BaRAConfig:
    adapter = dict(config["adapter"])
    adapter["name"] = f"{adapter.get('name', 'bara')}_m{member}" if config["ensemble"]["members"] > 1 else \
        adapter.get("name", "bara")
    return BaRAConfig.from_dict(adapter)


def _is_stochastic(model) -> bool:
    """Whether predictions vary between draws (gates, dropout or a weight posterior)."""
    flag = getattr(model, "is_stochastic", None)
    if flag is not None:
        return bool(flag)
    return any(a.gate is not None or not isinstance(a.lora_dropout, torch.nn.Identity) for _, a in model.adapter_items)


def _subset(rows, limit):
    return rows if limit is None or limit >= len(rows) else rows.select(range(limit))


def comparable_config(config: dict) -> dict:
    """What makes two runs the same run: the config less where and how its ELBO was computed (the device, the
    number of processes, the estimator: ``svi`` and ``fused`` optimise the same objective, and ``jit``, which
    compiles ``svi``) and, for one model, the ensemble's member seed stride, which plays no part."""
    out = copy.deepcopy(config)
    for key in ("device", "world_size", "estimator", "jit"):
        out.get("train", {}).pop(key, None)
    if out.get("ensemble", {}).get("members") == 1:
        out["ensemble"].pop("seed_stride", None)
    return out


def holds_other_run(run_dir: str | os.PathLike, config: dict) -> bool:
    """Whether ``run_dir`` holds a run (its ``config.yaml``) whose config is not ``config``'s run."""
    if not (Path(run_dir) / "config.yaml").exists():
        return False
    try:
        saved = load_run_config(run_dir)
    except Exception:  # noqa: BLE001 - a config this version cannot read is another run's
        return True
    return comparable_config(saved) != comparable_config(config)


def forget_trained_state(run_dir: str | os.PathLike) -> None:
    """Make ``run_dir`` train from scratch: remove its DONE markers, checkpoints, resumable prediction passes
    and member ``reused_from`` files (its own and its ensemble members'); the next run overwrites the rest."""
    run_dir = Path(run_dir)
    for d in [run_dir, *sorted(run_dir.glob("member_*"))]:
        for name in (DONE_MARKER, "reused_from", TIMING_NAME):
            (d / name).unlink(missing_ok=True)
        shutil.rmtree(d / CHECKPOINT_DIR, ignore_errors=True)
    remove_partial_predictions(run_dir)


def run_experiment(config: dict, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
                   replace: bool = False) -> dict:
    """Train (all ensemble members), evaluate on ``eval.splits``, write the run directory; return metrics.

    A member trained before in ``run_dir`` with the same config is reused (an interrupted ensemble, or a
    member copied by the quality benchmark).  A run of another config there is an error, or with
    ``replace`` is trained again from scratch over it (never reused).

    Launched on several processes (``torchrun`` / ``accelerate launch``), they train every member together
    (:mod:`~bara_pyro.inference.distributed`); rank 0 alone writes the run directory and evaluates, and
    ``train.world_size`` records the number of processes.  The other ranks return ``{"world_size", "rank"}``.
    """
    from .inference.distributed import data_parallel

    run_dir = Path(run_dir)
    dp = data_parallel()
    main = dp is None or dp.is_main
    config = copy.deepcopy(config)
    config["train"]["world_size"] = 1 if dp is None else dp.world_size
    if holds_other_run(run_dir, config):
        if not replace:
            raise ConfigError(f"{run_dir} holds a run with another config; choose another directory or delete it")
        if dp is not None:
            dp.barrier()  # every process has read the old config before rank 0 forgets it
        if main:
            forget_trained_state(run_dir)
        if progress and main:
            print(f"{run_dir} held a run with another config: training again from scratch")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    clock = SegmentClock(run_dir / TIMING_NAME, resume=resume)
    try:
        with deterministic_algorithms(config["train"]["deterministic"]):  # before anything starts CUDA
            metrics = _train_and_evaluate(config, run_dir, resume, progress, clock, dp)
    finally:
        totals = clock.close() if main else None  # rank 0 alone writes the run directory
    if not main:
        return metrics
    metrics.update(train_time_s=totals.get("train_time_s", 0.0), eval_time_s=totals.get("eval_time_s", 0.0),
                   wall_time_s=totals["wall_time_s"], segments=totals["segments"])
    _write_json(run_dir / "metrics.json", metrics)
    remove_partial_predictions(run_dir)
    return metrics


def _train_and_evaluate(config: dict, run_dir: Path, resume: bool, progress: bool, clock: SegmentClock,
                        dp) -> dict:
    """The body of :func:`run_experiment`; times go to ``clock`` (totals over the run's segments)."""
    from .models.injection import get_bara_model

    main = dp is None or dp.is_main
    train_cfg = TrainConfig.from_dict(config["train"])
    device = resolve_device(train_cfg.device)  # before the backbone is loaded: a missing device fails at once
    backbone, tokenizer, task, data = build_backbone_and_task(config, report_data=True)
    train_rows = _subset(data["train"], config["data"]["max_train_examples"])
    members = config["ensemble"]["members"]
    models, graph_setups = [], []
    for m in range(members):
        out_dir = member_dir(run_dir, config, m)
        seed = member_seed(config, m)
        pyro.set_rng_seed(seed)  # adapter initialisation is part of the seeded run
        # on train.device before the adapters are built (they follow it), as in evaluate_run: a member loaded
        # below is evaluated there too, not only one that `fit` trains
        member_backbone = (copy.deepcopy(backbone) if members > 1 else backbone).to(device)
        model = get_bara_model(member_backbone, _adapter_config(config, m), forward_fn=task.scores,
                               likelihood=task_likelihood(task))
        cfg_m = TrainConfig.from_dict({**train_cfg.to_dict(), "seed": seed})
        if (out_dir / DONE_MARKER).exists() and (out_dir / ADAPTER_WEIGHTS_NAME).exists():
            # trained before (an interrupted ensemble, or a member copied from an identical run by the quality
            # benchmark): its training time is not counted again in train_time_s
            from .models.bara_model import BaRAModel

            model.remove_hooks()
            model = BaRAModel.from_pretrained(model.backbone, out_dir, forward_fn=task.scores)
        else:
            if progress and members > 1 and main:
                print(f"ensemble member {m + 1}/{members}")
            with clock.measure("train_time_s"):
                trained = fit(model, task, train_rows, cfg_m, run_dir=out_dir,
                              resume=resume and (out_dir / CHECKPOINT_DIR).exists(), progress=progress and main)
            if trained.graphs is not None:
                graph_setups.append(trained.graphs)
            if main:
                with clock.measure("train_time_s"):  # a post-hoc posterior (Laplace) counts as training time
                    model.fit_posterior(task, train_rows, batch_size=cfg_m.batch_size, progress=progress,
                                        validation_rows=_subset(data["validation"], config["eval"]["max_examples"]))
                model.save_pretrained(out_dir)
                (out_dir / DONE_MARKER).write_text("trained\n")
            if dp is not None:
                dp.barrier()  # member m is on disk before any process looks at member m + 1
        models.append(model)
    if not main:
        return {"world_size": dp.world_size, "rank": dp.rank}
    if train_cfg.shard_backbone and dp is not None:  # rank 0 alone cannot run blocks sharded across the processes:
        # it evaluates the saved adapters on a whole copy of the backbone (inference needs no gradients or optimizer)
        backbone = build_backbone_and_task(config)[0].to(device)
        models = load_members(run_dir, config, backbone, task)
        for model in models:
            model.dataset_size = len(train_rows)
    metrics = _evaluate(models, task, tokenizer, data, train_rows, config, run_dir, progress, clock)
    trainable = sum(m.num_parameters()[0] for m in models)
    metrics.update(method=config["method"], model=config["model"], dataset=config["dataset"],
                   trainable_parameters=trainable, world_size=config["train"]["world_size"],
                   machine=machine_info(device.type))
    if graph_setups:  # per trained member: shapes captured, steps not replayed and their seconds, the first step's
        metrics["train_graphs"] = graph_setups
    posterior = [m.posterior_summary() for m in models]
    if any(posterior):  # per member: what a post-hoc posterior's fit chose (Laplace: the prior precision)
        metrics["posterior"] = posterior
    return metrics


PREDICTIONS_NAME = "predictions.npz"  # predictions on the test split (else the last of eval.splits)
PARTIAL_PREDICTION_PREFIX = ".partial_prediction_"  # resumable prediction passes (inference.predict's checkpoint)
EVAL_SEED_OFFSET = 7919  # evaluation draws from train.seed + this: a stream of its own, the same at every evaluation


def _ensemble_predict(models, task, rows, config, progress, checkpoint: Path | None = None) -> Prediction:
    """Every member's predictive on ``rows`` (S = ``eval.num_samples`` for stochastic members), mixed.
    ``checkpoint``: a path prefix that makes each member's pass resumable (``<prefix>.m<i>.pt``)."""
    ev = config["eval"]
    preds = []
    for i, model in enumerate(models):
        s = ev["num_samples"] if _is_stochastic(model) else 0
        path = Path(f"{checkpoint}.m{i}.pt") if checkpoint is not None else None
        preds.append(predict(model, task, rows, num_samples=s, batch_size=ev["batch_size"], progress=progress,
                             checkpoint=path, max_rows_per_pass=ev["max_rows_per_pass"]))
    return preds[0] if len(preds) == 1 else mixture_of_members(preds)


def remove_partial_predictions(run_dir: Path) -> None:
    """Delete the resumable prediction passes of ``run_dir`` once their results are written."""
    for path in run_dir.glob(PARTIAL_PREDICTION_PREFIX + "*"):
        path.unlink(missing_ok=True)


def mixture_of_members(preds: list[Prediction]) -> Prediction:
    r"""An ensemble's predictive, the equal-weight mixture of its M members' predictives:
    :math:`p(y \mid x) = \frac{1}{M} \sum_m p_m(y \mid x)`; each member is one draw, so ``sample_probs`` is
    (M, N, C).  The members must predict the same N examples in the same order (equal ``labels``)."""
    labels = preds[0].labels
    if any(p.labels.shape != labels.shape or not torch.equal(p.labels, labels) for p in preds[1:]):
        raise ValueError("ensemble members predicted different examples (their labels differ)")
    sample_probs = torch.stack([p.probs for p in preds])
    return Prediction(probs=sample_probs.mean(0), labels=labels, sample_probs=sample_probs)


def is_token_task(task) -> bool:
    """Whether ``task`` predicts tokens (instruction tuning: scores ``(B, L, V)``) rather than ``(B, C)`` classes."""
    return getattr(task, "kind", None) == "instruction"


def task_likelihood(task):
    """The observation model of ``task``'s scores: one token sequence per example, or a categorical."""
    from .models.likelihoods import CategoricalLikelihood, TokenSequenceLikelihood

    return TokenSequenceLikelihood() if is_token_task(task) else CategoricalLikelihood()


def _evaluated_splits(data, ev: dict, progress: bool) -> list[str]:
    """``eval.splits`` that have rows; when none has (a user's dataset without a test split), validation."""
    splits = [s for s in ev["splits"] if len(data[s])]
    if not splits and len(data["validation"]):
        if progress:
            print(f"no rows in {', '.join(ev['splits'])}: evaluating on the validation split")
        splits = ["validation"]
    return splits


def _evaluate_tokens(models, task, data, config, run_dir: Path, progress: bool, metrics: dict) -> None:
    """Token-level metrics (:func:`~bara_pyro.metrics.token_metrics`) of every evaluated split; ``predictions.npz``
    gets the per-token arrays and, for one sampled model, ``sample_loglik`` (S, N) per example."""
    from .inference.token_predictive import predict_tokens
    from .metrics import token_metrics

    ev = config["eval"]
    splits = _evaluated_splits(data, ev, progress)
    for split in splits:
        rows = _subset(data[split], ev["max_examples"])
        draws = [ev["num_samples"] if _is_stochastic(m) else 0 for m in models]
        pred = predict_tokens(models, task, rows, num_samples=draws, batch_size=ev["batch_size"], progress=progress,
                              max_rows_per_pass=ev["max_rows_per_pass"])
        metrics[split] = token_metrics(pred, n_bins=ev["ece_bins"])
        metrics[split]["num_examples"] = len(rows)
        if split == "test" or split == splits[-1]:
            arrays = {f"token_{k}": getattr(pred, k).numpy() for k in
                      ("nll", "confidence", "correct", "entropy", "mutual_information", "sequence")}
            if pred.sample_loglik is not None:
                arrays["sample_loglik"] = pred.sample_loglik.numpy()
            np.savez(run_dir / PREDICTIONS_NAME, **arrays)


def _evaluate(models, task, tokenizer, data, train_rows, config, run_dir: Path, progress: bool,
              clock: SegmentClock | None = None) -> dict:
    """The run's metrics (predictions, gates, ranks), with ``eval.tf32`` on for every pass if set."""
    with tf32_matmul(config["eval"]["tf32"]):
        return _evaluate_passes(models, task, tokenizer, data, train_rows, config, run_dir, progress, clock)


def _evaluate_passes(models, task, tokenizer, data, train_rows, config, run_dir: Path, progress: bool,
                     clock: SegmentClock | None) -> dict:
    ev = config["eval"]
    metrics: dict = {"num_samples": ev["num_samples"], "ensemble_members": len(models)}
    # the predictive's draws (gates, weights, dropout masks) from a seeded stream: evaluating a run again (its trained
    # adapter reused, or `bara-pyro evaluate`) gives the numbers of its first evaluation
    pyro.set_rng_seed(config["train"]["seed"] + EVAL_SEED_OFFSET)
    clock = clock or SegmentClock(run_dir / TIMING_NAME, resume=False)
    with clock.measure("eval_time_s"):
        pred = _predict_splits(models, task, data, config, run_dir, progress, metrics)
    metrics["eval_time_s"] = clock.total("eval_time_s")
    gated = [m for m in models if any(a.gate is not None for _, a in m.adapter_items)]
    metrics["effective_rank"], metrics["effective_rank_per_layer"] = None, {}
    if not gated and len(models) == 1 and pred is not None and pred.effective_rank:  # e.g. rank-wise dropout's pruning
        rank = dict(pred.effective_rank)
        metrics["effective_rank"], metrics["effective_rank_per_layer"] = rank.pop("joint", None), rank
    gates = None
    if gated and ev["gate_examples"] != 0:  # 0: no gate export (no gates.npz, no effective or update rank)
        split = "test" if "test" in ev["splits"] and len(data["test"]) else ev["splits"][0]
        split = split if len(data[split]) else "validation"
        rows = _subset(data[split], ev["gate_examples"])
        gates = export_gates(gated[0], task, tokenizer, rows, train_rows, config, progress)
        rank = gates.pop("_effective_rank")
        np.savez(run_dir / "gates.npz", **gates)
        metrics["effective_rank"] = rank.pop("joint", None)
        metrics["effective_rank_per_layer"] = rank
        if "token_row" in gates:
            from .analysis.diagnostics import token_rank_spread_per_layer

            spread = token_rank_spread_per_layer(gates)
            metrics["token_rank_spread"] = float(spread.mean())
            metrics["token_rank_spread_per_layer"] = dict(zip(map(str, gates["layer_names"]), spread.tolist()))
    metrics["update_rank"], metrics["update_rank_per_layer"] = None, {}
    # an ensemble has one update per member; a gated update's mean needs the exported gates
    if len(models) == 1 and (gates is not None or not gated):
        from .analysis.update_spectrum import update_ranks

        per_layer = update_ranks(models[0], gates)
        if per_layer:
            metrics["update_rank"] = float(np.mean(list(per_layer.values())))
            metrics["update_rank_per_layer"] = per_layer
    return metrics


def _predict_splits(models, task, data, config, run_dir: Path, progress: bool, metrics: dict) -> Prediction | None:
    """Predict each evaluated split (resumably, or token-level for instruction data); its metrics go into
    ``metrics[split]``.  Returns the last split's prediction (None: no classification split)."""
    ev = config["eval"]
    pred = None
    for split in ([] if is_token_task(task) else _evaluated_splits(data, ev, progress)):
        rows = _subset(data[split], ev["max_examples"])
        pred = _ensemble_predict(models, task, rows, config, progress,
                                 checkpoint=run_dir / f"{PARTIAL_PREDICTION_PREFIX}{split}")
        metrics[split] = classification_metrics(pred.probs, pred.labels, n_bins=ev["ece_bins"])
        metrics[split]["num_examples"] = len(rows)
        if split == "test" or split == ev["splits"][-1]:
            _write_predictions(run_dir / PREDICTIONS_NAME, pred)
    if is_token_task(task):
        _evaluate_tokens(models, task, data, config, run_dir, progress, metrics)
    return pred


def _write_predictions(path: Path, pred: Prediction) -> None:
    np.savez(path, **prediction_arrays(pred))


def prediction_arrays(pred: Prediction, prefix: str = "") -> dict[str, np.ndarray]:
    """``probs`` (N, C), ``labels`` (N,) and, for sampled predictions, ``sample_probs`` (S, N, C) and
    ``sample_loglik`` (S, N) (log-probability of the label per draw), each key prefixed with ``prefix``."""
    out = {"probs": pred.probs.numpy(), "labels": pred.labels.numpy()}
    if pred.sample_probs is not None:
        sp = pred.sample_probs
        out["sample_probs"] = sp.numpy()
        picked = sp.gather(-1, pred.labels.view(1, -1, 1).expand(sp.shape[0], -1, 1)).squeeze(-1)
        out["sample_loglik"] = torch.log(picked.clamp_min(1e-12)).numpy()
    return {prefix + k: v for k, v in out.items()}


def read_prediction(arrays, prefix: str = "") -> Prediction:
    """The :class:`Prediction` that :func:`prediction_arrays` stored under ``prefix`` (e.g. an opened .npz)."""
    sample = prefix + "sample_probs"
    return Prediction(probs=torch.from_numpy(np.asarray(arrays[prefix + "probs"])),
                      labels=torch.from_numpy(np.asarray(arrays[prefix + "labels"])),
                      sample_probs=torch.from_numpy(np.asarray(arrays[sample])) if sample in arrays else None)


def export_gates(model, task, tokenizer, rows, train_rows, config, progress: bool = False) -> dict:
    """Arrays for ``gates.npz``: q(pi), q(lambda) parameters (L, r); per-token q(z=1) and E[g] on ``rows``
    (L, n_tokens, r) and each token's sequence (n_tokens,); each component's norm in the mean update (L, r); one
    example's token-level gate map; PSIS log importance weights of the globals."""
    gates = [(p, a.gate) for p, a in model.adapter_items if a.gate is not None]
    out: dict = {"layer_names": np.asarray([p for p, _ in gates])}
    for key in ("pi_alpha", "pi_beta", "lambda_shape", "lambda_rate"):
        if all(hasattr(g, key) for _, g in gates):
            out[key] = np.stack([getattr(g, key).detach().cpu().numpy() for _, g in gates])
    if is_token_task(task):
        from .inference.token_predictive import predict_tokens

        pred = predict_tokens(model, task, rows, num_samples=0, batch_size=config["eval"]["batch_size"],
                              record_tokens=True, progress=False, max_rows_per_pass=config["eval"]["max_rows_per_pass"])
    else:
        pred = predict(model, task, rows, num_samples=0, batch_size=config["eval"]["batch_size"],
                       record_tokens=True, progress=False, max_rows_per_pass=config["eval"]["max_rows_per_pass"])
    if pred.token_stats:
        out["token_gate_prob"] = np.stack([pred.token_stats[p]["token_prob"].numpy() for p, _ in gates])
        out["token_expected_gate"] = np.stack([pred.token_stats[p]["token_expected_gate"].numpy() for p, _ in gates])
        out["token_row"] = pred.token_stats[gates[0][0]]["token_row"].numpy()  # every layer sees the same tokens
    out["_effective_rank"] = dict(pred.effective_rank)
    from .analysis.update_spectrum import component_norms

    norms = component_norms(model)
    out["component_norm"] = np.stack([norms[p] for p, _ in gates])
    tokens, example = _example_gate_map(model, task, tokenizer, rows[0], gates)
    if tokens is not None:
        out["example_tokens"], out["example_gate_prob"] = tokens, example
    draws = config["eval"]["importance_draws"]
    if draws and all(hasattr(g, "draw_globals") for _, g in gates):
        out["log_importance_weights"] = log_importance_weights(model, task, train_rows, draws,
                                                               batch_size=min(64, len(train_rows)))
    return out


@torch.no_grad()
def _example_gate_map(model, task, tokenizer, row, gates):
    device = next(model.backbone.parameters()).device
    batch = task.collate([row]).to(device)
    ctx = model.ctx
    ctx.collect_stats = ctx.record_tokens = True
    try:
        model.scores(batch, mode="mean")
        stats = dict(ctx.stats)
    finally:
        ctx.collect_stats = ctx.record_tokens = False
    ids = batch.inputs.get("input_ids")
    if ids is None or not stats:
        return None, None
    n = int(batch.token_mask[0].sum())
    tokens = tokenizer.convert_ids_to_tokens(ids[0][batch.token_mask[0]].tolist())
    example = np.stack([stats[p]["token_prob"][:n].cpu().numpy() for p, _ in gates])
    return np.asarray([str(t) for t in tokens]), example


@torch.no_grad()
def log_importance_weights(model, task, train_rows, num_draws: int, batch_size: int = 64, seed: int = 0):
    r"""Importance log-ratios of the global guide, for PSIS k-hat:

    .. math:: \log w_s = \log p(\pi_s, \lambda_s, W_s) - \log q(\pi_s, \lambda_s, W_s)
                         + \frac{N}{B}\big(\log p(y_{1:B} \mid g) - \mathrm{KL}_{local}\big),
              \quad (\pi_s, \lambda_s) \sim q

    the local part being the one-sample local ELBO on a fixed subset of ``B`` training examples,
    scaled to the dataset (a lower-bound estimate of :math:`\log p(\mathcal{D} \mid \pi_s, \lambda_s)`).
    Every draw reuses the same local noise (common random numbers), so the weights vary with the
    global draws, not with fresh local noise.  ``W_s``: the latent weights of a weight family that has them
    (``slab_gaussian``, ``singular_slab``), drawn after the gates' globals since their prior may depend on
    them; flipout factors are drawn as whole matrices here, as the Pyro guide draws them.
    """
    device = next(model.backbone.parameters()).device
    gen_state = torch.get_rng_state()
    global_gen = torch.Generator().manual_seed(seed)
    rows = [train_rows[i] for i in range(min(batch_size, len(train_rows)))]
    batch = task.collate(rows).to(device)
    n_total = model.dataset_size or len(train_rows)
    logw = []
    try:
        for _ in range(num_draws):
            model._prepare(batch, "fused")
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=global_gen)))
                log_ratio = float(sum(a.draw_globals() for _, a in model._adapter_items))
            torch.manual_seed(seed + 1)  # the same local draws for every global draw
            scores = model.forward_fn(model.backbone, batch)
            loglik = float(model.likelihood.dist(scores).log_prob(batch.labels).sum())
            kl_local = float(sum(v for v in model.ctx.kl_local.values()))
            logw.append(log_ratio + n_total / len(rows) * (loglik - kl_local))
    finally:
        torch.set_rng_state(gen_state)
    return np.asarray(logw)


def load_run_config(run_dir: str | os.PathLike) -> dict:
    from .experiment_config import _read_yaml, validate_config

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config = _read_yaml(path)
    ensemble = config.get("ensemble")
    if isinstance(ensemble, dict):
        ensemble.setdefault("seed_stride", LEGACY_SEED_STRIDE)
    if isinstance(config.get("eval"), dict):  # saved before the key existed: the bound of today's runs
        config["eval"].setdefault("max_rows_per_pass", DEFAULTS["eval"]["max_rows_per_pass"])
        config["eval"].setdefault("tf32", DEFAULTS["eval"]["tf32"])
    return validate_config(config)


def evaluate_run(run_dir: str | os.PathLike, splits: list[str] | None = None, num_samples: int | None = None,
                 progress: bool = True) -> dict:
    """Reload a finished run's adapters and evaluate them again (e.g. on another split or S)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if splits:
        config["eval"]["splits"] = splits
    if num_samples is not None:
        config["eval"]["num_samples"] = num_samples
    backbone, tokenizer, task, data = build_backbone_and_task(config)
    device = resolve_device(config["train"]["device"])
    backbone.to(device)
    models = load_members(run_dir, config, backbone, task)
    train_rows = _subset(data["train"], config["data"]["max_train_examples"])
    for model in models:
        model.dataset_size = len(train_rows)
    metrics = _evaluate(models, task, tokenizer, data, train_rows, config, run_dir, progress)
    old = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    old.update(metrics)
    _write_json(run_dir / "metrics.json", old)
    remove_partial_predictions(run_dir)
    return old


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)
