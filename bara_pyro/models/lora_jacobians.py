r"""Per-example Jacobians of a batch's scores in the LoRA factors of every adapter, from few backward passes.

An adapter adds ``u_t = s B A x_t`` to token ``t``'s output.  For a score ``f`` of the batch,

    df / dB = s sum_t g_t (A x_t)^T                (out, r)
    df / dA = s sum_t (B^T g_t) x_t^T              (r, in),      g_t = df / du_t,

so every example's Jacobian is a sum over its own tokens of outer products of quantities one backward pass
gives for the whole batch: sequences do not interact, so the gradient of ``sum_i f_ic`` (every example's score
``c`` at once) at a token is that of its own example's ``f_ic``.  One pass per score column, or a single pass
when each sequence determines one score alone (multiple-choice cloze scoring: sequence ``(i, c)`` gives
``f_ic``), instead of one pass per example and column; the memory is that of one backward pass of the batch.
"""

from __future__ import annotations

import torch

__all__ = ["lora_jacobians"]

FACTORS = ("lora_A", "lora_B")


def _sequence_map(batch, n_seq: int):
    """``(example (n_seq,), column (n_seq,) or None)``: the example each sequence belongs to and, where it alone
    determines one score, that score's column; None if the batch does not say."""
    extras = batch.extras
    if "example_index" in extras:
        return extras["example_index"], extras.get("choice_index")
    if n_seq == batch.num_examples:
        return torch.arange(n_seq, device=batch.labels.device), None
    return None


def lora_jacobians(model, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Scores ``f (B, C)`` at the current weights and their Jacobian ``J (B, C, P)`` in every adapter's ``lora_A``
    and ``lora_B`` (in the order of ``model.adapter_items``, each weight flattened row-major), or None when
    the batch or the adapters do not have the structure the formula above needs (then take the Jacobian
    otherwise).  Scores of missing choices (``-inf``) get zero rows.  ``J`` is float32 under any autocast."""
    adapters = [adapter for _, adapter in model.adapter_items]
    if any(adapter.gate is not None or adapter._rank_transform is not None or adapter.lora_dropout_p > 0
           or list(adapter.weights.latent) for adapter in adapters):
        return None
    seen = {}

    def keep(key):
        def hook(module, args, output):
            seen[key] = (args[0], output)
        return hook

    handles = [getattr(a, name).register_forward_hook(keep((k, name)))
               for k, a in enumerate(adapters) for name in FACTORS]
    try:
        with torch.enable_grad():
            f = model.scores(batch, mode="mean")
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) != len(handles):
        return None
    outputs = [seen[(k, "lora_B")][1] for k in range(len(adapters))]
    n_seq = outputs[0].shape[0]
    mapping = _sequence_map(batch, n_seq)
    if mapping is None or any(u.shape[0] != n_seq or not u.requires_grad for u in outputs):
        return None
    example, column = mapping
    finite = torch.isfinite(f)
    n, c = f.shape
    columns = [None] if column is not None else list(range(c))
    per_column = []
    for col in columns:
        with torch.enable_grad():
            target = torch.where(finite, f, 0.0) if col is None else torch.where(finite[:, col], f[:, col], 0.0)
            grads = torch.autograd.grad(target.sum(), outputs, retain_graph=col is not None and col < c - 1,
                                        allow_unused=True)
        with torch.autocast(device_type=f.device.type, enabled=False):
            per_column.append(_factor_jacobians(adapters, seen, grads, example, column, n, c, col))
    jac = per_column[0] if column is not None else torch.stack(per_column, dim=1)  # (B, C, P)
    return f.detach(), jac * finite.unsqueeze(-1)


def _factor_jacobians(adapters, seen, grads, example, column, n, c, col):
    """``(B, C, P)`` (one pass for all columns, ``col`` None) or ``(B, P)`` (the pass of column ``col``)."""
    pieces = []
    for k, (adapter, g) in enumerate(zip(adapters, grads)):
        x = seen[(k, "lora_A")][0].float()
        h = seen[(k, "lora_B")][0].float()
        # df / d(B h_t): the adapter multiplies it by s afterwards, so this gradient carries s already
        g = torch.zeros_like(seen[(k, "lora_B")][1], dtype=torch.float32) if g is None else g.float()
        n_seq = x.shape[0]
        x, h, g = (t.reshape(n_seq, -1, t.shape[-1]) for t in (x, h, g))  # (n_seq, T, features)
        gb = g @ adapter.lora_B.weight.float()  # (n_seq, T, r): B^T g_t
        per_seq = {"lora_A": torch.einsum("str,sti->sri", gb, x).flatten(1),
                   "lora_B": torch.einsum("sto,str->sor", g, h).flatten(1)}
        pieces.append(torch.cat([per_seq[name] for name in FACTORS], dim=1))
    per_seq = torch.cat(pieces, dim=1)  # (n_seq, P)
    if col is None:
        out = per_seq.new_zeros(n * c, per_seq.shape[1])
        return out.index_add_(0, example * c + column, per_seq).reshape(n, c, -1)
    return per_seq.new_zeros(n, per_seq.shape[1]).index_add_(0, example, per_seq)
