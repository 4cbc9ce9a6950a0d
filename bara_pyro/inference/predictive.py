"""Posterior predictive: average the class probabilities of S gate samples, batched in one pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

__all__ = ["Prediction", "predict"]


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


@torch.no_grad()
def predict(model, task, rows: Sequence[dict], num_samples: int = 10, batch_size: int = 32,
            record_tokens: bool = False, progress: bool = True, device: torch.device | str | None = None) -> Prediction:
    r"""Posterior predictive :math:`p(y \mid x) \approx \frac{1}{S}\sum_s \mathrm{softmax}(f(x; g_s))`.

    ``num_samples = S > 0`` draws the gates from q: the batch's rows are repeated S times and run
    as one batch of ``S * B`` examples (sample-major), so there is no Python loop over samples.
    ``S = 0`` runs once with posterior-mean gates E[z] E[theta].  Missing choices get probability 0.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    device = torch.device(device) if device is not None else next(model.backbone.parameters()).device
    model.eval()
    model.backbone.eval()
    ctx = model.ctx
    ctx.collect_stats, ctx.record_tokens = True, record_tokens
    probs, sample_probs, labels = [], [], []
    prob_sum: dict[str, torch.Tensor] = {}
    num_tokens: dict[str, torch.Tensor] = {}
    token_stats: dict[str, dict[str, list]] = {}
    s = max(num_samples, 1)
    try:
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="predict", dynamic_ncols=True):
            chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
            batch = task.collate(chunk * s).to(device)
            if num_samples > 0:  # S sample-major copies: shared draws (weights, per-layer gates) are per copy
                scores = model.scores(batch, mode="sample", num_samples=s)
            else:
                scores = model.scores(batch, mode="mean")
            p = torch.softmax(scores.float(), dim=-1).reshape(s, len(chunk), -1)
            sample_probs.append(p.cpu())
            probs.append(p.mean(0).cpu())
            labels.append(batch.labels[: len(chunk)].cpu())
            for path, st in ctx.stats.items():
                prob_sum[path] = prob_sum.get(path, 0) + st["prob_sum"].cpu()
                num_tokens[path] = num_tokens.get(path, 0) + st["num_tokens"].cpu()
                if record_tokens:
                    rec = token_stats.setdefault(path, {"token_prob": [], "token_expected_gate": []})
                    rec["token_prob"].append(st["token_prob"].cpu())
                    rec["token_expected_gate"].append(st["token_expected_gate"].cpu())
    finally:
        ctx.collect_stats = ctx.record_tokens = False
    num_classes = max(p.shape[-1] for p in probs)
    rank = {path: float(prob_sum[path].sum() / num_tokens[path].clamp_min(1)) for path in prob_sum}
    if rank:
        rank["joint"] = sum(rank.values()) / len(rank)
    return Prediction(
        probs=torch.cat([_pad_classes(p, num_classes) for p in probs]),
        labels=torch.cat(labels),
        sample_probs=torch.cat([_pad_classes(p, num_classes) for p in sample_probs], dim=1) if num_samples else None,
        effective_rank=rank,
        token_stats={path: {k: torch.cat(v) for k, v in rec.items()} for path, rec in token_stats.items()},
    )
