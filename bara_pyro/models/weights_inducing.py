r"""Bayesian-LoRA: the LoRA factor ``A`` as a sparse-GP-style inducing-weight model.

Per adapted layer a small inducing matrix ``U`` (``m_r x m_c``) carries the uncertainty; ``A``
(``r x d_in``) follows from it through fixed-form projections (the conditional of a joint Gaussian, i.e.
Matheron's rule ``A = T_r U T_c + noise``)::

    U ~ MN(0, s^2 I, I)                               # site {path}.lora_U, s = prior_scale (0.1)
    A | U ~ N(T_r U T_c, s^2)                         # site {path}.lora_A, elementwise
    q(U) = N(M, S^2)  (mean field)
    q(A | U) = N(T_r U T_c, lambda^2 s^2)             # the prior's conditional, noise scaled by lambda
    T_r = Z_r^T (Z_r Z_r^T + D_r^2)^{-1}   (r x m_r),    T_c = (Z_c Z_c^T + D_c^2)^{-1} Z_c   (m_c x d_in)

with learned inducing locations ``Z_r`` (``m_r x r``), ``Z_c`` (``m_c x d_in``), positive diagonals ``D_r``,
``D_c`` and ``lambda``; ``B`` is a point estimate.  Both KLs are closed-form: ``KL(q(U) || p(U))`` is a
Normal-Normal KL and the conditional one is

.. math:: \mathrm{KL}\big(q(A \mid U) \,\|\, p(A \mid U)\big) = r\,d_{in}\,(\tfrac12\lambda^2 - \log\lambda - \tfrac12)

whatever ``U`` is.  As ``S -> 0`` and ``lambda -> 0`` the adapter is plain LoRA with ``A = T_r M T_c``.

References:
    [1] Bayesian-LoRA: Probabilistic Low-Rank Adaptation of Large Language Models. arXiv:2601.21003.
    [2] H. Ritter, M. Kukla, C. Zhang, Y. Li. Sparse Uncertainty Representation in Deep Learning with Inducing
        Weights. NeurIPS 2021.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .weights import WeightFamily, register_weights

__all__ = ["InducingWeights", "cholesky_solve_capturable", "inverse_softplus"]


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _projection(z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(Z Z^T + D^2)^{-1} Z`` for ``Z`` ``(m, n)`` and the diagonal ``D`` ``(m,)``; returns ``(m, n)``."""
    cov = z @ z.T + torch.diag(d.pow(2))  # positive definite (d > 0)
    return cholesky_solve_capturable(z, cov)


