"""A self-contained HTML page and a Markdown summary of one or several run directories.

The report is teaching material as much as a result sheet: every diagnostic comes with one or two
plain sentences saying what it measures. It is built as a list of blocks (heading, paragraph,
table, figure) rendered twice: to HTML (figures inlined as base64 PNG, inline CSS, no external
resource) and to Markdown (figures saved as PNG files next to it).
"""

from __future__ import annotations

import base64
import datetime
import html
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import arviz_data
from .diagnostics import (
    DEFAULT_DEAD_THRESHOLD,
    component_usage,
    dead_components,
    effective_rank,
    gate_confidence,
    log_predictive_density,
    posterior_mean_pi,
    token_rank_spread,
)
from .plots import (
    plot_component_usage,
    plot_effective_rank_distribution,
    plot_rank_usage,
    plot_reliability,
    plot_token_gate_map,
    plot_training_curves,
    short_layer_names,
)
from .rundir import RunData, load_run

__all__ = ["write_report"]

_RHAT_OK = 1.01

_TEXT = {
    "metrics": (
        "Accuracy and NLL (mean negative log-likelihood of the true label, lower is better) measure the fit on the "
        "test set. ECE (expected calibration error) is the average gap between confidence and accuracy, Brier the "
        "squared error of the probability vector. The effective rank s is the expected number of switched-on rank "
        "components per token, averaged over layers and tokens (empty for adapters without gates). The update rank "
        "is the entropy effective rank of the singular values of each layer's mean update (gate means folded in), "
        "averaged over layers: how many directions the fitted update uses, for every method."
    ),
    "rhat_single": (
        "R-hat is not shown for a single fit. It compares the spread between chains with the spread within chains "
        "to detect a sampler that has not mixed; draws from one variational guide are independent by construction, "
        "so R-hat on them is always close to 1 and says nothing about whether the guide is right. Use PSIS k-hat "
        "for guide quality, and R-hat only across independent fits (several seeds of one method)."
    ),
    "rhat_fits": (
        "Here each chain is an independent fit (a different seed) of the same method and model, so R-hat asks "
        f"whether the optimisations land on the same posterior. Values below {_RHAT_OK} mean the seeds agree; larger "
        "values mean different local optima or too little training, or components that swapped places between "
        "seeds (the components of a layer are exchangeable, so a permutation alone also raises R-hat)."
    ),
    "lppd": (
        "The test log predictive density averages the predictive probability of the true label over the S "
        "posterior samples before taking the log: log (1/S) sum_s p(y_n | theta_s), summed over test examples "
        "(higher is better). On held-out data this is a direct estimate of predictive performance."
    ),
    "loo": (
        "PSIS-LOO estimates the expected log predictive density (elpd_loo, higher is better) by importance-"
        "reweighting the per-sample log-likelihoods to leave each example out; p_loo is the effective number of "
        "parameters, and a pointwise k-hat above 0.7 flags examples where that reweighting is unreliable. "
        "compare ranks the runs by elpd_loo, gives each difference to the best (elpd_diff) with its standard error "
        "(dse) and the stacking weights. LOO assumes the examples were part of the data the posterior was fitted "
        "to; on held-out test examples it is pessimistic, and the test lppd above is the direct estimate."
    ),
    "khat": (
        "We draw S sets of global parameters (the gates' pi and lambda, and the latent weights of a weight family "
        "that has them, such as a slab's magnitudes) from the variational guide q and weight each by "
        "w = p(data, globals) / q(globals). k-hat is the estimated shape of the Pareto tail of these weights: "
        "below 0.5 the guide covers the posterior well, 0.5 to 0.7 it is usable with care, above 0.7 the guide "
        "misses posterior mass and importance-weighted corrections cannot be trusted (Yao et al., 2018). "
        "ESS = 1 / sum_s wbar_s^2 over the self-normalised weights wbar is the number of draws that effectively "
        "count (S for a perfect guide, 1 when one draw carries all the weight); when the log-weights span hundreds "
        "of nats one draw carries it all, no tail is left to fit and k-hat is infinite."
    ),
    "effective_rank": (
        "s_lt = sum_k p_ltk is the expected number of active components for token t in layer l, where p_ltk is the "
        "amortized guide's probability that gate k is on. The table compares its average over tokens with "
        "sum_k E[pi_lk], the number of components a layer expects to use a priori for a new token."
    ),
    "gate_confidence": (
        "How decided the per-token gates are: the Bernoulli entropy of each gate probability p_ltk as a share of "
        "log 2 (0: the component is surely on or surely off for that token, 1: a fair coin), and the share of gate "
        "probabilities in the middle band. Undecided gates switch their component on in about half of the "
        "posterior draws, so the sampled update varies from draw to draw as under dropout; decided gates give every "
        "draw the same sparse update for a token. The effective rank counts both alike."
    ),
    "component_usage": (
        "A component can be switched off by its gate (usage near 0) or by its size (its part of the mean update near "
        "0, the gate then left near its prior). The joint effective rank counts the second kind at their usage. "
        "A component carries the update when its norm, (alpha / r) |B_k| |A_k| with a magnitude folded into B, is at "
        "least the threshold share of its layer's largest; the table gives how many do, how often they are on, and "
        "what the others add to the effective rank."
    ),
    "dead": (
        "A component (l, k) is dead when both its posterior mean usage E[pi_lk] and its largest gate probability "
        "over all evaluated tokens are below the threshold tau: it is never switched on and can be pruned."
    ),
    "summary": (
        "Posterior mean, standard deviation and 94% highest-density interval of each pi_lk (usage) and lambda_lk "
        "(scale), from draws of the guide (az.summary, statistics only: ESS and R-hat are sampler diagnostics)."
    ),
    "no_gates": (
        "This run has no gates.npz: its adapter has no per-token rank gates (e.g. plain LoRA), so there is no rank "
        "posterior to analyse."
    ),
}

