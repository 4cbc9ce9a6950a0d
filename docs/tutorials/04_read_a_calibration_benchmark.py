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
# # Read a calibration benchmark
#
# A table of accuracy, NLL, ECE and Brier score for six fine-tuning methods on six tasks looks like a ranking.
# Reading it well takes a few questions: what each score rewards, whether the models are over- or
# under-confident, whether a difference is larger than the seed-to-seed spread, and what a Bayesian method did
# that a point estimate did not. This notebook asks them of the suite in docs/benchmarks.md (quality sections
# 17-19): SmolLM2-135M fine-tuned on six multiple-choice tasks by LoRA (MLE), MAP, MC-dropout, BLoB, a deep
# ensemble and BaRA (`bara_singular`), each with its learning rate chosen on the validation split, seeds 1-3
# (the ensemble seeds 2 and 3).
#
# 1. what the four scores reward, on predictions made up to make the point;
# 2. the suite's six-task means, recomputed from the runs;
# 3. over- or under-confident: the calibration gap `NLL - entropy`;
# 4. seeds and paired differences;
# 5. where BaRA put its rank, layer by layer and within a sentence;
# 6. out of distribution: which uncertainty flags unfamiliar questions.
#
# It trains nothing: it reads the runs' `metrics.json` as collected in the suite's `results.json`, which ships
# with the repository (`benchmarks/results/`), so run it from a clone. Seconds on any CPU.

# %% tags=["parameters"]
import os
from pathlib import Path

import bara_pyro

# the suite's results.json (default: the copy in this clone of the repository)
RESULTS = os.environ.get("BARA_TUTORIAL_RESULTS") or str(
    Path(bara_pyro.__file__).resolve().parents[1] / "benchmarks" / "results" / "quality_h100_2026-12-07_tuned"
    / "results.json")

# %%
# %matplotlib inline
import json
import math

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from bara_pyro.metrics import classification_metrics

if not Path(RESULTS).is_file():
    raise SystemExit(f"error: {RESULTS} not found: run this notebook from a clone of the repository, or set "
                     "BARA_TUTORIAL_RESULTS to a results.json written by `bara-pyro bench quality`")
results = json.loads(Path(RESULTS).read_text())
LABELS = {"lora": "LoRA", "lora_map": "MAP", "mc_dropout": "MC-dropout", "blob": "BLoB",
          "ensemble": "Ensemble", "bara_singular": "BaRA"}
TASKS = results["tasks"]
runs = pd.DataFrame([{"method": LABELS[r["method"]], "task": r["task"], "seed": r["seed"], **r["metrics"]["test"]}
                     for r in results["runs"] if r["status"] == "ok"])
print(f"{len(runs)} finished runs: {', '.join(sorted(runs.method.unique()))} on {len(TASKS)} tasks, seeds "
      f"{', '.join(str(s) for s in sorted(runs.seed.unique()))}")

# %% [markdown]
# ## 1. What each score rewards
#
# For `N` questions with predictive probabilities `p_n` over the choices and true answer `y_n`:
#
# * **accuracy**: the share whose most probable choice is right; blind to the probabilities;
# * **NLL**: `-mean_n log p_n(y_n)`; a proper scoring rule, punishing confident mistakes without bound;
# * **Brier**: `mean_n sum_c (p_nc - 1[c = y_n])^2`; proper too, bounded;
# * **ECE** (15 bins): the gap between confidence and accuracy, averaged over bins of confidence. Not proper:
#   a model can score well on it without knowing anything.
#
# Two made-up predictors on 2000 two-choice questions show the difference. One knows the answer 70 % of the
# time and says so (confidence 0.7, right 70 % of the time); the other answers "50/50" to everything.

# %%
generator = torch.Generator().manual_seed(0)
labels = torch.randint(0, 2, (2000,), generator=generator)
right = torch.rand(2000, generator=generator) < 0.7
choice = torch.where(right, labels, 1 - labels)
informed = torch.full((2000, 2), 0.3).scatter(1, choice[:, None], 0.7)
uniform = torch.full((2000, 2), 0.5)
scores = pd.DataFrame({"informed (0.7, right 70 %)": classification_metrics(informed, labels),
                       "always 50/50": classification_metrics(uniform, labels)}).T
