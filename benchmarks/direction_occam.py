"""A Laplace Occam factor on each gated component's directions, tried with ``bara_singular``.

``bara_singular``'s update is ``(alpha / r) B diag(z * lambda) A`` with point-estimated unit directions ``a_k`` (row
``k`` of ``A``) and ``b_k`` (column ``k`` of ``B``).  Integrating each direction over a prior ``N(0, I / d)`` in a
Laplace approximation around the point adds to the negative ELBO, per component,

    1/2 log det(I + H_b / d_out) + 1/2 log det(I + H_a / d_in),
    H_b = s_k (a_k' C a_k) G,   H_a = s_k (b_k' G b_k) C,   s_k = (alpha / r)^2 lambda_k^2 pi_k,

the curvature of the negative log-likelihood in each direction in Kronecker-factored form: ``C = sum_t x_t x_t'``
over the data's inputs of the layer, ``G`` the likelihood's curvature in the layer's output per token,
``lambda_k`` the magnitude's posterior mean and ``pi_k`` the component's inclusion probability.  A direction the
data determine well costs about ``d / 2`` times the log of its signal-to-noise ratio; fitting the noise gains about
half a nat per parameter (the last lines of ``rank_allocation_synthetic.py``), so a spare component no longer pays
for itself.  The library does not have this factor: here it is added to the fused estimator's global KL of
``singular_slab`` for one run.

    python benchmarks/direction_occam.py synthetic [--steps 4000] [--ranks 2 6] [--set weights.ard=inclusion ...]
        # the synthetic capacity data, C and G exact (G = I / noise^2, the Gaussian likelihood's)
    python benchmarks/direction_occam.py demo --seed 0 --output DIR [--steps 400]
        # the demo-scale ablation's protocol (bara_slab_ablation.sh): C from the inputs, G the empirical Fisher of
        # the per-token output gradients, both running averages (decay 0.95) whose eigenvalues are refreshed every
        # 20 steps; prints validation ACC / NLL / ECE and the gate rank
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch
from rank_allocation_synthetic import NOISE, R, least_squares_spectrum, run

from bara_pyro.models import fused_slab
from bara_pyro.models.adapter import BaRAAdapter
from bara_pyro.synthetic import low_rank_update

DECAY, REFRESH_EVERY = 0.95, 20
DEMO = ["model=minilm-l6", "dataset=rt_sst2", "task.max_length=64", "adapter.r=8", "adapter.alpha=16",
        "train.batch_size=16", "train.lr=0.002", "train.kl_warmup_steps=100", "train.log_every=50",
        "train.checkpoint_every=0", "train.device=cpu", "eval.splits=[validation]", "eval.num_samples=10",
        "eval.batch_size=64", "eval.gate_examples=100", "eval.importance_draws=0"]


def direction_occam(a: torch.Tensor, b: torch.Tensor, size: torch.Tensor, c: torch.Tensor, g: torch.Tensor,
                    c_eig: torch.Tensor | None = None, g_eig: torch.Tensor | None = None) -> torch.Tensor:
    """The Occam factor (nats, module docstring) of components with directions ``a`` ``(r, d_in)`` (rows) and ``b``
    ``(d_out, r)`` (columns), ``size`` ``(r,)`` = ``s_k``, and Kronecker factors ``c`` ``(d_in, d_in)`` and ``g``
    ``(d_out, d_out)``: ``1/2 sum_k [sum_i log(1 + s_k (a_k' C a_k) g_i / d_out) + sum_j log(1 + s_k (b_k' G b_k)
    c_j / d_in)]`` with ``g_i``, ``c_j`` the eigenvalues of ``G`` and ``C`` (computed when not given)."""
    c_eig = torch.linalg.eigvalsh(c) if c_eig is None else c_eig
    g_eig = torch.linalg.eigvalsh(g) if g_eig is None else g_eig
    on_b = size * torch.einsum("ki,ij,kj->k", a, c, a) / b.shape[0]  # (r,)
    on_a = size * torch.einsum("ik,ij,jk->k", b, g, b) / a.shape[1]
    return 0.5 * (torch.log1p(on_b[:, None] * g_eig).sum() + torch.log1p(on_a[:, None] * c_eig).sum())


@contextlib.contextmanager
def occam_factor(factors):
    """Within the block, the fused estimator's ``singular_slab`` KL of every adapter gains its
    :func:`direction_occam`, with ``factors(adapter)`` -> ``(C, G, eig(C), eig(G))`` or None (no factor yet)."""
    original = fused_slab._singular_factors

    def with_occam(adapters, groups, eps, pi, kl):
        drawn, kl = original(adapters, groups, eps, pi, kl)
        for i, adapter in enumerate(adapters):
            found = factors(adapter)
            if found is not None:
                mean = adapter.lora_S_loc.reshape(-1) * math.sqrt(adapter.out_features)
                size = adapter.scaling**2 * mean.pow(2) * pi[i].reshape(-1)
                kl = kl + direction_occam(adapter.lora_A.weight, adapter.lora_B.weight, size, *found)
        return drawn, kl

    fused_slab._singular_factors = with_occam
    try:
        yield
    finally:
        fused_slab._singular_factors = original


class KroneckerStatistics:
    """Running ``C`` (the layer inputs' outer products, summed over the batch's real tokens and scaled to the
    dataset by the ELBO's ``N / B``) and ``G`` (the mean over real tokens of the outer products of the per-example
    negative log-likelihood's gradient in the adapter's output: the empirical Fisher) of every adapter, recorded
    in the fused training pass; eigenvalues refreshed every :data:`REFRESH_EVERY` calls of :meth:`factors`' owner."""

    def __init__(self):
        self.stats: dict[int, dict[str, torch.Tensor]] = {}
        self.calls = 0

    def record(self, adapter, x: torch.Tensor, out: torch.Tensor) -> None:
        ctx = adapter._ctx
        if ctx.mode != "fused" or not out.requires_grad:
            return
        xs = x.detach().float().reshape(-1, x.shape[-1])
        mask = ctx.token_mask
        real = mask.reshape(-1, 1).float() if mask is not None and mask.numel() == xs.shape[0] else None
        tokens = xs.shape[0] if real is None else float(real.sum())
        scale = float(ctx.local_scale)
        c_now = scale * (xs if real is None else xs * real).T @ xs
        s = self.stats.get(id(adapter))
        if s is None:
            s = self.stats[id(adapter)] = {"C": c_now, "G": torch.zeros(out.shape[-1], out.shape[-1])}
        else:
            s["C"].mul_(DECAY).add_(c_now, alpha=1 - DECAY)

        def gradient(g: torch.Tensor) -> None:
            gs = g.detach().float().reshape(-1, g.shape[-1]) / scale
            s["G"].mul_(DECAY).add_((gs if real is None else gs * real).T @ gs / tokens, alpha=1 - DECAY)

        out.register_hook(gradient)

    def factors(self, adapter):
        s = self.stats.get(id(adapter))
        if s is None:
            return None
        if "eig" not in s or self.calls % REFRESH_EVERY == 0:
            s["eig"] = (s["C"].clone(), s["G"].clone(), torch.linalg.eigvalsh(s["C"]).clamp_min(0),
                        torch.linalg.eigvalsh(s["G"]).clamp_min(0))
        return s["eig"]


