"""Reparameterised gate distributions used by the BaRA guide.

Both classes draw their noise with one ``torch.rand`` call of the sample's shape, through
the functional samplers below.  The Pyro guide and the fused estimator
(:mod:`bara_pyro.inference.fused_elbo`) call the same functions, so one seed gives both
paths the same draws.

References:
    [1] C. Maddison, A. Mnih, Y. W. Teh. The Concrete Distribution. ICLR 2017.
    [2] H. Zhang, B. Chen, D. Guo, M. Zhou. WHAI: Weibull Hybrid Autoencoding Inference
        for Deep Topic Modeling. ICLR 2018.
    [3] E. Nalisnick, P. Smyth. Stick-Breaking Variational Autoencoders. ICLR 2017.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

from . import row_shard

__all__ = [
    "BinaryConcreteStraightThrough",
    "ReparameterizedKumaraswamy",
    "ReparameterizedWeibull",
    "binary_concrete_straight_through",
    "hard_threshold_straight_through",
    "kumaraswamy_rsample",
    "weibull_rsample",
    "weibull_mean",
]

EULER_GAMMA = 0.5772156649015329


def _uniform_open(shape, like: torch.Tensor) -> torch.Tensor:
    """U(0, 1) strictly inside the interval, in ``like``'s dtype and device."""
    u = row_shard.uniform(shape, like.dtype, like.device)  # torch.rand unless a data-parallel row shard is active
    tiny = torch.finfo(like.dtype).tiny
    return u.clamp(tiny, 1.0 - torch.finfo(like.dtype).eps)


