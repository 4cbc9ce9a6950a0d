"""Export a trained run as a standard PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

The adapter of layer ``l`` predicts ``Delta y_t = s_l B (g_t * A x_t)`` with ``s_l = alpha / r``.  A static LoRA
holds no token-dependent gate, so the export replaces ``g_tk`` by a constant per component,

.. math::

    c_{lk} = \\frac{1}{|\\mathcal{T}|} \\sum_{t \\in \\mathcal{T}} \\mathbb{E}_q[g_{tk}],

its mean expected gate over the training tokens ``T`` (padding excluded): the token-independent part of the
gate, measured on the data the adapter was fitted to.  The expectation is the model's own (the statistics a
forward pass in mode ``mean`` records with ``ctx.collect_stats`` and ``ctx.record_tokens``), so the export
does not depend on how the gate's prior or guide is built.  Then ``B'_l = B_l diag(c_l)``; components with
``c_lk`` below ``prune_below`` are dropped, so layer ``l`` keeps rank ``r'_l`` (PEFT ``rank_pattern``) with
``lora_alpha_l = s_l r'_l`` (``alpha_pattern``) to keep the scale ``s_l``; a layer left with no component is
not targeted.  Without gates (LoRA, LoRA-MAP, MC dropout, BLoB) ``c = 1``: point-estimate weights export
exactly, latent weights (BLoB's ``A``) at their posterior mean.  The trained classification head
(``modules_to_save``) is exported with the adapter.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

__all__ = ["ExportResult", "export_peft", "fixed_gates", "fold_factors", "mean_lora_weights", "write_peft_adapter"]

PEFT_PREFIX = "base_model.model."
DEFAULT_PRUNE_BELOW = 0.01
DEFAULT_FOLD_EXAMPLES = 512
DEFAULT_EVAL_EXAMPLES = 256


@torch.no_grad()
def fold_factors(model, task, rows, batch_size: int = 32, progress: bool = False) -> dict[str, torch.Tensor]:
    """``{layer path: (r,)}`` mean over the real tokens of ``rows`` of the expected gate ``E_q[g_tk]`` (mode
    ``mean``), for the adapters that have gates."""
    device = next(model.backbone.parameters()).device
    ctx = model.ctx
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    model.eval()
    ctx.collect_stats = ctx.record_tokens = True
    try:
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="gate means"):
            batch = task.collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))]).to(device)
            model.scores(batch, mode="mean")
            for path, stats in ctx.stats.items():
                gates = stats["token_expected_gate"].double()  # (real tokens, r)
                sums[path] = sums.get(path, 0) + gates.sum(0).cpu()
                counts[path] = counts.get(path, 0) + gates.shape[0]
    finally:
        ctx.collect_stats = ctx.record_tokens = False
    return {path: (sums[path] / max(counts[path], 1)).float() for path in sums}


class _ConstantGate:
    """Stands in for an adapter's gate: ``h * c`` with fixed per-component factors ``c`` ``(r,)``."""

    def __init__(self, factors: torch.Tensor):
        self.factors = factors

    def gated(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.factors.to(device=h.device, dtype=h.dtype)


@contextlib.contextmanager
def fixed_gates(model, factors: dict[str, torch.Tensor]):
    """Inside the context, the adapter at each path of ``factors`` multiplies component ``k`` by ``factors[path][k]``
    for every token instead of drawing its gate (the gate objects themselves are untouched).  Predict with
    ``model.scores(batch, mode="mean")`` to get BaRA's prediction with those fixed gates at the mean weights."""
    saved = {}
    items = dict(model.adapter_items)
    try:
        for path, c in factors.items():
            adapter = items[path]
            saved[path] = adapter._direct["gate"]
            adapter._direct["gate"] = _ConstantGate(c)
        yield model
    finally:
        for path, gate in saved.items():
            items[path]._direct["gate"] = gate


def mean_lora_weights(adapter) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (r, d_in), B (d_out, r))`` at their posterior mean (the point estimates for non-latent factors); a weight
    family with more than A and B (a core, rank scales) folds them in through ``mean_lora_factors``."""
    fold = getattr(adapter.weights, "mean_lora_factors", None)
    if fold is not None:
        a, b = fold(adapter)
        return a.detach(), b.detach()
    out = []
    for name in ("lora_A", "lora_B"):
        if name in adapter.weights.latent:
            out.append(adapter.weights.posterior(adapter, name).mean.detach())
        else:
            out.append(getattr(adapter, name).weight.detach())
    return out[0], out[1]


@dataclass
class ExportResult:
    """What the export wrote and what it cost; ``ranks`` per layer after pruning (absent: not targeted)."""

    out_dir: Path
    ranks: dict[str, int]
    lora_parameters: int  # A and B at full rank, every adapted layer
    exported_parameters: int  # A and B after pruning
    head_parameters: int
    bara_trainable_parameters: int
    factors: dict[str, list[float]] = field(default_factory=dict)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    posterior_mean: bool = False
    notes: list[str] = field(default_factory=list)
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)  # the per-component gates the adapter encodes
    peft_max_abs_diff: float | None = None  # |PEFT logits - BaRA with ``fixed`` gates|, on validation examples

    def lines(self) -> list[str]:
        out = [f"PEFT LoRA adapter: {self.out_dir}"]
        out += self.notes
        out.append(f"parameters: BaRA run {self.bara_trainable_parameters:,d} trainable; LoRA A,B at full rank "
                   f"{self.lora_parameters:,d}; exported after pruning {self.exported_parameters:,d} "
                   f"(+ {self.head_parameters:,d} head)")
        if self.peft_max_abs_diff is not None:
            out.append(f"check: PEFT logits vs BaRA with the exported fixed gates, max abs difference "
                       f"{self.peft_max_abs_diff:.2e}")
        for name, metrics in self.cost.items():
            out.append(f"  {name:<28} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return out


def _head_state(model) -> dict[str, torch.Tensor]:
    return {f"{path}.{k}": v.detach() for path, module in model.modules_to_save.items()
            for k, v in module.state_dict().items()}


def write_peft_adapter(model, out_dir, factors: dict[str, torch.Tensor] | None = None,
                       prune_below: float = 0.0, task_type: str | None = None, base_model: str | None = None) -> dict:
    """Write the PEFT adapter of ``model`` with gates fixed to ``factors`` (None or a missing layer: 1) and
    components below ``prune_below`` dropped; return ``{path: kept component indices (tensor)}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    factors = factors or {}
    config = model.config
    tensors, kept, rank_pattern, alpha_pattern = {}, {}, {}, {}
    for path, adapter in model.adapter_items:
        a, b = mean_lora_weights(adapter)
        c = factors.get(path)
        if c is not None:
            keep = torch.nonzero(c >= prune_below).flatten() if prune_below > 0 else torch.arange(c.numel())
            b = b * c.to(b)
        else:
            keep = torch.arange(a.shape[0])
        kept[path] = keep
        if keep.numel() == 0:
            continue
        tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = a[keep].contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = b[:, keep].contiguous().cpu()
        if keep.numel() != config.r:
            key = re.escape(path)
            rank_pattern[key] = int(keep.numel())
            alpha_pattern[key] = float(adapter.scaling * keep.numel())
    for name, value in _head_state(model).items():
        tensors[f"{PEFT_PREFIX}{name}"] = value.contiguous().cpu()
    targets = [path for path, keep in kept.items() if keep.numel()]
    if not targets:
        raise ValueError(f"every component is below prune_below={prune_below}; nothing to export")
    peft_config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": float(config.lora_dropout),
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": list(model.modules_to_save) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    return kept


