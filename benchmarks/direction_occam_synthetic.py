"""A Laplace Occam factor on each gated component's directions, tried on the synthetic capacity data.

``bara_singular``'s update is ``(alpha / r) B diag(z * lambda) A`` with point-estimated unit directions ``a_k`` (row
``k`` of ``A``) and ``b_k`` (column ``k`` of ``B``).  Integrating each direction over a prior ``N(0, I / d)`` in a
Laplace approximation around the point adds to the negative ELBO, per component,

    1/2 log det(I + H_b / d_out) + 1/2 log det(I + H_a / d_in),
    H_b = s_k (a_k' C a_k) G,   H_a = s_k (b_k' G b_k) C,   s_k = (alpha / r)^2 lambda_k^2 pi_k,

the curvature of the negative log-likelihood in each direction in Kronecker-factored Gauss-Newton form: ``C =
sum_t x_t x_t'`` over the inputs, ``G`` the likelihood's curvature in the layer's output per token (exact here:
``I / noise^2`` for the Gaussian likelihood), ``lambda_k`` the magnitude's posterior mean and ``pi_k`` the
component's inclusion probability.  A direction the data determine well costs about ``d / 2 log(n lambda^2 /
(d noise^2))`` nats; fitting the noise gains about half a nat per parameter (the last lines of
``rank_allocation_synthetic.py``), so a spare component no longer pays for itself.  The factor is added to the
fused estimator's global KL of ``singular_slab`` for this run only (the library's training does not collect the
Kronecker factors ``C`` and ``G`` of real data); prints the rank table of ``rank_allocation_synthetic.py``.

    python benchmarks/direction_occam_synthetic.py [--steps 4000] [--ranks 2 6] [--set weights.ard=inclusion ...]
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch
from rank_allocation_synthetic import NOISE, R, least_squares_spectrum, run

from bara_pyro.models import fused_slab
from bara_pyro.synthetic import low_rank_update


def direction_occam(a: torch.Tensor, b: torch.Tensor, size: torch.Tensor, c: torch.Tensor,
                    g: torch.Tensor) -> torch.Tensor:
    """The Occam factor (nats, module docstring) of components with directions ``a`` ``(r, d_in)`` (rows) and ``b``
    ``(d_out, r)`` (columns), ``size`` ``(r,)`` = ``s_k``, and Kronecker factors ``c`` ``(d_in, d_in)`` and ``g``
    ``(d_out, d_out)``: ``1/2 sum_k [sum_i log(1 + s_k (a_k' C a_k) g_i / d_out) + sum_j log(1 + s_k (b_k' G b_k)
    c_j / d_in)]`` with ``g_i``, ``c_j`` the eigenvalues of ``G`` and ``C``."""
    c_eig, g_eig = torch.linalg.eigvalsh(c), torch.linalg.eigvalsh(g)
    on_b = size * torch.einsum("ki,ij,kj->k", a, c, a) / b.shape[0]  # (r,)
    on_a = size * torch.einsum("ik,ij,jk->k", b, g, b) / a.shape[1]
    return 0.5 * (torch.log1p(on_b[:, None] * g_eig).sum() + torch.log1p(on_a[:, None] * c_eig).sum())


@contextlib.contextmanager
def occam_factor(c: torch.Tensor, g: torch.Tensor):
    """Within the block, the fused estimator's ``singular_slab`` KL of every adapter gains its
    :func:`direction_occam` with the Kronecker factors ``c`` and ``g`` (one adapted layer)."""
    original = fused_slab._singular_factors

    def with_occam(adapters, groups, eps, pi, kl):
        drawn, kl = original(adapters, groups, eps, pi, kl)
        for i, adapter in enumerate(adapters):
            mean = adapter.lora_S_loc.reshape(-1) * math.sqrt(adapter.out_features)
            size = adapter.scaling**2 * mean.pow(2) * pi[i].reshape(-1)
            kl = kl + direction_occam(adapter.lora_A.weight, adapter.lora_B.weight, size, c, g)
        return drawn, kl

    fused_slab._singular_factors = with_occam
    try:
        yield
    finally:
        fused_slab._singular_factors = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override of bara_singular's adapter section, e.g. weights.ard=inclusion")
    args = parser.parse_args()
    print(f"bara_singular with the direction Occam factor: noise {NOISE}, {args.steps} steps, r = {R}"
          + (f", {' '.join(args.set)}" if args.set else "") + "\n")
    print("| true rank | effective rank | E[pi] | \\|B_k\\| \\|A_k\\| | least-squares spectrum |")
    print("|---|---|---|---|---|")
    for k in args.ranks:
        x = torch.stack([row["x"] for row in low_rank_update(k, noise=NOISE).rows])
        with occam_factor(x.T @ x, torch.eye(x.shape[1]) / NOISE**2):
            out = run("bara_singular", k, args.steps, overrides=args.set)
        pi = " ".join(f"{v:.2f}" for v in out["pi"])
        sizes = " ".join(f"{v:.2f}" for v in out["sizes"])
        spectrum = " ".join(f"{v:.2f}" for v in least_squares_spectrum(k)[:R])
        print(f"| {k} | {out['rank']:.2f} | {pi} | {sizes} | {spectrum} |", flush=True)


if __name__ == "__main__":
    main()
