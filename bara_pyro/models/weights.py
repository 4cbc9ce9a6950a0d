"""Weight families: the distribution of the LoRA factors ``A`` (``r x d_in``) and ``B`` (``d_out x r``).

A family names which factors are latent (``latent``) and gives their posterior and prior, each
with batch shape = the weight's shape; the adapter samples them as sites ``{path}.lora_A`` /
``{path}.lora_B`` (global: counted once, KL weighted by the warm-up ``beta``).  Built-in:

==================  ===========================================================================
``point``           A, B point estimates (maximum likelihood; plain LoRA training).  Default.
``map_gaussian``    ``A, B ~ N(0, prior_scale^2)`` elementwise, ``q = Delta``: MAP (LoRA-MAP).
``blob_gaussian``   ``A ~ N(0, prior_scale^2)``, ``q(A) = N(M, sigma^2)`` mean-field, B a point
                    estimate (BLoB, Wang et al. 2024); fused path samples by flipout.
``mc_dropout``      point estimates; ``lora_dropout`` stays on when predicting with samples
                    (MC dropout, Gal & Ghahramani 2016), off for posterior-mean prediction.
==================  ===========================================================================

References:
    [1] Y. Wang, H. Shi, L. Han, D. Metaxas, H. Wang. BLoB: Bayesian Low-Rank Adaptation by
        Backpropagation for Large Language Models. NeurIPS 2024.
    [2] Y. Wen, P. Vicol, J. Ba, D. Tran, R. Grosse. Flipout: Efficient Pseudo-Independent Weight
        Perturbations on Mini-Batches. ICLR 2018.
    [3] Y. Gal, Z. Ghahramani. Dropout as a Bayesian Approximation. ICML 2016.
"""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch.distributions import Distribution

from .registry import Component, Registry
from .row_shard import row_signs

if TYPE_CHECKING:
    from .adapter import BaRAAdapter
    from .row_shard import RowGroups

__all__ = [
    "WEIGHTS",
    "BLoBGaussianWeights",
    "MAPGaussianWeights",
    "MCDropoutWeights",
    "PointWeights",
    "WeightFamily",
    "flipout_linear",
    "register_weights",
]


