"""``BaRAModel``: one root ``PyroModule`` holding a frozen backbone's adapters, its Pyro model and guide.

Priors, guides and the weight family come from the config (:mod:`~bara_pyro.models.config`); this
module only orchestrates them: every adapter's global sites (latent weights, then gate globals) in
module order, then the backbone, whose hooks sample the local gates.

The backbone stays outside the module tree (``self._backbone = (backbone,)``, as ``AutoGuide``
keeps its model); each adapter is attached to its ``nn.Linear`` with a forward hook and lives in
``self.adapters`` under the module's own path, so parameter names read
``{name}.adapters.{module path}.lora_A.weight`` and Pyro sites ``{module path}.z``.

One backbone pass per SVI step: the guide runs the backbone with the gates it samples and keeps
the scores; the model, replayed against the guide trace, receives exactly those gate tensors
(checked by identity) and reuses the scores, because the likelihood is the same function of the
same gates.  If the model's gates are not the guide's (e.g. a prior run), it runs the backbone
itself with its own gates.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from pathlib import Path
from typing import Callable

import pyro
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributions import transform_to

from ..tasks.base import Batch
from .adapter import BaRAAdapter
from .config import BaRAConfig
from .context import GateContext
from .errors import ConfigError
from .fused_inducing import fits_inducing_globals, inducing_globals_fused
from .fused_kernels import bara_globals_expected, bara_globals_fused
from .fused_slab import fits_slab_globals, slab_globals_fused
from .host_copy import to_host
from .likelihoods import CategoricalLikelihood
from .row_shard import row_groups

__all__ = ["BaRAModel", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
HEAD_NAMES = ("classifier", "score")
FAST_GLOBAL_PARAMS = ("pi_alpha", "pi_beta", "lambda_shape", "lambda_rate")  # all positive-constrained
EXPECTED_GLOBALS_UNSUPPORTED = (
    "train.local_kl: expected needs the default BaRA gate in every adapter (adapter.prior: beta_process "
    "sparsity and gamma magnitude; adapter.guide: amortized local and mean_field global) on point-estimate "
    "weights; use train.local_kl: draw for other gates")

ForwardFn = Callable[[nn.Module, Batch], torch.Tensor]


def default_forward(backbone: nn.Module, batch: Batch) -> torch.Tensor:
    """Scores of a model whose output has ``.logits`` of shape ``(B, C)`` (sequence classification)."""
    return backbone(**batch.inputs).logits


class BaRAModel(PyroModule):
    """Frozen backbone + BaRA adapters + likelihood: the Pyro ``model`` and ``guide``, the fused ELBO
    (:meth:`fused_loss`) and prediction (:meth:`scores`).

    Every Pyro parameter is named ``{name}.adapters.{path}...``.  A new model drops the param-store
    entries left under its name by an earlier model (otherwise Pyro would silently hand it the old
    values); two models used through Pyro at the same time (e.g. ensemble members) need distinct
    config names."""

    def __init__(self, backbone: nn.Module, config: BaRAConfig, target_paths: list[str],
                 forward_fn: ForwardFn | None = None, likelihood=None):
        super().__init__(name=config.name)
        _forget_param_store_entries(config.name)
        self._backbone = (backbone,)
        self.config = config
        self.forward_fn = forward_fn or default_forward
        self.likelihood = likelihood or CategoricalLikelihood()
        self.dataset_size: int | None = None
        self.kl_beta = 1.0
        self.ctx = GateContext()
        self._guide_run = None
        self.last_scores: torch.Tensor | None = None
        self.adapters = PyroModule()
        self._adapter_items: list[tuple[str, BaRAAdapter]] = []
        self._hooks = []
        modules = dict(backbone.named_modules())
        attached = [p for p in target_paths if any(getattr(h, "_bara_hook", False)
                                                    for h in modules[p]._forward_hooks.values())]
        if attached:
            raise ValueError(f"{attached[0]} already carries a BaRA adapter; use a fresh copy of the backbone or "
                             "call remove_hooks() on the first BaRAModel")
        for path in target_paths:
            base = modules[path]
            adapter = BaRAAdapter(base, path, config).to(base.weight.device)
            self._attach(path, adapter)
            adapter._ctx = self.ctx
            if adapter.gate is not None:
                adapter.gate._ctx = self.ctx
            self._adapter_items.append((path, adapter))
            self._hooks.append(base.register_forward_hook(self._make_hook(adapter)))
        self.modules_to_save = self._resolve_modules_to_save(backbone, config.modules_to_save)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for module in self.modules_to_save.values():
            for p in module.parameters():
                p.requires_grad_(True)

    # ----------------------------------------------------------------- structure
    @property
    def backbone(self) -> nn.Module:
        return self._backbone[0]

    def train(self, mode: bool = True) -> BaRAModel:
        """Set the adapters' and the backbone's training mode (the backbone's dropout included), as ``model.train()``
        / ``model.eval()`` do for a whole PEFT model; the backbone is outside the module tree, so ``nn.Module.train``
        alone would leave it as it was."""
        super().train(mode)
        self.backbone.train(mode)
        return self

    def _attach(self, path: str, adapter: BaRAAdapter) -> None:
        parent = self.adapters
        *parents, leaf = path.split(".")
        for part in parents:
            if part not in parent._modules:
                setattr(parent, part, PyroModule())
            parent = parent._modules[part]
        setattr(parent, leaf, adapter)

    def _make_hook(self, adapter: BaRAAdapter):
        ctx = self.ctx

        def hook(module, args, output):
            if ctx.mode == "off":
                return output
            return output + adapter.forward(args[0]).to(output.dtype)

        hook._bara_hook = True
        return hook

    @staticmethod
    def _resolve_modules_to_save(backbone: nn.Module, names: list[str] | None) -> dict[str, nn.Module]:
        modules = dict(backbone.named_modules())
        if names is None:
            return {n: modules[n] for n in HEAD_NAMES if n in modules}
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"modules_to_save {missing} are not modules of the backbone")
        return {n: modules[n] for n in names}

    @property
    def adapter_items(self) -> list[tuple[str, BaRAAdapter]]:
        """``(module path, adapter)`` in the backbone's module order."""
        return list(self._adapter_items)

    @property
    def gates(self):
        return [(path, a.gate) for path, a in self._adapter_items if a.gate is not None]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.parameters() if p.requires_grad]
        for module in self.modules_to_save.values():
            params.extend(p for p in module.parameters() if p.requires_grad)
        return params

    def num_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts, total = backbone + adapters."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.backbone.parameters()) + sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.num_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the frozen backbone alone inside this context."""
        previous = self.ctx.mode
        self.ctx.mode = "off"
        try:
            yield
        finally:
            self.ctx.mode = previous

    def remove_hooks(self) -> nn.Module:
        """Detach every adapter and return the untouched backbone."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        return self.backbone

    # ----------------------------------------------------------------- Pyro model and guide
    def _prepare(self, batch: Batch, mode: str) -> None:
        ctx = self.ctx
        if mode == "model":  # keep what the guide recorded (cache, stats); fresh plates, globals and weights
            ctx.mode, ctx.globals, ctx.plates, ctx.weights = mode, {}, {}, {}
        else:
            ctx.reset(mode)
        ctx.token_mask = batch.token_mask
        n = batch.num_examples
        ctx.row_groups = None if batch.extras.get("packed") else row_groups(  # packed: a row is an example
            batch.extras.get("example_index"), n, self.config.choice_draws, batch.extras.get("shared_length"))
        ctx.local_scale = (self.dataset_size or n) / n
        # a 0-dim device tensor stays one (a captured training step reads the warm-up weight from it)
        ctx.kl_beta = self.kl_beta if torch.is_tensor(self.kl_beta) else float(self.kl_beta)

    def _data_plate(self, batch: Batch):
        n = batch.num_examples
        return pyro.plate("data", self.dataset_size or n, subsample=torch.arange(n, device=batch.labels.device))

    def model(self, batch: Batch) -> torch.Tensor:
        """p(y, gates, weights | x): priors on every latent site, ``y ~ likelihood(scores)`` in the data plate.

        Replaying the guide run of the same batch, the model receives the guide's tensors for every site
        that enters the forward pass (latent weights, local gates); if all are identical it reuses the
        guide's scores, else it runs the backbone with its own values."""
        guide_run, self._guide_run = self._guide_run, None
        ctx = self.ctx
        with self._pyro_context:
            self._prepare(batch, "model")
            for _, adapter in self._adapter_items:
                adapter.sample_globals("model")
            if guide_run is not None and guide_run[0] is batch:
                _, guide_scores, guide_cache, guide_weights = guide_run
                replayed = all(ctx.weights[path][name] is value
                               for path, values in guide_weights.items() for name, value in values.items())
                given = {}
                for path, entry in guide_cache.items():
                    values = self._model_local_sites(path, next(iter(entry.values())).shape)
                    replayed = replayed and all(values[name] is entry[name] for name in entry)
                    given[path] = values
                if replayed:
                    scores = guide_scores
                else:  # not a replay of that guide run: the likelihood must see the model's own values
                    ctx.mode, ctx.cache = "given", given
                    scores = self.forward_fn(self.backbone, batch)
            else:
                scores = self.forward_fn(self.backbone, batch)
            with self._data_plate(batch):
                pyro.sample("obs", self.likelihood.dist(scores), obs=batch.labels)
        self.last_scores = scores.detach()
        return scores

    def guide(self, batch: Batch) -> torch.Tensor:
        """q(weights) q(globals) prod_t q(local gates_t | x): runs the backbone once with sampled values."""
        ctx = self.ctx
        with self._pyro_context:
            self._prepare(batch, "guide")
            for _, adapter in self._adapter_items:
                adapter.sample_globals("guide")
            scores = self.forward_fn(self.backbone, batch)
        self._guide_run = (batch, scores, dict(ctx.cache), dict(ctx.weights))
        return scores

    def _model_local_sites(self, path: str, shape: torch.Size) -> dict[str, torch.Tensor]:
        """The model side of the per-token sites the guide sampled at ``path`` (the gate's, else the weight
        family's)."""
        for p, adapter in self._adapter_items:
            if p == path:
                if adapter.gate is not None:
                    return adapter.gate.model_local_sites(shape)
                return adapter.weights.model_local_sites(adapter, shape)
        raise KeyError(path)

    def _gate(self, path: str):
        for p, adapter in self._adapter_items:
            if p == path:
                return adapter.gate
        raise KeyError(path)

    @property
    def has_latent_sites(self) -> bool:
        """Whether the model has any latent site (False for plain LoRA and MC dropout)."""
        return any(a.has_latent_sites for _, a in self._adapter_items)

    def kl_report(self) -> dict[str, bool]:
        """``{site name: True if TraceMeanField_ELBO / the fused estimator use a closed-form KL}``."""
        return {f"{path}.{site}": analytic for path, adapter in self._adapter_items
                for site, analytic in adapter.kl_report().items()}

    @property
    def is_stochastic(self) -> bool:
        """Whether predictions in mode ``sample`` vary between draws: random gates, a weight posterior that is not
        a point mass, or MC dropout (False for LoRA, LoRA-MAP and delta guides: use ``num_samples = 0``)."""
        for _, adapter in self._adapter_items:
            weights = adapter.weights
            if adapter.gate is not None and adapter.gate.is_stochastic:
                return True
            if any(not isinstance(weights.posterior(adapter, n), pyro.distributions.Delta) for n in weights.latent):
                return True
            if weights.dropout_when_sampling and adapter.lora_dropout_p > 0:
                return True
            if weights.samples_without_latent_sites(adapter):
                return True
        return False

    def fit_posterior(self, task, rows, batch_size: int = 8, progress: bool = False, validation_rows=None) -> None:
        """After training: let the weight family fit a post-hoc posterior on the training ``rows`` (Laplace; its
        prior precision may be chosen on ``validation_rows``); a no-op for the others.  A family whose
        ``fit_posterior`` takes no ``validation_rows`` (written before it existed) is called without them."""
        fit = self.config.components.weights.fit_posterior
        params = inspect.signature(fit).parameters
        if "validation_rows" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            fit(self, task, rows, batch_size, progress, validation_rows=validation_rows)
        else:
            fit(self, task, rows, batch_size, progress)

    def posterior_summary(self) -> dict:
        """What the weight family's post-hoc fit chose (e.g. Laplace's prior precision); empty for the others."""
        return self.config.components.weights.posterior_summary(self)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """The trainer calls this after optimizer step ``step`` (1-based); each weight family may act on it, once for
        all of its adapters."""
        families: dict[int, tuple] = {}
        for _, adapter in self._adapter_items:
            families.setdefault(id(adapter.weights), (adapter.weights, []))[1].append(adapter)
        for family, adapters in families.values():
            family.after_steps(adapters, step, total_steps)

    @property
    def kl_is_analytic(self) -> bool:
        """True when every latent site's KL is closed-form (no Monte Carlo fallback anywhere)."""
        return all(self.kl_report().values())

    @property
    def fused_matches_svi(self) -> bool:
        """Whether :meth:`fused_loss` uses the same draws as the Pyro guide (False when a factor uses flipout)."""
        return not any(a._flipout for _, a in self._adapter_items)

    # ----------------------------------------------------------------- fused estimator
    def fused_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r"""The TraceMeanField ELBO in plain torch, one backbone pass, no Pyro traces.

        .. math::
            -\mathcal{L} = -\frac{N}{B}\sum_b \log p(y_b \mid g) + \beta \Big[\sum_l \mathrm{KL}_l^{global}
                           + \frac{N}{B}\sum_{l,t} \mathrm{KL}_{lt}^{local}\Big]

        with one draw of every global and local variable from q (same draws as the Pyro guide for
        the same seed, except factors sampled by flipout); a site without a closed-form KL uses
        ``log q(x) - log p(x)`` at its draw, as ``TraceMeanField_ELBO`` does.  ``KL^global`` holds
        everything counted once per step: global gate sites, latent weights and per-layer gates.
        With ``ctx.expected_globals`` (``train.local_kl: expected``) nothing global is drawn: each local KL is
        its closed-form expectation under q(pi) q(lambda)
        (:func:`~bara_pyro.models.fused_kernels.bara_globals_expected`), the KL at the effective globals plus
        a per-token constant, added here once for all layers.  ``slab_gaussian`` adapters (``bara_slab``) have their
        global sites drawn and their KLs taken for all adapters at once
        (:func:`~bara_pyro.models.fused_slab.slab_globals_fused`; the same draws), as do ``inducing_gaussian``
        adapters (Bayesian-LoRA, :func:`~bara_pyro.models.fused_inducing.inducing_globals_fused`).
        Returns ``(loss, parts)``; ``parts`` holds the unscaled, detached terms.
        """
        ctx = self.ctx
        with pyro.validation_enabled(False):  # argument checks would sync the GPU for every distribution
            self._prepare(batch, "fused")
            if self._fast_globals:
                self._fused_globals_at_once()
            elif ctx.expected_globals and not self.supports_expected_globals:
                raise ConfigError(EXPECTED_GLOBALS_UNSUPPORTED)
            elif self._slab_globals:
                slab_globals_fused(self._adapter_items, ctx)
            elif self._inducing_globals:
                inducing_globals_fused(self._adapter_items, ctx)
            else:
                for _, adapter in self._adapter_items:
                    adapter.fused_globals()
            scores = self.forward_fn(self.backbone, batch)
            loglik = self.likelihood.dist(scores).log_prob(batch.labels).sum()
        loss = -ctx.local_scale * loglik
        parts = {"loglik": loglik.detach(), "scores": scores.detach()}
        if ctx.kl_global or ctx.kl_local:
            kl_term, kl_global, kl_local = self.weighted_kl(loglik)
            loss = loss + kl_term
            parts.update(kl_global=kl_global.detach(), kl_local=kl_local.detach())
        return loss, parts

    def weighted_kl(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""The KL part of the last fused pass's loss, :math:`\beta\,[\mathrm{KL}^{global} + \frac{N}{B}
        \mathrm{KL}^{local}]`, with both sums (0-dim, still in the graph; zeros like ``like`` where absent).
        Returns ``(term, kl_global, kl_local)``."""
        ctx = self.ctx
        zero = like.new_zeros(())
        kl_global = torch.stack(list(ctx.kl_global.values())).sum() if ctx.kl_global else zero
        kl_local = torch.stack(list(ctx.kl_local.values())).sum() if ctx.kl_local else zero
        if ctx.kl_local_offset is not None:  # every per-token gate sees the same real tokens
            kl_local = kl_local + ctx.kl_local_offset.sum() * self.local_token_count()
        return ctx.kl_beta * (kl_global + ctx.local_scale * kl_local), kl_global, kl_local

    def local_token_count(self):
        """Real tokens of the last batch as the per-token gates saw them (the token mask's count, else every
        position of a gate input): what the expected local KL's per-token offset is multiplied by."""
        mask = self.ctx.token_mask
        return mask.sum() if mask is not None else self.ctx.local_positions

    @property
    def supports_expected_globals(self) -> bool:
        """Whether the fused estimator can take the local KL's expectation over the globals in closed form
        (``train.local_kl: expected``): every gate is the default BaRA gate (beta-process and gamma priors,
        mean-field global and amortized local guides) on point-estimate weights, or there are no gates."""
        return self._fast_globals or all(a.gate is None for _, a in self._adapter_items)

    @property
    def _fast_globals(self) -> bool:
        items = self._adapter_items
        return bool(items) and all(a.gate is not None and a.gate.fast_globals and not a.weights.latent
                                   for _, a in items)

    @property
    def _slab_globals(self) -> bool:
        """Whether :func:`~bara_pyro.models.fused_slab.slab_globals_fused` draws every adapter's global sites."""
        items = self._adapter_items
        return bool(items) and all(fits_slab_globals(a) for _, a in items)

    @property
    def _inducing_globals(self) -> bool:
        """Whether :func:`~bara_pyro.models.fused_inducing.inducing_globals_fused` draws every adapter's globals."""
        items = self._adapter_items
        return bool(items) and all(fits_inducing_globals(a) for _, a in items)

    def _fused_globals_at_once(self) -> None:
        """Every layer's default globals (pi ~ Beta, lambda ~ Gamma) in one ``bara_globals_fused`` call: the
        same draws, in the same order, as the per-gate :meth:`GlobalLocalGate.fused_globals` (on CPU)."""
        gates = [a.gate for _, a in self._adapter_items]
        raw = torch.stack([getattr(g, f"{name}_unconstrained") for name in FAST_GLOBAL_PARAMS for g in gates])
        params = transform_to(constraints.positive)(raw).unflatten(0, (len(FAST_GLOBAL_PARAMS), len(gates)))
        prior_a = torch.stack([g.sparsity_hp.a for g in gates])
        prior_b = torch.stack([g.sparsity_hp.b for g in gates])
        prior_shape = torch.stack([g.magnitude_hp.shape for g in gates])
        if self.ctx.expected_globals:  # no draw: the local KL's expectation under q(pi) q(lambda)
            local_shape = torch.stack([g.magnitude_hp.local_shape for g in gates]).unsqueeze(-1)
            pi, lam, offset, layer_kl = bara_globals_expected(*params.unbind(0), prior_a, prior_b, prior_shape,
                                                              prior_shape, local_shape, per_layer=True)
            self.ctx.kl_local_offset = offset  # times the real tokens: added once in fused_loss
        else:
            pi, lam, layer_kl = bara_globals_fused(*params.unbind(0), prior_a, prior_b, prior_shape, prior_shape,
                                                   per_layer=True)
        for (path, _), p, m in zip(self._adapter_items, pi.unbind(0), lam.unbind(0)):
            self.ctx.globals[path] = {"pi": p, "lambda": m}
        self.ctx.kl_gate_layers = layer_kl.detach()
        self.ctx.kl_global["globals"] = layer_kl.sum()

    # ----------------------------------------------------------------- prediction
    def scores(self, batch: Batch, mode: str = "mean", num_samples: int = 1, copied: bool = True) -> torch.Tensor:
        """Task scores ``(B, C)`` with gates and weights at their posterior mean (``mean``), sampled from q
        (``sample``; the batch holds ``num_samples`` sample-major copies of its rows, see
        :func:`~bara_pyro.inference.predict`), every gate fixed to 1 (``ones``: plain LoRA at the mean
        weights), or with the adapters off (``off``).  ``copied=False`` (mode ``sample``, where
        :meth:`draws_from_one_copy` holds): the batch holds each of its ``n`` rows once, and the scores of the
        ``S`` copies, ``(S * n, C)``, are drawn from them."""
        if mode not in ("mean", "sample", "ones", "off"):
            raise ValueError(f"prediction mode must be 'mean', 'sample', 'ones' or 'off', got {mode!r}")
        family = self.config.components.weights
        family_samples = self._family_samples(mode)
        if not copied and not (family_samples and num_samples > 0 and family.draws_from_one_copy(num_samples)):
            raise ValueError("copied=False needs mode 'sample' and a predictive that draws from one copy "
                             "(draws_from_one_copy)")
        with pyro.validation_enabled(False):
            if family_samples:
                return family.sampled_scores(self, batch, int(num_samples), copied=copied)
            self._prepare(batch, mode)
            self.ctx.num_samples = int(num_samples)
            return self.forward_fn(self.backbone, batch)

    def _family_samples(self, mode: str) -> bool:
        family = self.config.components.weights
        return (mode == "sample" and family.sampled_scores is not None and bool(self._adapter_items)
                and family.samples_without_latent_sites(self._adapter_items[0][1]))

    def draws_from_one_copy(self, num_samples: int) -> bool:
        """Whether sampled prediction needs each row once (``scores(..., copied=False)``): the weight family's
        predictive draws the ``S`` copies' scores in function space (e.g. Laplace's linearised predictive)."""
        return (num_samples > 0 and self._family_samples("sample")
                and self.config.components.weights.draws_from_one_copy(num_samples))

    def packs_choices(self, num_samples: int, training: bool = False) -> bool:
        """Whether prediction may score a multiple-choice example's choices packed in one row (the shared prefix
        once, :mod:`~bara_pyro.tasks.packed_choices`) without changing what is estimated: no per-sequence gate
        (its context is pooled over one choice's sequence), a weight family that allows it, and at ``S > 0`` the
        choices' per-token draws shared as a packed row shares them (``choice_draws: prefix`` with gates tied to
        their conditional prior; a guide with a per-token KL draws per sequence).  ``training``: for a training
        step (``num_samples`` 1), whose weight families may pack where their predictive does not."""
        items = [a for _, a in self._adapter_items]
        if any(a.gate is not None and a.gate.per_sequence for a in items):
            return False
        weights = self.config.components.weights
        if not (weights.trains_packed() if training else weights.packs_choices(num_samples)):
            return False
        if num_samples == 0 or not self.is_stochastic:
            return True
        return self.config.choice_draws == "prefix" and all(
            a.gate is None or not a.gate.per_token or a.gate.tied_local for a in items)

    def gate_statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        """Statistics recorded by the last forward pass when ``ctx.collect_stats`` was set."""
        return self.ctx.stats

    def effective_rank(self) -> dict[str, float]:
        """Expected number of active components per token, E_q[sum_k z_ltk], per layer and jointly
        (mean over layers), from the last forward pass run with ``ctx.collect_stats``."""
        per_layer = {path: float(s["prob_sum"].sum() / s["num_tokens"].clamp_min(1))
                     for path, s in self.ctx.stats.items()}
        if per_layer:
            per_layer["joint"] = sum(per_layer.values()) / len(per_layer)
        return per_layer

    # ----------------------------------------------------------------- save / load
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        state = dict(self.state_dict())
        for path, module in self.modules_to_save.items():
            for k, v in module.state_dict().items():
                state[f"modules_to_save.{path}.{k}"] = v
        return to_host(state)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("modules_to_save.")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ValueError(f"adapter weights do not fit this model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for path, module in self.modules_to_save.items():
            prefix = f"modules_to_save.{path}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(sub, strict=True)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (adapter weights only)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"bara_config": self.config.to_dict(), "likelihood": self.likelihood.to_dict(),
                  "target_paths": [p for p, _ in self._adapter_items],
                  "modules_to_save": list(self.modules_to_save),
                  "base_model": getattr(getattr(self.backbone, "config", None), "_name_or_path", None)}
        _atomic_write_text(directory / ADAPTER_CONFIG_NAME, json.dumps(config, indent=2))
        tmp = directory / (ADAPTER_WEIGHTS_NAME + ".tmp")
        save_file(self.adapter_state_dict(), str(tmp))
        os.replace(tmp, directory / ADAPTER_WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, backbone: nn.Module, directory: str | os.PathLike,
                        forward_fn: ForwardFn | None = None) -> "BaRAModel":
        """Rebuild the adapters saved by :meth:`save_pretrained` on ``backbone`` and load their weights."""
        from .likelihoods import likelihood_from_dict

        directory = Path(directory)
        try:
            saved = json.loads((directory / ADAPTER_CONFIG_NAME).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no {ADAPTER_CONFIG_NAME} in {directory}") from None
        config = BaRAConfig.from_dict(saved["bara_config"])
        config.modules_to_save = saved.get("modules_to_save", config.modules_to_save)
        likelihood = likelihood_from_dict(saved.get("likelihood", {"name": "categorical"}))
        model = cls(backbone, config, saved["target_paths"], forward_fn=forward_fn, likelihood=likelihood)
        device = next(backbone.parameters()).device
        model.load_adapter_state_dict({k: v.to(device) for k, v in load_file(str(directory / ADAPTER_WEIGHTS_NAME))
                                       .items()})
        return model


def _forget_param_store_entries(name: str) -> None:
    store = pyro.get_param_store()
    for key in [k for k in store.keys() if k.startswith(name + ".")]:
        del store[key]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
