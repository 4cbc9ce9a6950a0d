"""Posterior predictive of next-token tasks (instruction tuning): per-token probabilities averaged over draws.

For every response token ``t`` (target ``y_t``) of every example, with ``M`` models (ensemble members; 1 for
one model) and ``S_m`` posterior draws of model ``m`` (``S_m = 0``: one pass at the posterior mean),

.. math::

    p(y_t \\mid x) = \\frac{1}{M} \\sum_m \\frac{1}{S_m} \\sum_s \\mathrm{softmax}(f_{m,s}(x)_t),

from which :class:`TokenPrediction` keeps, per token, the NLL ``-log p(y_t)``, the top-1 confidence and
correctness (for token-level ECE), the predictive entropy ``H[p_t]``, the Brier score, and the epistemic part
``H[p_t] - mean_s H[p_{s,t}]`` (0 for deterministic passes).  Vocabulary-sized arrays never leave a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .predictive import append_token_stats, rows_per_pass

__all__ = ["TokenPrediction", "predict_tokens"]


@dataclass
class TokenPrediction:
    """Per-token arrays ``(n_tokens,)``: ``nll``, ``confidence``, ``correct`` (float 0/1), ``entropy``,
    ``brier``, ``mutual_information``; ``sequence`` (n_tokens,) the example each token belongs to;
    ``sample_loglik`` ``(S, N)`` per-draw log-likelihood of each example's response (one model with S > 0,
    else None); gate ``effective_rank`` and ``token_stats`` as in :class:`~bara_pyro.inference.Prediction`."""

    nll: torch.Tensor
    confidence: torch.Tensor
    correct: torch.Tensor
    entropy: torch.Tensor
    brier: torch.Tensor
    mutual_information: torch.Tensor
    sequence: torch.Tensor
    sample_loglik: torch.Tensor | None = None
    effective_rank: dict[str, float] = field(default_factory=dict)
    token_stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.sequence.max()) + 1 if self.sequence.numel() else 0


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(-1)


@torch.no_grad()
def predict_tokens(models, task, rows: Sequence[dict], num_samples: int | Sequence[int] = 10, batch_size: int = 32,
                   record_tokens: bool = False, progress: bool = True,
                   max_rows_per_pass: int | None = None) -> TokenPrediction:
    """The token-level predictive of ``models`` (one model or a list: an equal-weight mixture) on ``rows``.

    ``num_samples``: S per model (an int for all, or one per model; 0 = posterior-mean pass).  Gate statistics
    (``record_tokens``) are read from the first model.  ``max_rows_per_pass`` bounds one forward pass's
    ``S * B`` expanded rows as in :func:`~bara_pyro.inference.predict`: the batches shrink to
    ``max(1, max_rows_per_pass // max S)`` rows (every output is per example, so only the batching
    changes).  None: no bound."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    draws = [num_samples] * len(models) if isinstance(num_samples, int) else list(num_samples)
    if any(s < 0 for s in draws):
        raise ValueError(f"num_samples must be >= 0, got {draws}")
    batch_size = rows_per_pass(batch_size, max_rows_per_pass, max(draws))
    for model in models:
        model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("nll", "confidence", "correct", "entropy", "brier",
                                                             "mutual_information", "sequence", "sample_loglik")}
    prob_sum, num_tokens, token_stats, rows_seen = {}, {}, {}, {}
    ctx = models[0].ctx
    offset = 0
    ctx.collect_stats, ctx.record_tokens = True, record_tokens
    try:
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="predict", dynamic_ncols=True):
            chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
            mixture, within = 0.0, 0.0
            for index, (model, s) in enumerate(zip(models, draws)):
                copies = max(s, 1)
                device = next(model.backbone.parameters()).device
                batch = task.collate(chunk * copies).to(device)
                scores = model.scores(batch, mode="sample", num_samples=copies) if s else model.scores(batch, "mean")
                if index == 0:
                    for lpath, st in ctx.stats.items():
                        prob_sum[lpath] = prob_sum.get(lpath, 0) + st["prob_sum"].cpu()
                        num_tokens[lpath] = num_tokens.get(lpath, 0) + st["num_tokens"].cpu()
                        if record_tokens:
                            append_token_stats(token_stats, rows_seen, lpath, st, to_cpu=True)
                mask = batch.extras["response_mask"]  # (copies * B, L); copies share one layout
                log_probs = torch.log_softmax(scores[mask].float(), dim=-1)  # (copies * n_tok, V), sample-major
                log_probs = log_probs.reshape(copies, -1, log_probs.shape[-1])
                probs = log_probs.exp()
                n_tok = probs.shape[1]
                targets = batch.labels[mask][:n_tok]
                sequence = mask[: len(chunk)].nonzero(as_tuple=True)[0]
                mixture = mixture + probs.mean(0) / len(models)
                within = within + _entropy(probs).mean(0) / len(models)
                if len(models) == 1 and s:
                    picked = log_probs.gather(-1, targets.view(1, -1, 1).expand(copies, -1, 1)).squeeze(-1)
                    per_example = torch.zeros(copies, len(chunk), device=picked.device).index_add_(1, sequence,
                                                                                                   picked)
                    parts["sample_loglik"].append(per_example.cpu())
            picked = mixture.gather(-1, targets[:, None]).squeeze(-1)
            confidence, top = mixture.max(-1)
            entropy = _entropy(mixture)
            parts["nll"].append(-picked.clamp_min(1e-12).log().cpu())
            parts["confidence"].append(confidence.cpu())
            parts["correct"].append((top == targets).float().cpu())
            parts["entropy"].append(entropy.cpu())
            parts["brier"].append((mixture.square().sum(-1) - 2 * picked + 1).cpu())
            parts["mutual_information"].append((entropy - within).clamp_min(0).cpu())
            parts["sequence"].append(sequence.cpu() + offset)
            offset += len(chunk)
    finally:
        ctx.collect_stats = ctx.record_tokens = False
    rank = {lpath: float(prob_sum[lpath].sum() / num_tokens[lpath].clamp_min(1)) for lpath in prob_sum}
    if rank:
        rank["joint"] = sum(rank.values()) / len(rank)
    sample_loglik = torch.cat(parts.pop("sample_loglik"), dim=1) if parts["sample_loglik"] else None
    parts.pop("sample_loglik", None)
    return TokenPrediction(**{k: torch.cat(v) for k, v in parts.items()}, sample_loglik=sample_loglik,
                           effective_rank=rank,
                           token_stats={p: {k: torch.cat(v) for k, v in rec.items()} for p, rec in token_stats.items()})