# --------------------------------------------------------------------------- a run directory -> PEFT


@torch.no_grad()
def _quality(model, task, rows, batch_size: int) -> dict[str, float]:
    """Accuracy and NLL of ``model``'s mode-``mean`` prediction (tokens: per response token)."""
    from .experiment import is_token_task
    from .inference import predict
    from .metrics import classification_metrics, token_metrics

    if is_token_task(task):
        from .inference.token_predictive import predict_tokens

        m = token_metrics(predict_tokens(model, task, rows, num_samples=0, batch_size=batch_size, progress=False))
    else:
        pred = predict(model, task, rows, num_samples=0, batch_size=batch_size, progress=False)
        m = classification_metrics(pred.probs, pred.labels)
    return {"accuracy": m["accuracy"], "nll": m["nll"]}


def export_peft(run_dir, out_dir, prune_below: float = DEFAULT_PRUNE_BELOW, merge: bool = False,
                fold_examples: int | None = DEFAULT_FOLD_EXAMPLES, eval_examples: int | None = DEFAULT_EVAL_EXAMPLES,
                member: int | None = None, progress: bool = True) -> ExportResult:
    """Export run ``run_dir`` to ``out_dir`` as a PEFT LoRA adapter (module docstring); ``merge`` writes the merged
    full model (``merge_and_unload``) with ``save_pretrained`` there instead.  Gates are folded with their mean over
    the first ``fold_examples`` training rows; the cost is measured on the first ``eval_examples`` validation rows."""
    import copy

    from .experiment import build_backbone_and_task, load_run_config, member_dir
    from .inference.trainer import resolve_device
    from .models.bara_model import BaRAModel
    from .models.errors import ConfigError

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    members = config["ensemble"]["members"]
    if members > 1 and member is None:
        raise ConfigError(f"{run_dir} is an ensemble of {members} adapters; PEFT holds one: choose one with "
                          f"--member 0..{members - 1}")
    source = member_dir(run_dir, config, member or 0)
    backbone, tokenizer, task, data = build_backbone_and_task(config)
    device = resolve_device(config["train"]["device"])
    base = copy.deepcopy(backbone).to(device).eval()
    model = BaRAModel.from_pretrained(backbone.to(device), source, forward_fn=task.scores)
    model.eval()
    train_rows = data["train"]
    limit = config["data"]["max_train_examples"]
    if limit is not None:
        train_rows = train_rows.select(range(min(limit, len(train_rows))))
    fold_rows = train_rows if fold_examples is None else train_rows.select(range(min(fold_examples, len(train_rows))))
    batch_size = config["eval"]["batch_size"]
    factors = fold_factors(model, task, fold_rows, batch_size=batch_size, progress=progress) if model.gates else {}
    kind = "SEQ_CLS" if model.modules_to_save else "CAUSAL_LM"
    adapter_dir = Path(out_dir) if not merge else Path(out_dir) / "peft_adapter"
    kept = write_peft_adapter(model, adapter_dir, factors, prune_below=prune_below if factors else 0.0,
                              task_type=kind, base_model=config["model"])
    pruned = {path: torch.zeros_like(c).index_fill(0, kept[path].to(c.device), 1.0) * c
              for path, c in factors.items()}

    adapters = dict(model.adapter_items)
    full = sum(a.r * (a.in_features + a.out_features) for a in adapters.values())
    exported = sum(int(k.numel()) * (adapters[p].in_features + adapters[p].out_features) for p, k in kept.items())
    from pyro.distributions import Delta

    latent = sorted({n for a in adapters.values() for n in a.weights.latent  # MAP (Delta) weights are exact
                     if not isinstance(a.weights.posterior(a, n), Delta)})
    result = ExportResult(out_dir=Path(out_dir), ranks={p: int(k.numel()) for p, k in kept.items() if k.numel()},
                          lora_parameters=full, exported_parameters=exported,
                          head_parameters=sum(v.numel() for v in _head_state(model).values()),
                          bara_trainable_parameters=model.num_parameters()[0],
                          factors={p: c.tolist() for p, c in factors.items()}, posterior_mean=bool(latent))
    if latent:
        result.notes.append(f"sampled method: {', '.join(latent)} exported at the posterior mean (a PEFT adapter "
                            "holds one set of weights, not a distribution)")
    if factors:
        result.notes.append(f"gates folded into B: each component's mean expected gate over {len(fold_rows)} "
                            f"training examples; components below {prune_below} pruned; ranks per layer: "
                            f"{sorted(set(result.ranks.values()))} of {model.config.r}")
    val = data["validation"]
    val = val.select(range(min(eval_examples, len(val)))) if eval_examples is not None else val
    if len(val) and factors:
        result.cost["BaRA, S = 0 (token gates)"] = _quality(model, task, val, batch_size)
        with fixed_gates(model, factors):
            result.cost["folded gates"] = _quality(model, task, val, batch_size)
        with fixed_gates(model, pruned):
            result.cost["folded and pruned (exported)"] = _quality(model, task, val, batch_size)
    elif len(val):
        result.cost["exported (= the run's mean)"] = _quality(model, task, val, batch_size)
    result.fixed = pruned
    if len(val):
        check = task.collate([val[i] for i in range(min(4, len(val)))]).to(device)
        result.peft_max_abs_diff = peft_logits_match(copy.deepcopy(base), adapter_dir, model, pruned, check)
    (adapter_dir / "bara_export.json").write_text(json.dumps(
        {"source_run": str(run_dir), "prune_below": prune_below, "ranks": result.ranks, "cost": result.cost,
         "fold_factors": result.factors, "posterior_mean": result.posterior_mean}, indent=1))
    if merge:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        result.notes.append(f"merged full model written with save_pretrained to {out_dir} "
                            f"(the adapter it was merged from: {adapter_dir})")
    return result


def peft_logits_match(base, adapter_dir, model, factors, batch) -> float:
    """Largest |PEFT logits - BaRA logits with gates fixed to ``factors``| on ``batch`` (a self-check)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad(), fixed_gates(model, factors):
        ours = model.scores(batch, mode="mean")
        theirs = model.forward_fn(peft_model.get_base_model(), batch)  # the base with PEFT's LoRA layers
    real = torch.isfinite(ours)  # padded response positions of token tasks hold -inf in both
    return float((ours - theirs)[real].abs().max())
