r"""BayesLoRA: rank-wise variational dropout with a log-uniform prior that prunes rank components.

Per adapted layer, one multiplicative weight per rank component scales the rank activations::

    e_k ~ p(e_k) ∝ 1 / |e_k|                                    # log-uniform (scale-invariant), improper
    q(e_k) = N(mu_k, sigma_k^2),  alpha_k = sigma_k^2 / mu_k^2   # site {path}.lora_E, shape (1, r)
    y_t = W0 x_t + (alpha / r) B (e ⊙ A x_t)

``A``, ``B`` are point estimates; ``mu`` starts at 1 (plain LoRA) and ``sigma^2`` at
``exp(init_log_alpha)``.  The KL to the log-uniform prior depends on ``alpha`` only; it has no closed
form and is taken from Molchanov et al. [2] (an approximation accurate to about 0.01 nats; the test
suite checks its shape against Monte Carlo):

.. math:: \mathrm{KL}(\alpha) \approx k_1 - k_1\,\sigma(k_2 + k_3\log\alpha) + \tfrac12\log(1 + 1/\alpha),
          \quad k_1 = 0.63576,\ k_2 = 1.87320,\ k_3 = 1.48695.

It falls towards 0 as ``alpha`` grows, so the ELBO drives the noise of unneeded components up; a component
with ``log alpha >= prune_log_alpha`` is pruned (``e_k = 0``) when predicting.  The effective rank of a layer
is its number of kept components; prediction records it like BaRA's gates do (``effective_rank``).

Training draws one ``e`` per step (the same draw on the Pyro and the fused path).  Predicting with ``S``
samples draws ``S`` vectors ``e``; posterior-mean prediction uses ``mu`` (both with the pruned components 0).

References:
    [1] BayesLoRA: task-specific uncertainty in low-rank adapters. arXiv:2506.22809.
    [2] D. Molchanov, A. Ashukha, D. Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.distributions import Normal, register_kl

from .context import rows_of_sample
from .weights import WeightFamily, register_weights

__all__ = ["LogUniformScale", "RankDropoutWeights", "kl_normal_log_uniform", "record_kept_ranks"]

K1, K2, K3 = 0.63576, 1.87320, 1.48695
ALPHA_EPS = 1e-8


class LogUniformScale(dist.TorchDistribution):
    """The improper scale-invariant prior ``p(e) ∝ 1/|e|`` with the given batch shape (``log_prob = -log|e|``);
    it cannot be sampled (a prior predictive run of this family is not defined)."""

    arg_constraints = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, like: torch.Tensor, validate_args=None):
        self._like = like
        super().__init__(like.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return LogUniformScale(self._like.expand(batch_shape))

    def log_prob(self, value):
        return -torch.log(value.abs().clamp_min(ALPHA_EPS))

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError("the log-uniform prior is improper and cannot be sampled")


def kl_normal_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al.'s approximation of ``KL(N(mu, alpha mu^2) || log-uniform)``, elementwise, up to a constant
    chosen so that it tends to 0 as ``alpha -> inf``."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * torch.log1p(torch.exp(-log_alpha))


def _log_alpha(q: Normal) -> torch.Tensor:
    return 2 * torch.log(q.scale) - torch.log(q.loc.pow(2) + ALPHA_EPS)


@register_kl(Normal, LogUniformScale)
def _kl_normal_log_uniform(q, p):
    return kl_normal_log_uniform(_log_alpha(q))


def record_kept_ranks(adapter, h: torch.Tensor, kept: torch.Tensor) -> None:
    """Put the number of kept components into ``ctx.stats`` the way the gates record E[sum_k z_k] (per real token),
    so that :func:`~bara_pyro.inference.predict` reports it as the layer's ``effective_rank``."""
    ctx = adapter._ctx
    with torch.no_grad():
        mask = ctx.token_mask
        if mask is not None and mask.shape == h.shape[:-1]:
            tokens = mask.to(h.dtype).sum()
        else:
            tokens = h.new_tensor(float(h.shape[:-1].numel()))
        ctx.stats[adapter.path] = {"prob_sum": kept.to(h.dtype) * tokens, "num_tokens": tokens}


@register_weights("rank_dropout")
class RankDropoutWeights(WeightFamily):
    """BayesLoRA's rank-wise variational dropout (see the module docstring)."""

    init_log_alpha: float = -4.0
    prune_log_alpha: float = 3.0
    latent = ("lora_E",)

    def resolve(self, config) -> None:
        self.need(config.prior == "fixed", "has its own rank selection: use it with prior: fixed (no gates)")
        for name in ("init_log_alpha", "prune_log_alpha"):
            self.need(math.isfinite(getattr(self, name)), f"{name} must be finite, got {getattr(self, name)!r}")
        self.need(self.init_log_alpha < self.prune_log_alpha,
                  f"init_log_alpha ({self.init_log_alpha}) must be below prune_log_alpha ({self.prune_log_alpha}): "
                  "else every component starts pruned")

    def install(self, adapter) -> None:
        adapter.lora_E_loc = nn.Parameter(torch.ones(1, adapter.r))
        adapter.lora_E_log_sigma2 = nn.Parameter(torch.full((1, adapter.r), float(self.init_log_alpha)))

    def posterior(self, adapter, name):
        return dist.Normal(adapter.lora_E_loc, torch.exp(0.5 * adapter.lora_E_log_sigma2))

    def prior(self, adapter, name):
        return LogUniformScale(adapter.lora_E_loc)

    def log_alpha(self, adapter) -> torch.Tensor:
        """``log alpha_k`` per component, ``(r,)``."""
        return _log_alpha(self.posterior(adapter, "lora_E")).reshape(-1)

    def kept(self, adapter) -> torch.Tensor:
        """``(r,)`` bool: the components not pruned (``log alpha_k < prune_log_alpha``)."""
        return self.log_alpha(adapter) < self.prune_log_alpha

    def rank_transform(self, adapter, h: torch.Tensor) -> torch.Tensor:
        ctx = adapter._ctx
        if ctx.mode in ("guide", "model", "given", "fused"):
            e = ctx.weights[adapter.path]["lora_E"].reshape(-1)
            if ctx.collect_stats:
                record_kept_ranks(adapter, h, self.kept(adapter))
            return h * e
        kept = self.kept(adapter)
        if ctx.collect_stats:
            record_kept_ranks(adapter, h, kept)
        if ctx.mode == "sample":
            e = self.draws(adapter, "lora_E", ctx.num_samples).reshape(ctx.num_samples, -1) * kept
            return h * rows_of_sample(e, h)
        return h * (adapter.lora_E_loc.reshape(-1) * kept)

    def mean_lora_factors(self, adapter) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B diag(mu ⊙ kept))``: the posterior-mean prediction as a plain LoRA (for export)."""
        return adapter.lora_A.weight, adapter.lora_B.weight * (adapter.lora_E_loc.reshape(-1) * self.kept(adapter))
