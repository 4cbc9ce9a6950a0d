"""The amortized inference network of one adapted layer: token context -> q(z), q(theta)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AmortizedGateNet", "MIN_CONCENTRATION", "weibull_init"]

MIN_CONCENTRATION = 0.3  # Weibull k floor: keeps Gamma(1 + 1/k) and the KL finite
DEFAULT_HEADS = ("logits", "scale", "concentration")


@functools.lru_cache(maxsize=None)  # pure in a_theta; the fit costs ~300 autograd steps
def weibull_init(a_theta: float) -> tuple[float, float]:
    """``(scale, concentration)`` of the Weibull closest to ``Gamma(a_theta, a_theta)`` in KL(Weibull || Gamma).

    The guide starts at the prior (as close as the Weibull family gets: exactly for ``a_theta = 1``),
    so every token's magnitude KL starts at its floor; a few Newton-free Adam steps on two scalars.
    """
    from .kl import kl_weibull_gamma

    k0 = max(math.sqrt(a_theta), MIN_CONCENTRATION + 0.1)  # moment-style start: Weibull CV ~ 1/k, Gamma CV 1/sqrt(a)
    log_k = torch.tensor(math.log(k0 - MIN_CONCENTRATION), dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(-math.lgamma(1.0 + 1.0 / k0), dtype=torch.float64, requires_grad=True)
    a = torch.tensor(float(a_theta), dtype=torch.float64)
    opt = torch.optim.Adam([log_k, log_scale], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        kl_weibull_gamma(log_scale.exp(), MIN_CONCENTRATION + log_k.exp(), a, a).backward()
        opt.step()
    return float(log_scale.detach().exp()), float(MIN_CONCENTRATION + log_k.detach().exp())


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

    ``heads`` picks the outputs, each ``(..., r)``, returned as a tuple in that order: ``logits``
    (identity), ``scale`` and ``concentration`` (the Weibull's, as above) and ``value`` (a positive
    point value, ``softplus``, starting at 1: the delta guide's theta).  Default: the first three.
    """

    def __init__(self, r: int, hidden: int, init_logit: float, a_theta: float, heads: tuple[str, ...] = DEFAULT_HEADS):
        super().__init__()
        unknown = [h for h in heads if h not in ("logits", "scale", "concentration", "value")]
        if unknown or not heads:
            raise ValueError(f"unknown heads {unknown}; legal: logits, scale, concentration, value")
        self.r = r
        self.heads = tuple(heads)
        self.norm = nn.LayerNorm(r, elementwise_affine=False)
        self.hidden = nn.Linear(r, hidden)
        self.out = nn.Linear(hidden, len(self.heads) * r)
        nn.init.zeros_(self.out.weight)
        scale0, k0 = weibull_init(a_theta)
        init = {"logits": init_logit, "scale": _inv_softplus(scale0),
                "concentration": _inv_softplus(k0 - MIN_CONCENTRATION), "value": _inv_softplus(1.0)}
        with torch.no_grad():
            for i, head in enumerate(self.heads):
                self.out.bias[i * r:(i + 1) * r] = init[head]

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        u = F.silu(self.hidden(self.norm(h)))
        raw = self.out(u).split(self.r, dim=-1)
        return tuple(_activate(head, x) for head, x in zip(self.heads, raw))


def _activate(head: str, x: torch.Tensor) -> torch.Tensor:
    if head == "logits":
        return x
    if head == "concentration":
        return MIN_CONCENTRATION + F.softplus(x)
    return F.softplus(x)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))
