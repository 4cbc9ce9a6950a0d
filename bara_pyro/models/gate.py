"""``GlobalLocalGate``: the BaRA prior and variational posterior over one layer's gates.

Sites (``path`` is the adapted module's path in the backbone)::

    {path}.pi      (r,)          pi_k ~ Beta(c g0/r, c (1 - g0/r))      q: Beta(a_k, b_k)
    {path}.lambda  (r,)          lambda_k ~ Gamma(e0, e0)               q: Gamma(s_k, t_k)
    {path}.z       (n, T | r)    z_tk ~ Bernoulli(pi_k)                 q: BinaryConcrete(l_tk) (amortized)
    {path}.theta   (n, T | r)    theta_tk ~ Gamma(a, a / lambda_k)      q: Weibull(s_tk, k_tk)  (amortized)

``n, T`` are the local batch dims (sequences, tokens), in plates ``sequences`` and ``tokens``;
``r`` is an event dim.  Padding tokens are masked out of every local term.  Local sites are
scaled by ``N / B`` (dataset size over examples in the batch) and every latent site by the KL
warm-up weight ``beta``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam

from .amortized_net import AmortizedGateNet
from .config import BaRAConfig
from .context import GateContext
from .distributions import (
    BinaryConcreteStraightThrough,
    ReparameterizedWeibull,
    _uniform_open,
    binary_concrete_straight_through,
    weibull_mean,
    weibull_rsample,
)
from .kl import kl_bernoulli_logits_probs, kl_divergence, kl_weibull_gamma

__all__ = ["GlobalLocalGate"]


class GlobalLocalGate(PyroModule):
    """Global beta-process/gamma priors and per-token gates for one adapter (see module docstring)."""

    def __init__(self, path: str, config: BaRAConfig):
        super().__init__()
        r = config.r
        self.path = path
        self.r = r
        self.temperature = config.temperature
        c, g0 = config.concentration, config.gamma0
        self.register_buffer("pi_prior_a", torch.full((r,), c * g0 / r))
        self.register_buffer("pi_prior_b", torch.full((r,), c * (1 - g0 / r)))
        self.register_buffer("lambda_prior_shape", torch.full((r,), float(config.e0)))
        self.register_buffer("lambda_prior_rate", torch.full((r,), float(config.e0)))
        self.register_buffer("theta_shape", torch.tensor(float(config.a_theta)))
        m = torch.sigmoid(torch.tensor(config.init_gate_logit)).item()
        self.pi_alpha = PyroParam(torch.full((r,), 10.0 * m), constraint=constraints.positive)
        self.pi_beta = PyroParam(torch.full((r,), 10.0 * (1 - m)), constraint=constraints.positive)
        self.lambda_shape = PyroParam(torch.full((r,), 10.0), constraint=constraints.positive)
        self.lambda_rate = PyroParam(torch.full((r,), 10.0), constraint=constraints.positive)
        self.local_net = AmortizedGateNet(r, config.guide_hidden, config.init_gate_logit, config.a_theta)
        self._ctx = GateContext()

    # ----------------------------------------------------------------- distributions
    def prior_pi(self) -> dist.Beta:
        return dist.Beta(self.pi_prior_a, self.pi_prior_b)

    def prior_lambda(self) -> dist.Gamma:
        return dist.Gamma(self.lambda_prior_shape, self.lambda_prior_rate)

    def guide_pi(self) -> dist.Beta:
        return dist.Beta(self.pi_alpha, self.pi_beta)

    def guide_lambda(self) -> dist.Gamma:
        return dist.Gamma(self.lambda_shape, self.lambda_rate)

    def prior_theta(self, lam: torch.Tensor) -> dist.Gamma:
        return dist.Gamma(self.theta_shape, self.theta_shape / lam)

    # ----------------------------------------------------------------- global sites
    def sample_globals(self, side: str) -> None:
        """Pyro ``model``/``guide`` side: sample pi and lambda as sites and keep them in the context."""
        ctx = self._ctx
        with poutine.scale(scale=ctx.kl_beta):
            if side == "guide":
                pi = pyro.sample(f"{self.path}.pi", self.guide_pi().to_event(1))
                lam = pyro.sample(f"{self.path}.lambda", self.guide_lambda().to_event(1))
            else:
                pi = pyro.sample(f"{self.path}.pi", self.prior_pi().to_event(1))
                lam = pyro.sample(f"{self.path}.lambda", self.prior_lambda().to_event(1))
        ctx.globals[self.path] = (pi, lam)

    def fused_globals(self) -> torch.Tensor:
        """Fused path: draw pi, lambda from q (same order as the Pyro guide); return their closed-form KL."""
        q_pi, q_lam = self.guide_pi(), self.guide_lambda()
        pi, lam = q_pi.rsample(), q_lam.rsample()
        self._ctx.globals[self.path] = (pi, lam)
        return kl_divergence(q_pi, self.prior_pi()).sum() + kl_divergence(q_lam, self.prior_lambda()).sum()

    def global_kl(self) -> torch.Tensor:
        """KL(q(pi) || p(pi)) + KL(q(lambda) || p(lambda)), summed over components."""
        return (kl_divergence(self.guide_pi(), self.prior_pi()).sum()
                + kl_divergence(self.guide_lambda(), self.prior_lambda()).sum())

    # ----------------------------------------------------------------- local gates
    def forward(self, h: torch.Tensor) -> torch.Tensor | None:
        """Gates ``g = z * theta`` of shape ``h.shape`` (``(..., r)``), drawn as the context's mode says."""
        ctx = self._ctx
        mode = ctx.mode
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.to(self.pi_prior_a.dtype)  # gates and KLs in the adapter's own precision (fp32 under bf16 autocast)
            if mode == "model":
                z, theta = self.model_local_sites(h.shape)
                return z * theta
            if mode == "ones":
                return torch.ones_like(h)
            if mode == "given":
                z, theta = ctx.cache[self.path]
                return z * theta
            logits, scale, conc = self.local_net(h)
            if mode == "mean":
                gate = torch.sigmoid(logits) * weibull_mean(scale, conc)
            elif mode == "guide":
                gate = self._guide_local(logits, scale, conc)
            elif mode in ("fused", "sample"):
                z = binary_concrete_straight_through(logits, self.temperature, _uniform_open(logits.shape, logits))
                theta = weibull_rsample(scale, conc, _uniform_open(logits.shape, logits))
                gate = z * theta
                if mode == "fused":
                    pi, lam = ctx.globals[self.path]
                    kl = (kl_bernoulli_logits_probs(logits, pi)
                          + kl_weibull_gamma(scale, conc, self.theta_shape, self.theta_shape / lam)).sum(-1)
                    ctx.kl_local[self.path] = self._masked_sum(kl)
            else:
                raise ValueError(f"gate mode {mode!r} does not run the gates")
            if ctx.collect_stats:
                self._record(logits, scale, conc, mode == "guide")
        return gate

    def _guide_local(self, logits, scale, conc) -> torch.Tensor:
        ctx = self._ctx
        mask = self._mask(logits.shape[:-1])
        with ctx.local_plates(logits.shape[:-1]), poutine.scale(scale=ctx.local_scale * ctx.kl_beta):
            z = pyro.sample(f"{self.path}.z",
                            BinaryConcreteStraightThrough(self.temperature, logits).to_event(1).mask(mask))
            theta = pyro.sample(f"{self.path}.theta", ReparameterizedWeibull(scale, conc).to_event(1).mask(mask))
        ctx.cache[self.path] = (z, theta)
        return z * theta

    def model_local_sites(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's local sites ``z``, ``theta`` given the sampled globals; returns their values."""
        ctx = self._ctx
        pi, lam = ctx.globals[self.path]
        mask = self._mask(shape[:-1])
        with ctx.local_plates(shape[:-1]), poutine.scale(scale=ctx.local_scale * ctx.kl_beta):
            z = pyro.sample(f"{self.path}.z", dist.Bernoulli(pi).expand(shape).to_event(1).mask(mask))
            theta = pyro.sample(f"{self.path}.theta", self.prior_theta(lam).expand(shape).to_event(1).mask(mask))
        return z, theta

    # ----------------------------------------------------------------- helpers
    def _mask(self, batch_shape) -> torch.Tensor | bool:
        mask = self._ctx.token_mask
        if mask is None:
            return True
        if mask.shape != batch_shape:
            raise ValueError(f"{self.path}: token mask of shape {tuple(mask.shape)} does not match the adapter "
                             f"input's leading shape {tuple(batch_shape)}")
        return mask

    def _masked_sum(self, values: torch.Tensor) -> torch.Tensor:
        mask = self._ctx.token_mask
        if mask is None:
            return values.sum()
        return torch.where(mask, values, values.new_zeros(())).sum()

    def _record(self, logits, scale, conc, with_kl: bool) -> None:
        """Detached statistics: expected active components per token, and (guide mode) the local KL."""
        ctx = self._ctx
        with torch.no_grad():
            probs = torch.sigmoid(logits)
            mask = ctx.token_mask
            weights = probs.new_ones(probs.shape[:-1]) if mask is None else mask.to(probs.dtype)
            stats = {
                "prob_sum": (probs * weights.unsqueeze(-1)).reshape(-1, self.r).sum(0),  # (r,)
                "num_tokens": weights.sum(),
            }
            if with_kl:
                pi, lam = ctx.globals[self.path]
                kl = (kl_bernoulli_logits_probs(logits, pi)
                      + kl_weibull_gamma(scale, conc, self.theta_shape, self.theta_shape / lam)).sum(-1)
                stats["kl_local"] = self._masked_sum(kl)
            if ctx.record_tokens:
                keep = weights.reshape(-1) > 0
                stats["token_prob"] = probs.reshape(-1, self.r)[keep]
                stats["token_expected_gate"] = (probs * weibull_mean(scale, conc)).reshape(-1, self.r)[keep]
            ctx.stats[self.path] = stats
