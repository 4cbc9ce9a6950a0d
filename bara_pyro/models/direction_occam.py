r"""A Laplace Occam factor on each component's directions (``singular_slab`` with ``direction_occam: kfac``).

``singular_slab``'s update is ``(alpha / r) B diag(z * lambda) A`` with point-estimated unit directions ``a_k`` (row
``k`` of ``A``) and ``b_k`` (column ``k`` of ``B``).  Integrating each direction over a prior ``N(0, I / d)`` in a
Laplace approximation around the point adds to the model's negative log joint, per component,

.. math::
    \tfrac12 \log\det(I + H_b / d_{out}) + \tfrac12 \log\det(I + H_a / d_{in}),\qquad
    H_b = s_k (a_k^\top C a_k) G,\quad H_a = s_k (b_k^\top G b_k) C,\quad s_k = (\alpha / r)^2 \lambda_k^2 \pi_k,

the curvature of the negative log-likelihood in each direction in Kronecker-factored form: ``C`` the layer inputs'
outer products summed over the data, ``G`` the likelihood's curvature in the layer's output per token (the
empirical Fisher: the mean outer product of the per-example gradients), ``lambda_k`` the magnitude and ``pi_k`` the
component's inclusion probability (their values at the step's draw).  With the eigenvalues ``c_j`` of ``C`` and
``g_i`` of ``G`` each log-determinant is a sum of ``log(1 + kappa e)``.

``C`` and ``G`` are running averages (``occam_decay``) recorded in the training pass, ``C`` scaled to the dataset by
the ELBO's ``N / B``, without host synchronisation; the factor reads a copy with its eigenvalues, refreshed every
``occam_refresh_every`` optimizer steps between steps, so within a step the factor is a function of the step's
values only (the Pyro model's ``pyro.factor``, which the fused estimator equals).  The statistics are buffers that
are not saved: a resumed run collects them again, and its factor is 0 until the next refresh.
"""

from __future__ import annotations

import torch

__all__ = ["install_statistics", "occam_nats", "record_statistics", "refresh_statistics"]

_NAMES = ("C", "G")


def occam_nats(a: torch.Tensor, b: torch.Tensor, size: torch.Tensor, c: torch.Tensor, g: torch.Tensor,
               c_eig: torch.Tensor, g_eig: torch.Tensor) -> torch.Tensor:
    """The factor (nats, module docstring) of components with directions ``a`` ``(r, d_in)`` (rows) and ``b``
    ``(d_out, r)`` (columns), ``size`` ``(r,)`` = ``s_k``, Kronecker factors ``c`` ``(d_in, d_in)``, ``g``
    ``(d_out, d_out)`` and their eigenvalues ``c_eig`` ``(d_in,)``, ``g_eig`` ``(d_out,)``."""
    on_b = size * torch.einsum("ki,ij,kj->k", a, c, a) / b.shape[0]  # (r,)
    on_a = size * torch.einsum("ik,ij,jk->k", b, g, b) / a.shape[1]
    return 0.5 * (torch.log1p(on_b[:, None] * g_eig).sum() + torch.log1p(on_a[:, None] * c_eig).sum())


def install_statistics(adapter) -> None:
    """Zero, non-persistent buffers on ``adapter``: ``occam_C`` / ``occam_G`` (running), ``occam_C_used`` /
    ``occam_G_used`` (what the factor reads), ``occam_C_eig`` / ``occam_G_eig`` and the running counts."""
    for name, d in zip(_NAMES, (adapter.in_features, adapter.out_features)):
        adapter.register_buffer(f"occam_{name}", torch.zeros(d, d), persistent=False)
        adapter.register_buffer(f"occam_{name}_used", torch.zeros(d, d), persistent=False)
        adapter.register_buffer(f"occam_{name}_eig", torch.zeros(d), persistent=False)
        adapter.register_buffer(f"occam_{name}_count", torch.zeros(()), persistent=False)


def _running(average: torch.Tensor, count: torch.Tensor, value: torch.Tensor, decay: float) -> None:
    """``average <- decay average + (1 - decay) value``; the first value is taken whole.  No host sync."""
    weight = (count > 0).to(average.dtype) * decay
    average.mul_(weight).add_(value * (1 - weight))
    count.add_(1)


def record_statistics(adapter, x: torch.Tensor, out: torch.Tensor, decay: float) -> None:
    """Record ``x`` ``(..., d_in)``'s outer products into ``occam_C`` now and, through a hook, the gradient in the
    adapter's output ``out`` ``(..., d_out)`` into ``occam_G`` in the backward pass.  Positions outside the context's
    token mask are left out; ``C`` is scaled by the ELBO's ``N / B``, the gradients divided by it."""
    ctx = adapter._ctx
    xs = x.detach().reshape(-1, x.shape[-1]).float()
    mask = ctx.token_mask
    real = mask.reshape(-1, 1).to(xs.dtype) if mask is not None and mask.numel() == xs.shape[0] else None
    tokens = float(xs.shape[0]) if real is None else real.sum().clamp_min(1.0)  # a host number: no copy to the device
    scale = ctx.local_scale
    kept = xs if real is None else xs * real
    _running(adapter.occam_C, adapter.occam_C_count, scale * (kept.T @ xs), decay)

    def on_gradient(grad: torch.Tensor) -> None:
        gs = grad.detach().reshape(-1, grad.shape[-1]).float() / scale
        kept_g = gs if real is None else gs * real
        _running(adapter.occam_G, adapter.occam_G_count, kept_g.T @ gs / tokens, decay)

    out.register_hook(on_gradient)


@torch.no_grad()
def refresh_statistics(*adapters) -> None:
    """Copy each adapter's running ``C`` and ``G`` to what the factor reads, with their eigenvalues (clamped at 0).

    Matrices of one size and device are decomposed in one batched ``eigvalsh`` call: on a GPU each call waits for
    the device once (its error check), so a refresh of every adapter costs one wait per matrix size, not two per
    adapter."""
    groups: dict[tuple, list[tuple]] = {}
    for adapter in adapters:
        for name in _NAMES:
            running = getattr(adapter, f"occam_{name}")
            getattr(adapter, f"occam_{name}_used").copy_(running)
            groups.setdefault((running.shape, running.device, running.dtype), []).append(
                (running, getattr(adapter, f"occam_{name}_eig")))
    for members in groups.values():
        eig = torch.linalg.eigvalsh(torch.stack([running for running, _ in members])).clamp_min(0)
        for (_, out), values in zip(members, eig):
            out.copy_(values)
