r"""The singular slab weight family of BaRA: the gates switch the update's singular directions.

The update is written as its singular value decomposition, with one random magnitude per rank component::

    Delta y_t = (alpha / r) B diag(g_t ⊙ lambda) A x_t
    A (r x d_in), B (d_out x r): point estimates,  c = orthogonality
    p(A) ∝ exp(-(c/2) |A A^T - I|^2),  p(B) ∝ exp(-(c/2) |B^T B - I|^2)
    lambda_k ~ N(0, (s_k sigma)^2)      # site {path}.lora_S, shape (1, r);  s_k = pi_k (ard: inclusion), 1 (off)
                                        # or the non-local (lambda^2 / (s_k sigma)^2) N(0, (s_k sigma)^2) (slab: moment)
    q(lambda_k) = N(m_k, tau_k^2),  q(A) = Delta(A),  q(B) = Delta(B)

With free factors (the ``slab_gaussian`` family) a Gaussian prior is nearly invariant to rotations of the
components that the same tokens use, so a rank-2 update spreads over all of them.  The near-Stiefel priors on
``A`` (orthonormal rows) and ``B`` (orthonormal columns) make the components identifiable: ``B diag(lambda) A``
is then the update's SVD, and a rank-``k`` update has exactly ``k`` non-zero ``lambda_k``.  The magnitudes carry
the slab: a component the data do not need has ``q(lambda_k)`` back at its prior.  ``sigma``, the layer's slab
scale, is an empirical-Bayes (type-II maximum likelihood) estimate, one per adapted layer, started at
``slab_scale`` (``learn_scale: false`` fixes it): the size of a useful singular value depends on the layer and
the task, and a slab far wider than the update makes every component's posterior noise swamp its mean.
The KL of ``A`` and ``B`` is ``-log p`` at the point, exact (the priors' normalising constants depend on no
parameter and are left out); ``lambda``'s is closed form.

``m`` starts at 0 (a fresh adapter leaves the backbone unchanged, as LoRA's ``B = 0`` does), ``A`` and ``B`` at
random orthonormal rows and columns, ``tau`` at ``init_scale``.  ``m`` is stored as ``m / sqrt(d_out)``
(parameter ``lora_S_loc``): Adam moves every parameter by about the learning rate per step, so a LoRA factor's
column of ``d_out`` entries grows ``sqrt(d_out)`` times faster than one number would; in these units a singular
value grows about as fast as in LoRA.  The gate sees ``A x``, not ``lambda ⊙ A x``
(:attr:`transform_before_gate` is False).

``direction_occam: kfac`` adds a Laplace Occam factor on each component's directions to the model
(:mod:`~bara_pyro.models.direction_occam`): point-estimated directions otherwise cost nothing, and a spare
component fits the noise's largest direction.
"""

from __future__ import annotations

import math
from dataclasses import field

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import nn

from .context import rows_of_sample
from .direction_occam import install_statistics, occam_nats, record_statistics, refresh_statistics
from .moment_prior import MomentNormal
from .weights import WeightFamily, register_weights

__all__ = ["NearStiefel", "SingularSlabWeights", "stiefel_residual"]


def stiefel_residual(w: torch.Tensor, rows: bool) -> torch.Tensor:
    """``W W^T - I`` (``rows``: ``w`` ``(..., r, d)``) or ``W^T W - I`` (``w`` ``(..., d, r)``), ``(..., r, r)``."""
    gram = w @ w.transpose(-1, -2) if rows else w.transpose(-1, -2) @ w
    return gram - torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)