class WeightFamily(Component):
    """Base of the weight families (see the module docstring)."""

    kind = "weights"
    #: factors that are random variables, in sampling order ("lora_A", "lora_B")
    latent: ClassVar[tuple[str, ...]] = ()
    #: keep ``lora_dropout`` active in prediction mode 'sample'
    dropout_when_sampling: ClassVar[bool] = False

    def install(self, adapter: "BaRAAdapter") -> None:
        """Create extra parameters on ``adapter`` (the point weights ``lora_A``/``lora_B`` exist already)."""

    def posterior(self, adapter: "BaRAAdapter", name: str) -> Distribution:
        """``q`` of factor ``name``; batch shape = the weight's shape."""
        raise NotImplementedError

    def prior(self, adapter: "BaRAAdapter", name: str) -> Distribution:
        """``p`` of factor ``name``; batch shape = the weight's shape."""
        raise NotImplementedError

    def flipout_factors(self) -> tuple[str, ...]:
        """Latent factors the fused estimator samples by flipout instead of one shared draw."""
        return ()

    def samples_factor(self, adapter: "BaRAAdapter", name: str) -> bool:
        """Whether prediction in mode 'sample' draws factor ``name`` per sample-major copy (see :meth:`draws`)."""
        return name in self.latent and not isinstance(self.posterior(adapter, name), dist.Delta)

    def draws(self, adapter: "BaRAAdapter", name: str, num_samples: int) -> torch.Tensor:
        """``num_samples`` posterior draws of factor ``name`` for prediction, ``(S, *shape)``."""
        return self.posterior(adapter, name).rsample((num_samples,))

    def mean(self, adapter: "BaRAAdapter", name: str) -> torch.Tensor:
        """The value of factor ``name`` used by posterior-mean prediction."""
        return self.posterior(adapter, name).mean

    #: ``rank_transform(adapter, h) -> h``: a map of the rank activations ``h = A x`` ``(..., r)`` (None: identity).
    #: Families that put noise, a core matrix or magnitudes between A and B set it.
    rank_transform = None
    #: Whether the transform comes before the gate, which then sees its output (True), or after it, the gate seeing
    #: ``A x`` itself (False).
    transform_before_gate: ClassVar[bool] = True

    def component_scale(self, adapter: "BaRAAdapter") -> torch.Tensor | None:
        """``(r,)`` when the transform after the gate is ``h * s`` with ``s`` this step's values in the context
        (the adapter may then fold ``s`` into the gate's fused pass); None otherwise (the default)."""
        return None

    def samples_without_latent_sites(self, adapter: "BaRAAdapter") -> bool:
        """Whether prediction in mode 'sample' draws from a posterior that is not a Pyro site (e.g. SWAG)."""
        return False

    #: ``sampled_scores(model, batch, num_samples, copied=True) -> scores``: a predictive that replaces the forward
    #: pass in mode 'sample' once :meth:`samples_without_latent_sites` holds (e.g. Laplace's linearised predictive);
    #: None: none.  ``copied=False`` (only where :meth:`draws_from_one_copy` holds): the batch holds each row once.
    sampled_scores = None

    def draws_from_one_copy(self, num_samples: int) -> bool:
        """Whether :attr:`sampled_scores` can draw the ``S`` sample-major copies' scores from a batch that holds each
        row once (a predictive in function space), so that prediction collates and runs each row once."""
        return False

    def packs_choices(self, num_samples: int) -> bool:
        """Whether prediction with ``num_samples`` draws may score a multiple-choice example's choices packed in one
        row (:mod:`~bara_pyro.tasks.packed_choices`) and estimate the same thing: False for a predictive that takes
        the Jacobians of an unpacked batch's scores, or at ``S > 0`` for per-token noise drawn per choice sequence
        (packed, the choices' shared tokens would share it)."""
        return True

    def trains_packed(self) -> bool:
        """Whether a training step may pack a multiple-choice example's choices in one row and compute the same
        loss: prediction's rule at one draw, unless the family overrides it (a post-hoc posterior whose training is a
        point fit packs though its predictive does not)."""
        return self.packs_choices(1)

    def prediction_rows(self, num_samples: int) -> int | None:
        """At most this many examples per sampled prediction pass (e.g. 1 when a pass takes each output's Jacobian,
        whose memory grows with the square of the outputs in it); None: ``eval.max_rows_per_pass`` alone bounds
        it."""
        return None

    def fit_posterior(self, model, task, rows, batch_size: int, progress: bool = False,
                      validation_rows=None) -> None:
        """Called once after training, with the training rows (and the validation rows, for a fit that chooses a
        hyperparameter on them): fit a post-hoc posterior (e.g. Laplace)."""

    def posterior_summary(self, model) -> dict:
        """What the post-hoc fit chose, for ``metrics.json``'s ``posterior`` (e.g. Laplace's prior precision);
        empty when there is nothing to report."""
        return {}

    def local_kl_report(self, adapter: "BaRAAdapter") -> dict[str, bool]:
        """``{local site: closed-form KL}`` for per-token sites the family samples itself (none by default)."""
        return {}

    def model_local_sites(self, adapter: "BaRAAdapter", shape: torch.Size) -> dict[str, torch.Tensor]:
        """The model side of the family's per-token sites for an input of value shape ``shape``."""
        raise NotImplementedError(f"weights {self.name!r} has no per-token sites")

    def after_step(self, adapter: "BaRAAdapter", step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (1-based) of ``total_steps`` (e.g. to collect SWAG moments)."""

    def after_steps(self, adapters: list, step: int, total_steps: int) -> None:
        """:meth:`after_step` for every adapter of this family at once (what the model calls); a family overrides
        it to batch work across adapters."""
        for adapter in adapters:
            self.after_step(adapter, step, total_steps)

    #: whether the training pass calls :meth:`record` (statistics a factor of the model reads)
    records_statistics = False

    def record(self, adapter: "BaRAAdapter", x: torch.Tensor, out: torch.Tensor) -> None:
        """Record statistics of the training pass's input ``x`` and output ``out`` (see :attr:`records_statistics`)."""

    def global_factor(self, adapter: "BaRAAdapter") -> torch.Tensor | None:
        """A term (nats) the model adds to its negative log joint once per step, at the step's values of the global
        sites in the context (a ``pyro.factor`` in the Pyro model, part of the global KL in the fused estimator),
        or None."""
        return None


WEIGHTS = Registry("weights", {"weights": WeightFamily})


def register_weights(name: str):
    """Class decorator: register a :class:`WeightFamily` subclass under ``name`` (``weights: {name: ...}``)."""
    return WEIGHTS.register("weights", name)


def _gaussian_prior(adapter, name: str, scale: float) -> Distribution:
    weight = getattr(adapter, name).weight
    # both parameters made on the device (a Python float would be copied from the host, which a CUDA graph refuses)
    return dist.Normal(weight.new_zeros(()), weight.new_full((), float(scale))).expand(weight.shape)


@register_weights("point")
class PointWeights(WeightFamily):
    """``A``, ``B`` are point estimates with no prior: maximum likelihood (plain LoRA)."""


@register_weights("map_gaussian")
class MAPGaussianWeights(WeightFamily):
    r"""LoRA-MAP: a Gaussian prior on both factors, point estimates for both::

        A_ij ~ N(0, prior_scale^2),  B_ij ~ N(0, prior_scale^2)      # sites {path}.lora_A, {path}.lora_B
        q(A) = Delta(A),  q(B) = Delta(B)

    ``KL(Delta || Normal) = -log N(A; 0, s^2)`` is Pyro's registered rule, so the ELBO is the log
    joint (an L2 penalty ``|A|^2 / (2 s^2)`` counted once per dataset).  Closed-form.
    """

    prior_scale: float = 1.0
    latent = ("lora_A", "lora_B")

    def resolve(self, config) -> None:
        self.need(self.prior_scale > 0, f"prior_scale must be > 0, got {self.prior_scale!r}")

    def posterior(self, adapter, name):
        return dist.Delta(getattr(adapter, name).weight)

    def prior(self, adapter, name):
        return _gaussian_prior(adapter, name, self.prior_scale)


@register_weights("blob_gaussian")
class BLoBGaussianWeights(WeightFamily):
    r"""BLoB: a mean-field Gaussian posterior on ``A``, ``B`` a point estimate::

        A_ij ~ N(0, prior_scale^2)                                 # site {path}.lora_A
        q(A_ij) = N(M_ij, sigma_ij^2)                              # M = lora_A.weight, sigma = lora_A_scale

    ``M`` starts as LoRA's A (Kaiming-uniform), ``sigma`` at ``init_scale`` (BLoB starts it in
    [0.00125, 0.0025]); the KL is closed-form.  The Pyro path draws one ``A`` per step; the fused
    path uses flipout (``sampler: flipout``, per sequence: every token of a sequence sees the same
    perturbation; the BLoB reference code flips signs per token) or the same single draw as Pyro
    (``sampler: shared``, which makes the two estimators equal draw for draw).  Predicting with
    ``S`` samples draws ``S`` independent ``A``; posterior-mean prediction uses ``M``.
    """

    prior_scale: float = 0.2
    init_scale: float = 0.002
    sampler: str = field(default="flipout", metadata={"choices": ("flipout", "shared")})
    latent = ("lora_A",)

    def resolve(self, config) -> None:
        self.need(self.prior_scale > 0, f"prior_scale must be > 0, got {self.prior_scale!r}")
        self.need(self.init_scale > 0, f"init_scale must be > 0, got {self.init_scale!r}")

    def install(self, adapter) -> None:
        adapter.lora_A_scale = PyroParam(torch.full_like(adapter.lora_A.weight, float(self.init_scale)),
                                         constraint=constraints.positive)

    def posterior(self, adapter, name):
        return dist.Normal(adapter.lora_A.weight, adapter.lora_A_scale)

    def prior(self, adapter, name):
        return _gaussian_prior(adapter, name, self.prior_scale)

    def flipout_factors(self):
        return ("lora_A",) if self.sampler == "flipout" else ()


@register_weights("mc_dropout")
class MCDropoutWeights(WeightFamily):
    """Point estimates trained with ``lora_dropout`` (which must be > 0); the dropout stays active when
    predicting in mode 'sample', so ``S`` samples are ``S`` dropout masks (MC dropout).  Mode 'mean'
    turns it off (the usual weight-scaling approximation)."""

    dropout_when_sampling = True

    def resolve(self, config) -> None:
        self.need(config.lora_dropout > 0, f"needs lora_dropout > 0 (e.g. 0.1), got {config.lora_dropout!r}")


def flipout_linear(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                   groups: "RowGroups | None" = None) -> torch.Tensor:
    r"""``x W^T`` for ``W ~ N(loc, scale^2)``, pseudo-independent per example (flipout [2]).

    .. math:: y = x\,\mu^\top + \big((x \odot s_{in})(\sigma \odot \epsilon)^\top\big) \odot s_{out}

    with one shared :math:`\epsilon \sim N(0, I)` and random signs :math:`s_{in}` ``(n, [1,] d_in)``,
    :math:`s_{out}` ``(n, [1,] d_out)`` per sequence (leading dim of ``x``), shared by its tokens, and with
    ``groups`` (:class:`~bara_pyro.models.row_shard.RowGroups`) by every sequence of one example (the choices
    of a multiple-choice example are scored under one ``W``).  Each example's ``W`` is marginally exactly
    ``N(loc, scale^2)``.
    """
    eps = torch.randn_like(loc)
    lead = x.shape[:1] + (1,) * (x.dim() - 2)
    s_in = row_signs(x.shape[0], x.shape[-1], x.dtype, x.device, groups).view(lead + (x.shape[-1],))
    s_out = row_signs(x.shape[0], loc.shape[0], x.dtype, x.device, groups).view(lead + (loc.shape[0],))
    return F.linear(x, loc) + F.linear(x * s_in, scale * eps) * s_out
