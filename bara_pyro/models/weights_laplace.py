r"""Laplace-LoRA: a post-hoc Laplace approximation over the LoRA weights of a trained adapter (``laplace-torch``).

Training is plain LoRA (point estimates of ``A`` and ``B``; ``train.weight_decay`` makes it a MAP).  After
training, :meth:`LaplaceWeights.fit_posterior` fits, with ``laplace-torch`` [2], a Gaussian posterior around the
trained weights ``theta*`` of every adapter (``lora_A``, ``lora_B``; a task head stays a point estimate)::

    q(theta) = N(theta*, (H + delta I)^{-1})       # H: generalised Gauss-Newton of the training NLL

with ``H`` Kronecker-factored per weight matrix (``hessian_structure: kron``, K-FAC) or diagonal (``diag``).
The prior precision ``delta`` is kept at ``prior_precision`` or, with ``optimize_prior_precision: true``, chosen
by ``prior_precision_method``: ``marglik`` maximises the Laplace marginal likelihood ``log p(D | delta)`` of the
training rows (laplace-torch, from ``prior_precision``); ``validation`` takes the point of
``logspace(-4, 4, 100)`` whose linearised predictive has the lowest NLL on the run's validation rows
(:mod:`~bara_pyro.models.laplace_prior_precision`).  K-FAC takes each token as a sample of a layer
(``kfac_approx: expand``: its input factor is the mean of ``x x^T`` over the fit set's real tokens, padded positions
left out, its gradient factor a sum over them) or each sequence (``reduce``: the mean input over the sequence's
real tokens, the gradients summed over them; :func:`_masked_kfac`), so the fit's batches (``fit_batch_size``
rows) change its speed and memory, not the posterior.  Prediction with ``S``
samples uses

* ``predictive: glm`` (the linearised predictive of the paper): ``f ~ N(f(x; theta*), J Sigma J^T)`` in
  function space, ``J`` the Jacobian of the scores in ``theta``; each sample-major copy of an example gets
  its own draw of ``f`` (laplace-torch's ``_glm_predictive_distribution`` gives the mean and covariance);
* ``predictive: nn``: ``S`` weight draws ``theta_s ~ q`` (``laplace-torch``'s ``sample``), one per copy.

Posterior-mean prediction (``S = 0``) is the MAP model.  The curvature is stored in buffers of the adapters
(``laplace_A_kfac0`` ... or ``laplace_A_diag`` ...), so it is checkpointed and saved with the adapter; a loaded
model rebuilds its ``laplace-torch`` object from them on first use.

References:
    [1] A. X. Yang, M. Robeyns, X. Wang, L. Aitchison. Bayesian Low-rank Adaptation for Large Language Models.
        ICLR 2024.
    [2] E. Daxberger, A. Kristiadi, A. Immer, R. Eschenhagen, M. Bauer, P. Hennig. Laplace Redux -- Effortless
        Bayesian Deep Learning. NeurIPS 2021.
    [3] R. Eschenhagen, A. Immer, R. E. Turner, F. Schneider, P. Hennig. Kronecker-Factored Approximate Curvature
        for Modern Neural Network Architectures. NeurIPS 2023.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import UserDict
from collections.abc import MutableMapping

import torch
from torch import nn

from .laplace_prior_precision import CHOLESKY_JITTER, validation_prior_precision
from .lora_jacobians import FACTORS, lora_jacobians
from .weights import WeightFamily, register_weights

__all__ = ["LaplaceWeights", "fit_laplace", "laplace_of", "laplace_prediction_rows", "laplace_sampled_scores"]

HESSIAN_STRUCTURES = ("kron", "diag")
KFAC_APPROXIMATIONS = ("expand", "reduce")
PREDICTIVES = ("glm", "nn")
PRIOR_PRECISION_METHODS = ("marglik", "validation")
#: elements of the largest per-output gradient (``tokens x vocabulary``) that one vmapped Jacobian pass may hold
#: at once, summed over the outputs it takes together; a backward pass holds several tensors of that size
#: (measured on SmolLM2-135M on a CPU: about 0.7 GB per output for 448 tokens)
JACOBIAN_BUDGET_ELEMENTS = 2**25


class _ScoresModule(nn.Module):
    """``laplace-torch``'s view of a :class:`BaRAModel`: ``forward(data) -> scores (B, C)`` at the current weights;
    its parameters are the adapters' (the backbone stays outside the module tree)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, data):
        return self.model.scores(data["batch"], mode="mean")


