"""Posterior predictive: average the class probabilities of S gate samples, batched in one pass."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .interrupt import StopRequest, rng_state, set_rng_state, stop_on_signals

__all__ = ["Prediction", "append_token_stats", "length_order", "predict", "STOP_MESSAGE"]

STOP_MESSAGE = "prediction interrupted after {done} of {total} examples; run again to continue from {path}"


@dataclass
class Prediction:
    """``probs`` (N, C) posterior predictive; ``sample_probs`` (S, N, C) per draw (None when S = 0);
    ``labels`` (N,); ``effective_rank`` per layer and ``joint``; ``token_stats`` per layer when recorded."""

    probs: torch.Tensor
    labels: torch.Tensor
    sample_probs: torch.Tensor | None = None
    effective_rank: dict[str, float] = field(default_factory=dict)
    token_stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _pad_classes(t: torch.Tensor, num_classes: int) -> torch.Tensor:
    if t.shape[-1] == num_classes:
        return t
    pad = t.new_zeros(*t.shape[:-1], num_classes - t.shape[-1])
    return torch.cat([t, pad], dim=-1)


def _rows_digest(rows: Sequence[dict]) -> str:
    """A fingerprint of the rows (their keys and values, in order) that a checkpoint belongs to."""
    h = hashlib.sha256()
    for row in rows:
        for key in sorted(row):
            value = row[key]
            h.update(key.encode())
            h.update(value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode())
    return h.hexdigest()


def _load_pass(path: Path | None, signature: dict) -> dict | None:
    """The saved pass in ``path`` if it was written for ``signature``; else None (a stale file is ignored)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise RuntimeError(f"the prediction checkpoint {path} is damaged ({exc}); delete it to start over") from exc
    return state if state.get("signature") == signature else None


def _move(tree, device):
    """The tensors of a nest of dicts and lists, on ``device``."""
    if torch.is_tensor(tree):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _move(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_move(v, device) for v in tree]
    return tree


