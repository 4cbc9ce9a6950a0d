r"""Which term of the ELBO drives a fused-estimator training step: the gradient of the likelihood term and of the
KL term, separately, per step, over a window of steps of a ``bara-pyro bench quality`` run.

The step's loss is :math:`-\mathcal{L} = \underbrace{-\tfrac{N}{B}\sum_b \log p(y_b \mid \theta)}_{\text{likelihood}}
+ \underbrace{\beta\,[\mathrm{KL}^{global} + \tfrac{N}{B}\mathrm{KL}^{local}]}_{\text{KL}}`
(:meth:`~bara_pyro.models.BaRAModel.fused_loss`).  From step ``--from-step`` on, each step's two terms are
differentiated on their own (two extra backward passes through the same graph; the step itself is unchanged), and
a JSON line per step records both terms, both gradient norms, their cosine and the three trainable tensors with the
largest gradient from each.  The run stops after ``--to-step``.  Every other argument goes to
``python -m bara_pyro.bench.quality`` (one method, one task, one seed; the fused estimator)::

    python benchmarks/elbo_gradient_split.py --from-step 195 --to-step 235 --split-log SPLIT.jsonl -- \
        --model smollm2-135m --device cpu --methods blob --tasks openbookqa --seeds 1 --output OUT \
        --set train.lr=1e-3 --set train.log_every=1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from bara_pyro.models import bara_model


def _norm_and_top(grads, names: list[str], k: int = 3) -> tuple[float, list[tuple[str, float]]]:
    squares = {n: float(g.float().pow(2).sum()) for n, g in zip(names, grads) if g is not None}
    top = sorted(squares.items(), key=lambda kv: -kv[1])[:k]
    return sum(squares.values()) ** 0.5, [(n, v ** 0.5) for n, v in top]


def split_row(model, loss: torch.Tensor) -> dict:
    """The likelihood and KL terms of the fused loss just computed (``model.ctx`` still holds the KL terms) and
    their gradients' norms, cosine and largest tensors."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    kl_term = model.weighted_kl(loss)[0]
    lik_term = loss - kl_term
    g_lik = torch.autograd.grad(lik_term, params, retain_graph=True, allow_unused=True)
    g_kl = (torch.autograd.grad(kl_term, params, retain_graph=True, allow_unused=True) if kl_term.requires_grad
            else [None] * len(params))
    n_lik, top_lik = _norm_and_top(g_lik, names)
    n_kl, top_kl = _norm_and_top(g_kl, names)
    dot = sum(float((a.float() * b.float()).sum()) for a, b in zip(g_lik, g_kl) if a is not None and b is not None)
    return {"likelihood_term": float(lik_term.detach()), "kl_term": float(kl_term.detach()),
            "grad_likelihood": n_lik, "grad_kl": n_kl, "cosine": dot / max(n_lik * n_kl, 1e-30),
            "top_likelihood": top_lik, "top_kl": top_kl}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-step", type=int, required=True, help="first step (1-based) to split")
    parser.add_argument("--to-step", type=int, required=True, help="last step to split; the run stops after it")
    parser.add_argument("--split-log", type=Path, required=True, help="JSON lines, one per split step")
    parser.add_argument("quality_args", nargs=argparse.REMAINDER, help="-- then bench quality's arguments")
    args = parser.parse_args(argv)
    if not 1 <= args.from_step <= args.to_step:
        raise SystemExit(f"error: need 1 <= --from-step <= --to-step, got {args.from_step} and {args.to_step}")
    quality_args = args.quality_args[1:] if args.quality_args[:1] == ["--"] else args.quality_args
    args.split_log.parent.mkdir(parents=True, exist_ok=True)
    fused_loss = bara_model.BaRAModel.fused_loss
    step = [0]

    def split_fused_loss(self, batch):
        step[0] += 1
        if step[0] > args.to_step:
            os._exit(0)  # the window is done: no evaluation, no checkpoint of a half-trained run
        loss, parts = fused_loss(self, batch)
        if step[0] >= args.from_step and torch.is_grad_enabled():
            row = {"step": step[0], **split_row(self, loss)}
            with open(args.split_log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"step {row['step']}: likelihood {row['likelihood_term']:.4g} (|grad| {row['grad_likelihood']:.3g}), "
                  f"KL {row['kl_term']:.4g} (|grad| {row['grad_kl']:.3g}), cosine {row['cosine']:+.2f}",
                  file=sys.stderr, flush=True)
        return loss, parts

    bara_model.BaRAModel.fused_loss = split_fused_loss
    from bara_pyro.bench.quality import main as quality_main

    return quality_main(quality_args)


if __name__ == "__main__":
    sys.exit(main())