_CAPTIONS = {
    "reliability": "Reliability diagram: accuracy against confidence in equal-width bins; bars below the diagonal "
    "are over-confident. The lower panel shows how many test examples fall in each bin.",
    "training_curves": "Training curves: the loss is the negative ELBO per example (NLL plus beta-weighted KL); the "
    "KL panels show how much the posterior moves away from the prior, globally, per token and per layer.",
    "rank_usage": "Rank usage: posterior mean of pi_lk, the probability that component k of layer l is switched on "
    "for a new token. Dark cells are components the model has learned not to use.",
    "effective_rank": "Distribution over evaluated tokens of the expected number of active components in each layer "
    "(dots: tokens; box: quartiles). A wide box means the adapter spends different rank on different tokens.",
    "component_usage": "Usage against size: each dot is one component of one layer, its usage (mean gate "
    "probability over the evaluated tokens) against its norm in the mean update relative to the layer's largest. "
    "Dots left of the dashed line carry little of the update whatever their usage.",
    "token_gate_map": "Token-level gate map of one example sentence: the expected number of active components for "
    "each token (rows) in each layer (columns).",
    "forest_pi": "Forest plot of q(pi_lk): median (dot), interquartile range (thick) and 94% HDI (thin) per layer "
    "and component.",
}


# ----------------------------------------------------------------------------------------------------------------
# Blocks and their two renderings
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    collapsed: str | None = None  # summary text of an HTML <details>, None: always shown


@dataclass
class _FigureBlock:
    filename: str
    caption: str
    png: bytes