print(scores.round(3))
assert scores.loc["always 50/50", "ece"] < 0.05 and scores.loc["always 50/50", "nll"] == math.log(2)
assert scores.loc["informed (0.7, right 70 %)", "nll"] < math.log(2)

# %% [markdown]
# Both are calibrated (ECE near 0); only the informed one has an NLL and a Brier score below the uninformed
# `log 2 = 0.693` and `0.5`. So read ECE beside NLL, never alone, and look at the mean predictive entropy: on
# a two-choice task an entropy near `log 2` means the model says "either". In the suite this happened: at seed
# 1 on WinoGrande-S, the learning rate chosen on validation NLL left MC-dropout and MAP predicting nearly 50/50
# (docs/benchmarks.md, section 16), with the lowest ECE of any method there.

# %%
wgs = runs[(runs.task == "winogrande_s")].set_index(["method", "seed"])[["accuracy", "nll", "ece", "mean_entropy"]]
print(wgs.sort_index().round(3))

# %% [markdown]
# ## 2. The six-task means, from the runs
#
# A suite's headline is the mean over tasks of each method's mean over seeds. Recomputed from the run records,
# it is what `results.md` prints (the ensemble has two seeds so far).

# %%
per_task = runs.groupby(["method", "task"])[["accuracy", "nll", "ece", "brier"]].mean()
means = per_task.groupby("method").mean()
means[["accuracy", "ece"]] *= 100
print(means.round(3).sort_values("nll"))
for method, key in LABELS.items():
    assert math.isclose(means.loc[key, "nll"], results["aggregates"]["test"]["nll"][method]["mean"]["mean"],
                        rel_tol=1e-9), method

# %% [markdown]
# ## 3. Over- or under-confident: the calibration gap
#
# If the answers were drawn from the model's own predictive distribution, its expected NLL would equal its
# expected entropy `H(p_n) = -sum_c p_nc log p_nc`. So `NLL - mean entropy` says which way a model errs: above 0
# it puts less probability on the true answers than it expects to (over-confident), below 0 more
# (under-confident). ECE measures the size of the miscalibration, this its direction.

# %%
runs["gap"] = runs["nll"] - runs["mean_entropy"]
gap = runs.groupby(["task", "method"])["gap"].mean().unstack()[list(LABELS.values())].loc[TASKS]
print(gap.round(3))
assert (gap.values > 0).all()  # every method is over-confident on every task

figure = Figure(figsize=(9, 3.2))
axes = figure.subplots()
width = 0.13
for i, method in enumerate(gap.columns):
    axes.bar(np.arange(len(TASKS)) + (i - 2.5) * width, gap[method], width, label=method)
axes.set_xticks(np.arange(len(TASKS)), TASKS, fontsize=8)
axes.set_ylabel("NLL - mean entropy (nats)")
axes.axhline(0, color="black", linewidth=0.5)
axes.legend(fontsize=7, ncol=3)
figure.tight_layout()
figure

# %%
print("smallest gap:", gap.idxmin(axis=1).to_dict())
print("largest gap: ", gap.idxmax(axis=1).to_dict())
assert gap.idxmin(axis=1).to_dict() == {"winogrande_s": "MAP", "arc_challenge": "Ensemble", "arc_easy": "BaRA",
                                        "winogrande_m": "BaRA", "openbookqa": "Ensemble", "boolq": "Ensemble"}
assert 0 < gap.loc["arc_challenge", "BaRA"] - gap.loc["arc_challenge", "Ensemble"] < 0.02

# %% [markdown]
# Every method is over-confident on every task: a fine-tuned model is more certain than it should be. Which
# method errs least differs by task: BaRA on ARC-E and WG-M, the ensemble (two seeds) on ARC-C (BaRA about 0.01
# nats behind), OBQA and BoolQ, MAP on WG-S, where its predictions are close to 50/50 (section 1). LoRA, with no
# prior and no averaging, has the largest gap on WG-S and WG-M.