class NearStiefel(dist.TorchDistribution):
    r"""``p(W) ∝ exp(-(c/2) |G|_F^2)`` with ``G = W W^T - I`` (``rows``: orthonormal rows) or ``W^T W - I``
    (orthonormal columns).  ``log_prob`` has the weight's shape: row ``k``'s (column ``k``'s) share
    ``-(c/2) sum_j G_kj^2`` spread evenly over its entries, so its sum is the log density up to a constant.
    Not sampled (only used as the prior of a point estimate)."""

    arg_constraints = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, like: torch.Tensor, strength: float, rows: bool, validate_args=None):
        self._like, self.strength, self.rows = like, float(strength), rows
        super().__init__(like.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return NearStiefel(self._like.expand(batch_shape), self.strength, self.rows)

    def log_prob(self, value):
        residual = stiefel_residual(value, self.rows)  # (r, r)
        width = value.shape[-1] if self.rows else value.shape[-2]  # entries per row (column) of the weight
        per_row = -0.5 * self.strength * residual.pow(2).sum(-1) / width  # (r,)
        return per_row.unsqueeze(-1).expand(value.shape) if self.rows else per_row.unsqueeze(-2).expand(value.shape)

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError("the near-Stiefel prior is used for point estimates only")


@register_weights("singular_slab")
class SingularSlabWeights(WeightFamily):
    """Near-orthonormal ``A``, ``B`` and a Gaussian slab on each component's magnitude (module docstring)."""

    slab_scale: float = 1.0
    learn_scale: bool = True
    init_scale: float = 0.005
    orthogonality: float = 1000.0
    ard: str = field(default="inclusion", metadata={"choices": ("inclusion", "off")})
    slab: str = field(default="gaussian", metadata={"choices": ("gaussian", "moment")})
    direction_occam: str = field(default="off", metadata={"choices": ("off", "kfac")})
    occam_decay: float = 0.95
    occam_refresh_every: int = 20
    latent = ("lora_A", "lora_B", "lora_S")
    transform_before_gate = False

    def resolve(self, config) -> None:
        for name in ("slab_scale", "init_scale", "orthogonality"):
            self.need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)!r}")
        self.need(isinstance(self.learn_scale, bool), f"learn_scale must be true or false, got {self.learn_scale!r}")
        self.need(0 <= self.occam_decay < 1, f"occam_decay must be in [0, 1), got {self.occam_decay!r}")
        self.need(isinstance(self.occam_refresh_every, int) and self.occam_refresh_every >= 1,
                  f"occam_refresh_every must be a whole number >= 1, got {self.occam_refresh_every!r}")
        if self.ard == "inclusion":
            sparsity = "none" if config.prior == "fixed" else config.prior["sparsity"]["name"]
            self.need(sparsity != "none", "ard: inclusion scales each magnitude by its component's inclusion "
                      "probability and needs a sparsity prior (adapter.prior.sparsity); use ard: off")

    def install(self, adapter) -> None:
        with torch.no_grad():
            nn.init.orthogonal_(adapter.lora_A.weight)
            nn.init.orthogonal_(adapter.lora_B.weight)
        like = adapter.lora_A.weight.new_zeros(1, adapter.r)
        adapter.lora_S_loc = nn.Parameter(like.clone())
        adapter.lora_S_scale = PyroParam(torch.full_like(like, float(self.init_scale)), constraint=constraints.positive)
        log_sigma = like.new_full((), math.log(self.slab_scale))
        if self.learn_scale:
            adapter.lora_log_slab_scale = nn.Parameter(log_sigma)
        else:
            adapter.register_buffer("lora_log_slab_scale", log_sigma)
        if self.direction_occam == "kfac":
            install_statistics(adapter)

    # ----------------------------------------------------------------- the directions' Occam factor
    @property
    def records_statistics(self) -> bool:
        return self.direction_occam == "kfac"

    def record(self, adapter, x: torch.Tensor, out: torch.Tensor) -> None:
        """Record the training pass's Kronecker statistics (:func:`~.direction_occam.record_statistics`)."""
        record_statistics(adapter, x, out, self.occam_decay)

    def global_factor(self, adapter) -> torch.Tensor | None:
        """The directions' Occam factor (nats) at the step's values of ``lambda`` and ``pi`` in the context, or
        None (``direction_occam: off``)."""
        if self.direction_occam == "off":
            return None
        ctx, gate = adapter._ctx, adapter.gate
        values = ctx.weights[adapter.path]
        size = adapter.scaling**2 * values["lora_S"].reshape(-1).pow(2)
        if gate is not None:
            size = size * gate.sparsity.inclusion_probs(gate.sparsity_hp, ctx.globals[adapter.path]).reshape(-1)
        return occam_nats(values["lora_A"], values["lora_B"], size, adapter.occam_C_used, adapter.occam_G_used,
                          adapter.occam_C_eig, adapter.occam_G_eig)

    def after_step(self, adapter, step: int, total_steps: int) -> None:
        self.after_steps([adapter], step, total_steps)

    def after_steps(self, adapters: list, step: int, total_steps: int) -> None:
        if self.direction_occam == "kfac" and step % self.occam_refresh_every == 0:
            refresh_statistics(*adapters)  # one batched eigendecomposition per matrix size

    # ----------------------------------------------------------------- distributions
    def posterior(self, adapter, name):
        if name == "lora_S":
            return dist.Normal(self.magnitude_mean(adapter), adapter.lora_S_scale)
        return dist.Delta(getattr(adapter, name).weight)

    def prior(self, adapter, name):
        if name == "lora_S":
            return self.magnitude_prior(self._magnitude_scale(adapter))
        return NearStiefel(getattr(adapter, name).weight, self.orthogonality, rows=name == "lora_A")

    def magnitude_prior(self, scale: torch.Tensor):
        """The slab on the magnitudes at prior scale ``scale``: ``N(0, scale^2)`` (``slab: gaussian``) or the
        non-local ``MomentNormal(scale)`` (``slab: moment``, :mod:`~bara_pyro.models.moment_prior`)."""
        if self.slab == "moment":
            return MomentNormal(scale)
        return dist.Normal(torch.zeros_like(scale), scale, validate_args=False)

    def _magnitude_scale(self, adapter) -> torch.Tensor:
        """``s_k sigma``, ``(1, r)``: the prior scale of each magnitude (``s_k = pi_k`` of the drawn globals
        while a model or guide runs, at their posterior means otherwise; 1 with ``ard: off``)."""
        sigma = adapter.lora_log_slab_scale.exp()
        if self.ard == "off":
            return sigma.expand(1, adapter.r)
        gate = adapter.gate
        values = adapter._ctx.globals.get(adapter.path)
        if values is None:
            values = {name: gate.guide_global(name).mean for name in gate.sites}
        pi = gate.sparsity.inclusion_probs(gate.sparsity_hp, values)
        return pi.reshape(1, -1) * sigma

    @staticmethod
    def magnitude_mean(adapter) -> torch.Tensor:
        """``m``, ``(1, r)``: the posterior means of the magnitudes (``lora_S_loc * sqrt(d_out)``)."""
        return adapter.lora_S_loc * math.sqrt(adapter.out_features)

    # ----------------------------------------------------------------- forward
    def rank_transform(self, adapter, h: torch.Tensor) -> torch.Tensor:
        """``h * lambda``: the drawn magnitudes while training, ``S`` draws in mode 'sample', ``m`` otherwise."""
        ctx = adapter._ctx
        if ctx.mode in ("guide", "model", "given", "fused"):
            return h * ctx.weights[adapter.path]["lora_S"].reshape(-1).to(h.dtype)
        if ctx.mode == "sample":
            draws = self.draws(adapter, "lora_S", ctx.num_samples).reshape(ctx.num_samples, -1)
            return h * rows_of_sample(draws, h).to(h.dtype)
        return h * self.magnitude_mean(adapter).reshape(-1).to(h.dtype)

    def component_scale(self, adapter) -> torch.Tensor | None:
        """The drawn magnitudes ``(r,)`` in a fused training pass (what :meth:`rank_transform` multiplies by)."""
        return adapter._ctx.weights[adapter.path]["lora_S"].reshape(-1) if adapter._ctx.mode == "fused" else None

    def mean_lora_factors(self, adapter) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B diag(m))``: the posterior-mean update as a plain LoRA (for export and update spectra)."""
        return adapter.lora_A.weight, adapter.lora_B.weight * self.magnitude_mean(adapter)
