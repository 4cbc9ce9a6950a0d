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
# # BaRA from the model up
#
# BaRA (Bayesian Adaptive Rank Allocation) is a LoRA adapter whose rank components are switched on and
# off per token by random gates. This notebook builds one on a tiny BERT and reads it as a Pyro program:
#
# 1. the generative story and its plates, drawn;
# 2. the model and the guide side by side, site by site;
# 3. what `TraceMeanField_ELBO` computes, which KL terms are closed form, and one of them checked against
#    Monte Carlo;
# 4. a synthetic problem where the truth is known, and the posterior that recovers it.
#
# Everything runs on a laptop CPU in well under a minute. Numbers the notebook prints are produced by
# its cells; the text does not quote them.

# %% tags=["parameters"]
import os

# FAST = 1 (set by the test suite through BARA_TUTORIAL_FAST) trains the synthetic problem for fewer steps.
FAST = os.environ.get("BARA_TUTORIAL_FAST", "0") == "1"
RECOVERY_STEPS = 150 if FAST else 400
SEED = 0

# %%
# %matplotlib inline
import shutil

import pyro
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch
from pyro import poutine
from torch import nn

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.models import GaussianLikelihood
from bara_pyro.tasks import Batch
from bara_pyro.testing import ToyTokenTask, tiny_bert, toy_rows

pyro.set_rng_seed(SEED)

# %% [markdown]
# ## 1. The generative story
#
# For every adapted linear layer $l$ with frozen weight $W_0$, LoRA factors $A_l$ ($r \times d_\text{in}$)
# and $B_l$ ($d_\text{out} \times r$) and scaling $\alpha / r$, the default BaRA prior is
#
# $$
# \begin{aligned}
# \pi_{lk} &\sim \mathrm{Beta}\big(c\,\gamma_0 / r,\; c\,(1 - \gamma_0 / r)\big) && \text{beta process}\\
# \lambda_{lk} &\sim \mathrm{Gamma}(e_0, e_0) && \text{the component's magnitude}\\
# z_{ltk} &\sim \mathrm{Bernoulli}(\pi_{lk}) && \text{token } t \text{ uses component } k\\
# \theta_{ltk} &\sim \mathrm{Gamma}(a_\theta,\; a_\theta / \lambda_{lk}) && \text{how strongly (mean } \lambda_{lk})\\
# y_{lt} &= W_0 x_t + \tfrac{\alpha}{r} B_l\,\big((z_{lt} \odot \theta_{lt}) \odot A_l x_t\big)
# \end{aligned}
# $$
#
# and the task's likelihood (here a categorical over the classes) is observed in a data plate of the
# dataset's size. $A$ and $B$ are point estimates, initialised as in LoRA, so a fresh adapter leaves the
# backbone unchanged. The hyperparameters live in `BaRAConfig`; the named components it resolves to are
# the prior and guide objects that build every site:

# %%
config = BaRAConfig(r=4)
print(config)
print()
for slot, component in vars(config.components).items():
    print(f"{slot:>9}: {component}")

# %% [markdown]
# A tiny BERT (random weights, built from a config, no download) with adapters on its attention's
# `query` and `value` projections, and a toy task: label 1 iff token 7 occurs in the sequence.
# `dataset_size` is the $N$ of the data plate; every per-example term is scaled by $N / B$.

# %%
task = ToyTokenTask()
model = get_bara_model(tiny_bert(), config, forward_fn=task.scores)
model.print_trainable_parameters()
rows = toy_rows(8)
batch = task.collate(rows)
model.dataset_size = 64

# %% [markdown]
# ### The plates, drawn
#
# `pyro.render_model` draws the model from a trace when the `graphviz` package and its `dot` program are
# installed. Otherwise the cell below draws the same picture with matplotlib, from the same trace: the
# global sites of one layer sit outside every plate, the gates inside the `sequences` x `tokens` plates,
# the observation inside the `data` plate.


