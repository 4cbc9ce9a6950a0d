r"""The prior precision of a Laplace posterior chosen on validation rows (``prior_precision_method: validation``).

The fitted curvature (times laplace-torch's ``1 / (sigma^2 T)``, 1 for classification) is eigendecomposed once,
``H = Q diag(lambda) Q^T`` (K-FAC: ``Q = Q_1 (x) Q_2`` and ``lambda = lambda_1 (x) lambda_2`` per weight matrix;
diagonal: ``Q = I``), so the covariance of the linearised (glm) predictive's scores at prior precision ``delta`` is

.. math:: \Sigma_f(\delta) = J (H + \delta I)^{-1} J^T = (J Q)\, \mathrm{diag}\big(1 / (\lambda + \delta)\big)\,
          (J Q)^T

and the Jacobian ``J`` ``(n, C, P)`` of a validation batch is taken and rotated once for the whole grid.  The grid
is laplace-torch's default for its grid search, ``delta in logspace(-4, 4, 100)``; the chosen ``delta`` is the grid
point of lowest mean validation NLL of the glm predictive (the first, on a tie),

.. math:: \mathrm{NLL}(\delta) = -\frac1N \sum_i \log \frac1S \sum_s
          \mathrm{softmax}\big(\mu_i + L_i(\delta) z_s\big)_{y_i}, \qquad L_i L_i^T = \Sigma_{f,i}(\delta),

with ``S`` = :data:`NUM_DRAWS` fixed standard-normal vectors ``z_s`` (drawn with seed :data:`SEED`, half of them the
negatives of the other half) shared by every row and grid point: the criterion is deterministic, does not depend
on how the rows are batched, and is the Monte Carlo predictive evaluated at test time, with its full ``C x C``
covariance (the probit approximation keeps only the diagonal, which overstates the spread of scores that move
together).  Missing choices (``-inf`` scores) stay ``-inf``.  The criterion is the glm predictive's whatever the
family's ``predictive`` (with ``nn`` it stands in for the weight-space predictive, which would take ``S`` forward
passes per grid point).

References:
    [1] E. Daxberger et al. Laplace Redux -- Effortless Bayesian Deep Learning. NeurIPS 2021 (``laplace-torch``,
        ``optimize_prior_precision(method="gridsearch")``).
    [2] A. X. Yang et al. Bayesian Low-rank Adaptation for Large Language Models. ICLR 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = ["GRID_LOG10", "GRID_SIZE", "NUM_DRAWS", "glm_nll", "prior_precision_grid", "validation_prior_precision"]

GRID_LOG10 = (-4.0, 4.0)  # laplace-torch's log_prior_prec_min / max
GRID_SIZE = 100  # laplace-torch's grid_size
NUM_DRAWS = 256
SEED = 0
CHOLESKY_JITTER = 1e-9  # added to a score covariance before its Cholesky factor (here and in the predictive)


def prior_precision_grid() -> torch.Tensor:
    """The ``(G,)`` grid of prior precisions searched, ``logspace(-4, 4, 100)``."""
    return torch.logspace(*GRID_LOG10, GRID_SIZE, dtype=torch.float64)


def standard_draws(num_classes: int, num_draws: int = NUM_DRAWS) -> torch.Tensor:
    """``(S, C)`` fixed standard-normal vectors: ``S / 2`` drawn with seed :data:`SEED` and their negatives."""
    half = torch.randn(num_draws // 2, num_classes, generator=torch.Generator().manual_seed(SEED))
    return torch.cat([half, -half])


def glm_nll(f_mu: torch.Tensor, f_var: torch.Tensor, labels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    r"""Per-row NLL ``(n,)`` of the predictive ``mean_s softmax(f_mu + L z_s)``, ``L L^T = f_var`` ``(n, C, C)``,
    over ``draws`` ``z`` ``(S, C)``; ``inf`` for a row whose covariance has no Cholesky factor."""
    finite = torch.isfinite(f_mu)
    eye = torch.eye(f_var.shape[-1], dtype=f_var.dtype, device=f_var.device)
    chol, info = torch.linalg.cholesky_ex(f_var + CHOLESKY_JITTER * eye)
    noise = torch.einsum("ncd,sd->nsc", chol, draws.to(chol))
    f = torch.where(finite.unsqueeze(1), f_mu.unsqueeze(1) + noise, f_mu.unsqueeze(1))  # (n, S, C)
    log_p = torch.log_softmax(f, dim=-1).gather(-1, labels.view(-1, 1, 1).expand(-1, f.shape[1], 1)).squeeze(-1)
    nll = -(torch.logsumexp(log_p, dim=1) - math.log(f.shape[1]))
    return torch.where(info == 0, nll, torch.full_like(nll, float("inf")))


def _spectrum(la) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``(lambda (P,), J -> J Q)`` of the curvature ``H_factor * H = Q diag(lambda) Q^T`` of a fitted K-FAC or
    diagonal ``laplace-torch`` posterior (its eigendecomposition, made by the fit, is reused)."""
    from laplace.utils.matrix import KronDecomposed

    if not isinstance(la.H, KronDecomposed):  # diagonal: Q = I
        return (la._H_factor * la.H).reshape(-1), lambda js: js
    h = la.H * la._H_factor
    if h.damping:
        raise ValueError("the validation grid needs an undamped K-FAC posterior")
    blocks = [(qs, ls[0] if len(ls) == 1 else torch.outer(ls[0], ls[1]).reshape(-1))
              for qs, ls in zip(h.eigenvectors, h.eigenvalues)]

    def rotate(js: torch.Tensor) -> torch.Tensor:
        out, start = [], 0
        for qs, lam in blocks:
            w = js[..., start:start + lam.numel()]
            if len(qs) == 1:
                out.append(w @ qs[0])
            else:  # (Q_1 (x) Q_2)^T vec(W) = vec(Q_1^T W Q_2), laplace-torch's layout of a factor pair
                q1, q2 = qs
                out.append((q1.T @ w.reshape(-1, len(q1), len(q2)) @ q2).reshape(w.shape))
            start += lam.numel()
        return torch.cat(out, dim=-1)

    return torch.cat([lam for _, lam in blocks]), rotate