# %% [markdown]
# ## 4. Seeds and paired differences
#
# Two seeds differ in the adapter's initialisation and the order of the training data. The spread between
# seeds is the noise floor of every comparison: a difference between methods smaller than it says nothing.
# Comparing two methods seed by seed (the same seed, so the same data order) removes what the seeds share.
# Here BaRA against MC-dropout, the baseline closest to it in NLL, task by task:

# %%
by_seed = runs.pivot_table(index=["task", "seed"], columns="method", values=["nll", "ece"])
paired = pd.DataFrame({"NLL, BaRA - MC-dropout": by_seed["nll"]["BaRA"] - by_seed["nll"]["MC-dropout"],
                       "ECE, BaRA - MC-dropout": by_seed["ece"]["BaRA"] - by_seed["ece"]["MC-dropout"]})
print(paired.round(3))
six_task = paired.groupby("seed").mean()
print("six-task mean of the paired difference, per seed:")
print(six_task.round(4))
assert (six_task["NLL, BaRA - MC-dropout"] < 0).all()
assert six_task["ECE, BaRA - MC-dropout"].min() < 0 < six_task["ECE, BaRA - MC-dropout"].max()
assert (six_task["ECE, BaRA - MC-dropout"] < 0).sum() == 2

# %% [markdown]
# BaRA's NLL is below MC-dropout's at all three seeds. Its ECE is above at seed 1 and below at seeds 2 and 3.
# If the two methods were equally good, all three paired differences would share a sign one time in four
# (either sign), so even a sign that holds at three seeds is weak evidence. NLL has one; ECE has not: its mean is
# lower for BaRA, but a sign that changes from seed to seed does not establish that advantage.

# %% [markdown]
# A method that ran fewer seeds is compared on the seeds both ran: the ensemble has seeds 2 and 3, so BaRA is
# compared with it on those two, as the suite's targets do (`results.md`, "Targets").

# %%
shared = runs[runs.seed.isin([2, 3])].groupby(["method", "task"])[["nll", "ece"]].mean().groupby("method").mean()
print(shared.loc[["BaRA", "Ensemble"]].round(4))
assert (shared.loc["BaRA"] < shared.loc["Ensemble"]).all()
for target in results["targets"]:
    if target["target"].endswith("every_baseline"):
        print(f"{target['target']}: {target['status']}\n  {target['detail']}")

# %% [markdown]
# ## 5. Where BaRA put its rank
#
# BaRA's gates decide how many of the `r = 8` rank components each adapted layer uses. `metrics.json` keeps the
# expected number per layer (the effective rank) for every run: 30 decoder layers, each with an adapter on the
# query and on the value projection. Seed 1, every task:

# %%
def layer_heatmap(by_task: dict, label: str, vmax: float, cmap: str) -> Figure:
    """One row per task, one column per decoder layer, the query and the value projections in two panels."""
    figure = Figure(figsize=(9, 4))
    axes = figure.subplots(2, 1, sharex=True)
    for ax, projection in zip(axes, ("q_proj", "v_proj")):
        grid = np.array([[v for name, v in by_task[task].items() if name.endswith(projection)] for task in TASKS])
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
        ax.set_yticks(range(len(TASKS)), TASKS, fontsize=7)
        ax.set_ylabel(projection, fontsize=8)
    axes[-1].set_xlabel("decoder layer")
    figure.colorbar(image, ax=axes, label=label)
    return figure


bara_runs = [r for r in results["runs"] if r["method"] == "bara_singular" and r["seed"] == 1]
per_layer = {r["task"]: r["metrics"]["effective_rank_per_layer"] for r in bara_runs}
layer_heatmap(per_layer, "effective rank", vmax=8, cmap="viridis")

