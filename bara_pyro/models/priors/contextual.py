"""Contextual beta-process sparsity prior: each token's inclusion probability depends on its context."""

from __future__ import annotations

import math
from dataclasses import field

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints

from .base import GlobalSite, positive_number, register_prior
from .beta_process import BetaProcessPrior

__all__ = ["ContextualBetaProcessPrior", "context_features", "context_shift", "context_weight_prior",
           "context_weight_site", "sequence_context_features", "shifted_logits"]


def context_features(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``phi(h_t) = h_t / rms(h_t)``: the adapter projection ``h_t = A x_t`` ``(..., r)`` divided by its root mean
    square over the ``r`` entries (RMS norm without affine parameters): the gate sees the direction of
    ``h_t``, signs included, not its scale."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def sequence_context_features(h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""``phibar_n = sum_t m_nt phi(h_nt) / max(1, sum_t m_nt)``: the mean of :func:`context_features` over the real
    tokens of each sequence (``mask`` ``(n, T)`` True at them; None: every position).  ``h`` ``(n, T, r)`` gives
    ``(n, 1, r)``, broadcasting over the tokens; ``h`` ``(n, r)`` (one token per sequence) gives ``phi(h)``.
    Padding changes nothing: its features are replaced by zeros before the sum, not multiplied by them."""
    phi = context_features(h)
    if h.dim() < 3:
        return phi
    if mask is None:
        return phi.mean(-2, keepdim=True)
    keep = mask.unsqueeze(-1)
    total = torch.where(keep, phi, phi.new_zeros(())).sum(-2, keepdim=True)
    return total / keep.sum(-2, keepdim=True).clamp_min(1).to(phi.dtype)


def context_shift(w: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``w_k . phi``: context features ``phi`` ``(..., r)`` through ``w`` ``(r, r)`` (or one ``w`` per row,
    ``(rows, 1.., r, r)``); shape ``phi.shape``."""
    return phi @ w.transpose(-1, -2) if w.dim() == 2 else (phi.unsqueeze(-2) * w).sum(-1)


def shifted_logits(pi: torch.Tensor, w: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``logit(pi_k) + w_k . phi``: inclusion probabilities ``pi`` ``([rows,] r)`` shifted by the context
    (:func:`context_shift`); shape ``phi.shape``."""
    return torch.logit(pi.clamp(1e-6, 1 - 1e-6)) + context_shift(w, phi)


def context_weight_site(r: int) -> dict[str, GlobalSite]:
    """The context weights' global site ``{path}.w`` ``(r, r)``, started at 0, mean-field Normal posterior."""
    return {"w": GlobalSite((r, r), constraints.real, 0.0, "normal")}


def context_weight_prior(hp) -> dist.Normal:
    """``w_kj ~ Normal(0, context_scale^2)`` from the hyperparameter ``w_scale`` ``(r, r)``."""
    return dist.Normal(torch.zeros_like(hp.w_scale), hp.w_scale)


@register_prior("sparsity", "contextual_beta_process")
class ContextualBetaProcessPrior(BetaProcessPrior):
    r"""Finite beta process whose per-token inclusion is shifted by the token's context::

        pi_k  ~ Beta(c * gamma0 / r, c * (1 - gamma0 / r))       # site {path}.pi, shape (r,)
        w_kj  ~ Normal(0, context_scale^2)                       # site {path}.w,  shape (r, r)
        z_tk  ~ Bernoulli(sigmoid(logit(pi_k) + w_k . phi(h_t)))  # phi: context_features

    ``pi_k`` says how often layer ``l`` uses component ``k``; ``w`` (one matrix per layer, learned from
    the whole dataset and paid for in one global KL) says which tokens use it.  With ``w = 0`` this is
    the beta process.  ``E[sum_k pi_k] = gamma0`` as there.  Mean-field posteriors: ``q(pi) = Beta``,
    ``q(w) = Normal``, both KLs closed form.

    Instance-wise gates (local guide ``conditional_prior`` with ``per: sequence``) use
    :meth:`sequence_local_prior`: ``z_nk ~ Bernoulli(sigmoid(logit(pi_k) + w_k . phibar_n))``, ``phibar_n`` the
    mean of ``phi(h_nt)`` over the real tokens of sequence ``n`` (:func:`sequence_context_features`).

    ``context: thin`` makes the context a thinning of the layer's beta process instead of a shift::

        z_tk ~ Bernoulli(pi_k * sigmoid(logit(base_retention) + w_k . phi(h_t)))

    the layer decides which components may be used (``pi_k``), each token keeps a share of them: no token
    uses a component more often than ``pi_k``, so a component the layer drops is off for every token.

    ``ordered_init`` (default on) starts ``q(pi_k)`` at mean ``p0^k`` (``p0`` the initial inclusion
    probability), the stick-breaking construction's ordering, instead of ``p0`` for every ``k``: the
    prior stays exchangeable, but components start unequal, so an update concentrates in the first ones
    rather than spreading evenly over all ``r`` (docs/model.md).
    """

    context_scale: float = 1.0
    ordered_init: bool = True
    context: str = field(default="shift", metadata={"choices": ("shift", "thin")})
    base_retention: float = 0.95
    contextual = True

    def resolve(self, config) -> None:
        super().resolve(config)
        positive_number(self, "context_scale", self.context_scale)
        self.need(isinstance(self.ordered_init, bool), f"ordered_init must be true or false, got {self.ordered_init!r}")
        self.need(isinstance(self.base_retention, (int, float)) and 0 < self.base_retention < 1,
                  f"base_retention must be in (0, 1), got {self.base_retention!r}")

    def global_sites(self, r, init_prob):
        init = tuple(init_prob ** (k + 1) for k in range(r)) if self.ordered_init else init_prob
        return {"pi": GlobalSite((r,), constraints.unit_interval, init, "beta"), **context_weight_site(r)}

    def hyperparameters(self, r):
        return {**super().hyperparameters(r), "w_scale": torch.full((r, r), float(self.context_scale))}

    def global_prior(self, name, hp, values):
        return context_weight_prior(hp) if name == "w" else super().global_prior(name, hp, values)

    def inclusion_logits(self, values: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """``logit(pi_k) + w_k . phi(h_t)`` (``context: shift``; the logit of the thinned probability for ``thin``),
        shape ``h.shape``; ``pi`` ``([S rows,] r)``, ``w`` ``(r, r)``."""
        return self.feature_logits(values, context_features(h))

    def feature_logits(self, values: dict[str, torch.Tensor], phi: torch.Tensor) -> torch.Tensor:
        """:meth:`inclusion_logits` at given context features ``phi`` ``(..., r)`` (a token's or a sequence's)."""
        pi, w = values["pi"], values["w"]
        if self.context == "shift":
            return shifted_logits(pi, w, phi)  # clamps pi itself
        pi = pi.clamp(1e-6, 1 - 1e-6)
        shift = context_shift(w, phi)
        # thin: log p = log pi + log sigmoid(a), logit p = log p - log(1 - p)
        log_p = (torch.log(pi) + F.logsigmoid(shift + math.log(self.base_retention / (1 - self.base_retention))))
        log_p = log_p.clamp(max=-1e-6)
        return log_p - torch.log(-torch.expm1(log_p))

    def local_prior(self, hp, values, h=None):
        if h is None:
            raise ValueError("the contextual beta process needs the tokens' context h for its local prior")
        return dist.Bernoulli(logits=self.inclusion_logits(values, h))

    def sequence_local_prior(self, hp, values, h, mask=None):
        """``z_nk ~ Bernoulli(sigmoid(logit pi_k + w_k . phibar_n))``, ``phibar``: :func:`sequence_context_features`."""
        return dist.Bernoulli(logits=self.feature_logits(values, sequence_context_features(h, mask)))