@dataclass
class _Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append((f"h{level}", text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], collapsed: str | None = None) -> None:
        self.blocks.append(("table", _Table(header, rows, collapsed)))

    def figure(self, block: _FigureBlock) -> None:
        self.blocks.append(("figure", block))


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5em; color: #1d1d1f; line-height: 1.45; background: #fff; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
h3 { margin-top: 1.6em; color: #333; }
p { max-width: 60em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; max-width: 60em; }
details { margin: .8em 0; }
summary { cursor: pointer; color: #0b5394; }
.note { color: #555; font-style: italic; }
"""


_NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|inf|nan)%?$", re.IGNORECASE)


def _html_cell(text: str) -> str:
    css = ' class="num"' if _NUMBER.match(text) else ""
    return f"<td{css}>{html.escape(text)}</td>"


def _render_html(doc: _Doc, title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for kind, value in doc.blocks:
        if kind.startswith("h"):
            out.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(value)}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in value.header)
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in value.rows)
            table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            if value.collapsed:
                table = f"<details><summary>{html.escape(value.collapsed)}</summary>{table}</details>"
            out.append(table)
        elif kind == "figure":
            data = base64.b64encode(value.png).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(value.filename)}" data-file="figures/{html.escape(value.filename)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(value.caption)}</figcaption></figure>'
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_md(doc: _Doc, title: str) -> str:
    out = [f"# {title}", ""]
    for kind, value in doc.blocks:
        if kind.startswith("h"):
            out += ["#" * int(kind[1]) + " " + value, ""]
        elif kind == "p":
            out += [value, ""]
        elif kind == "table":
            if value.collapsed:
                out += [f"*{value.collapsed}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in value.header) + " |")
            out.append("|" + "|".join(["---"] * len(value.header)) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in value.rows]
            out.append("")
        elif kind == "figure":
            out += [f"![{value.filename}](figures/{value.filename})", "", f"*{value.caption}*", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Content
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return str(float(value))
        return f"{float(value):.{digits}g}"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "run"


def _common_parent(paths: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.resolve()) for p in paths]))


def _load_runs(run_dirs: Sequence[Path]) -> list[RunData]:
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) != len(names):
        parent = _common_parent(run_dirs)
        names = [str(p.resolve().relative_to(parent)) or p.resolve().name for p in run_dirs]
    return [load_run(path, name=name) for path, name in zip(run_dirs, names)]


class _Builder:
    def __init__(self, runs: list[RunData], fig_dir: Path, num_draws: int, seed: int):
        self.runs, self.fig_dir, self.num_draws, self.seed = runs, fig_dir, num_draws, seed
        self.doc = _Doc()
        self.idata: dict[str, Any] = {}

    def add_figure(self, run: RunData, kind: str, make) -> None:
        fig = make()
        filename = f"{_slug(run.name)}_{kind}.png"
        path = self.fig_dir / filename
        fig.savefig(path, dpi=110)
        self.doc.figure(_FigureBlock(filename, f"{run.name}: {_CAPTIONS[kind]}", path.read_bytes()))

    def build(self) -> _Doc:
        for run in self.runs:
            if run.has_gates or run.has_sample_loglik:
                gates = run.gates if run.has_gates and "pi_alpha" in run.gates else None
                if gates is not None:
                    self.idata[run.name] = arviz_data.global_posterior_idata(
                        gates, num_draws=self.num_draws, seed=self.seed, predictions=run.predictions
                    )
                else:
                    self.idata[run.name] = arviz_data.predictive_idata(run.predictions, seed=self.seed)
        self.overview()
        self.predictive_comparison()
        self.across_fits()
        for run in self.runs:
            self.run_section(run)
        return self.doc

    def overview(self) -> None:
        doc = self.doc
        doc.para(
            f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} from {len(self.runs)} run "
            f"director{'y' if len(self.runs) == 1 else 'ies'}: " + ", ".join(f"{r.name} ({r.path})" for r in self.runs)
        )
        doc.heading(2, "Metrics")
        doc.para(_TEXT["metrics"])
        has_val = any(isinstance(r.metrics.get("validation"), dict) for r in self.runs)
        header = [
            "run",
            "method",
            "model",
            "accuracy",
            "NLL",
            "ECE",
            "Brier",
            "effective rank",
            "update rank",
            "trainable params",
            "wall time (s)",
        ]
        if has_val:
            header += ["val accuracy", "val NLL"]
        rows = []
        for run in self.runs:
            test = run.metrics.get("test") or {}
            row = [run.name, run.method, run.model] + [_fmt(test.get(k)) for k in ("accuracy", "nll", "ece", "brier")]
            row += [_fmt(run.metrics.get(k))
                    for k in ("effective_rank", "update_rank", "trainable_parameters", "wall_time_s")]
            if has_val:
                val = run.metrics.get("validation") or {}
                row += [_fmt(val.get("accuracy")), _fmt(val.get("nll"))]
            rows.append(row)
        doc.table(header, rows)

    def predictive_comparison(self) -> None:
        runs = [r for r in self.runs if r.has_sample_loglik]
        if not runs:
            return
        doc = self.doc
        doc.heading(2, "Predictive performance from posterior samples")
        doc.para(_TEXT["lppd"])
        doc.para(_TEXT["loo"])
        rows = []
        for run in runs:
            loglik = np.asarray(run.predictions["sample_loglik"], float)
            lppd = log_predictive_density(loglik)
            row = [run.name, _fmt(loglik.shape[0]), _fmt(loglik.shape[1]), _fmt(lppd.sum()), _fmt(lppd.mean())]
            if loglik.shape[0] >= 2:
                elpd = arviz_data.loo(self.idata[run.name])
                k = np.asarray(elpd["pareto_k"])
                row += [
                    _fmt(elpd["elpd_loo"]),
                    _fmt(elpd["se"]),
                    _fmt(elpd["p_loo"]),
                    _fmt(np.max(k)),
                    _fmt(int(np.sum(k > 0.7))),
                ]
            else:
                row += ["-"] * 5
            rows.append(row)
        doc.table(
            ["run", "S", "N", "test lppd", "lppd / example", "elpd_loo", "SE", "p_loo", "max k-hat", "# k-hat > 0.7"],
            rows,
        )
        comparable = [r for r in runs if np.shape(r.predictions["sample_loglik"])[0] >= 2]
        sizes = {np.shape(r.predictions["sample_loglik"])[1] for r in comparable}
        if len(comparable) >= 2 and len(sizes) == 1:
            table = arviz_data.compare({r.name: self.idata[r.name] for r in comparable})
            doc.para("az.compare by PSIS-LOO, best run first (rank 0), with stacking weights:")
            columns = [
                c
                for c in ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse", "warning")
                if c in table.columns
            ]
            doc.table(
                ["run"] + columns, [[str(name)] + [_fmt(table.loc[name, c]) for c in columns] for name in table.index]
            )
        elif len(comparable) >= 2:
            doc.para("The runs were scored on different numbers of examples, so they are not compared by LOO.")

    def across_fits(self) -> None:
        doc = self.doc
        doc.heading(2, "Agreement across independent fits (R-hat)")
        groups: dict[tuple, list[RunData]] = defaultdict(list)
        for run in self.runs:
            if run.name in self.idata and "posterior" in self.idata[run.name].groups():
                posterior = self.idata[run.name].posterior
                key = (run.method, run.model, tuple(posterior["layer"].values), posterior.sizes["rank"])
                groups[key].append(run)
        multi = {key: runs for key, runs in groups.items() if len(runs) >= 2}
        if not multi:
            doc.para(_TEXT["rhat_single"])
            return
        doc.para(_TEXT["rhat_fits"])
        rows = []
        for (method, model, _, _), runs in multi.items():
            rhat = arviz_data.rhat_across_fits([self.idata[r.name] for r in runs])
            row = [method, model, ", ".join(r.name for r in runs)]
            for var in arviz_data.GLOBAL_VARS:
                if var not in rhat:  # lambda without a magnitude prior
                    row += ["-", "-"]
                    continue
                values = np.asarray(rhat[var])
                row += [_fmt(np.max(values)), f"{np.mean(values > _RHAT_OK):.0%}"]
            rows.append(row)
        doc.table(
            ["method", "model", "fits", "max R-hat pi", f"pi > {_RHAT_OK}", "max R-hat lambda", f"lambda > {_RHAT_OK}"],
            rows,
        )
        if len(multi) < len(groups) or any(len(r) == 1 for r in groups.values()):
            doc.para(_TEXT["rhat_single"])

    def run_section(self, run: RunData) -> None:
        doc = self.doc
        doc.heading(2, f"Run {run.name} ({run.method}, {run.model})")
        if run.predictions is not None and "probs" in run.predictions and "labels" in run.predictions:
            self.add_figure(
                run, "reliability", lambda: plot_reliability(run.predictions["probs"], run.predictions["labels"])
            )
        if run.train_log:
            self.add_figure(run, "training_curves", lambda: plot_training_curves(run.train_log))
        if not run.has_gates:
            doc.para(_TEXT["no_gates"])
            return
        gates = run.gates
        self.guide_quality(run, gates)
        if "token_gate_prob" in gates:
            self.effective_rank_table(run, gates)
        if "token_gate_prob" in gates:
            self.gate_confidence_table(gates)
        if {"token_gate_prob", "component_norm"} <= set(gates):
            self.component_usage_table(gates)
            self.add_figure(run, "component_usage", lambda: plot_component_usage(gates))
        if {"pi_alpha", "pi_beta", "layer_names"} <= set(gates):
            self.dead_table(gates)
            self.add_figure(run, "rank_usage", lambda: plot_rank_usage(gates))
        if "token_gate_prob" in gates:
            self.add_figure(run, "effective_rank", lambda: plot_effective_rank_distribution(gates))
        if "example_gate_prob" in gates:
            self.add_figure(run, "token_gate_map", lambda: plot_token_gate_map(gates))
        idata = self.idata.get(run.name)
        if idata is not None and "posterior" in idata.groups():
            self.add_figure(run, "forest_pi", lambda: arviz_data.plot_forest_pi(idata))
            self.summary_tables(idata, gates)

    def guide_quality(self, run: RunData, gates: dict[str, np.ndarray]) -> None:
        doc = self.doc
        doc.heading(3, "Quality of the global guide: PSIS k-hat")
        doc.para(_TEXT["khat"])
        if "log_importance_weights" not in gates:
            doc.para("Not available: gates.npz has no log_importance_weights.")
            return
        weights = np.asarray(gates["log_importance_weights"], float)
        try:
            khat, interpretation = arviz_data.psis_khat(weights)
        except ValueError as err:
            doc.para(f"Not available: {err}.")
            return
        ess, share, spread = arviz_data.weight_concentration(weights[np.isfinite(weights)])
        doc.table(["draws S", "k-hat", "ESS", "largest weight", "log-weight range (nats)", "interpretation"],
                  [[_fmt(weights.size), _fmt(khat, 3), f"{ess:.1f}", f"{share:.3f}", f"{spread:.1f}",
                    interpretation]])

    def effective_rank_table(self, run: RunData, gates: dict[str, np.ndarray]) -> None:
        doc = self.doc
        er = effective_rank(gates)
        rank = np.shape(gates["token_gate_prob"])[-1]
        doc.heading(3, "Effective rank")
        doc.para(_TEXT["effective_rank"])
        reported = run.metrics.get("effective_rank")
        text = f"Joint effective rank s = {er.overall:.3f} of r = {rank} over {er.per_token.size} tokens"
        if reported is not None:
            text += f" (metrics.json reports {_fmt(reported)})"
        if "token_row" in gates:
            text += (f"; within a sequence a token's rank differs from the sequence's mean by "
                     f"{token_rank_spread(gates):.3f} components (standard deviation over the sequence's tokens, "
                     f"mean over sequences and layers; 0 when gates are shared by a sequence)")
        doc.para(text + ".")
        names = [str(n) for n in gates["layer_names"]]
        prior_rank = posterior_mean_pi(gates).sum(axis=1) if {"pi_alpha", "pi_beta"} <= set(gates) else None
        update = run.metrics.get("update_rank_per_layer") or {}
        rows = []
        for i, (name, short) in enumerate(zip(names, short_layer_names(names))):
            row = [short, name, _fmt(er.per_layer[i], 3), _fmt(float(np.std(er.per_layer_token[i])), 3)]
            row.append(_fmt(prior_rank[i], 3) if prior_rank is not None else "-")
            row.append(_fmt(update[name], 3) if name in update else "-")
            rows.append(row)
        doc.table(["layer", "module", "mean s_l over tokens", "sd over tokens", "sum_k E[pi_lk]", "update rank"], rows)

    def gate_confidence_table(self, gates: dict[str, np.ndarray]) -> None:
        doc = self.doc
        confidence = gate_confidence(gates)
        doc.heading(3, "Gate confidence")
        doc.para(_TEXT["gate_confidence"])
        lo, hi = confidence.band, 1 - confidence.band
        doc.para(f"Over all layers: entropy {confidence.entropy:.3f} of log 2; {confidence.undecided:.1%} of the "
                 f"gate probabilities in [{lo:g}, {hi:g}].")
        names = [str(n) for n in gates["layer_names"]] if "layer_names" in gates else [
            str(i) for i in range(len(confidence.entropy_per_layer))]
        doc.table(["layer", "module", "entropy / log 2", f"share in [{lo:g}, {hi:g}]"],
                  [[short, name, _fmt(e, 3), _fmt(u, 3)] for short, name, e, u in
                   zip(short_layer_names(names), names, confidence.entropy_per_layer, confidence.undecided_per_layer)])

    def component_usage_table(self, gates: dict[str, np.ndarray]) -> None:
        doc = self.doc
        usage = component_usage(gates)
        doc.heading(3, "Usage against size")
        doc.para(_TEXT["component_usage"])
        carrying = int(usage.carrying.sum())

        def mean(value: float) -> str:  # nan: no component on that side of the threshold
            return _fmt(None if np.isnan(value) else value, 3)

        doc.table(["threshold", "carrying components", "their mean usage", "others' mean usage",
                   "others' part of the effective rank"],
                  [[_fmt(usage.threshold), f"{carrying} of {usage.carrying.size}", mean(usage.carrying_usage),
                    mean(usage.spare_usage), _fmt(usage.spare_rank, 3)]])

    def dead_table(self, gates: dict[str, np.ndarray]) -> None:
        doc = self.doc
        threshold = float(gates["dead_threshold"]) if "dead_threshold" in gates else DEFAULT_DEAD_THRESHOLD
        dead = dead_components(gates, threshold)
        total = int(np.size(gates["pi_alpha"]))
        doc.heading(3, "Dead components")
        doc.para(_TEXT["dead"])
        doc.para(f"tau = {threshold:g}: {len(dead)} of {total} components are dead.")
        if dead:
            short = dict(zip(map(str, gates["layer_names"]), short_layer_names(list(gates["layer_names"]))))
            doc.table(["layer", "module", "k"], [[short[layer], layer, str(k)] for layer, k in dead])

    def summary_tables(self, idata, gates: dict[str, np.ndarray]) -> None:
        doc = self.doc
        doc.heading(3, "Posterior summary of the global parameters")
        doc.para(_TEXT["summary"])
        names = [str(n) for n in gates["layer_names"]]
        short = dict(zip(names, short_layer_names(names)))
        for var in arviz_data.present_global_vars(idata):
            table = arviz_data.summary(idata, var_names=(var,))
            rows = []
            for label, values in table.iterrows():
                for name, abbrev in short.items():
                    label = label.replace(f"[{name},", f"[{abbrev},")
                rows.append([label] + [_fmt(v, 3) for v in values])
            doc.table(
                ["parameter"] + [str(c) for c in table.columns],
                rows,
                collapsed=f"az.summary of {var} ({len(rows)} entries)",
            )


def write_report(
    run_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    num_draws: int = 1000,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/*.png``) for run directories.

    :param run_dirs: one run directory or several (e.g. a LoRA and a BaRA run, or seeds of one method).
    :param out_dir: output folder; default ``<run dir>/report`` for one run, ``<common parent>/report``
        for several. Its ``figures/`` subfolder is rewritten (older PNGs there are removed).
    :param num_draws: draws of the global guide used for the summaries and R-hat across fits.
    :param seed: numpy seed of those draws.
    :returns: ``(html_path, md_path)``.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("no run directories given")
    if out_dir is None:
        out_dir = (paths[0] if len(paths) == 1 else _common_parent(paths)) / "report"
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):  # figures/ belongs to the report: drop those of an earlier report
        stale.unlink()
    runs = _load_runs(paths)
    doc = _Builder(runs, fig_dir, num_draws=num_draws, seed=seed).build()
    title = "BaRA posterior analysis: " + ", ".join(r.name for r in runs)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(_render_html(doc, title), encoding="utf-8")
    md_path.write_text(_render_md(doc, title), encoding="utf-8")
    return html_path, md_path