@contextlib.contextmanager
def recording(stats: KroneckerStatistics):
    """Within the block every adapter's fused training pass records its Kronecker statistics."""
    original = BaRAAdapter.forward

    def forward(self, x):
        out = original(self, x)
        stats.record(self, x, out)
        return out

    BaRAAdapter.forward = forward
    try:
        yield
    finally:
        BaRAAdapter.forward = original


def synthetic(args) -> None:
    print(f"bara_singular with the direction Occam factor: noise {NOISE}, {args.steps} steps, r = {R}"
          + (f", {' '.join(args.set)}" if args.set else "") + "\n")
    print("| true rank | effective rank | E[pi] | \\|B_k\\| \\|A_k\\| | least-squares spectrum |")
    print("|---|---|---|---|---|")
    for k in args.ranks:
        x = torch.stack([row["x"] for row in low_rank_update(k, noise=NOISE).rows])
        exact = (x.T @ x, torch.eye(x.shape[1]) / NOISE**2)
        with occam_factor(lambda adapter, exact=exact: exact + (None, None)):
            out = run("bara_singular", k, args.steps, overrides=args.set)
        pi = " ".join(f"{v:.2f}" for v in out["pi"])
        sizes = " ".join(f"{v:.2f}" for v in out["sizes"])
        spectrum = " ".join(f"{v:.2f}" for v in least_squares_spectrum(k)[:R])
        print(f"| {k} | {out['rank']:.2f} | {pi} | {sizes} | {spectrum} |", flush=True)


def demo(args) -> None:
    from bara_pyro.experiment import run_experiment
    from bara_pyro.experiment_config import load_config

    stats = KroneckerStatistics()

    def factors(adapter):
        return stats.factors(adapter)

    original = fused_slab._singular_factors

    def counting(*a, **k):  # one call per training step: the refresh clock
        stats.calls += 1
        return original(*a, **k)

    overrides = DEMO + [f"train.steps={args.steps}", f"train.seed={args.seed}"]
    fused_slab._singular_factors = counting
    try:
        with recording(stats), occam_factor(factors):
            metrics = run_experiment(load_config(method="bara_singular", overrides=overrides), args.output,
                                     progress=False)
    finally:
        fused_slab._singular_factors = original
    v = metrics["validation"]
    print("| seed | acc | NLL | ECE | gate rank |\n|---|---|---|---|---|")
    print(f"| {args.seed} | {v['accuracy']:.3f} | {v['nll']:.3f} | {v['ece']:.3f} | {metrics['effective_rank']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("synthetic", help="the synthetic capacity data, C and G exact")
    s.add_argument("--steps", type=int, default=4000)
    s.add_argument("--ranks", type=int, nargs="+", default=[2, 6])
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override of bara_singular's adapter section, e.g. weights.ard=inclusion")
    d = sub.add_parser("demo", help="the demo-scale ablation's protocol, C and G collected while training")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=400)
    d.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    (synthetic if args.mode == "synthetic" else demo)(args)


if __name__ == "__main__":
    main()