def binary_concrete_straight_through(logits: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    r"""Hard {0, 1} sample with the binary-concrete (relaxed Bernoulli) gradient.

    .. math:: s = \sigma((\ell + \log u - \log(1-u)) / \tau), \quad z = [s > 1/2]

    forward returns ``z``; backward differentiates ``s`` (straight-through).
    """
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


def hard_threshold_straight_through(logits: torch.Tensor) -> torch.Tensor:
    r"""Deterministic :math:`z = [\ell > 0]` in the forward pass, gradient of :math:`\sigma(\ell)` backward.

    The point estimate of a binary gate used by the delta (MAP) guide; the value is exactly 0 or 1.
    """
    soft = torch.sigmoid(logits)
    return (logits > 0).to(soft.dtype) + (soft - soft.detach())


def kumaraswamy_rsample(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""Inverse-CDF Kumaraswamy sample :math:`v = (1 - (1-u)^{1/b})^{1/a}`, kept inside (0, 1)."""
    v = torch.pow(-torch.expm1(torch.log1p(-u) / b), 1.0 / a)
    info = torch.finfo(v.dtype)
    return v.clamp(info.tiny, 1.0 - info.eps)


def weibull_rsample(scale: torch.Tensor, concentration: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""Inverse-CDF Weibull sample :math:`\theta = \ell (-\log(1-u))^{1/k}`, kept strictly positive."""
    theta = scale * torch.pow(-torch.log1p(-u), 1.0 / concentration)
    return theta.clamp_min(torch.finfo(theta.dtype).tiny)


def weibull_mean(scale: torch.Tensor, concentration: torch.Tensor) -> torch.Tensor:
    r""":math:`E[\theta] = \ell\,\Gamma(1 + 1/k)`."""
    return scale * torch.exp(torch.lgamma(1.0 + 1.0 / concentration))


class BinaryConcreteStraightThrough(TorchDistribution):
    r"""Relaxed Bernoulli whose samples are hard 0/1 values with a straight-through gradient.

    ``z ~ BinaryConcreteStraightThrough(temperature, logits)``; ``z`` in {0, 1}, P(z=1) = sigmoid(logits).
    Its KL to a ``Bernoulli`` prior is registered (:mod:`bara_pyro.models.kl`) as the KL of the
    underlying Bernoullis, the usual surrogate for straight-through estimators.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.boolean
    has_rsample = True

    def __init__(self, temperature: float, logits: torch.Tensor, validate_args=None):
        self.temperature = float(temperature)
        self.logits = logits
        super().__init__(logits.shape, validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    def expand(self, batch_shape, _instance=None):
        return BinaryConcreteStraightThrough(self.temperature, self.logits.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return binary_concrete_straight_through(self.logits.expand(shape), self.temperature,
                                                _uniform_open(shape, self.logits))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Bernoulli log-probability of the hard value (the surrogate density)."""
        logits, value = broadcast_all(self.logits, value)
        return -torch.nn.functional.binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self) -> torch.Tensor:
        p = self.probs
        return torch.nn.functional.binary_cross_entropy_with_logits(self.logits, p, reduction="none")


class ReparameterizedWeibull(TorchDistribution):
    r"""Weibull(scale :math:`\ell`, concentration :math:`k`) with an inverse-CDF reparameterised sampler.

    .. math:: p(\theta) = \frac{k}{\ell}\left(\frac{\theta}{\ell}\right)^{k-1} e^{-(\theta/\ell)^k}
    """

    arg_constraints = {"scale": constraints.positive, "concentration": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, scale: torch.Tensor, concentration: torch.Tensor, validate_args=None):
        self.scale, self.concentration = broadcast_all(scale, concentration)
        super().__init__(self.scale.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return ReparameterizedWeibull(self.scale.expand(batch_shape), self.concentration.expand(batch_shape))

    @property
    def mean(self) -> torch.Tensor:
        return weibull_mean(self.scale, self.concentration)

    @property
    def variance(self) -> torch.Tensor:
        k = self.concentration
        return self.scale**2 * (torch.exp(torch.lgamma(1 + 2 / k)) - torch.exp(2 * torch.lgamma(1 + 1 / k)))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return weibull_rsample(self.scale.expand(shape), self.concentration.expand(shape),
                               _uniform_open(shape, self.scale))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k, lam = self.concentration, self.scale
        return torch.log(k) - torch.log(lam) + (k - 1) * (torch.log(value) - torch.log(lam)) - (value / lam) ** k

    def entropy(self) -> torch.Tensor:
        k = self.concentration
        return EULER_GAMMA * (1 - 1 / k) + torch.log(self.scale / k) + 1



class ReparameterizedKumaraswamy(TorchDistribution):
    r"""Kumaraswamy(a, b) on (0, 1) with an inverse-CDF reparameterised sampler (Nalisnick & Smyth [3]).

    .. math:: p(v) = a b\, v^{a-1} (1 - v^a)^{b-1}, \qquad E[v] = b\,B(1 + 1/a, b)

    A Beta look-alike whose CDF inverts in closed form; the guide of the IBP stick fractions.
    Its KL to a ``Beta`` prior is registered in :mod:`bara_pyro.models.kl`.
    """

    arg_constraints = {"a": constraints.positive, "b": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, a: torch.Tensor, b: torch.Tensor, validate_args=None):
        self.a, self.b = broadcast_all(a, b)
        super().__init__(self.a.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return ReparameterizedKumaraswamy(self.a.expand(batch_shape), self.b.expand(batch_shape))

    @property
    def mean(self) -> torch.Tensor:
        return self.moment(1.0)

    def moment(self, m: float | torch.Tensor) -> torch.Tensor:
        r""":math:`E[v^m] = b\,B(1 + m/a, b)`."""
        a, b = self.a, self.b
        return b * torch.exp(torch.lgamma(1 + m / a) + torch.lgamma(b) - torch.lgamma(1 + m / a + b))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        return kumaraswamy_rsample(self.a.expand(shape), self.b.expand(shape), _uniform_open(shape, self.a))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        return (torch.log(a) + torch.log(b) + (a - 1) * torch.log(value)
                + (b - 1) * torch.log1p(-torch.pow(value, a)))