def cholesky_solve_capturable(z: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``cov^{-1} z`` for positive definite ``cov`` ``(..., m, m)`` and ``z`` ``(..., m, n)``, by two triangular
    solves with ``cov``'s Cholesky factor.  CUDA-graph capture refuses ``torch.cholesky_solve`` on a batch (MAGMA)
    and ``torch.linalg.cholesky``'s host check of the factorisation's status; this uses neither."""
    chol = torch.linalg.cholesky_ex(cov).L
    half = torch.linalg.solve_triangular(chol, z, upper=False)
    return torch.linalg.solve_triangular(chol.transpose(-1, -2), half, upper=True)


@register_weights("inducing_gaussian")
class InducingWeights(WeightFamily):
    """Bayesian-LoRA's inducing-weight posterior on ``A`` (see the module docstring)."""

    prior_scale: float = 0.1
    inducing_rows: int | None = None
    inducing_cols: int | None = None
    init_scale: float = 1e-3
    init_lambda: float = 1e-3
    latent = ("lora_U", "lora_A")

    def resolve(self, config) -> None:
        self.need(config.prior == "fixed", "use it with prior: fixed (no gates)")
        for name in ("prior_scale", "init_scale", "init_lambda"):
            value = getattr(self, name)
            self.need(value > 0 and math.isfinite(value), f"{name} must be a positive number, got {value!r}")
        for name in ("inducing_rows", "inducing_cols"):
            if getattr(self, name) is None:
                setattr(self, name, config.r)
            self.need(getattr(self, name) >= 1, f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def install(self, adapter) -> None:
        m_r, m_c, r, d_in = self.inducing_rows, self.inducing_cols, adapter.r, adapter.in_features
        adapter.lora_A.weight.requires_grad_(False)  # A is a random variable here; its point weight is unused
        adapter.lora_U_loc = nn.Parameter(torch.randn(m_r, m_c))
        adapter.lora_U_scale_raw = nn.Parameter(torch.full((m_r, m_c), inverse_softplus(self.init_scale)))
        adapter.inducing_z_row = nn.Parameter(torch.randn(m_r, r) / math.sqrt(r))
        adapter.inducing_d_row_raw = nn.Parameter(torch.full((m_r,), inverse_softplus(1.0)))
        adapter.inducing_z_col = nn.Parameter(torch.randn(m_c, d_in) / math.sqrt(d_in))
        adapter.inducing_d_col_raw = nn.Parameter(torch.full((m_c,), inverse_softplus(1.0)))
        adapter.inducing_log_lambda = nn.Parameter(torch.tensor(math.log(self.init_lambda)))
        with torch.no_grad():  # start A's mean at LoRA's Kaiming-uniform scale (std 1 / sqrt(3 d_in))
            std = self.conditional_mean(adapter, adapter.lora_U_loc).std()
            adapter.lora_U_loc.mul_(1.0 / (math.sqrt(3 * d_in) * std.clamp_min(1e-12)))

    # ----------------------------------------------------------------- the conditional A | U
    def projections(self, adapter) -> tuple[torch.Tensor, torch.Tensor]:
        """``T_r`` ``(r, m_r)`` and ``T_c`` ``(m_c, d_in)``."""
        t_row = _projection(adapter.inducing_z_row, F.softplus(adapter.inducing_d_row_raw)).T
        t_col = _projection(adapter.inducing_z_col, F.softplus(adapter.inducing_d_col_raw))
        return t_row, t_col

    def conditional_mean(self, adapter, u: torch.Tensor) -> torch.Tensor:
        """``T_r U T_c``: ``U`` ``(..., m_r, m_c)`` -> ``(..., r, d_in)``."""
        t_row, t_col = self.projections(adapter)
        return t_row @ u @ t_col

    def noise_scale(self, adapter) -> torch.Tensor:
        """``lambda * s``: the posterior's conditional standard deviation of ``A``."""
        return torch.exp(adapter.inducing_log_lambda) * self.prior_scale

    def _u(self, adapter) -> torch.Tensor:
        drawn = adapter._ctx.weights.get(adapter.path, {})
        return drawn["lora_U"] if "lora_U" in drawn else adapter.lora_U_loc

    def posterior(self, adapter, name):
        if name == "lora_U":
            return dist.Normal(adapter.lora_U_loc, F.softplus(adapter.lora_U_scale_raw))
        loc = self.conditional_mean(adapter, self._u(adapter))
        return dist.Normal(loc, self.noise_scale(adapter).expand(loc.shape))

    def prior(self, adapter, name):
        if name == "lora_U":
            u = adapter.lora_U_loc  # scales filled on the device: no host-to-device copy (CUDA-graph capture)
            return dist.Normal(u.new_zeros(()), u.new_full((), float(self.prior_scale))).expand(u.shape)
        loc = self.conditional_mean(adapter, self._u(adapter))
        return dist.Normal(loc, loc.new_full((), float(self.prior_scale)).expand(loc.shape))

    def draws(self, adapter, name, num_samples):
        """``S`` joint draws: ``U_s ~ q(U)``, then ``A_s ~ q(A | U_s)``; ``(S, r, d_in)``."""
        u = self.posterior(adapter, "lora_U").rsample((num_samples,))
        loc = self.conditional_mean(adapter, u)
        return loc + self.noise_scale(adapter) * torch.randn_like(loc)

    def mean(self, adapter, name):
        return self.conditional_mean(adapter, adapter.lora_U_loc)

    def mean_lora_factors(self, adapter) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T_r M T_c, B)``: the posterior-mean prediction as a plain LoRA (for export)."""
        return self.mean(adapter, "lora_A"), adapter.lora_B.weight
