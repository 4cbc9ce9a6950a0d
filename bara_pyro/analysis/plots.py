"""Figures of a BaRA fit (matplotlib, Agg canvas).

Every function builds a fresh :class:`matplotlib.figure.Figure` on an Agg canvas and returns it:
no pyplot state, no ``plt.show``, nothing to close. Save with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .diagnostics import component_usage, effective_rank, kl_traces, posterior_mean_pi, reliability_bins
from .rundir import GatesLike, as_arrays

__all__ = [
    "plot_component_usage",
    "plot_effective_rank_distribution",
    "plot_rank_usage",
    "plot_reliability",
    "plot_token_gate_map",
    "plot_training_curves",
    "short_layer_names",
]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def short_layer_names(names: Sequence[str]) -> list[str]:
    """Short labels for module paths: keep the dotted parts that differ between paths, plus the last one.

    ``bert.encoder.layer.3.attention.self.query`` -> ``3.query`` when the list also holds other layer
    indices and other projections. Paths of different depth fall back to dropping the common prefix.
    """
    names = [str(n) for n in names]
    parts = [n.split(".") for n in names]
    if len(names) <= 1:
        return [p[-1] for p in parts]
    depth = len(parts[0])
    if any(len(p) != depth for p in parts):
        prefix = 0
        while all(len(p) > prefix + 1 and p[prefix] == parts[0][prefix] for p in parts):
            prefix += 1
        return [".".join(p[prefix:]) for p in parts]
    keep = [i for i in range(depth) if i == depth - 1 or len({p[i] for p in parts}) > 1]
    short = [".".join(p[i] for i in keep) for p in parts]
    return short if len(set(short)) == len(short) else names


def _layer_labels(gates: Mapping[str, Any]) -> list[str]:
    if "layer_names" in gates:
        return short_layer_names(list(gates["layer_names"]))
    n_layers = np.shape(gates["pi_alpha"])[0]
    return [str(i) for i in range(n_layers)]


def _annotate(ax, matrix: np.ndarray, fmt: str, threshold: float) -> None:
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            format(value, fmt),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value < threshold else "black",
        )


def plot_rank_usage(gates: GatesLike) -> Figure:
    r"""Heatmap of the posterior mean usage :math:`E_q[\pi_{lk}]`, layers (rows) x components (columns)."""
    gates = as_arrays(gates)
    usage = posterior_mean_pi(gates)  # (L, r)
    n_layers, rank = usage.shape
    fig = _figure(max(4.0, 1.8 + 0.45 * rank), max(2.5, 1.0 + 0.3 * n_layers))
    ax = fig.add_subplot()
    image = ax.imshow(usage, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
    if usage.size <= 400:
        _annotate(ax, usage, ".2f", threshold=0.6)
    ax.set_xticks(range(rank))
    ax.set_yticks(range(n_layers), _layer_labels(gates), fontsize=8)
    ax.set_xlabel("component k")
    ax.set_ylabel("layer")
    ax.set_title(r"Rank usage: posterior mean $E_q[\pi_{lk}]$")
    fig.colorbar(image, ax=ax, label=r"$E_q[\pi_{lk}]$")
    return fig


def plot_effective_rank_distribution(gates: GatesLike) -> Figure:
    r"""Per-layer distribution over tokens of :math:`s_{lt} = \sum_k p_{ltk}` (box plot with the tokens as dots)."""
    gates = as_arrays(gates)
    er = effective_rank(gates)
    per_layer_token = er.per_layer_token  # (L, n_tokens)
    n_layers = per_layer_token.shape[0]
    rank = np.shape(gates["token_gate_prob"])[-1]
    fig = _figure(max(5.0, 1.5 + 0.55 * n_layers), 3.8)
    ax = fig.add_subplot()
    positions = np.arange(n_layers)
    ax.boxplot(
        list(per_layer_token),
        positions=positions,
        widths=0.6,
        showfliers=False,
        patch_artist=True,
        medianprops={"color": "tab:orange", "linewidth": 2},
        boxprops={"facecolor": "#c6dbef", "edgecolor": "0.3"},
    )
    rng = np.random.default_rng(0)
    for layer, values in enumerate(per_layer_token):
        jitter = rng.uniform(-0.18, 0.18, size=values.shape)
        ax.scatter(layer + jitter, values, s=8, alpha=0.6, color="tab:blue", linewidths=0, zorder=3)
    ax.axhline(er.overall, color="tab:red", linestyle="--", linewidth=1, label=f"joint s = {er.overall:.2f}")
    ax.set_xticks(positions, _layer_labels(gates), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(-0.05 * rank, 1.05 * rank)
    ax.set_ylabel(r"expected active components $s_{lt}$")
    ax.set_title(f"Effective rank per token, by layer (r = {rank})")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_component_usage(gates: GatesLike) -> Figure:
    r"""Each component's usage (mean over tokens of :math:`p_{ltk}`) against its norm in the mean update, relative
    to its layer's largest (:func:`~bara_pyro.analysis.diagnostics.component_usage`); one dot per (layer,
    component), the dashed line at the share from which a component counts as carrying the update."""
    gates = as_arrays(gates)
    usage = component_usage(gates)
    fig = _figure(5.0, 3.8)
    ax = fig.add_subplot()
    n_layers = usage.usage.shape[0]
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, n_layers))
    for layer, label in enumerate(_layer_labels(gates)):
        ax.scatter(usage.relative_norm[layer], usage.usage[layer], s=40, color=colours[layer], label=label,
                   linewidths=0, alpha=0.85)
    ax.axvline(usage.threshold, color="0.4", linestyle="--", linewidth=1)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(r"norm in the mean update / layer's largest")
    ax.set_ylabel(r"usage: mean over tokens of $p_{ltk}$")
    ax.set_title("Usage against size of each component")
    if n_layers <= 24:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6, frameon=False)
    return fig


def plot_token_gate_map(gates: GatesLike) -> Figure:
    r"""Token-level gate map of the example sentence: tokens (rows) x layers (columns).

    Colour is the expected number of active components :math:`\sum_k p_{ltk}` from ``example_gate_prob``
    ``(L, T, r)``; row labels are ``example_tokens``.
    """
    gates = as_arrays(gates)
    if "example_gate_prob" not in gates:
        raise KeyError("gates data lacks example_gate_prob")
    active = np.asarray(gates["example_gate_prob"], float).sum(axis=-1).T  # (T, L)
    n_tokens, n_layers = active.shape
    rank = np.shape(gates["example_gate_prob"])[-1]
    tokens = [str(t) for t in gates["example_tokens"]] if "example_tokens" in gates else list(map(str, range(n_tokens)))
    fig = _figure(max(4.5, 2.2 + 0.42 * n_layers), max(3.0, 1.2 + 0.26 * n_tokens))
    ax = fig.add_subplot()
    image = ax.imshow(active, vmin=0.0, vmax=rank, cmap="magma", aspect="auto", interpolation="nearest")
    if active.size <= 400:
        _annotate(ax, active, ".1f", threshold=0.6 * rank)
    ax.set_yticks(range(n_tokens), tokens, fontsize=8)
    ax.set_xticks(range(n_layers), _layer_labels(gates), rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layer")
    ax.set_title("Active components per token")
    fig.colorbar(image, ax=ax, label=r"active components $s_{lt}$")
    return fig


def plot_reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Figure:
    """Reliability diagram: accuracy vs. confidence per bin (top) and the confidence histogram (bottom).

    :param probs: ``(N, C)`` predictive probabilities; :param labels: ``(N,)`` true labels.
    The title carries the expected calibration error of :func:`~bara_pyro.analysis.diagnostics.reliability_bins`.
    """
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    centers = 0.5 * (bins.edges[:-1] + bins.edges[1:])
    width = bins.edges[1] - bins.edges[0]
    filled = bins.count > 0
    fig = _figure(4.8, 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        centers[filled],
        bins.accuracy[filled],
        width=width,
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    gap_low = np.minimum(bins.accuracy, bins.confidence)[filled]
    gap = np.abs(bins.accuracy - bins.confidence)[filled]
    top.bar(
        centers[filled],
        gap,
        bottom=gap_low,
        width=width,
        color="tab:red",
        alpha=0.3,
        hatch="//",
        edgecolor="tab:red",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="0.3", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"Reliability (ECE = {bins.ece:.3f}, {n_bins} bins, N = {int(bins.count.sum())})")
    bottom.bar(centers, bins.count, width=width, color="0.5", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max predicted probability)")
    bottom.set_ylabel("count")
    return fig


def plot_training_curves(rows: Iterable[Mapping[str, Any]]) -> Figure:
    """Loss (negative ELBO per example) and NLL vs. step; for Bayesian runs also the global and local KL
    (with the annealing factor ``beta``) and the KL of each layer.

    :param rows: rows of ``train_log.jsonl``.
    """
    traces = kl_traces(rows)
    if traces.step.size == 0:
        raise ValueError("no training-log rows to plot")
    panels = 1 + int(traces.has_kl) + int(bool(traces.kl_per_layer))
    fig = _figure(6.5, 2.6 * panels)
    axes = np.atleast_1d(fig.subplots(panels, 1, sharex=True))
    ax = axes[0]
    ax.plot(traces.step, traces.loss, label="loss (-ELBO / example)" if traces.has_kl else "loss", color="tab:blue")
    if np.isfinite(traces.nll).any():
        ax.plot(traces.step, traces.nll, label="NLL", color="tab:green")
    ax.set_ylabel("nats / example")
    ax.set_title("Training curves")
    ax.legend(fontsize=8)
    if traces.has_kl:
        ax = axes[1]
        ax.plot(traces.step, traces.kl_global, label="KL global", color="tab:purple")
        ax.plot(traces.step, traces.kl_local, label="KL local", color="tab:orange")
        ax.set_ylabel("KL")
        handles, labels = ax.get_legend_handles_labels()
        if np.isfinite(traces.beta).any():
            twin = ax.twinx()
            (line,) = twin.plot(traces.step, traces.beta, color="0.5", linestyle=":", label=r"$\beta$ (KL weight)")
            twin.set_ylabel(r"$\beta$")
            handles.append(line)
            labels.append(line.get_label())
        ax.legend(handles, labels, fontsize=8)
    if traces.kl_per_layer:
        ax = axes[-1]
        names = list(traces.kl_per_layer)
        colours = np.linspace(0.0, 1.0, len(names))
        cmap = colormaps["viridis"]
        for name, short, colour in zip(names, short_layer_names(names), colours):
            ax.plot(traces.step, traces.kl_per_layer[name], color=cmap(colour), linewidth=1, label=short)
        ax.set_ylabel("KL per layer")
        if len(names) <= 12:
            ax.legend(fontsize=7, ncol=2)
        else:
            ax.text(
                0.99,
                0.95,
                f"{len(names)} layers (colour = order)",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
            )
    axes[-1].set_xlabel("step")
    return fig
