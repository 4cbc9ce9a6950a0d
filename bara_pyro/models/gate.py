"""``GlobalLocalGate``: the prior and variational posterior over one layer's gates, assembled from components.

The gate of component ``k`` at token ``t`` is ``g_tk = z_tk * theta_tk``.  Its prior is a sparsity
component (``z``) and a magnitude component (``theta``), its guide a local and a global guide, each
a registered class named in :class:`~bara_pyro.models.config.BaRAConfig`.  With the defaults::

    {path}.pi      (r,)          pi_k ~ Beta(c g0/r, c (1 - g0/r))      q: Beta(pi_alpha_k, pi_beta_k)
    {path}.lambda  (r,)          lambda_k ~ Gamma(e0, e0)               q: Gamma(lambda_shape_k, lambda_rate_k)
    {path}.z       (n, T | r)    z_tk ~ Bernoulli(pi_k)                 q: BinaryConcrete(l_tk) (amortized)
    {path}.theta   (n, T | r)    theta_tk ~ Gamma(a, a / lambda_k)      q: Weibull(s_tk, k_tk)  (amortized)

``n, T`` are the local batch dims (sequences, tokens), in plates ``sequences`` and ``tokens``;
``r`` is an event dim.  Padding tokens are masked out of every local term.  Local sites are
scaled by ``N / B`` (dataset size over examples in the batch) and every latent site by the KL
warm-up weight ``beta``.  A local guide with ``per_token = False`` (``mean_field``) makes ``z`` and
``theta`` per-layer sites of shape ``(r,)``, outside the plates and counted once.  One with
``per_sequence`` (``conditional_prior`` with ``per: sequence``) makes them instance-wise: values ``(n, 1, r)``
in the ``sequences`` plate alone, masked where a sequence has no real token, the same gate for every token
of a sequence (a contextual prior reads the sequence's pooled context).  A component ``none`` fixes its
factor to 1 and has no sites.

Every KL term uses the registered closed form when there is one and otherwise the one-draw Monte
Carlo term ``log q(x) - log p(x)`` (:func:`~bara_pyro.models.kl.kl_or_mc`), exactly as
``TraceMeanField_ELBO`` does, so the fused estimator equals the Pyro one draw for draw.

Fast path: with the amortized local guide and Bernoulli/Gamma local priors (every built-in
sparsity x magnitude pair), :meth:`GlobalLocalGate.gated` runs the ``fused``, ``sample`` and
``mean`` modes through :mod:`~bara_pyro.models.fused_kernels` (same math and, on CPU, the same
draws; Triton kernels on CUDA, chosen by ``ctx.gate_impl``), unless gate statistics are being
recorded.  The contextual gate tied to its prior (``contextual_beta_process`` with ``conditional_prior``, per
token, no magnitude: ``bara_singular``) runs its ``fused`` mode through
:mod:`~bara_pyro.models.fused_contextual` (:meth:`gated_scaled` also folds a weight family's per-component scale
into it).  With the default beta_process + gamma + mean_field globals, ``BaRAModel.fused_loss``
also draws every layer's globals in one call (``fast_globals``); under ``slab_gaussian`` weights it draws every
adapter's gate globals and factors with :func:`~bara_pyro.models.fused_slab.slab_globals_fused`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule

from . import fused_contextual, fused_kernels
from .config import BaRAConfig
from .context import GateContext, rows_of_sample
from .guides import AmortizedLocalGuide, ConditionalPriorLocalGuide, MeanFieldGlobalGuide
from .kl import has_closed_form_kl, kl_divergence, kl_or_mc
from .priors import (
    BetaProcessPrior,
    ContextualBetaProcessPrior,
    GammaMagnitudePrior,
    Hyperparameters,
    MagnitudePrior,
    SparsityPrior,
)
from .row_shard import drawing_rows

__all__ = ["GlobalLocalGate"]


class GlobalLocalGate(PyroModule):
    """Global and local gate variables of one adapter (see the module docstring)."""

    def __init__(self, path: str, config: BaRAConfig):
        super().__init__()
        parts = config.components
        r = config.r
        self.path = path
        self.r = r
        self.sparsity, self.magnitude = parts.sparsity, parts.magnitude
        self.local_guide, self.global_guide = parts.local, parts.global_
        self.has_z, self.has_theta = self.sparsity.active, self.magnitude.active
        self.per_token = self.local_guide.per_token
        self.per_sequence = self.per_token and self.local_guide.per_sequence  # one local gate per sequence
        self.a_theta = float(getattr(self.magnitude, "local_shape", None) or config.a_theta)
        init_logit = getattr(self.local_guide, "init_logit", None)
        init_prob = 1.0 / (1.0 + math.exp(-(config.init_gate_logit if init_logit is None else init_logit)))
        self.sparsity_hp = Hyperparameters(self.sparsity.hyperparameters(r) if self.has_z else {})
        self.magnitude_hp = Hyperparameters(self.magnitude.hyperparameters(r) if self.has_theta else {})
        self.sites = {}
        self._site_owner = {}
        for owner, component in (("sparsity", self.sparsity), ("magnitude", self.magnitude)):
            if component.active:
                for name, site in component.global_sites(r, init_prob).items():
                    self.sites[name] = site
                    self._site_owner[name] = owner
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)
        self.global_guide.install(self, self.sites)
        self.local_guide.install(self)
        self._ctx = GateContext()
        self.fast_local = (type(self.local_guide) is AmortizedLocalGuide and self.has_z and self.has_theta
                           and type(self.sparsity).local_prior is SparsityPrior.local_prior
                           and type(self.magnitude).local_prior is MagnitudePrior.local_prior)
        self.fast_globals = (self.fast_local and type(self.sparsity) is BetaProcessPrior
                             and type(self.magnitude) is GammaMagnitudePrior
                             and type(self.global_guide) is MeanFieldGlobalGuide)
        self._net = (self.local_net,) if self.fast_local else ()  # direct reference: no PyroModule lookup per call
        # the contextual gate tied to its prior (bara_singular): fused_contextual runs its training pass
        self.fast_contextual = (type(self.local_guide) is ConditionalPriorLocalGuide and self.per_token
                                and not self.per_sequence and self.has_z and not self.has_theta
                                and type(self.sparsity) is ContextualBetaProcessPrior
                                and self.sparsity.context == "shift")
        self.tied_local = bool(getattr(self.local_guide, "tied_to_prior", False))  # q(locals) = p(locals | globals)

    # ----------------------------------------------------------------- distributions
    def prior_global(self, name: str, values: dict[str, torch.Tensor]):
        """Prior of global site ``name`` given the sites drawn before it (batch shape = the site's shape)."""
        if self._site_owner[name] == "sparsity":
            return self.sparsity.global_prior(name, self.sparsity_hp, values)
        return self.magnitude.global_prior(name, self.magnitude_hp, values)

    def guide_global(self, name: str):
        return self.global_guide.posterior(self, name, self.sites[name])

    def local_priors(self, values: dict[str, torch.Tensor], h: torch.Tensor | None = None):
        """``(p(z), p(theta))`` given the layer's global values (None: fixed to 1): batch shape ``(r,)``, or
        ``h.shape`` for a contextual prior, which needs the tokens' adapter projection ``h`` ``(..., r)``
        (per-sequence gates: ``local_value_shape(h)``, the context pooled over the real tokens of the context's
        token mask)."""
        if self.per_sequence and h is not None:
            mask = self._mask(h.shape[:-1])
            p_z = self.sparsity.sequence_local_prior(self.sparsity_hp, values, h, mask) if self.has_z else None
            p_theta = (self.magnitude.sequence_local_prior(self.magnitude_hp, values, h, mask)
                       if self.has_theta else None)
            return p_z, p_theta
        p_z = self.sparsity.local_prior(self.sparsity_hp, values, h) if self.has_z else None
        p_theta = self.magnitude.local_prior(self.magnitude_hp, values, h) if self.has_theta else None
        return p_z, p_theta

    def local_value_shape(self, h: torch.Tensor) -> torch.Size:
        """Shape of the local gate values for the adapter projection ``h`` ``(n, [T,] r)``: ``h.shape``, or
        ``(n, [1,] r)`` for per-sequence gates."""
        if not self.per_sequence:
            return h.shape
        return torch.Size((h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],))

    def globals_for(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layer's global values that the local gates of ``h`` ``(n, [T,] r)`` are drawn given: the drawn
        ones while training (modes guide, model, fused), else posterior means (mode ``mean``) or, in mode
        ``sample``, one posterior draw per sample spread over its sample-major rows (``(n, [1,] *site shape)``)."""
        ctx = self._ctx
        values = ctx.globals.get(self.path)
        if values is not None:
            return values
        values = {}
        with torch.no_grad():
            for name in self.sites:
                q = self.guide_global(name)
                if ctx.mode == "sample":
                    # rsample where there is one: Normal.sample checks its scale on the host (a device
                    # sync that CUDA-graph capture refuses); rsample draws the same distribution
                    draws = (q.rsample if q.has_rsample else q.sample)((ctx.num_samples,))
                    values[name] = rows_of_sample(draws.reshape(ctx.num_samples, -1), h).reshape(
                        (h.shape[0],) + (1,) * (h.dim() - 2) + draws.shape[1:])
                else:
                    values[name] = q.mean
        return values

    # ----------------------------------------------------------------- global sites
    def sample_globals(self, side: str) -> None:
        """Pyro ``model``/``guide`` side: sample every global site in order and keep the values in the context."""
        ctx = self._ctx
        values = {}
        with poutine.scale(scale=ctx.kl_beta):
            for name, site in self.sites.items():
                fn = self.guide_global(name) if side == "guide" else self.prior_global(name, values)
                values[name] = pyro.sample(f"{self.path}.{name}", fn.to_event(len(site.shape)))
        ctx.globals[self.path] = values

    def fused_globals(self) -> torch.Tensor:
        """Fused path: draw every global site from q (the Pyro guide's order); return their summed KL."""
        values, kl = self._draw_globals_and_kl(reparameterized=True)
        self._ctx.globals[self.path] = values
        return kl

    def _draw_globals_and_kl(self, reparameterized: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One draw of every global site from q, in site order, and the summed KL to the prior."""
        values, kl = {}, self._dtype_probe
        for name in self.sites:
            q = self.guide_global(name)
            x = q.rsample() if reparameterized else q.sample()
            kl = kl + kl_or_mc(q, self.prior_global(name, values), x).sum()
            values[name] = x
        return values, kl

    @torch.no_grad()
    def global_kl(self) -> torch.Tensor:
        """KL of the global sites, summed (for logging).  Closed form where every site has one (nothing drawn);
        otherwise Monte Carlo sites use a draw that leaves the RNG alone."""
        kl = self._closed_form_global_kl()
        if kl is not None:
            return kl
        devices = [self._dtype_probe.device] if self._dtype_probe.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            return self._draw_globals_and_kl(reparameterized=False)[1]

    def _closed_form_global_kl(self) -> torch.Tensor | None:
        """The summed closed-form KL of every global site, or None when a site has none or its prior depends on
        the values of earlier sites."""
        kl = self._dtype_probe
        for name in self.sites:
            q = self.guide_global(name)
            try:
                p = self.prior_global(name, {})
            except KeyError:  # a prior given earlier sites' values
                return None
            try:
                kl = kl + kl_divergence(q, p).sum()
            except NotImplementedError:
                return None
        return kl

    @torch.no_grad()
    def draw_globals(self) -> torch.Tensor:
        """Draw every global site from q into the context (for a following pass in mode ``fused``) and return
        ``log p(values) - log q(values)``, summed: one importance log-ratio of the global guide (for PSIS)."""
        values, log_ratio = {}, self._dtype_probe
        for name in self.sites:
            q = self.guide_global(name)
            x = q.sample()
            log_ratio = log_ratio + (self.prior_global(name, values).log_prob(x) - q.log_prob(x)).sum()
            values[name] = x
        self._ctx.globals[self.path] = values
        return log_ratio

    @property
    def is_stochastic(self) -> bool:
        """Whether gates drawn in mode ``sample`` vary (False for the delta local guide)."""
        with torch.no_grad(), self._probing():
            q = self.local_guide.posterior(self, self._dtype_probe.new_zeros(1, self.r))
        return any(d is not None and not isinstance(d, pyro.distributions.Delta) for d in q)

    def variational_parameters(self) -> dict[str, torch.Tensor]:
        """Constrained, detached parameters of the global posteriors, e.g. ``pi_alpha``, ``lambda_rate``."""
        prefixes = tuple(f"{name}_" for name in self.sites)
        return {name: getattr(self, name).detach() for name in self._pyro_params if name.startswith(prefixes)}

    # ----------------------------------------------------------------- local gates
    def gated(self, h: torch.Tensor) -> torch.Tensor:
        """``h * gates`` in ``h``'s dtype: the fast path (module docstring) where it applies, else :meth:`forward`.
        Per-token noise is drawn through the context's data-parallel row shard, if any
        (:mod:`~bara_pyro.models.row_shard`), else, with a tied local guide, shared by the rows of one example (the
        choices of a multiple-choice example, :meth:`_row_groups`); per-sequence noise ``(n, 1, r)`` as one token
        per row."""
        shard = self._ctx.row_shard if self.per_token else None
        if shard is not None and self.per_sequence:
            shard = dataclasses.replace(shard, total_length=1)
        with drawing_rows(shard, self._row_groups()):
            return self._gated(h)

    def gated_scaled(self, h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        """``h * gates * scale`` (``scale`` ``(r,)``) from one fused pass where the contextual fast path applies
        (:mod:`~bara_pyro.models.fused_contextual`); None elsewhere (then :meth:`gated` and a separate product)."""
        if not self._contextual_fast_path():
            return None
        with drawing_rows(self._ctx.row_shard, self._row_groups()):
            return self._contextual_gated(h, scale)

    def _row_groups(self):
        """The batch's example groups where the local guide is tied to the prior (no local KL: the model and the
        guide then draw the choices of an example alike, and the ELBO stays exact); None otherwise, where a
        per-row local KL counts each choice sequence's gates as its own."""
        return self._ctx.row_groups if self.per_token and self.tied_local else None

    def _contextual_fast_path(self) -> bool:
        ctx = self._ctx
        return self.fast_contextual and ctx.mode == "fused" and not ctx.collect_stats

    def _contextual_gated(self, h: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        ctx = self._ctx
        values = ctx.globals[self.path]
        ctx.local_positions = h.shape[:-1].numel()
        return fused_contextual.contextual_gated_local(h, values["pi"], values["w"], self.local_guide.temperature,
                                                       scale=scale, impl=ctx.gate_impl)

    def _gated(self, h: torch.Tensor) -> torch.Tensor:
        ctx = self._ctx
        mode = ctx.mode
        if self._contextual_fast_path():
            return self._contextual_gated(h, None)
        if not self._net or ctx.collect_stats or mode not in ("fused", "sample", "mean"):
            return h * self.forward(h).to(h.dtype)
        net = self._net[0]
        weights = (net.hidden.weight, net.hidden.bias, net.out.weight, net.out.bias)
        if mode == "mean":
            return fused_kernels.bara_gated_mean(h, *weights, impl=ctx.gate_impl)
        temperature = self.local_guide.temperature
        if mode == "sample":
            return fused_kernels.bara_gated_sample(h, *weights, temperature, impl=ctx.gate_impl)
        values = ctx.globals[self.path]
        s_hp, m_hp = self.sparsity_hp, self.magnitude_hp
        ctx.local_positions = h.shape[:-1].numel()
        y, ctx.kl_local[self.path] = fused_kernels.bara_gated_local(
            h, *weights, self.sparsity.inclusion_probs(s_hp, values), self.magnitude.component_scale(m_hp, values),
            m_hp.local_shape, temperature, mask=self._mask(h.shape[:-1]), impl=ctx.gate_impl)
        return y

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Gates of shape broadcastable to ``h`` (``(..., r)``), drawn as the context's mode says."""
        ctx = self._ctx
        mode = ctx.mode
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.to(self._dtype_probe.dtype)  # gates and KLs in the adapter's own precision (fp32 under bf16 autocast)
            if mode == "ones":
                return torch.ones_like(h)
            if mode == "model":
                return _combine(self.model_local_sites(h.shape[:-1] + (self.r,), h))
            if mode == "given":
                return _combine(ctx.cache[self.path])
            q_z, q_theta = self.local_guide.posterior(self, h)
            values = None
            if mode == "mean":
                gate = _combine({"z": None if q_z is None else q_z.mean,
                                 "theta": None if q_theta is None else q_theta.mean})
            elif mode == "guide":
                ctx.local_inputs[self.path] = h  # the model's contextual local prior is a function of it
                values = self._guide_local(q_z, q_theta, h.shape[:-1])
                gate = _combine(values)
            elif mode in ("fused", "sample"):
                per_draw = mode == "sample" and not self.per_token
                shape = (ctx.num_samples,) if per_draw else ()
                values = {"z": None if q_z is None else q_z.rsample(shape),
                          "theta": None if q_theta is None else q_theta.rsample(shape)}
                gate = _combine(values)
                if per_draw:
                    gate = rows_of_sample(gate, h)
                if mode == "fused" and self.tied_local:  # q(locals) = p(locals | globals): the local KL is 0
                    if not self.per_token:
                        raise ValueError("a local guide tied to the prior needs per-token gates")
                    ctx.local_positions = h.shape[:-1].numel()
                elif mode == "fused":
                    kl = self._local_kl(q_z, q_theta, values, h)
                    if self.per_token:
                        ctx.local_positions = h.shape[:-1].numel()
                        ctx.kl_local[self.path] = self._masked_sum(kl)
                    else:
                        ctx.kl_global[self.path] = ctx.kl_global.get(self.path, 0.0) + kl
            else:
                raise ValueError(f"gate mode {mode!r} does not run the gates")
            if ctx.collect_stats:
                self._record(q_z, q_theta, h, values if mode == "guide" and self.per_token else None)
        return gate

    def _local_kl(self, q_z, q_theta, values: dict, h: torch.Tensor) -> torch.Tensor:
        """Local KL summed over components: ``(n, T)`` per token, or a scalar per layer."""
        p_z, p_theta = self.local_priors(self._ctx.globals[self.path], h)
        kl = 0.0
        if q_z is not None:
            kl = kl + kl_or_mc(q_z, p_z, values["z"])
        if q_theta is not None:
            kl = kl + kl_or_mc(q_theta, p_theta, values["theta"])
        return kl.sum(-1)

    def _guide_local(self, q_z, q_theta, batch_shape) -> dict[str, torch.Tensor]:
        """The guide's local sites; ``batch_shape`` is the tokens' ``(n, T)``."""
        ctx = self._ctx
        values = {}
        with self._local_context(batch_shape) as mask:
            for name, q in (("z", q_z), ("theta", q_theta)):
                if q is not None:
                    fn = q.to_event(1) if mask is None else q.to_event(1).mask(mask)
                    values[name] = pyro.sample(f"{self.path}.{name}", fn)
        ctx.cache[self.path] = values
        return values

    def model_local_sites(self, shape: torch.Size, h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The model's local sites given the sampled globals; ``shape`` is the value shape ``(n, T, r)``
        (ignored for per-layer gates, whose sites have shape ``(r,)``; per-sequence gates take their shape from
        ``h``); ``h`` the tokens' adapter projection (for a contextual prior; default: the one the guide saw).
        Returns ``{z, theta}`` values."""
        if h is None:
            h = self._ctx.local_inputs.get(self.path)
        p_z, p_theta = self.local_priors(self._ctx.globals[self.path], h)
        tokens = h.shape[:-1] if self.per_sequence else shape[:-1]
        shape = self.local_value_shape(h) if self.per_sequence else shape
        values = {}
        with self._local_context(tokens) as mask:
            for name, p in (("z", p_z), ("theta", p_theta)):
                if p is not None:
                    if mask is None:
                        fn = p.to_event(1)
                    else:
                        fn = p.expand(torch.Size(shape)).to_event(1).mask(mask)
                    values[name] = pyro.sample(f"{self.path}.{name}", fn)
        return values

    @contextlib.contextmanager
    def _local_context(self, batch_shape):
        """Per-token sites (``batch_shape``: the tokens' ``(n, [T])``): plates ``sequences``/``tokens``, scale
        ``N/B * beta``, yields the token mask (True when there is none); per-sequence sites: plate ``sequences``
        alone, yields the mask of the sequences with a real token ``(n, [1])``.  Per-layer sites: scale ``beta``
        only, yields None."""
        ctx = self._ctx
        if not self.per_token:
            with poutine.scale(scale=ctx.kl_beta):
                yield None
            return
        mask = self._site_mask(self._mask(batch_shape))
        with (ctx.local_plates(batch_shape, tokens=not self.per_sequence),
              poutine.scale(scale=ctx.local_scale * ctx.kl_beta)):
            yield True if mask is None else mask

    # ----------------------------------------------------------------- analysis
    def kl_report(self) -> dict[str, bool]:
        """``{site: True if its KL is closed-form}`` for every latent site of this gate."""
        report, values = {}, {}
        with torch.no_grad(), torch.random.fork_rng(devices=[self._dtype_probe.device] if
                                                    self._dtype_probe.is_cuda else []):
            for name in self.sites:
                q = self.guide_global(name)
                report[name] = has_closed_form_kl(q, self.prior_global(name, values))
                values[name] = q.sample()
            h = self._dtype_probe.new_zeros(1, self.r)
            self._ctx.globals[self.path] = values
            try:
                with self._probing():
                    q_z, q_theta = self.local_guide.posterior(self, h)
                    p_z, p_theta = self.local_priors(values, h)
            finally:
                del self._ctx.globals[self.path]
            for name, q, p in (("z", q_z, p_z), ("theta", q_theta, p_theta)):
                if q is not None:
                    report[name] = has_closed_form_kl(q, p)
        return report

    # ----------------------------------------------------------------- helpers
    def _mask(self, batch_shape) -> torch.Tensor | None:
        mask = self._ctx.token_mask
        if mask is None:
            return None
        if mask.shape != batch_shape:
            raise ValueError(f"{self.path}: token mask of shape {tuple(mask.shape)} does not match the adapter "
                             f"input's leading shape {tuple(batch_shape)}")
        return mask

    @contextlib.contextmanager
    def _probing(self):
        """For probes of the guide on a dummy input of another shape: no token mask and mode ``mean`` inside the
        block (a prediction leaves mode ``sample``, whose draws are spread over the batch's rows)."""
        ctx = self._ctx
        saved = ctx.token_mask, ctx.mode
        ctx.token_mask, ctx.mode = None, "mean"
        try:
            yield
        finally:
            ctx.token_mask, ctx.mode = saved

    def _site_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The local sites' mask from the token mask ``(n, [T])``: itself, or per-sequence ``(n, 1)``, True where
        the sequence has a real token."""
        if self.per_sequence and mask is not None and mask.dim() > 1:
            return mask.any(-1, keepdim=True)
        return mask

    def _masked_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of per-token ``(n, T)`` (per-sequence: ``(n, 1)``) values over the real tokens (sequences)."""
        mask = self._site_mask(self._ctx.token_mask)
        if mask is None:
            return values.sum()
        return torch.where(mask, values, values.new_zeros(())).sum()

    def _record(self, q_z, q_theta, h, values) -> None:
        """Detached statistics: expected active components per token, and (guide mode) the local KL."""
        ctx = self._ctx
        with torch.no_grad():
            probs = q_z.mean if q_z is not None else h.new_ones(self.r)
            gate = probs * q_theta.mean if q_theta is not None else probs
            probs, gate = probs.expand(h.shape), gate.expand(h.shape)
            mask = ctx.token_mask
            weights = probs.new_ones(probs.shape[:-1]) if mask is None else mask.to(probs.dtype)
            stats = {
                "prob_sum": (probs * weights.unsqueeze(-1)).reshape(-1, self.r).sum(0),  # (r,)
                "num_tokens": weights.sum(),
            }
            if values is not None:
                stats["kl_local"] = self._masked_sum(self._local_kl(q_z, q_theta, values, h))
            if ctx.record_tokens:
                keep = weights.reshape(-1) > 0
                stats["token_prob"] = probs.reshape(-1, self.r)[keep]
                stats["token_expected_gate"] = gate.reshape(-1, self.r)[keep]
                # each kept token's sequence: the batch row of ``(rows, positions, r)`` (a 2-D ``h`` is one row)
                rows = probs.shape[0] if probs.dim() > 2 else 1
                row = torch.arange(rows, device=probs.device).repeat_interleave(probs[..., 0].numel() // rows)
                stats["token_row"], stats["num_rows"] = row[keep], rows
            ctx.stats[self.path] = stats


def _combine(values: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """``z * theta``, either factor absent (None) meaning 1."""
    z, theta = values.get("z"), values.get("theta")
    if z is None:
        return theta
    return z if theta is None else z * theta

