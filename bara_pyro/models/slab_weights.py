"""The slab weight family of BaRA: Gaussian LoRA factors with one prior scale per rank component."""

from __future__ import annotations

import math
from dataclasses import field

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import nn

from .weights import WeightFamily, register_weights

__all__ = ["SlabGaussianWeights"]



@register_weights("slab_gaussian")
class SlabGaussianWeights(WeightFamily):
    r"""Both LoRA factors are random, with one prior scale ``s_k`` per rank component (automatic relevance
    determination)::

        A_kj ~ N(0, (s_k / sqrt(d_in))^2)     # row k of A          site {path}.lora_A, (r, d_in)
        B_ik ~ N(0, (s_k / sqrt(r))^2)        # column k of B       site {path}.lora_B, (d_out, r)
        q(A_kj) = N(M_kj, sigma_kj^2),  q(B_ik) = N(N_ik, rho_ik^2)     # mean-field

    ``ard`` sets the scales: ``inclusion`` (default) ``s_k = pi_k``, the layer's inclusion probability of
    component ``k`` under its sparsity prior (beta process, IBP, ...; drawn before the factors): the
    sparsity prior is the relevance prior, so a component it switches off has its factors shrunk with it;
    ``learned``: ``s_k = exp(lora_log_scale_k)``, type-II maximum-likelihood estimates (empirical Bayes);
    ``off``: ``s_k = 1``.
    Per-component scales make the prior not invariant to rotations of the ``r`` components, so an update
    of rank ``k`` concentrates in ``k`` components instead of spreading over all ``r`` (docs/model.md).
    ``posterior_scale`` says how the posterior scales are parametrised: ``absolute`` learns ``sigma`` and ``rho``
    themselves; ``relative`` learns them as fractions of the prior scale, ``sigma_kj = (s_k / sqrt(d_in)) u_kj``
    and ``rho_ik = (s_k / sqrt(r)) v_ik``, so ``q(A, B | s) q(s)``: the entropy part of each KL,
    ``log(prior scale / posterior scale) = -log u``, no longer depends on ``s_k``, and a component's scale is
    pulled only by how far its means are from zero (``M^2 / s^2``), not by how many weights it has
    (docs/model.md).  ``M`` starts as LoRA's A (Kaiming-uniform), ``N`` at zero, the learned scales (``sigma``,
    ``rho``, or ``u``, ``v``) at ``init_scale``.
    ``factors: B`` makes ``B`` alone random and trains ``A`` as LoRA does: with Adam, the prior's pull on ``A``
    (its only gradient while ``B`` is near zero, so a full-size step whatever the KL's weight) shrinks ``A``
    before the likelihood can use it (docs/model.md).
    Both KLs are closed form.  Sampler: ``shared`` draws one ``A`` and ``B`` per step (the Pyro guide's
    draw, so the fused estimator equals ``TraceMeanField_ELBO``); ``flipout`` perturbs them per sequence
    in the fused estimator.
    """

    init_scale: float = 1e-3
    ard: str = field(default="inclusion", metadata={"choices": ("inclusion", "learned", "off")})
    posterior_scale: str = field(default="absolute", metadata={"choices": ("absolute", "relative")})
    sampler: str = field(default="shared", metadata={"choices": ("shared", "flipout")})
    factors: str = field(default="both", metadata={"choices": ("both", "B")})

    @property
    def latent(self) -> tuple[str, ...]:
        """The random factors: ``A`` and ``B``, or ``B`` alone (``A`` a point estimate, trained as LoRA's)."""
        return ("lora_A", "lora_B") if self.factors == "both" else ("lora_B",)

    def resolve(self, config) -> None:
        self.need(self.init_scale > 0, f"init_scale must be > 0, got {self.init_scale!r}")
        if self.ard == "inclusion":
            sparsity = "none" if config.prior == "fixed" else config.prior["sparsity"]["name"]
            self.need(sparsity != "none", "ard: inclusion scales each component by its inclusion probability and "
                      "needs a sparsity prior (adapter.prior.sparsity); use ard: learned or off")

    def install(self, adapter) -> None:
        for name in self.latent:
            weight = getattr(adapter, name).weight
            setattr(adapter, f"{name}_scale", PyroParam(torch.full_like(weight, float(self.init_scale)),
                                                        constraint=constraints.positive))
        log_scale = torch.zeros(adapter.r, device=adapter.lora_A.weight.device)
        if self.ard == "learned":
            adapter.lora_log_scale = nn.Parameter(log_scale)
        else:
            adapter.register_buffer("lora_log_scale", log_scale)

    def posterior(self, adapter, name):
        scale = getattr(adapter, f"{name}_scale")
        if self.posterior_scale == "relative":
            scale = scale * self._prior_scale(adapter, name)
        return dist.Normal(getattr(adapter, name).weight, scale)

    def prior(self, adapter, name):
        weight = getattr(adapter, name).weight
        return dist.Normal(torch.zeros_like(weight), self._prior_scale(adapter, name))

    def _prior_scale(self, adapter, name) -> torch.Tensor:
        """The prior's elementwise scale of factor ``name``, ``s_k / sqrt(fan_in)`` spread over the weight's shape."""
        weight = getattr(adapter, name).weight
        scale = self.component_scales(adapter, detach=False) / math.sqrt(weight.shape[1])
        scale = scale.unsqueeze(1) if name == "lora_A" else scale.unsqueeze(0)
        return scale.expand(weight.shape)

    def flipout_factors(self):
        return self.latent if self.sampler == "flipout" else ()

    def component_scales(self, adapter, detach: bool = True) -> torch.Tensor:
        """``s_k``, shape ``(r,)``: the prior scale of each rank component (small: pruned).  With ``ard: inclusion``
        it is ``pi`` of the drawn globals while a model or guide runs, else ``pi`` at their posterior means."""
        if self.ard == "inclusion":
            gate = adapter.gate
            values = adapter._ctx.globals.get(adapter.path)
            if values is None:
                values = {name: gate.guide_global(name).mean for name in gate.sites}
            scale = gate.sparsity.inclusion_probs(gate.sparsity_hp, values)
        else:
            scale = adapter.lora_log_scale.exp()
        return scale.detach() if detach else scale
