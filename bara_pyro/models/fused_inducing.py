r"""Bayesian-LoRA's global sites for every adapter at once: the fused estimator's fast path for ``inducing_gaussian``.

Per adapter ``l`` (module order) the Pyro guide draws::

    U_l ~ N(M_l, S_l^2)                          (m_r, m_c)
    A_l ~ N(T_r,l U_l T_c,l, (lambda_l s)^2)     (r, d_in)
    T_r = Z_r^T (Z_r Z_r^T + D_r^2)^{-1},   T_c = (Z_c Z_c^T + D_c^2)^{-1} Z_c

with ``KL(q(U) || N(0, s^2)) + r d_in (lambda^2 / 2 - log lambda - 1 / 2)``
(:mod:`~bara_pyro.models.weights_inducing`).  :func:`inducing_globals_fused` keeps one random-number call per site
in that order, so on CPU the draws are the guide's bit for bit; the projections are one batched Cholesky
factorisation and solve per kind (rows: every adapter; columns: every adapter of one input width) instead of
four per adapter (the per-adapter path forms ``T_r U T_c`` for the posterior and again for the prior, whose
difference the closed-form KL needs and which is 0).  Per-adapter values are views of the stacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from .fused_slab import _rows
from .weights_inducing import InducingWeights, cholesky_solve_capturable

__all__ = ["fits_inducing_globals", "inducing_globals_fused"]


def fits_inducing_globals(adapter) -> bool:
    """Whether ``adapter``'s global sites are the ones :func:`inducing_globals_fused` draws: ``inducing_gaussian``
    weights and no gate."""
    return type(adapter.weights) is InducingWeights and adapter.gate is None


def _projections(z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(Z Z^T + D^2)^{-1} Z`` for stacks ``Z`` ``(k, m, n)`` and ``D`` ``(k, m)``: ``(k, m, n)``."""
    cov = z @ z.transpose(-1, -2) + torch.diag_embed(d.pow(2))
    return cholesky_solve_capturable(z, cov)


def inducing_globals_fused(items, ctx) -> None:
    """Draw every adapter's ``U`` and ``A`` from q (module order, as the Pyro guide does) into ``ctx.weights[path]``
    and put their summed closed-form KL in ``ctx.kl_global``.

    :param items: ``[(path, adapter)]``, every adapter passing :func:`fits_inducing_globals`, of one config.
    """
    adapters = [a for _, a in items]
    family, num = adapters[0].weights, len(adapters)
    u_loc = torch.stack([a.lora_U_loc for a in adapters])  # (L, m_r, m_c)
    groups: dict[int, list[int]] = {}  # input width -> members, for the column projections and A
    for i, adapter in enumerate(adapters):
        groups.setdefault(adapter.in_features, []).append(i)
    slot = {i: (width, row) for width, members in groups.items() for row, i in enumerate(members)}
    r = adapters[0].r
    eps_u = u_loc.new_empty(u_loc.shape)
    eps_a = {width: u_loc.new_empty((len(members), r, width)) for width, members in groups.items()}
    for i in range(num):  # one random-number call per site, in the guide's order: U, then A, adapter by adapter
        eps_u[i].normal_()
        width, row = slot[i]
        eps_a[width][row].normal_()

    s = float(family.prior_scale)
    u_scale = F.softplus(torch.stack([a.lora_U_scale_raw for a in adapters]))
    u = u_loc + eps_u * u_scale
    kl = kl_divergence(Normal(u_loc, u_scale, validate_args=False),
                       Normal(u_loc.new_zeros(()), u_loc.new_full((), s), validate_args=False)).sum()
    noise = torch.stack([a.inducing_log_lambda for a in adapters]).exp() * s  # (L,): lambda s
    ratio = (noise / s).pow(2)
    per_entry = 0.5 * (ratio - 1 - ratio.log())  # (L,): KL(q(A | U) || p(A | U)) per entry of A
    t_row = _projections(torch.stack([a.inducing_z_row for a in adapters]),
                         F.softplus(torch.stack([a.inducing_d_row_raw for a in adapters]))).transpose(-1, -2)
    drawn = {}
    for width, members in groups.items():
        mods = [adapters[i] for i in members]
        t_col = _projections(torch.stack([a.inducing_z_col for a in mods]),
                             F.softplus(torch.stack([a.inducing_d_col_raw for a in mods])))  # (k, m_c, width)
        loc = _rows(t_row, members, num) @ _rows(u, members, num) @ t_col  # (k, r, width)
        drawn[width] = (loc + eps_a[width] * _rows(noise, members, num).reshape(-1, 1, 1)).unbind(0)
        kl = kl + (r * width) * _rows(per_entry, members, num).sum()
    rows = u.unbind(0)
    for i, (path, _) in enumerate(items):
        width, row = slot[i]
        ctx.weights[path] = {"lora_U": rows[i], "lora_A": drawn[width][row]}
    ctx.kl_global["globals"] = kl
