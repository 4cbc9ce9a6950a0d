"""Contextual stick-breaking IBP sparsity prior: ordered inclusion probabilities, shifted by each token's context."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .base import positive_number, register_prior
from .contextual import (
    context_features,
    context_weight_prior,
    context_weight_site,
    sequence_context_features,
    shifted_logits,
)
from .ibp import StickBreakingIBPPrior

__all__ = ["ContextualStickBreakingPrior"]


@register_prior("sparsity", "contextual_ibp")
class ContextualStickBreakingPrior(StickBreakingIBPPrior):
    r"""Stick-breaking IBP whose per-token inclusion is shifted by the token's context::

        v_k   ~ Beta(alpha, 1)                                  # site {path}.v, shape (r,)
        pi_k  = prod_{j <= k} v_j                               # E[pi_k] = (alpha / (1 + alpha))^k
        w_kj  ~ Normal(0, context_scale^2)                      # site {path}.w, shape (r, r)
        z_tk  ~ Bernoulli(sigmoid(logit(pi_k) + w_k . phi(h_t)))  # phi: context_features

    As :class:`~bara_pyro.models.priors.contextual.ContextualBetaProcessPrior`, with the beta process's
    exchangeable ``pi_k`` replaced by the IBP's decreasing ones: a component far down the order has a small
    prior inclusion probability, the first ones a large one (on the demo's data this did not switch unused
    components off more often than the beta process does: docs/model.md).  ``alpha`` defaults to the flat
    ``gamma0`` (the expected number of components, ``alpha (1 - (alpha / (1 + alpha))^r)`` truncated at ``r``).
    Mean-field posteriors ``q(v_k) = Kumaraswamy``, ``q(w) = Normal``, both KLs closed form.  Instance-wise gates
    use :meth:`sequence_local_prior` (the context pooled over a sequence's real tokens).
    """

    context_scale: float = 1.0
    contextual = True

    def resolve(self, config) -> None:
        super().resolve(config)
        positive_number(self, "context_scale", self.context_scale)

    def global_sites(self, r, init_prob):
        return {**super().global_sites(r, init_prob), **context_weight_site(r)}

    def hyperparameters(self, r):
        return {**super().hyperparameters(r), "w_scale": torch.full((r, r), float(self.context_scale))}

    def global_prior(self, name, hp, values):
        return context_weight_prior(hp) if name == "w" else super().global_prior(name, hp, values)

    def feature_logits(self, values: dict[str, torch.Tensor], phi: torch.Tensor) -> torch.Tensor:
        """``logit(prod_{j<=k} v_j) + w_k . phi`` at context features ``phi`` ``(..., r)``; ``v`` ``([rows,] r)``."""
        return shifted_logits(torch.cumprod(values["v"], dim=-1), values["w"], phi)

    def local_prior(self, hp, values, h=None):
        if h is None:
            raise ValueError("the contextual IBP needs the tokens' context h for its local prior")
        return dist.Bernoulli(logits=self.feature_logits(values, context_features(h)))

    def sequence_local_prior(self, hp, values, h, mask=None):
        """``z_nk ~ Bernoulli(sigmoid(logit pi_k + w_k . phibar_n))``, ``phibar``: the pooled context."""
        return dist.Bernoulli(logits=self.feature_logits(values, sequence_context_features(h, mask)))