class _Batches:
    """An iterable of ``{"batch": Batch, "labels": (B,)}`` over ``rows``; ``dataset`` gives laplace-torch ``N``."""

    def __init__(self, task, rows, batch_size: int, device):
        self.task, self.dataset, self.batch_size, self.device = task, rows, batch_size, device

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch_size):
            chunk = [self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))]
            yield _as_input(self.task.collate(chunk).to(self.device))

    def __len__(self):
        return -(-len(self.dataset) // self.batch_size)


def _as_input(batch) -> UserDict:
    # dict_key_x names a tensor whose first dim is the batch size (curvlinops' K-FAC reads it)
    return UserDict(batch=batch, labels=batch.labels)


@register_weights("laplace")
class LaplaceWeights(WeightFamily):
    """Laplace-LoRA: LoRA training, then a post-hoc Laplace posterior over ``A`` and ``B`` (module docstring)."""

    hessian_structure: str = "kron"
    predictive: str = "glm"
    prior_precision: float = 1.0
    optimize_prior_precision: bool = True
    prior_precision_method: str = "marglik"  # how optimize_prior_precision chooses it: "marglik" or "validation"
    fit_batch_size: int = 16  # rows per batch of the post-hoc fit (the fitted posterior does not depend on it)
    kfac_approx: str = "expand"  # K-FAC over a sequence's tokens: "expand" (a sample each) or "reduce" (summed)

    def resolve(self, config) -> None:
        self.need(config.prior == "fixed", "use it with prior: fixed (no gates)")
        check_laplace_options(self)
        self.need(self.kfac_approx in KFAC_APPROXIMATIONS,
                  f"kfac_approx must be one of {list(KFAC_APPROXIMATIONS)}, got {self.kfac_approx!r}")
        size = self.fit_batch_size
        self.need(isinstance(size, int) and not isinstance(size, bool) and size >= 1,
                  f"fit_batch_size must be a whole number >= 1, got {size!r}")

    def laplace_tensors(self, adapter) -> dict[str, torch.Tensor]:
        """The adapter's tensors the posterior covers, in the order of ``adapter.parameters()``."""
        return {name: getattr(adapter, name).weight for name in FACTORS}

    def install(self, adapter) -> None:
        install_laplace_buffers(self, adapter)

    def fit_posterior(self, model, task, rows, batch_size: int, progress: bool = False,
                      validation_rows=None) -> None:
        """Fit the posterior on ``rows`` in batches of :attr:`fit_batch_size` (``batch_size``, the training batch,
        is not used: K-FAC's factors and the diagonal GGN are sums over the fit set's tokens and rows)."""
        fit_laplace(self, model, task, rows, self.fit_batch_size, progress, validation_rows)

    def posterior_summary(self, model) -> dict:
        return laplace_summary(self, model)

    def samples_without_latent_sites(self, adapter) -> bool:
        return laplace_fitted(adapter)

    def sampled_scores(self, model, batch, num_samples: int, copied: bool = True) -> torch.Tensor:
        return laplace_sampled_scores(self, model, batch, num_samples, copied)

    def draws_from_one_copy(self, num_samples: int) -> bool:
        return self.predictive == "glm"

    def packs_choices(self, num_samples: int) -> bool:
        return False  # the linearised predictive takes the Jacobians of an unpacked batch's scores

    def trains_packed(self) -> bool:
        return True  # training is the MAP fit: no draws, the same loss packed

    def prediction_rows(self, num_samples: int) -> int | None:
        return None  # the Jacobians of the LoRA factors take a backward pass of the batch per score column

    def samples_factor(self, adapter, name: str) -> bool:
        return self.predictive == "nn" and bool(adapter._ctx.weights.get(adapter.path))

    def draws(self, adapter, name, num_samples):
        return adapter._ctx.weights[adapter.path][name]


# ===================================================================== shared by the families with a Laplace posterior
# A family using these has fields hessian_structure, predictive, prior_precision, optimize_prior_precision,
# prior_precision_method (and kfac_approx where it allows "kron") and a method laplace_tensors(adapter) ->
# {name: tensor}, in the order of the adapter's trainable parameters.

def check_laplace_options(family, structures=HESSIAN_STRUCTURES) -> None:
    family.need(family.hessian_structure in structures,
                f"hessian_structure must be one of {list(structures)}, got {family.hessian_structure!r}")
    family.need(family.predictive in PREDICTIVES,
                f"predictive must be one of {list(PREDICTIVES)}, got {family.predictive!r}")
    family.need(family.prior_precision > 0 and math.isfinite(family.prior_precision),
                f"prior_precision must be a positive number, got {family.prior_precision!r}")
    family.need(family.prior_precision_method in PRIOR_PRECISION_METHODS,
                f"prior_precision_method must be one of {list(PRIOR_PRECISION_METHODS)}, "
                f"got {family.prior_precision_method!r}")


def install_laplace_buffers(family, adapter) -> None:
    """Zero buffers for the curvature of every covered tensor (K-FAC factors ``(out, out)``, ``(in, in)``, or the
    diagonal) and ``laplace_state`` = (prior precision, N, outputs), the same on every adapter; N = 0: not fitted."""
    for name, t in family.laplace_tensors(adapter).items():
        if family.hessian_structure == "kron":
            out, inp = t.shape
            adapter.register_buffer(f"laplace_{name}_kfac0", torch.zeros(out, out))
            adapter.register_buffer(f"laplace_{name}_kfac1", torch.zeros(inp, inp))
        else:
            adapter.register_buffer(f"laplace_{name}_diag", torch.zeros(t.shape))
    adapter.register_buffer("laplace_state", torch.zeros(3))


def laplace_prediction_rows(family, num_samples: int) -> int | None:
    """Through laplace-torch's backend (a posterior over other tensors than the LoRA factors) the linearised
    predictive takes the Jacobian of one example's scores per pass: a pass's backward holds the
    logits gradient of every sequence in it once per output, so its memory grows with the square of its rows."""
    return 1 if family.predictive == "glm" and num_samples > 0 else None


def laplace_fitted(adapter) -> bool:
    return float(adapter.laplace_state[1]) > 0


def laplace_summary(family, model) -> dict:
    """``{"kind": "laplace", "hessian_structure", ["kfac_approx",] "predictive", "prior_precision",
    "prior_precision_method", "fit_examples"}`` of a fitted posterior (the prior precision after its search when one
    ran; the method ``marglik``, ``validation`` or ``fixed``; ``kfac_approx`` for a K-FAC posterior), and after a
    validation search in this process ``validation_nll``: ``{"examples", "prior_precision": grid, "nll": per point}``;
    ``{}`` before the fit."""
    adapter = model.adapter_items[0][1]
    if not laplace_fitted(adapter):
        return {}
    prior_precision, n_data, _ = adapter.laplace_state.tolist()
    kron = {"kfac_approx": family.kfac_approx} if family.hessian_structure == "kron" else {}
    method = family.prior_precision_method if family.optimize_prior_precision else "fixed"
    out = {"kind": "laplace", "hessian_structure": family.hessian_structure, **kron, "predictive": family.predictive,
           "prior_precision": prior_precision, "prior_precision_method": method, "fit_examples": int(n_data)}
    curve = getattr(model, "_laplace_validation", None)
    if method == "validation" and curve is not None:
        out["validation_nll"] = dict(curve)
    return out


def jacobian_chunk(batch, width: int, budget: int | None = None) -> int:
    """How many score outputs one vmapped Jacobian pass takes: each holds a gradient of about ``tokens x width``
    elements (``width``: the vocabulary of a causal LM's logits), and together they stay within ``budget``
    (default :data:`JACOBIAN_BUDGET_ELEMENTS`)."""
    budget = JACOBIAN_BUDGET_ELEMENTS if budget is None else budget
    tokens = int(batch.token_mask.numel()) if torch.is_tensor(batch.token_mask) else 1
    return max(1, budget // max(1, tokens * width))


@functools.cache
def _chunked_jacobian_backend():
    """``CurvlinopsGGN`` whose Jacobians ``(B, C, P)`` are taken :func:`jacobian_chunk` outputs at a time.

    ``laplace-torch`` takes every output's vector-Jacobian product in one vmapped backward pass, whose memory
    grows with the square of the batch's outputs (each of the ``B x C`` passes holds the whole batch's logits
    gradient): 348 GiB for 12 ARC rows of SmolLM2-135M.  In chunks, each pass holds a few.  Its K-FAC fit takes
    each batch's loss from the factors' own forward pass (``laplace-torch`` runs a second one)."""
    from laplace.curvature import CurvlinopsGGN

    class ChunkedJacobianGGN(CurvlinopsGGN):
        def jacobians(self, x, enable_backprop: bool = False):
            scores_module = self.model
            config = getattr(getattr(scores_module.model, "backbone", None), "config", None)
            chunk = jacobian_chunk(x["batch"], int(getattr(config, "vocab_size", 1) or 1))

            def scores(params):
                out = torch.func.functional_call(scores_module, (params, self.buffers_dict), x)
                return out, out

            jac, f = torch.func.jacrev(scores, has_aux=True, chunk_size=chunk)(self.params_dict)
            js = torch.cat([j.flatten(start_dim=f.dim()) for j in jac.values()], dim=-1)
            if self.subnetwork_indices is not None:
                js = js[:, :, self.subnetwork_indices]
            return (js, f) if enable_backprop else (js.detach(), f.detach())

        #: the fit set's real (unpadded) tokens ("expand") or sequences ("reduce"), set by :func:`fit_laplace`, over
        #: which the input factors average; None: curvlinops' own input factor
        input_count: int | None = None
        kfac_approx: str = "expand"

        def kron(self, x, y, N: int, **kwargs):
            """The batch's loss and K-FAC factors (``CurvlinopsGGN.kron``), the loss from the scores of the forward
            pass that the factors come from instead of a second forward pass of the batch.  With
            :attr:`input_count` set, each layer's input factor is taken over the batch's real tokens only
            (:func:`_masked_kfac`), so that the fitted factors do not depend on how the rows are batched."""
            if isinstance(x, MutableMapping):
                kwargs["batch_size_fn"] = lambda x: x[self.dict_key_x].shape[0]
            scores = []
            handle = self.model.register_forward_hook(lambda module, args, out: scores.append(out.detach()))
            try:
                linop = _masked_kfac()(self.model, self.lossfunc, self.params, [(x, y)],
                                       fisher_type=self._kron_fisher_type, separate_weight_and_bias=True,
                                       check_deterministic=False, kfac_approx=self.kfac_approx, **kwargs)
                mask = x["batch"].inputs.get("attention_mask") if isinstance(x, MutableMapping) else None
                if self.input_count and mask is not None:
                    linop.token_mask = mask.bool()
                    linop.input_weight = N / (len(y) * self.input_count)  # laplace-torch multiplies by len(y) / N
                linop.compute_kronecker_factors()
            finally:
                handle.remove()
            if linop.unmasked:
                warnings.warn(f"K-FAC: the inputs of {len(linop.unmasked)} layers are not shaped like the batch's "
                              "attention mask; their input factors average over every padded position", stacklevel=2)
            if len(scores) != 1:
                raise RuntimeError(f"expected one forward pass of the batch for its K-FAC factors, saw {len(scores)}")
            kron = self._rescale_kron_factors(self._get_kron_factors(linop), len(y), N)
            kron *= self.factor
            return self.factor * self.lossfunc(scores[0], y), kron

    return ChunkedJacobianGGN


@functools.cache
def _masked_kfac():
    r"""curvlinops' ``KFACLinearOperator`` whose input factor counts real tokens only.

    A layer applied to every token of a sequence shares its weight across them.  K-FAC "expand" treats every
    token as a sample of the layer: its input factor is the mean of ``x_t x_t^T`` over tokens and its gradient
    factor a sum of ``g_t g_t^T``, which leaves out the cross-token terms of the Gauss-Newton matrix (a score's
    Jacobian is ``sum_t g_t x_t^T``).  K-FAC "reduce" takes the sequence as the sample: ``sum_t g_t x_t^T`` is
    approximated by ``(sum_t g_t) xbar^T`` with ``xbar`` the mean input over the sequence's tokens, exact when
    inputs or gradients agree across tokens [3]; the input factor is the mean of
    ``xbar xbar^T`` over sequences.  curvlinops averages over every position of the padded batch, where a
    padded position's input is the model's state at a padding token, arbitrary, and how many there are depends
    on which rows share a batch (the longest sets the length).  With ``token_mask`` ``(sequences, T)`` set, a
    layer whose inputs are ``(sequences, T, d)`` adds ``input_weight * sum_{real t} x_t x_t^T`` (expand) or
    ``input_weight * sum_seq xbar xbar^T`` over real tokens (reduce); :func:`fit_laplace` chooses
    ``input_weight`` so that the fitted factor is the mean over the fit set's real tokens or sequences, whatever
    the batches.  Padded positions add nothing to the gradient factor already (the scores do not depend on
    them)."""
    from curvlinops import KFACLinearOperator
    from curvlinops.kfac import KFACType

    class MaskedKFAC(KFACLinearOperator):
        token_mask: torch.Tensor | None = None
        input_weight: float = 1.0
        unmasked: set  # layers whose inputs the mask did not fit (curvlinops' own factor), set per instance

        def __init__(self, *args, **kwargs):
            self.unmasked = set()
            super().__init__(*args, **kwargs)

        def _hook_accumulate_input_covariance(self, module, inputs, module_name: str):
            mask, x = self.token_mask, inputs[0].data.detach()
            plain = (mask is None or len(inputs) != 1 or tuple(x.shape[:-1]) != tuple(mask.shape)
                     or not isinstance(module, nn.Linear)
                     or (module.bias is not None and not self._separate_weight_and_bias))
            if plain:
                if mask is not None:
                    self.unmasked.add(module_name)
                return super()._hook_accumulate_input_covariance(module, inputs, module_name)
            if self._kfac_approx == KFACType.EXPAND:
                samples = x[mask]  # (real tokens, d_in)
            else:
                weights = mask.to(x.dtype).unsqueeze(-1)  # (sequences, T, 1)
                samples = (weights * x).sum(1) / weights.sum(1).clamp_min(1.0)  # (sequences, d_in)
            covariance = (samples.T @ samples).mul_(self.input_weight)
            self._input_covariances = self._set_or_add_(self._input_covariances, module_name, covariance)

    return MaskedKFAC


def _fit_set_count(task, rows, batch_size: int, kfac_approx: str = "expand") -> int | None:
    """Real (unpadded) tokens (``kfac_approx="expand"``) or sequences (``"reduce"``) of ``rows`` as the fit collates
    them (their attention masks), or None when a batch has no attention mask."""
    total = 0
    for data in _Batches(task, rows, batch_size, "cpu"):
        mask = data["batch"].inputs.get("attention_mask")
        if mask is None:
            return None
        total += int(mask.sum()) if kfac_approx == "expand" else mask.shape[0]
    return total


def _new_laplace(family, model, prior_precision: float):
    from laplace import Laplace

    la = Laplace(_ScoresModule(model), "classification", subset_of_weights="all",
                 hessian_structure=family.hessian_structure, backend=_chunked_jacobian_backend(),
                 prior_precision=prior_precision, dict_key_x="labels", dict_key_y="labels")
    expected = [t for _, a in model.adapter_items for t in family.laplace_tensors(a).values()]
    params = [p for p in la.model.parameters() if p.requires_grad]
    if [id(p) for p in params] != [id(t) for t in expected]:
        raise RuntimeError(f"weights {family.name!r}: the trainable adapter parameters are not the tensors its "
                           "Laplace posterior covers")
    return la


def fit_laplace(family, model, task, rows, batch_size: int, progress: bool = False, validation_rows=None) -> None:
    """Fit the posterior on ``rows`` (the task head, if any, is held fixed), optionally choose the prior precision
    (by the marginal likelihood, or on ``validation_rows`` by :func:`validation_prior_precision`), and keep the
    curvature in the adapters' buffers."""
    from ..experiment import is_token_task
    from .errors import ConfigError

    if is_token_task(task):
        raise ConfigError(f"weights {family.name!r}: the Laplace posterior needs a classification task (one score "
                          "per choice); this task scores every response token over the vocabulary")
    by_validation = family.optimize_prior_precision and family.prior_precision_method == "validation"
    if by_validation and (validation_rows is None or len(validation_rows) == 0):
        raise ConfigError(f"weights {family.name!r}: prior_precision_method: validation needs validation rows and "
                          "this task has none (use prior_precision_method: marglik)")
    device = next(model.backbone.parameters()).device
    head = [p for m in model.modules_to_save.values() for p in m.parameters() if p.requires_grad]
    for p in head:  # the Laplace posterior covers the adapters' weights only
        p.requires_grad_(False)
    try:
        la = _new_laplace(family, model, family.prior_precision)
        if family.hessian_structure == "kron":
            la.backend.kfac_approx = family.kfac_approx
            la.backend.input_count = _fit_set_count(task, rows, batch_size, family.kfac_approx)
        la.fit(_Batches(task, rows, batch_size, device), progress_bar=progress)
        model._laplace_validation = None
        if by_validation:
            # laplace-torch's Jacobians take one row per pass (their memory grows with the square of the rows)
            rows_per_pass = batch_size if _covers_lora_factors(la) else 1
            batches = (x["batch"] for x in _Batches(task, validation_rows, rows_per_pass, device))
            chosen, grid, nll = validation_prior_precision(la, batches, functools.partial(_jacobians, la))
            la.prior_precision = chosen
            model._laplace_validation = {"examples": len(validation_rows), "prior_precision": grid.tolist(),
                                         "nll": nll.tolist()}
        elif family.optimize_prior_precision:
            with warnings.catch_warnings(), _float32(device):  # the marginal likelihood: no link approximation
                warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
                la.optimize_prior_precision(method="marglik", pred_type="glm", link_approx="probit",
                                            init_prior_prec=family.prior_precision)
    finally:
        for p in head:
            p.requires_grad_(True)
    state = la.state_dict()
    tensors = [(a, name, t) for _, a in model.adapter_items for name, t in family.laplace_tensors(a).items()]
    curvature = state["H"] if family.hessian_structure == "kron" else _split(state["H"], [t for *_, t in tensors])
    numbers = torch.tensor([float(la.prior_precision.reshape(-1)[0]), float(state["n_data"]),
                            float(state["n_outputs"])])
    with torch.no_grad():
        for (adapter, name, _), h in zip(tensors, curvature):
            if family.hessian_structure == "kron":
                getattr(adapter, f"laplace_{name}_kfac0").copy_(h[0])
                getattr(adapter, f"laplace_{name}_kfac1").copy_(h[1])
            else:
                getattr(adapter, f"laplace_{name}_diag").copy_(h)
        for _, adapter in model.adapter_items:
            adapter.laplace_state.copy_(numbers)
    model._laplace = (la,)


def laplace_of(family, model):
    """The ``laplace-torch`` object of ``model``'s posterior (rebuilt from the buffers after loading)."""
    cached = getattr(model, "_laplace", None)
    if cached is not None:
        return cached[0]
    items = model.adapter_items
    if not items or not laplace_fitted(items[0][1]):
        raise RuntimeError("the Laplace posterior has not been fitted: call model.fit_posterior(...) after "
                           "training (bara-pyro train does)")
    from torch.nn.utils import parameters_to_vector

    prior_precision, n_data, n_outputs = items[0][1].laplace_state.tolist()
    la = _new_laplace(family, model, prior_precision)
    names = [(a, name) for _, a in items for name in family.laplace_tensors(a)]
    if family.hessian_structure == "kron":
        h = [[getattr(a, f"laplace_{n}_kfac0").clone(), getattr(a, f"laplace_{n}_kfac1").clone()] for a, n in names]
    else:
        h = torch.cat([getattr(a, f"laplace_{n}_diag").reshape(-1) for a, n in names])
    mean = parameters_to_vector([p for p in la.model.parameters() if p.requires_grad]).detach()
    la.load_state_dict({"mean": mean, "H": h, "loss": mean.new_zeros(()), "prior_mean": mean.new_zeros(()),
                        "prior_precision": mean.new_tensor([prior_precision]), "sigma_noise": mean.new_ones(()),
                        "n_data": int(n_data), "n_outputs": int(n_outputs), "likelihood": "classification",
                        "temperature": 1.0, "enable_backprop": False, "cls_name": type(la).__name__})
    model._laplace = (la,)
    return la


def _float32(device) -> torch.autocast:
    """``device``'s autocast turned off: the posterior's linear algebra runs in its operands' float32."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def laplace_sampled_scores(family, model, batch, num_samples: int, copied: bool = True) -> torch.Tensor:
    """Scores ``(S * n, C)`` of a batch holding ``S`` sample-major copies of ``n`` examples, one posterior draw per
    copy: in function space (``glm``) or as weight draws put in ``ctx.weights`` for the forward pass (``nn``).
    ``copied=False`` (``glm`` only): the batch holds the ``n`` examples once.  The covariance, its Cholesky
    factor and the draws are float32 under any autocast; ``glm`` returns the scores in the dtype of the mean
    scores."""
    la = laplace_of(family, model)
    if family.predictive == "glm":  # every copy gets its own draw of f
        if copied:
            f_mu, f_var = _glm_of_copies(la, model, batch, num_samples)
        else:
            f_mu, f_var = _glm(la, batch)
            f_mu, f_var = f_mu.repeat(num_samples, 1), f_var.repeat(num_samples, 1, 1)
        with _float32(f_var.device):
            mu, f_var = f_mu.float(), f_var.float()
            finite = torch.isfinite(mu)  # missing choices score -inf and stay there
            eye = torch.eye(f_var.shape[-1], dtype=f_var.dtype, device=f_var.device)
            chol = torch.linalg.cholesky_ex(f_var + CHOLESKY_JITTER * eye)[0]
            noise = (chol @ torch.randn_like(mu).unsqueeze(-1)).squeeze(-1)
            return torch.where(finite, mu + noise, mu).to(f_mu.dtype)
    if not copied:
        raise ValueError("the sampled-weights predictive (predictive: nn) needs the batch's sample-major copies")
    with _float32(la._device):
        draws = la.sample(num_samples)  # (S, P) in the order of the adapters' parameters
    model._prepare(batch, "sample")
    ctx = model.ctx
    ctx.num_samples = num_samples
    tensors = [(path, name, t) for path, a in model.adapter_items for name, t in family.laplace_tensors(a).items()]
    for (path, name, t), draw in zip(tensors, _split(draws, [t for *_, t in tensors], leading=num_samples)):
        ctx.weights.setdefault(path, {})[name] = draw.to(t.dtype)
    return model.forward_fn(model.backbone, batch)


def _glm(la, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(n, C)`` and covariance ``(n, C, C)`` of the linearised scores ``f(x; theta*) + J (theta - theta*)``.
    A posterior over the adapters' LoRA factors takes ``J`` from one backward pass of the batch per score column
    (:func:`~bara_pyro.models.lora_jacobians.lora_jacobians`); any other through ``laplace-torch``'s backend.
    The forward passes run under the caller's autocast; ``J Sigma J^T`` is float32 (the posterior's dtype)."""
    f_mu, js = _jacobians(la, batch)
    with _float32(js.device):
        f_var = la.functional_variance(js.to(la._dtype))
    return f_mu.detach(), f_var.detach()


def _covers_lora_factors(la) -> bool:
    """Whether the posterior's parameters are the adapters' LoRA factors (then :func:`lora_jacobians` applies)."""
    model = la.model.model
    factors = [getattr(a, name).weight for _, a in model.adapter_items for name in FACTORS]
    return [id(p) for p in la.params] == [id(t) for t in factors]


def _jacobians(la, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP scores ``(n, C)`` and their Jacobian ``(n, C, P)`` in the posterior's parameters (:func:`_glm`)."""
    model = la.model.model
    found = lora_jacobians(model, batch) if _covers_lora_factors(la) else None
    if found is not None:
        return found
    with torch.enable_grad(), warnings.catch_warnings():  # CPU attention's Jacobian: slow, not wrong
        warnings.filterwarnings("ignore", message="There is a performance drop")
        js, f_mu = la.backend.jacobians(_as_input(batch))
    return f_mu, js


def _glm_of_copies(la, model, batch, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(S * n, C)`` and covariance ``(S * n, C, C)`` of the linearised scores of a batch of ``S``
    sample-major copies.  The Jacobian is taken on the first copy alone (every tensor's leading dim cut to
    ``1/S``) when its MAP scores are exactly the batch's first ``n`` rows; otherwise (a task whose batch does not
    cut that way) on the whole batch."""
    if num_samples > 1:
        first = _first_copy(batch, num_samples)
        try:
            f_mu, f_var = _glm(la, first) if first is not None else (None, None)
        except (IndexError, RuntimeError, ValueError):  # a task-specific tensor that must not be cut
            first = None
        if first is not None:
            full = model.scores(batch, mode="mean").detach()
            if f_mu.shape[0] * num_samples == full.shape[0] and torch.equal(
                    f_mu.repeat(num_samples, 1).isfinite(), full.isfinite()) and torch.allclose(
                    f_mu.repeat(num_samples, 1).nan_to_num(neginf=0.0), full.nan_to_num(neginf=0.0), atol=1e-5):
                return f_mu.repeat(num_samples, 1), f_var.repeat(num_samples, 1, 1)
    return _glm(la, batch)


def _first_copy(batch, num_samples: int):
    """``batch`` with every tensor's leading dim cut to its first ``1/S`` (None if one does not divide)."""
    def cut(value):
        if not torch.is_tensor(value) or value.dim() == 0:
            return value
        if value.shape[0] % num_samples:
            raise ValueError
        return value[: value.shape[0] // num_samples]

    try:
        return type(batch)(inputs={k: cut(v) for k, v in batch.inputs.items()}, labels=cut(batch.labels),
                           token_mask=cut(batch.token_mask), extras={k: cut(v) for k, v in batch.extras.items()})
    except ValueError:
        return None


def _split(vector: torch.Tensor, like: list[torch.Tensor], leading: int | None = None) -> list[torch.Tensor]:
    """Cut a flat ``(P,)`` (or ``(S, P)``) vector into tensors shaped like ``like`` (with the leading ``S``)."""
    out, start = [], 0
    for t in like:
        n = t.numel()
        piece = vector[..., start:start + n]
        out.append(piece.reshape(((leading,) if leading is not None else ()) + tuple(t.shape)))
        start += n
    return out