def _save_pass(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rows_per_pass(batch_size: int, max_rows_per_pass: int | None, num_samples: int) -> int:
    """Rows of a batch run in one forward pass when each is repeated ``num_samples`` times and a pass may hold at
    most ``max_rows_per_pass`` expanded rows: ``max(1, min(batch_size, max_rows_per_pass // num_samples))``
    (``batch_size`` when None)."""
    if max_rows_per_pass is None:
        return batch_size
    if max_rows_per_pass < 1:
        raise ValueError(f"max_rows_per_pass must be >= 1 or None, got {max_rows_per_pass}")
    return max(1, min(batch_size, max_rows_per_pass // max(num_samples, 1)))


def length_order(task, rows: Sequence[dict], packed: bool = False) -> list[int] | None:
    """Row indices, the longest row (``task.row_lengths``, of the packed rows with ``packed``) first, ties in the rows'
    order: batches of rows of similar length carry little padding. None for a task without ``row_lengths``."""
    row_lengths = getattr(task, "row_lengths", None)
    if row_lengths is None:
        return None
    lengths = row_lengths(list(rows), packed=packed)
    return sorted(range(len(rows)), key=lambda i: -lengths[i])


def append_token_stats(token_stats: dict, rows_seen: dict, lpath: str, stats: dict, to_cpu: bool = False) -> None:
    """Add one batch's per-token gate statistics of layer ``lpath`` to ``token_stats``: ``token_prob`` and
    ``token_expected_gate`` ``(tokens, r)`` and ``token_row`` ``(tokens,)``, each token's sequence numbered across the
    batches (``rows_seen[lpath]``: the sequences before this batch)."""
    rec = token_stats.setdefault(lpath, {"token_prob": [], "token_expected_gate": [], "token_row": []})
    move = (lambda t: t.cpu()) if to_cpu else (lambda t: t)
    rec["token_prob"].append(move(stats["token_prob"]))
    rec["token_expected_gate"].append(move(stats["token_expected_gate"]))
    rec["token_row"].append(move(stats["token_row"]) + rows_seen.get(lpath, 0))
    rows_seen[lpath] = rows_seen.get(lpath, 0) + stats["num_rows"]


@torch.no_grad()
def predict(model, task, rows: Sequence[dict], num_samples: int = 10, batch_size: int = 32,
            record_tokens: bool = False, progress: bool = True, device: torch.device | str | None = None,
            checkpoint: str | os.PathLike | None = None, max_rows_per_pass: int | None = None,
            by_length: bool = True, pack_choices: bool = True) -> Prediction:
    r"""Posterior predictive :math:`p(y \mid x) \approx \frac{1}{S}\sum_s \mathrm{softmax}(f(x; g_s))`.

    ``num_samples = S > 0`` draws the gates from q: the batch's rows are repeated S times and run
    as one batch of ``S * B`` examples (sample-major), so there is no Python loop over samples.
    ``S = 0`` runs once with posterior-mean gates E[z] E[theta].  Missing choices get probability 0.

    ``max_rows_per_pass`` bounds the memory of one forward pass: a batch whose ``S * B`` expanded rows
    exceed it runs as consecutive groups of ``b = max(1, max_rows_per_pass // S)`` of its rows, each
    repeated S times.  A group is exactly what a batch of b rows would be (same collation, same draws
    in the same order), so with B a multiple of b the result is bit for bit ``batch_size = b``'s, and
    in any case the same estimator: every example averages S draws of its gates.  None: no bound.  A weight
    family may bound the rows further (``prediction_rows``: a Laplace posterior over other tensors than the LoRA
    factors takes one row per pass for its linearised predictive), and a
    predictive that draws in function space (``draws_from_one_copy``) gets each row once, not S copies.

    ``checkpoint``: a file that makes the pass resumable.  SIGINT/SIGTERM then stop it at the next batch
    boundary: the finished batches and the random-number state are written there, and ``KeyboardInterrupt``
    is raised.  A finished pass writes the file too.  A later call with the same file, rows and settings
    continues from it (or returns the finished pass) and leaves the random-number state where the
    uninterrupted pass would have, so the result is bit for bit the uninterrupted one on the same device.
    The caller deletes the file when it no longer needs it; a file written for other rows or settings is
    ignored and overwritten.

    ``by_length``: the rows are batched longest first (:func:`length_order`, for tasks with ``row_lengths``), so
    that a batch pads its sequences to about their own length, and the results are returned in the rows' order:
    the same estimator, with other draws. Not with ``record_tokens`` (whose per-token records keep the rows'
    order).

    ``pack_choices``: a multiple-choice example's choices run as one row, the prefix they share once
    (:mod:`~bara_pyro.tasks.packed_choices`), where the task, the backbone's attention and the model allow it
    (``task.packs``, ``model.packs_choices``): the same scores at ``S = 0``, the same estimator with other draws at
    ``S > 0``; gate statistics then count a shared token once.  Not with ``record_tokens``.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    device = torch.device(device) if device is not None else next(model.backbone.parameters()).device
    model.eval()  # the backbone too (BaRAModel.train)
    ctx = model.ctx
    path = Path(checkpoint) if checkpoint is not None else None
    s = max(num_samples, 1)
    group = rows_per_pass(batch_size, max_rows_per_pass, s)
    family_rows = model.config.components.weights.prediction_rows(num_samples)
    if family_rows is not None:  # a predictive whose memory needs fewer rows per pass (e.g. Laplace's Jacobians)
        group = min(group, family_rows)
    one_copy = model.draws_from_one_copy(num_samples)
    packs = getattr(model, "packs_choices", None)
    pack = (pack_choices and not record_tokens and not one_copy and callable(getattr(task, "pack", None))
            and task.packs(model.backbone) and packs is not None and packs(num_samples))
    order = length_order(task, rows, packed=pack) if by_length and not record_tokens and len(rows) > 1 else None
    if order is not None:
        rows = [rows[i] for i in order]
    signature = ({"rows": _rows_digest(rows), "num_samples": num_samples, "batch_size": batch_size,
                  "record_tokens": record_tokens, "by_length": order is not None, "packed": pack}
                 if path is not None else None)
    if signature is not None and group < batch_size:
        signature["rows_per_group"] = group
    saved = _load_pass(path, signature)
    acc = saved["acc"] if saved else {"probs": [], "sample_probs": [], "labels": [], "prob_sum": {},
                                      "num_tokens": {}, "token_stats": {}, "token_rows_seen": {}}
    first = saved["next_start"] if saved else 0
    if saved:
        set_rng_state(saved["rng"])
        acc = _move(acc, device)
    probs, sample_probs, labels = acc["probs"], acc["sample_probs"], acc["labels"]
    prob_sum, num_tokens, token_stats = acc["prob_sum"], acc["num_tokens"], acc["token_stats"]
    stop = StopRequest()
    starts = range(first, len(rows), batch_size)
    ctx.collect_stats, ctx.record_tokens = True, record_tokens
    try:
        with stop_on_signals(stop) if path is not None else contextlib.nullcontext():
            for start in tqdm(starts, disable=not progress, desc="predict", dynamic_ncols=True,
                              initial=first // batch_size, total=-(-len(rows) // batch_size)):
                done = min(start + batch_size, len(rows))
                for first_row in range(start, done, group):
                    chunk = [rows[i] for i in range(first_row, min(first_row + group, done))]
                    if one_copy:  # the predictive draws the S copies' scores from each row's
                        batch = task.collate(chunk).to(device)
                        scores = model.scores(batch, mode="sample", num_samples=s, copied=False)
                    else:  # S > 0: S sample-major copies; shared draws (weights, layer gates) are per copy
                        batch = task.collate(chunk * s if num_samples > 0 else chunk)
                        batch = (task.pack(batch) if pack else batch).to(device)
                        scores = (model.scores(batch, mode="sample", num_samples=s) if num_samples > 0
                                  else model.scores(batch, mode="mean"))
                    # kept on the device until the pass ends: a copy to the host per batch would wait for the GPU
                    p = torch.softmax(scores.float(), dim=-1).reshape(s, len(chunk), -1)
                    sample_probs.append(p)
                    probs.append(p.mean(0))
                    labels.append(batch.labels[: len(chunk)])
                    for lpath, st in ctx.stats.items():
                        prob_sum[lpath] = prob_sum.get(lpath, 0) + st["prob_sum"]
                        num_tokens[lpath] = num_tokens.get(lpath, 0) + st["num_tokens"]
                        if record_tokens:
                            append_token_stats(token_stats, acc.setdefault("token_rows_seen", {}), lpath, st)
                if stop.requested or (path is not None and done == len(rows)):
                    _save_pass(path, {"signature": signature, "next_start": done, "acc": _move(acc, "cpu"),
                                      "rng": rng_state()})
                if stop.requested:
                    raise KeyboardInterrupt(STOP_MESSAGE.format(done=done, total=len(rows), path=path))
    finally:
        ctx.collect_stats = ctx.record_tokens = False
    acc = _move(acc, "cpu")
    probs, sample_probs, labels = acc["probs"], acc["sample_probs"], acc["labels"]
    prob_sum, num_tokens, token_stats = acc["prob_sum"], acc["num_tokens"], acc["token_stats"]
    num_classes = max(p.shape[-1] for p in probs)
    probs = torch.cat([_pad_classes(p, num_classes) for p in probs])
    labels = torch.cat(labels)
    sample_probs = torch.cat([_pad_classes(p, num_classes) for p in sample_probs], dim=1) if num_samples else None
    if order is not None:  # back to the rows' order
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        probs, labels = probs[inverse], labels[inverse]
        sample_probs = sample_probs[:, inverse] if sample_probs is not None else None
    rank = {lpath: float(prob_sum[lpath].sum() / num_tokens[lpath].clamp_min(1)) for lpath in prob_sum}
    if rank:
        rank["joint"] = sum(rank.values()) / len(rank)
    return Prediction(
        probs=probs,
        labels=labels,
        sample_probs=sample_probs,
        effective_rank=rank,
        token_stats={lpath: {k: torch.cat(v) for k, v in rec.items()} for lpath, rec in token_stats.items()},
    )