def validation_prior_precision(la, batches: Iterable, jacobians: Callable) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``(delta, grid (G,), NLL (G,))``: the grid point of lowest mean validation NLL of the glm predictive
    (module docstring) and the whole curve.  ``batches`` yields batches with ``labels``; ``jacobians(batch)``
    gives their MAP scores ``(n, C)`` and Jacobian ``(n, C, P)`` in the posterior's parameters."""
    grid = prior_precision_grid()
    lam, rotate = _spectrum(la)
    total, count, draws = None, 0, None
    for batch in batches:
        f_mu, js = jacobians(batch)
        with torch.no_grad(), torch.autocast(js.device.type, enabled=False):
            jq = rotate(js.detach().to(lam.dtype))
            f_mu, labels = f_mu.detach().to(lam.dtype), batch.labels.to(f_mu.device)
            draws = standard_draws(f_mu.shape[-1]) if draws is None else draws
            total = torch.zeros(len(grid), dtype=torch.float64, device=f_mu.device) if total is None else total
            for g, delta in enumerate(grid.tolist()):  # summed on the device: one transfer at the end
                f_var = torch.einsum("ncp,ndp->ncd", jq / (lam + delta), jq)
                total[g] += glm_nll(f_mu, f_var, labels, draws).double().sum()
        count += len(labels)
    if count == 0:
        raise ValueError("no validation rows to choose the prior precision on")
    nll = total.cpu() / count
    return float(grid[int(torch.argmin(nll.nan_to_num(nan=float("inf"))))]), grid, nll
