r"""The global sites of every ``slab_gaussian`` or ``singular_slab`` adapter at once: the fused estimator's fast path
for ``bara_slab`` and ``bara_singular``.

Per adapter ``l`` (module order) the Pyro guide draws, site by site::

    pi_l     ~ Beta(pi_alpha_l, pi_beta_l)                 (r,)         beta process (contextual or not)
    w_l      ~ Normal(w_loc_l, w_scale_l)                  (r, r)       contextual beta process only
    lambda_l ~ Gamma(lambda_shape_l, lambda_rate_l)        (r,)         gamma magnitude only
    A_l      ~ Normal(M_l, sigma_l),  B_l ~ Normal(N_l, rho_l)          the latent factors (slab_gaussian)
    A_l, B_l = Delta (NearStiefel prior),  S_l ~ Normal(m_l, tau_l) (1, r)  the latent factors (singular_slab)

and the KL of each to its prior (``Beta(a, b)``, ``Normal(0, context_scale)``, ``Gamma(e0, e0)``,
``Normal(0, s_k / sqrt(fan_in))``).  :func:`slab_globals_fused` keeps one random-number call per site, in that
order, so on CPU the draws are the guide's bit for bit; everything else runs once per kind of site for all
adapters: the constraint transforms of the stacked parameters, the location-scale maps and the closed-form
KLs (torch's formulas, elementwise the same numbers as adapter by adapter).  Factors are stacked in groups of
equal shape, ``(k, r, d_in)`` or ``(k, d_out, r)``, with the prior scales ``s / sqrt(fan_in)`` ``(k, r)``
broadcast over them; per-adapter values are views of the stacks (``unbind``), so the backward pass gathers
their gradients with one ``stack`` per group instead of one scatter per adapter.  ``singular_slab``'s point
factors get their near-Stiefel penalty ``(c/2) |W W^T - I|^2`` from one batched Gram matrix per group, its
magnitudes their Normal-Normal KL (prior scale ``pi_k sigma_l``) in one call per output width.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Beta, Gamma, Normal, kl_divergence, transform_to

from .fused_kernels import _DirichletFromSample, _StandardGammaFromSample
from .guides import MeanFieldGlobalGuide
from .priors import BetaProcessPrior, ContextualBetaProcessPrior, GammaMagnitudePrior
from .priors.none import NoMagnitude
from .slab_weights import SlabGaussianWeights
from .weights_singular import SingularSlabWeights, stiefel_residual

__all__ = ["fits_slab_globals", "slab_globals_fused"]

SPARSITY = (BetaProcessPrior, ContextualBetaProcessPrior)
MAGNITUDE = (NoMagnitude, GammaMagnitudePrior)
FAMILIES = (SlabGaussianWeights, SingularSlabWeights)


def fits_slab_globals(adapter) -> bool:
    """Whether ``adapter``'s global sites are the ones :func:`slab_globals_fused` draws: ``slab_gaussian`` or
    ``singular_slab`` weights under a gate with a (contextual) beta-process sparsity prior, no or gamma magnitude,
    mean-field globals."""
    gate = adapter.gate
    return (type(adapter.weights) in FAMILIES and gate is not None
            and type(gate.global_guide) is MeanFieldGlobalGuide
            and type(gate.sparsity) in SPARSITY and type(gate.magnitude) in MAGNITUDE)


def _constrained(modules, names: tuple[str, ...]) -> list[torch.Tensor]:
    """The constrained values of the ``PyroParam`` parameters ``names`` of every module, each ``(L, *shape)``: one
    stack and one transform (parameters of one constraint)."""
    constraint = modules[0]._pyro_params[names[0]][0]
    raw = torch.stack([getattr(m, f"{name}_unconstrained") for name in names for m in modules])
    return list(transform_to(constraint)(raw).unflatten(0, (len(names), len(modules))).unbind(0))


def _rows(values: torch.Tensor, members: list[int], total: int) -> torch.Tensor:
    """Rows ``members`` of ``values`` ``(total, ...)``: ``values`` itself when that is every row, else a stack."""
    if members == list(range(total)):
        return values
    rows = values.unbind(0)
    return torch.stack([rows[i] for i in members])


def _factor_key(adapter, name: str) -> tuple:
    """``(name, shape)`` of a latent factor; ``singular_slab``'s magnitudes ``lora_S`` ``(1, r)`` also by ``d_out``
    (their mean is ``lora_S_loc * sqrt(d_out)``: one Python scalar per group, no per-adapter constant on the device)."""
    if name == "lora_S":
        return name, (1, adapter.r), adapter.out_features
    return name, tuple(getattr(adapter, name).weight.shape)


def _factor_groups(adapters, names) -> tuple[dict[tuple, list[int]], list[dict[str, tuple[tuple, int]]]]:
    """Latent factors grouped by :func:`_factor_key`: ``groups[key]`` lists the member adapters in order, and
    ``slots[l][name] = (key, row)`` says where adapter ``l``'s factor sits in its group's stack."""
    groups: dict[tuple, list[int]] = {}
    slots: list[dict[str, tuple[tuple, int]]] = []
    for i, adapter in enumerate(adapters):
        slots.append({})
        for name in names:
            key = _factor_key(adapter, name)
            members = groups.setdefault(key, [])
            slots[i][name] = (key, len(members))
            members.append(i)
    return groups, slots


def slab_globals_fused(items, ctx) -> None:
    """Draw every adapter's global sites from q (module order, site by site, as the Pyro guide does) into
    ``ctx.globals[path]`` and ``ctx.weights[path]``; put their summed closed-form KL in ``ctx.kl_global``.

    :param items: ``[(path, adapter)]``, every adapter passing :func:`fits_slab_globals`, of one config.
    Flipout factors are not drawn here (the forward pass perturbs them); their KL is.
    """
    adapters = [a for _, a in items]
    gates = [a.gate for a in adapters]
    num, sites, family = len(adapters), list(gates[0].sites), adapters[0].weights
    contextual, magnitude = "w" in sites, "lambda" in sites
    alpha, beta = _constrained(gates, ("pi_alpha", "pi_beta"))
    ab = torch.stack([alpha, beta], -1)  # (L, r, 2), as Beta builds its Dirichlet
    if contextual:
        w_loc = torch.stack([g.w_loc_unconstrained for g in gates])  # constraint real: no transform
        (w_scale,) = _constrained(gates, ("w_scale",))
        eps_w = w_loc.new_empty(w_loc.shape)
    if magnitude:
        lam_shape, lam_rate = _constrained(gates, ("lambda_shape", "lambda_rate"))
    groups, slots = _factor_groups(adapters, family.latent)
    singular = type(family) is SingularSlabWeights
    # factors drawn with Gaussian noise here: singular_slab's magnitudes (A, B are point estimates), else every
    # slab_gaussian factor not perturbed by flipout in the forward pass
    noisy = {"lora_S"} if singular else set(family.latent) - set(family.flipout_factors())
    eps = {key: ab.new_empty((len(members), *key[1])) for key, members in groups.items() if key[0] in noisy}

    # one random-number call per site, in the guide's order: Beta (its Dirichlet), Normal noise, Gamma, factors
    ab_draw, dirichlet, gammas = ab.detach(), [], []
    lam_draw = lam_shape.detach() if magnitude else None
    for i in range(num):
        dirichlet.append(torch._sample_dirichlet(ab_draw[i]))
        if contextual:
            eps_w[i].normal_()
        if magnitude:
            gammas.append(torch._standard_gamma(lam_draw[i]))
        for key, row in slots[i].values():
            if key in eps:
                eps[key][row].normal_()

    pi = _DirichletFromSample.apply(ab, torch.stack(dirichlet)).select(-1, 0)
    values = {"pi": pi}
    prior_pi = (torch.stack([g.sparsity_hp.a for g in gates]), torch.stack([g.sparsity_hp.b for g in gates]))
    layer_kl = kl_divergence(Beta(alpha, beta, validate_args=False), Beta(*prior_pi, validate_args=False)).sum(-1)
    if contextual:
        values["w"] = w_loc + eps_w * w_scale
        w_prior = torch.stack([g.sparsity_hp.w_scale for g in gates])
        layer_kl = layer_kl + kl_divergence(Normal(w_loc, w_scale, validate_args=False),
                                            Normal(w_loc.new_zeros(()), w_prior, validate_args=False)).sum((-2, -1))
    if magnitude:
        lam = _StandardGammaFromSample.apply(lam_shape, torch.stack(gammas)) / lam_rate
        lam.detach().clamp_(min=torch.finfo(lam.dtype).tiny)
        values["lambda"] = lam
        prior_shape = torch.stack([g.magnitude_hp.shape for g in gates])
        layer_kl = layer_kl + kl_divergence(Gamma(lam_shape, lam_rate, validate_args=False),
                                            Gamma(prior_shape, prior_shape, validate_args=False)).sum(-1)
    ctx.kl_gate_layers = layer_kl.detach()
    kl = layer_kl.sum()
    rows = {name: v.unbind(0) for name, v in values.items()}  # one backward stack per site, not one per adapter
    for i, (path, _) in enumerate(items):
        ctx.globals[path] = {name: rows[name][i] for name in sites}

    if singular:
        drawn, kl = _singular_factors(adapters, groups, eps, pi, kl)
        for i, (path, adapter) in enumerate(items):
            ctx.weights[path] = {name: drawn[key][row] for name, (key, row) in slots[i].items()}
            factor = family.global_factor(adapter)  # e.g. the directions' Occam factor
            if factor is not None:
                kl = kl + factor
        ctx.kl_global["globals"] = kl
        return

    # the factors, one stack per group: q = N(loc, scale), p = N(0, s_k / sqrt(fan_in)), s = pi or exp(log scale)
    scales = pi if family.ard == "inclusion" else torch.stack([a.lora_log_scale for a in adapters]).exp()
    zero, drawn = ab.new_zeros(()), {}
    for key, members in groups.items():
        name, shape = key
        loc = torch.stack([getattr(adapters[i], name).weight for i in members])  # (k, *shape)
        (scale,) = _constrained([adapters[i] for i in members], (f"{name}_scale",))
        prior = _rows(scales, members, num) / math.sqrt(shape[1])  # (k, r)
        prior = prior.unsqueeze(-1) if name == "lora_A" else prior.unsqueeze(-2)  # rows of A, columns of B
        if family.posterior_scale == "relative":
            scale = scale * prior
        kl = kl + kl_divergence(Normal(loc, scale, validate_args=False), Normal(zero, prior, validate_args=False)).sum()
        if key in eps:
            drawn[key] = (loc + eps[key] * scale).unbind(0)
    for i, (path, _) in enumerate(items):
        ctx.weights[path] = {name: drawn[key][row] for name, (key, row) in slots[i].items() if key in drawn}
    ctx.kl_global["globals"] = kl


def _singular_factors(adapters, groups, eps, pi, kl) -> tuple[dict[tuple, list[torch.Tensor]], torch.Tensor]:
    """``singular_slab``'s factors, one stack per group (:func:`_factor_groups`): ``A`` and ``B`` are their own values
    (``q = Delta``) with ``KL = -log NearStiefel = (c/2) |W W^T - I|^2`` (rows of ``A``, columns of ``B``), one
    batched Gram matrix per group; the magnitudes ``S = m + tau eps``, ``m = lora_S_loc sqrt(d_out)``, with
    ``KL(N(m, tau) || slab(s_k sigma))`` (the family's ``magnitude_prior``: Gaussian or moment), ``s = pi``
    (``ard: inclusion``) or 1.  Returns the per-adapter values of each
    group and ``kl`` plus their KL: the numbers of :meth:`BaRAAdapter.fused_globals`, adapter by adapter."""
    family, num = adapters[0].weights, len(adapters)
    drawn = {}
    for key, members in groups.items():
        name, mods = key[0], [adapters[i] for i in members]
        if name == "lora_S":
            loc = torch.stack([a.lora_S_loc for a in mods]) * math.sqrt(key[2])  # (k, 1, r)
            (scale,) = _constrained(mods, ("lora_S_scale",))  # (k, 1, r)
            sigma = torch.stack([a.lora_log_slab_scale for a in mods]).exp().reshape(-1, 1, 1)  # (k, 1, 1)
            if family.ard == "inclusion":
                prior = _rows(pi, members, num).unsqueeze(-2) * sigma  # (k, 1, r): pi_k sigma
            else:
                prior = sigma.expand(loc.shape)
            kl = kl + kl_divergence(Normal(loc, scale, validate_args=False), family.magnitude_prior(prior)).sum()
            drawn[key] = (loc + eps[key] * scale).unbind(0)
            continue
        weights = [getattr(a, name).weight for a in mods]
        residual = stiefel_residual(torch.stack(weights), rows=name == "lora_A")  # (k, r, r): A's rows, B's columns
        kl = kl + 0.5 * family.orthogonality * residual.pow(2).sum()
        drawn[key] = weights  # q = Delta: the weights themselves
    return drawn, kl