# %%
def unwrap(fn):
    """The distribution under Pyro's Independent / Masked / scaled wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


guide_trace = poutine.trace(model.guide).get_trace(batch)
model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
first_layer = model.adapter_items[0][0]
layer_sites = {name.rpartition(".")[2]: node for name, node in model_trace.nodes.items()
               if node["type"] == "sample" and name.rpartition(".")[0] == first_layer}
globals_ = [v for v, node in layer_sites.items() if not node["cond_indep_stack"]]
locals_ = [v for v, node in layer_sites.items() if node["cond_indep_stack"]]
local_plates = [f.name for f in layer_sites[locals_[0]]["cond_indep_stack"]]
obs_plates = [f.name for f in model_trace.nodes["obs"]["cond_indep_stack"]]
print("one layer's global sites:", globals_, "| local sites:", locals_, "in plates", local_plates)
print("observation in plates", obs_plates)

# which global feeds which local site: read from the prior components
parents = {}
for prior in (config.components.sparsity, config.components.magnitude):
    if prior.active:
        parents[prior.local_site] = list(prior.global_sites(config.r, 0.5))


def draw_plates():
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6)
    ax.axis("off")
    pos = {}
    for i, v in enumerate(globals_):
        pos[v] = (2.5 + 2.8 * i, 5.0)
    for i, v in enumerate(locals_):
        pos[v] = (2.5 + 2.8 * i, 2.9)
    pos["obs"] = (8.6, 1.1)
    ax.add_patch(FancyBboxPatch((1.4, 2.0), 5.6, 1.8, boxstyle="round,pad=0.05", fill=False))
    ax.text(6.9, 2.05, " x ".join(local_plates), ha="right", va="bottom", fontsize=9)
    ax.add_patch(FancyBboxPatch((7.7, 0.3), 1.8, 1.6, boxstyle="round,pad=0.05", fill=False))
    ax.text(9.45, 0.35, obs_plates[0], ha="right", va="bottom", fontsize=9)
    ax.add_patch(FancyBboxPatch((0.6, 1.7), 7.0, 4.1, boxstyle="round,pad=0.05", fill=False, ls="--", ec="grey"))
    ax.text(0.7, 5.6, "every adapted layer l", fontsize=9, color="grey")
    for child, ps in parents.items():
        for p in ps:
            ax.annotate("", pos[child], pos[p], arrowprops=dict(arrowstyle="->", shrinkA=16, shrinkB=16))
    for v in locals_:
        ax.annotate("", pos["obs"], pos[v], arrowprops=dict(arrowstyle="->", shrinkA=16, shrinkB=16))
    for v, (x, y) in pos.items():
        observed = v == "obs"
        ax.add_patch(Circle((x, y), 0.5, fc="lightgrey" if observed else "white", ec="black", zorder=3))
        ax.text(x, y, v, ha="center", va="center", fontsize=9, zorder=4)
    ax.set_title("BaRA, one layer: the plate diagram from the model trace")
    return fig


if shutil.which("dot"):
    try:
        graph = pyro.render_model(model.model, model_args=(batch,), render_distributions=True)
    except ImportError:  # the Python graphviz package is missing
        graph = draw_plates()
else:
    graph = draw_plates()
graph

# %% [markdown]
# ## 2. Model and guide, site by site
#
# The guide runs the backbone once with gates it samples; the model, replayed against the guide's trace,
# scores those same values under the prior. Every latent site is named `{module path}.{variable}`. The
# table pairs each site's guide distribution $q$ with its prior $p$, as Pyro sees them in the two traces:

# %%
print(f"{'site':<48} {'guide q':<32} {'prior p':<16} {'shape':<12} plates")
for name, node in guide_trace.nodes.items():
    if node["type"] != "sample" or name not in model_trace.nodes or model_trace.nodes[name]["is_observed"]:
        continue
    if not name.startswith(first_layer):
        continue
    prior = model_trace.nodes[name]
    plates = ",".join(f.name for f in prior["cond_indep_stack"]) or "-"
    print(f"{name:<48} {type(unwrap(node['fn'])).__name__:<32} {type(unwrap(prior['fn'])).__name__:<16} "
          f"{str(tuple(node['value'].shape)):<12} {plates}")

# %% [markdown]
# The same list for every layer: the global sites have shape `(r,)`, one value per rank component; the
# local sites have shape `(sequences, tokens, r)`, one gate per token and component. The local guide is
# *amortized*: a small network per layer maps the token's projection $A_l x_t$ to $q(z_{ltk})$ and
# $q(\theta_{ltk})$, so the gates depend on the context.
#
# ## 3. What `TraceMeanField_ELBO` computes
#
# $$
# \mathrm{ELBO} = \mathbb{E}_q\big[\log p(y \mid z, \theta, x)\big]
#   - \sum_{\text{global sites}} \mathrm{KL}\big(q \,\|\, p\big)
#   - \frac{N}{B} \sum_{t} \mathbb{E}_q\Big[\mathrm{KL}\big(q(z_t, \theta_t) \,\|\,
#     p(z_t, \theta_t \mid \pi, \lambda)\big)\Big]
# $$
#
# For each site `TraceMeanField_ELBO` uses `torch.distributions.kl_divergence(q, p)` when a rule is
# registered for the pair of distribution types, and silently falls back to a one-draw Monte Carlo
# estimate $\log q(x) - \log p(x)$ when none is. `kl_report()` says which it will be for every site of
# this model:

# %%
report = model.kl_report()
for site, closed_form in report.items():
    if site.startswith(first_layer):
        print(f"{site:<50} {'closed form' if closed_form else 'Monte Carlo'}")
print("every site closed form:", all(report.values()))

# %% [markdown]
# Why each is closed form: Beta-Beta and Gamma-Gamma ship with torch; `bara_pyro.models.kl` registers the
# Weibull-Gamma KL (the magnitude guide is a reparameterised Weibull) and the KL of a straight-through
# binary concrete against a Bernoulli (taken as the KL of the underlying Bernoullis). Check one of them,
# the Weibull-Gamma KL of a local site, against a Monte Carlo estimate:

# %%
theta_site = f"{first_layer}.theta"
q = unwrap(guide_trace.nodes[theta_site]["fn"])
p = unwrap(model_trace.nodes[theta_site]["fn"])
print("q:", type(q).__name__, "| p:", type(p).__name__)
with torch.no_grad():
    closed = float(torch.distributions.kl_divergence(q, p).sum())
    draws = q.sample((20000,))
    per_draw = (q.log_prob(draws) - p.log_prob(draws)).sum((1, 2, 3))  # the site's KL at each draw
monte_carlo, stderr = float(per_draw.mean()), float(per_draw.std() / len(per_draw) ** 0.5)
print(f"closed form, summed over the site:     {closed:.4f}")
print(f"Monte Carlo (20,000 draws), same sum:  {monte_carlo:.4f} +- {stderr:.4f} (standard error)")
assert abs(closed - monte_carlo) < 5 * stderr, "the closed-form KL disagrees with Monte Carlo"

# %% [markdown]
# The whole objective, as Pyro computes it (the negative ELBO for this minibatch, scaled to the dataset):

# %%
elbo = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=2)
with torch.no_grad():
    print("negative ELBO:", elbo.loss(model.model, model.guide, batch))

# %% [markdown]
# ## 4. A problem where the truth is known
#
# One linear layer $y = W_0 x + \frac{\alpha}{r} B\,(g \odot A x) + \varepsilon$ with $r = 8$ components,
# of which only three are on for every input. The data are generated by that layer, with orthonormal
# (and frozen) $A$ and $B$ so that the components are identifiable; BaRA has to find which components the
# data use. The likelihood is Gaussian, `GaussianLikelihood(0.1)`.


# %%
class OneLinear(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)


class RegressionTask:
    """Rows ``{"x": (d,), "y": (d,)}``: one token per example."""

    name = "synthetic"

    def collate(self, rows):
        return Batch(inputs={"x": torch.stack([r["x"] for r in rows])}, labels=torch.stack([r["y"] for r in rows]),
                     token_mask=torch.ones(len(rows), dtype=torch.bool))

    def scores(self, backbone, batch):
        return backbone.proj(batch.inputs["x"])


torch.manual_seed(SEED)
d, r, n, active = 16, 8, 512, [1, 4, 6]
regression = RegressionTask()
synthetic = get_bara_model(OneLinear(d), BaRAConfig(r=r, alpha=r, gamma0=2.0, a_theta=20.0, init_gate_logit=0.0,
                                                    target_modules=["proj"]),
                           forward_fn=regression.scores, likelihood=GaussianLikelihood(0.1))
(_, adapter), = synthetic.adapter_items
with torch.no_grad():
    adapter.lora_A.weight.copy_(torch.linalg.qr(torch.randn(d, r))[0].T)
    adapter.lora_B.weight.copy_(torch.linalg.qr(torch.randn(d, r))[0])
adapter.lora_A.weight.requires_grad_(False)
adapter.lora_B.weight.requires_grad_(False)
x = torch.randn(n, d)
true_gates = torch.zeros(n, r)
true_gates[:, active] = 1.0
with torch.no_grad(), synthetic.disable_adapter():
    delta = (true_gates * (x @ adapter.lora_A.weight.T)) @ adapter.lora_B.weight.T
    y = synthetic.backbone.proj(x) + adapter.scaling * delta
y = y + 0.1 * torch.randn(n, d)
data = [{"x": x[i], "y": y[i]} for i in range(n)]
print("truly active components:", active)

# %% [markdown]
# Train with the fused estimator (the same ELBO as `TraceMeanField_ELBO`, in plain torch) and the local
# KL in expectation over the global gates, as the `bara` preset does:

# %%
result = fit(synthetic, regression, data,
             TrainConfig(steps=RECOVERY_STEPS, batch_size=64, lr=0.05, warmup_ratio=0.0, estimator="fused",
                         local_kl="expected", checkpoint_every=0, seed=SEED),
             progress=False)
print("loss per example, first and last logged step:", result.history[0]["loss"], result.history[-1]["loss"])

# %% [markdown]
# The posterior mean usage $\mathbb{E}_q[\pi_k]$ of each component, read by drawing the global sites
# from the trained guide, against the truth; and the joint effective rank, the expected number of
# active components per token, $\mathbb{E}_q\big[\sum_k z_{tk}\big]$:

# %%
pi_site = f"{synthetic.adapter_items[0][0]}.pi"
probe = regression.collate(data[:64])
with torch.no_grad():
    pi_draws = torch.stack([poutine.trace(synthetic.guide).get_trace(probe).nodes[pi_site]["value"]
                            for _ in range(200)])
pi_mean = pi_draws.mean(0)
rank = predict(synthetic, regression, data, num_samples=0, progress=False).effective_rank["joint"]

fig = Figure(figsize=(6, 3), layout="constrained")
ax = fig.subplots()
ax.bar(range(r), pi_mean.numpy(), color=["tab:orange" if k in active else "tab:blue" for k in range(r)])
ax.set_xlabel("component k")
ax.set_ylabel("posterior mean of pi_k")
ax.set_title(f"orange: truly active; effective rank {rank:.2f} (truth {len(active)})")
inactive = [k for k in range(r) if k not in active]
print("posterior mean pi:", [round(float(v), 3) for v in pi_mean])
print("active components ranked first:", bool(pi_mean[active].min() > pi_mean[inactive].max()))
fig

# %% [markdown]
# The data asked for three components and the posterior found which: the truly active ones get the
# highest usage and the effective rank moves towards their number. On real fine-tuning data the
# likelihood is much less sharp, and the next tutorial shows what the gates do there.
