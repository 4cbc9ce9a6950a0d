r"""Bayesian fine-tuning in a projected subspace (the LoRA-XS / B-LoRA-XS line): only an ``r x r`` core is learned.

With the truncated SVD of the frozen weight, ``W0 ≈ U_r S_r V_r^T``, the factors are fixed and the core
``R`` (``r x r``) is the only trainable tensor of the layer::

    A = V_r^T            (r x d_in,  buffer)
    B = U_r S_r          (d_out x r, buffer)
    y_t = W0 x_t + (alpha / r) B R A x_t           # R starts at 0: the backbone is unchanged

``R`` is trained as a point estimate (maximum likelihood; ``train.weight_decay`` gives the MAP of a Gaussian
prior), and its posterior comes from the iterates (``posterior: swag``, SWAG [2]): from the fraction
``swag_start`` of training on, every ``swag_every`` steps the running mean and second moment of ``R`` and the
last ``swag_rank`` deviations from the running mean are kept (buffers, so they are checkpointed and saved),
and prediction draws

.. math:: R_s = \bar R + \tfrac{1}{\sqrt 2}\,\Sigma_{diag}^{1/2} z_1 + \tfrac{1}{\sqrt{2(K-1)}}\,\hat D z_2,
          \quad z_1 \sim N(0, I_{r^2}),\ z_2 \sim N(0, I_K)

(low rank plus diagonal); posterior-mean prediction uses :math:`\bar R`.  ``posterior_kind: laplace`` instead
fits, after training, a diagonal Laplace posterior over every layer's ``R`` with ``laplace-torch``
(:mod:`~bara_pyro.models.weights_laplace`: ``predictive``, ``prior_precision``, ``optimize_prior_precision``,
``prior_precision_method`` as there); posterior-mean prediction is then the trained ``R``.  ``posterior_kind:
none`` keeps the point estimate (LoRA-XS).

References:
    [1] Bayesian fine-tuning in projected subspaces. arXiv:2605.07706.  K. Bałazy et al. LoRA-XS: Low-Rank
        Adaptation with Extremely Small Number of Parameters. arXiv:2405.17604.
    [2] W. Maddox, T. Garipov, P. Izmailov, D. Vetrov, A. G. Wilson. A Simple Baseline for Bayesian Uncertainty
        in Deep Learning. NeurIPS 2019.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .context import per_sample_linear
from .weights import WeightFamily, register_weights
from .weights_laplace import (
    check_laplace_options,
    fit_laplace,
    install_laplace_buffers,
    laplace_fitted,
    laplace_prediction_rows,
    laplace_sampled_scores,
    laplace_summary,
)

__all__ = ["ProjectedSubspaceWeights"]

LAPLACE_STRUCTURES = ("diag",)  # the core is no nn.Linear's weight, so curvlinops' K-FAC does not apply to it

POSTERIORS = ("swag", "laplace", "none")


def _freeze_as_buffer(linear: nn.Linear, value: torch.Tensor) -> None:
    del linear.weight
    linear.register_buffer("weight", value.contiguous())


def _snapshot_count(adapter) -> int:
    """``adapter.swag_count`` as an int, read from the device once per change of the buffer (its version counter
    and storage), so that a captured CUDA-graph prediction does not read it on the host (a sync capture refuses)."""
    count = adapter.swag_count
    key = (count._version, count.data_ptr(), count.device)
    cached = adapter.__dict__.get("_swag_count_cache")
    if cached is None or cached[0] != key:
        cached = (key, int(float(count)))
        adapter.__dict__["_swag_count_cache"] = cached
    return cached[1]


@register_weights("projected_subspace")
class ProjectedSubspaceWeights(WeightFamily):
    """Fixed SVD factors, a trained ``r x r`` core with a SWAG posterior (see the module docstring)."""

    posterior_kind: str = "swag"
    swag_start: float = 0.5
    swag_every: int = 10
    swag_rank: int = 10
    hessian_structure: str = "diag"
    predictive: str = "glm"
    prior_precision: float = 1.0
    optimize_prior_precision: bool = True
    prior_precision_method: str = "marglik"  # how optimize_prior_precision chooses it: "marglik" or "validation"

    def resolve(self, config) -> None:
        self.need(config.prior == "fixed", "use it with prior: fixed (no gates)")
        self.need(self.posterior_kind in POSTERIORS,
                  f"posterior_kind must be one of {list(POSTERIORS)}, got {self.posterior_kind!r}")
        self.need(0 <= self.swag_start < 1, f"swag_start must be in [0, 1), got {self.swag_start!r}")
        self.need(self.swag_every >= 1, f"swag_every must be a positive integer, got {self.swag_every!r}")
        self.need(self.swag_rank >= 2, f"swag_rank must be an integer >= 2, got {self.swag_rank!r}")
        check_laplace_options(self, structures=LAPLACE_STRUCTURES)

    def install(self, adapter) -> None:
        base = adapter._base_layer[0].weight
        r = adapter.r
        if r > min(base.shape):
            raise ValueError(f"{adapter.path}: r = {r} exceeds the rank of its {tuple(base.shape)} weight")
        u, s, vh = torch.linalg.svd(base.detach().float(), full_matrices=False)
        _freeze_as_buffer(adapter.lora_A, vh[:r].to(base.dtype))
        _freeze_as_buffer(adapter.lora_B, (u[:, :r] * s[:r]).to(base.dtype))
        adapter.lora_R = nn.Parameter(torch.zeros(r, r))
        adapter.register_buffer("swag_count", torch.zeros(()))
        adapter.register_buffer("swag_mean", torch.zeros(r, r))
        adapter.register_buffer("swag_sq_mean", torch.zeros(r, r))
        adapter.register_buffer("swag_deviations", torch.zeros(self.swag_rank, r, r))
        if self.posterior_kind == "laplace":
            install_laplace_buffers(self, adapter)

    def laplace_tensors(self, adapter) -> dict[str, torch.Tensor]:
        return {"lora_R": adapter.lora_R}

    def fit_posterior(self, model, task, rows, batch_size: int, progress: bool = False,
                      validation_rows=None) -> None:
        if self.posterior_kind == "laplace":
            fit_laplace(self, model, task, rows, batch_size, progress, validation_rows)

    def posterior_summary(self, model) -> dict:
        return laplace_summary(self, model) if self.posterior_kind == "laplace" else {}

    def sampled_scores(self, model, batch, num_samples: int, copied: bool = True) -> torch.Tensor:
        if self.posterior_kind == "laplace":
            return laplace_sampled_scores(self, model, batch, num_samples, copied)
        if not copied:
            raise ValueError("SWAG's predictive draws weights: it needs the batch's sample-major copies")
        model._prepare(batch, "sample")
        model.ctx.num_samples = num_samples
        return model.forward_fn(model.backbone, batch)

    def prediction_rows(self, num_samples: int) -> int | None:
        return laplace_prediction_rows(self, num_samples) if self.posterior_kind == "laplace" else None

    def draws_from_one_copy(self, num_samples: int) -> bool:
        return self.posterior_kind == "laplace" and self.predictive == "glm"

    def packs_choices(self, num_samples: int) -> bool:
        return self.posterior_kind != "laplace"  # Laplace's predictive takes an unpacked batch's Jacobians

    def trains_packed(self) -> bool:
        return True  # R is trained as a point estimate under either posterior (SWAG and Laplace come after)

    # ----------------------------------------------------------------- SWAG moments
    def after_step(self, adapter, step: int, total_steps: int) -> None:
        if self.posterior_kind != "swag":
            return
        first = max(1, math.ceil(self.swag_start * total_steps))
        if step < first or (step - first) % self.swag_every:
            return
        with torch.no_grad():
            value = adapter.lora_R.detach().float()
            n = adapter.swag_count
            adapter.swag_mean.mul_(n / (n + 1)).add_(value / (n + 1))
            adapter.swag_sq_mean.mul_(n / (n + 1)).add_(value.pow(2) / (n + 1))
            slot = int(n.item()) % self.swag_rank
            adapter.swag_deviations[slot] = value - adapter.swag_mean
            adapter.swag_count.add_(1)

    def has_swag(self, adapter) -> bool:
        return self.posterior_kind == "swag" and _snapshot_count(adapter) >= 2

    def samples_without_latent_sites(self, adapter) -> bool:
        if self.posterior_kind == "laplace":
            return laplace_fitted(adapter)
        return self.has_swag(adapter)

    def swag_draws(self, adapter, num_samples: int) -> torch.Tensor:
        """``S`` SWAG draws of ``R``, ``(S, r, r)``."""
        mean = adapter.swag_mean
        var = (adapter.swag_sq_mean - mean.pow(2)).clamp_min(0)
        k = min(_snapshot_count(adapter), self.swag_rank)
        dev = adapter.swag_deviations[:k]
        z1 = torch.randn((num_samples,) + mean.shape, device=mean.device, dtype=mean.dtype)
        z2 = torch.randn(num_samples, k, device=mean.device, dtype=mean.dtype)
        low_rank = torch.einsum("sk,kij->sij", z2, dev) / math.sqrt(2 * max(k - 1, 1))
        return mean + var.sqrt() * z1 / math.sqrt(2) + low_rank

    # ----------------------------------------------------------------- forward
    def rank_transform(self, adapter, h: torch.Tensor) -> torch.Tensor:
        ctx = adapter._ctx
        core = getattr(adapter, "lora_R") if ctx.mode in ("guide", "model") else adapter.lora_R
        if ctx.mode == "sample" and self.has_swag(adapter):
            return per_sample_linear(h, self.swag_draws(adapter, ctx.num_samples).to(h.dtype))
        if ctx.mode == "sample" and "lora_R" in ctx.weights.get(adapter.path, {}):  # Laplace weight draws
            return per_sample_linear(h, ctx.weights[adapter.path]["lora_R"].to(h.dtype))
        if ctx.mode in ("mean", "ones", "sample") and self.has_swag(adapter):
            core = adapter.swag_mean
        return torch.nn.functional.linear(h, core.to(h.dtype))

    def mean_lora_factors(self, adapter) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B R)`` with ``R`` at the posterior-mean prediction's value (the SWAG mean or the trained core)."""
        core = adapter.swag_mean if self.has_swag(adapter) else adapter.lora_R
        return adapter.lora_A.weight, adapter.lora_B.weight @ core.to(adapter.lora_B.weight.dtype)
