"""How many directions an adapter's weight update uses: the spectrum of ``Delta W`` and its effective rank.

For every method with LoRA factors, the update of a layer at the posterior mean is::

    Delta W = (alpha / r) B diag(c) A          # A (r, d_in), B (d_out, r), c (r,)

with ``c`` the mean expected gate of each component over the evaluated tokens for a gated adapter (the gate
factors :func:`~bara_pyro.export.fold_factors` folds into B) and ``c = 1`` otherwise.  Its singular values
``s_1 >= ... >= s_r`` give the entropy effective rank (Roy and Vetterli, 2007)::

    erank = exp(-sum_i p_i log p_i),    p_i = s_i / sum_j s_j

which is 1 for a rank-1 update and ``r`` for ``r`` equal singular values.  It reads the fitted update
itself, so it compares methods with and without gates: LoRA's number says how many directions the data
moved the layer in; a gated adapter whose gate-based effective rank is far above it keeps components on
that carry little of the update.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["component_norms", "spectral_effective_rank", "update_ranks", "update_singular_values"]


def spectral_effective_rank(singular_values) -> float:
    """Entropy effective rank ``exp(H(s / sum s))`` of the singular values ``(k,)`` (non-negative); 0 for a zero
    update."""
    s = np.asarray(singular_values, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"singular values must be a vector, got shape {s.shape}")
    if (s < 0).any():
        raise ValueError("singular values must be non-negative")
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


@torch.no_grad()
def update_singular_values(model, gate_means: Mapping[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """``{layer path: (r,)}`` singular values of each adapter's mean update ``(alpha / r) B diag(c) A``, largest
    first; ``gate_means[path]`` ``(r,)`` is ``c`` for that layer (default 1).  Computed from the QR factors of
    ``B diag(c)`` and ``A^T``, so the cost is that of an ``r x r`` SVD per layer, not of the dense update."""
    from ..export import mean_lora_weights

    out = {}
    for path, adapter in model.adapter_items:
        a, b = mean_lora_weights(adapter)
        a, b = a.double().cpu(), b.double().cpu()
        if gate_means is not None and path in gate_means:
            b = b * gate_means[path].double().cpu()
        _, r_b = torch.linalg.qr(b)            # B diag(c) = Q_b R_b
        _, r_a = torch.linalg.qr(a.T)          # A^T = Q_a R_a
        core = adapter.scaling * (r_b @ r_a.T)  # Delta W = Q_b core Q_a^T
        out[path] = torch.linalg.svdvals(core).numpy()
    return out


def update_ranks(model, gates: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """``{layer path: spectral effective rank}`` of each adapter's mean update.  ``gates``: the arrays of a run's
    ``gates.npz`` (``layer_names`` ``(L,)``, ``token_expected_gate`` ``(L, n_tokens, r)``), whose mean over the
    tokens is ``c``; without them (or for an adapter they do not name) ``c = 1``."""
    means = None
    if gates is not None and "token_expected_gate" in gates:
        means = {str(path): torch.from_numpy(np.asarray(g).mean(axis=0))
                 for path, g in zip(gates["layer_names"], gates["token_expected_gate"])}
    return {path: spectral_effective_rank(s) for path, s in update_singular_values(model, means).items()}


@torch.no_grad()
def component_norms(model) -> dict[str, np.ndarray]:
    """``{layer path: (r,)}`` Frobenius norm of each component's part of the mean update, ``(alpha / r) |B_:k|
    |A_k:|`` (``B`` with a family's magnitudes folded in, as :func:`update_singular_values` reads it).  For
    orthonormal factors (``singular_slab``) these are the update's singular values, component by component."""
    from ..export import mean_lora_weights

    out = {}
    for path, adapter in model.adapter_items:
        a, b = mean_lora_weights(adapter)
        norms = adapter.scaling * b.double().norm(dim=0) * a.double().norm(dim=1)
        out[path] = norms.cpu().numpy()
    return out