# %%
spans = {task: max(ranks.values()) - min(ranks.values()) for task, ranks in per_layer.items()}
value_vs_query = {task: np.mean([v for n, v in ranks.items() if n.endswith("v_proj")])
                  - np.mean([v for n, v in ranks.items() if n.endswith("q_proj")]) for task, ranks in per_layer.items()}
print(pd.DataFrame({"joint effective rank": {r["task"]: r["metrics"]["effective_rank"] for r in bara_runs},
                    "largest layer - smallest": spans, "value - query, mean": value_vs_query}).round(2))
assert all(span > 0.5 for span in spans.values())
assert sum(d > 0 for d in value_vs_query.values()) == 5

# %% [markdown]
# The rank is not spread evenly: some layers use one or two components, others five or more, the value
# projections more than the query projections on five of the six tasks, and the pattern differs between tasks. A LoRA of
# rank 8 spends eight everywhere.

# %% [markdown]
# The gates are per token, so the rank can also change *within* a sentence: a token's rank is the expected number
# of components its gates switch on, and its standard deviation over a sequence's tokens says whether the tokens
# use different numbers. `metrics.json` keeps it per layer (`token_rank_spread_per_layer`, recorded from seed 3
# on):

# %%
spread_runs = [r for r in results["runs"] if r["method"] == "bara_singular" and r["seed"] == 3]
spread = {r["task"]: r["metrics"]["token_rank_spread_per_layer"] for r in spread_runs}
layer_heatmap(spread, "within-sequence spread of the token rank", vmax=0.45, cmap="magma")

# %%
summary = pd.DataFrame({"mean over layers": {t: np.mean(list(v.values())) for t, v in spread.items()},
                        "layers above 0.1": {t: sum(x > 0.1 for x in v.values()) for t, v in spread.items()},
                        "largest": {t: max(v.values()) for t, v in spread.items()}}).loc[TASKS]
print(summary.round(3))
assert (summary["largest"] > 0.3).all() and summary.loc["winogrande_s", "layers above 0.1"] == 8
assert list(summary.index[summary["mean over layers"] < 0.1]) == ["winogrande_s", "arc_challenge"]

# %% [markdown]
# The variation is uneven across layers: on every task some layer's token rank moves by more than 0.3 of a
# component across a sentence, while other layers give every token nearly the same number (spread below 0.1; on
# WinoGrande-S all but 8 of the 60). The mean over the 60 layers, which the suite's rank-structure target reads,
# dilutes that; at this seed it is below 0.1 on WinoGrande-S and ARC-Challenge (averaged over seeds 2 and 3, on
# three tasks: docs/benchmarks.md, section 18).

# %% [markdown]
# ## 6. Out of distribution
#
# The runs trained on OBQA were also tested on four other question sets (ARC-C, ARC-E and two MMLU subjects).
# A model that knows when it does not know should be less certain there. The AUROC says how well one number
# separates the two: 0.5 is chance, 1 perfect. Two numbers are tried: the predictive entropy (total
# uncertainty) and the mutual information between the answer and the weights (the part that comes from not
# knowing the weights; 0 for a deterministic model).

# %%
ood = results["ood"]
auroc = pd.DataFrame({score: {LABELS[m]: cells["mean"]["mean"] for m, cells in ood[key].items()
                              if cells.get("mean")}
                      for score, key in (("entropy", "auroc_entropy"),
                                         ("mutual information", "auroc_mutual_information"))})
print((100 * auroc).round(1))  # NaN: a deterministic model has no mutual information
assert auroc["entropy"].idxmax() == "Ensemble"
assert (auroc["entropy"] > 0.5).all() and (auroc["mutual information"].dropna() < 0.5).all()

# %% [markdown]
# Entropy flags the unfamiliar questions better than chance for every method, the ensemble best. The mutual
# information does worse than chance for every sampled method: their posteriors disagree *less* on the
# unfamiliar questions than on OBQA's own. In this suite the weight uncertainty these methods learned does
# not track distance from the training data; that is two seeds, and a place where Bayesian
# fine-tuning at this scale still falls short of its promise.
