"""The amortized inference network of one adapted layer: token context -> q(z), q(theta)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AmortizedGateNet"]

MIN_CONCENTRATION = 0.3  # Weibull k floor: keeps Gamma(1 + 1/k) and the KL finite


class AmortizedGateNet(nn.Module):
    r"""Maps the adapter's projection :math:`h_t = A x_t` (shape ``(..., r)``) to gate posteriors.

    .. math::
        u_t = \mathrm{SiLU}(W_1\,\mathrm{LN}(h_t) + b_1), \quad
        [\ell_t, \kappa_t, \sigma_t] = W_2 u_t + b_2

        q(z_{tk}) = \mathrm{BinaryConcrete}(\mathrm{logits}=\ell_{tk}), \quad
        q(\theta_{tk}) = \mathrm{Weibull}(\mathrm{scale}=\mathrm{softplus}(\sigma_{tk}),
                                           k=k_{\min} + \mathrm{softplus}(\kappa_{tk}))

    ``h_t`` depends on the token's hidden state, so the gates are context-dependent.  The output
    layer starts at zero with biases giving ``q(z=1) = sigmoid(init_logit)`` and a Weibull of
    mean 1 whose spread matches ``Gamma(a_theta, a_theta)``.

    Returns ``(logits, scale, concentration)``, each ``(..., r)``.
    """

    def __init__(self, r: int, hidden: int, init_logit: float, a_theta: float):
        super().__init__()
        self.r = r
        self.norm = nn.LayerNorm(r, elementwise_affine=False)
        self.hidden = nn.Linear(r, hidden)
        self.out = nn.Linear(hidden, 3 * r)
        nn.init.zeros_(self.out.weight)
        k0 = max(math.sqrt(a_theta), MIN_CONCENTRATION + 0.1)  # Weibull(k) has CV ~ 1/k ~ Gamma(a) CV 1/sqrt(a)
        scale0 = 1.0 / math.exp(math.lgamma(1.0 + 1.0 / k0))  # mean 1
        with torch.no_grad():
            self.out.bias[:r] = init_logit
            self.out.bias[r:2 * r] = _inv_softplus(scale0)
            self.out.bias[2 * r:] = _inv_softplus(k0 - MIN_CONCENTRATION)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = F.silu(self.hidden(self.norm(h)))
        logits, scale_raw, conc_raw = self.out(u).split(self.r, dim=-1)
        return logits, F.softplus(scale_raw), MIN_CONCENTRATION + F.softplus(conc_raw)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))
