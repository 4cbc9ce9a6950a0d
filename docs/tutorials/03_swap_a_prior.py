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
# # Swap a prior
#
# BaRA's priors and guides are named components, resolved from the config through registries. This
# notebook
#
# 1. swaps the beta-process sparsity prior for the stick-breaking Indian buffet process (IBP), and the gamma
#    magnitude prior for the horseshoe, one line of config each;
# 2. draws from each prior, to see what it believes before any data;
# 3. fits each to a synthetic problem with a known answer and compares the posteriors;
# 4. writes a prior of its own, registers it, and checks it with the contract tests that ship in
#    `bara_pyro.testing`;
# 5. swaps the slab on the magnitudes of `bara_singular` between a Gaussian and the non-local prior that
#    vanishes at zero (the preset's), and compares what each charges for a magnitude.
#
# It runs on a laptop CPU in a minute or two.

# %% tags=["parameters"]
import os

# FAST = 1 (set by the test suite through BARA_TUTORIAL_FAST): fewer prior draws and training steps.
FAST = os.environ.get("BARA_TUTORIAL_FAST", "0") == "1"
PRIOR_DRAWS = 100 if FAST else 400
STEPS = 120 if FAST else 400
SEED = 0

# %%
# %matplotlib inline
import dataclasses

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.distributions import constraints
from torch import nn

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.models import (
    ConfigError,
    GaussianLikelihood,
    GlobalSite,
    SparsityPrior,
    available_components,
    register_prior,
)
from bara_pyro.tasks import Batch
from bara_pyro.testing import ToyTokenTask, run_contract, tiny_bert, toy_rows

pyro.set_rng_seed(SEED)

# %% [markdown]
# ## 1. One line of config each
#
# In YAML (a run config or a preset) the swaps read
#
# ```yaml
# adapter:
#   prior: {sparsity: ibp}          # beta_process -> stick-breaking IBP; magnitude and guides unchanged
# ```
#
# and `prior: {magnitude: horseshoe}`; on the command line, `--set adapter.prior.sparsity=ibp`. In Python
# the `prior` field of `BaRAConfig` takes the same mapping. The registered names of every slot:

# %%
for slot, names in available_components().items():
    print(f"{slot:>16}: {', '.join(names)}")

# %%
R = 8
configs = {
    "beta process x gamma": BaRAConfig(r=R),
    "IBP x gamma": BaRAConfig(r=R, prior={"sparsity": "ibp"}),
    "beta process x horseshoe": BaRAConfig(r=R, prior={"magnitude": "horseshoe"}),
}
for label, config in configs.items():
    c = config.components
    print(f"{label:>26}: sparsity {c.sparsity}, magnitude {c.magnitude}")

# %% [markdown]
# Each prior declares its own global sites per layer, and each pair of guide and prior has its own KL.
# `kl_report()` tells, site by site, whether `TraceMeanField_ELBO` (and the fused estimator) use a closed
# form or fall back to a one-draw Monte Carlo estimate:

# %%
toy = ToyTokenTask()
batch = toy.collate(toy_rows(8))
for label, config in configs.items():
    model = get_bara_model(tiny_bert(), config, forward_fn=toy.scores)
    path = model.adapter_items[0][0]
    report = {site.rpartition(".")[2]: closed for site, closed in model.kl_report().items()
              if site.rpartition(".")[0] == path}
    print(f"{label:>26}: " + ", ".join(f"{v} {'closed form' if c else 'Monte Carlo'}" for v, c in report.items()))

# %% [markdown]
# ## 2. What each prior believes
#
# Running the model without a guide draws every site from its prior. The local sites are named the same
# whatever the prior: `z` (is component $k$ on for token $t$) and `theta` (its magnitude). Averaged over
# the tokens of one draw, `z` gives the usage of each component; over many draws, its prior mean.


# %%
def prior_draws(config, draws=PRIOR_DRAWS):
    """Per draw of the prior: the usage (mean of z over tokens) and mean magnitude of each component."""
    model = get_bara_model(tiny_bert(), config, forward_fn=toy.scores)
    model.dataset_size = len(batch.labels)
    path = model.adapter_items[0][0]
    usage, magnitude = [], []
    with torch.no_grad():
        for _ in range(draws):
            trace = poutine.trace(model.model).get_trace(batch)
            mask = batch.token_mask.unsqueeze(-1)
            z, theta = trace.nodes[f"{path}.z"]["value"], trace.nodes[f"{path}.theta"]["value"]
            usage.append(((z * mask).sum((0, 1)) / mask.sum()).numpy())
            magnitude.append(((theta * mask).sum((0, 1)) / mask.sum()).numpy())
    return np.array(usage), np.array(magnitude)


draws = {label: prior_draws(config) for label, config in configs.items()}
fig = Figure(figsize=(11, 3.5), layout="constrained")
ax_z, ax_m = fig.subplots(1, 2)
for label, (usage, magnitude) in draws.items():
    ax_z.plot(range(R), usage.mean(0), marker="o", label=label)
    ax_m.hist(np.log10(magnitude.ravel()), bins=40, histtype="step", density=True, label=label)
ax_z.set(xlabel="component k", ylabel="prior mean usage", title="sparsity: how often each component is on")
ax_m.set(xlabel="log10 magnitude (every draw and component)", ylabel="density", title="magnitudes")
ax_z.legend(fontsize=8)
fig

# %%
for label, (usage, magnitude) in draws.items():
    q = np.quantile(magnitude, [0.05, 0.5, 0.95, 0.99])
    print(f"{label:>26}: expected active components {usage.sum(1).mean():.2f}; "
          f"magnitude quantiles 5/50/95/99%: {np.round(q, 3).tolist()}")

# %% [markdown]
# Read the two panels as the priors' definitions predict. The beta process treats the components alike;
# the IBP orders them, each component used less often than the one before it (its inclusion probability
# is a product of sticks). The gamma prior keeps the magnitudes within a few units of 1; the horseshoe,
# a half-Cauchy scale shared by the layer times one per component, spreads them over orders of magnitude,
# with mass near 0 for components it shrinks and heavy tails for the few it lets escape (compare the 5%
# and 99% quantiles).
#
# ## 3. What changes in the posterior
#
# The synthetic problem of the first tutorial: one linear layer whose data use components 1, 4 and 6 of
# $r = 8$, with orthonormal, frozen LoRA factors so that the components are identifiable. The same data
# for every prior.


# %%
class OneLinear(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)


class RegressionTask:
    name = "synthetic"

    def collate(self, rows):
        return Batch(inputs={"x": torch.stack([r["x"] for r in rows])}, labels=torch.stack([r["y"] for r in rows]),
                     token_mask=torch.ones(len(rows), dtype=torch.bool))

    def scores(self, backbone, batch):
        return backbone.proj(batch.inputs["x"])


d, n, active = 16, 512, [1, 4, 6]
regression = RegressionTask()
torch.manual_seed(SEED)
A = torch.linalg.qr(torch.randn(d, R))[0].T
B = torch.linalg.qr(torch.randn(d, R))[0]
base = OneLinear(d)
x = torch.randn(n, d)
true_gates = torch.zeros(n, R)
true_gates[:, active] = 1.0
with torch.no_grad():
    y = base.proj(x) + 1.0 * (true_gates * (x @ A.T)) @ B.T + 0.1 * torch.randn(n, d)
data = [{"x": x[i], "y": y[i]} for i in range(n)]


def fit_synthetic(config):
    """Fit ``config`` (alpha = r, so the scaling is 1) to the data; per-component usage and mean gate."""
    backbone = OneLinear(d)
    backbone.load_state_dict(base.state_dict())
    config = dataclasses.replace(config, alpha=float(R), target_modules=["proj"], a_theta=20.0, init_gate_logit=0.0,
                                 gamma0=2.0)
    model = get_bara_model(backbone, config, forward_fn=regression.scores, likelihood=GaussianLikelihood(0.1))
    (_, adapter), = model.adapter_items
    with torch.no_grad():
        adapter.lora_A.weight.copy_(A)
        adapter.lora_B.weight.copy_(B)
    adapter.lora_A.weight.requires_grad_(False)
    adapter.lora_B.weight.requires_grad_(False)
    local_kl = "expected" if model.supports_expected_globals else "draw"
    fit(model, regression, data, TrainConfig(steps=STEPS, batch_size=64, lr=0.05, warmup_ratio=0.0, estimator="fused",
                                             local_kl=local_kl, checkpoint_every=0, seed=SEED), progress=False)
    pred = predict(model, regression, data, num_samples=0, record_tokens=True, progress=False)
    stats = pred.token_stats[model.adapter_items[0][0]]
    return (stats["token_prob"].mean(0).numpy(), stats["token_expected_gate"].mean(0).numpy(),
            pred.effective_rank["joint"], local_kl)


posteriors = {label: fit_synthetic(config) for label, config in configs.items()}
fig = Figure(figsize=(11, 3.5), layout="constrained")
ax_z, ax_g = fig.subplots(1, 2)
width = 0.8 / len(posteriors)
for i, (label, (usage, gate, rank, _)) in enumerate(posteriors.items()):
    ax_z.bar(np.arange(R) + i * width, usage, width, label=f"{label} (rank {rank:.2f})")
    ax_g.bar(np.arange(R) + i * width, gate, width, label=label)
for ax in (ax_z, ax_g):
    for k in active:
        ax.axvspan(k - 0.1, k + 0.8, color="grey", alpha=0.15)
ax_z.set(xlabel="component k (grey: truly active)", ylabel="mean q(z_k = 1) over inputs", title="posterior usage")
ax_g.set(xlabel="component k (grey: truly active)", ylabel="mean E[g_k] over inputs", title="posterior gate")
ax_z.legend(fontsize=8)
fig

# %%
for label, (usage, gate, rank, local_kl) in posteriors.items():
    inactive = [k for k in range(R) if k not in active]
    found = usage[active].min() > usage[inactive].max()
    print(f"{label:>26}: effective rank {rank:.2f}; active components ranked first: {found}; "
          f"local KL trained {local_kl}")

# %% [markdown]
# The data are the same for every prior; what a prior changes is where the posterior starts looking and
# what it is charged for each component it keeps. The IBP pays more for a late component than for an
# early one, so when the truly active components are not the first ones, its posterior has to overcome
# that ordering. The horseshoe's magnitudes can shrink unused components towards 0 instead of switching
# them off. (The cells print the outcome for these data; with another seed or a shorter run they can
# differ.) The expectation of the local KL over the globals (`train.local_kl: expected`) exists for the
# default pair only; `model.supports_expected_globals` says so, and the other priors train with the local
# KL at a draw of the globals.
#
# ## 4. A prior of your own
#
# A sparsity prior is a small dataclass: its parameters as fields, the global sites it declares per layer,
# the hyperparameter tensors (stored as buffers, so `.to(device)` moves them), the prior of each global
# site, and the inclusion probabilities it implies. Here: a *decaying beta* prior,
# $\pi_k \sim \mathrm{Beta}(a\,\rho^k, 1)$, so that later components are used less, like the IBP's, but
# each $\pi_k$ independently. Declaring the family `beta` gives it a Beta mean-field posterior and a
# closed-form KL.


# %%
@register_prior("sparsity", "decaying_beta")
class DecayingBetaSparsity(SparsityPrior):
    """``pi_k ~ Beta(a * decay**k, 1)`` (site ``{path}.pi``, shape ``(r,)``), ``z_tk ~ Bernoulli(pi_k)``."""

    a: float = 2.0
    decay: float = 0.7

    def resolve(self, config):
        self.need(self.a > 0, f"a must be > 0, got {self.a!r}")
        self.need(0 < self.decay <= 1, f"decay must be in (0, 1], got {self.decay!r}")

    def global_sites(self, r, init_prob):
        return {"pi": GlobalSite((r,), constraints.unit_interval, init_prob, "beta")}

    def hyperparameters(self, r):
        return {"alpha": self.a * self.decay ** torch.arange(r, dtype=torch.float), "beta": torch.ones(r)}

    def global_prior(self, name, hp, values):
        return dist.Beta(hp.alpha, hp.beta)

    def inclusion_probs(self, hp, values):
        return values["pi"]


print("registered sparsity priors:", available_components()["prior.sparsity"])
try:
    BaRAConfig(prior={"sparsity": {"name": "decaying_beta", "decay": 1.5}})
except ConfigError as error:
    print("a bad value fails when the config is built:", error)

# %% [markdown]
# The contract every configuration must meet (built-in or yours): it builds on a tiny BERT with one set of
# sites per adapted layer named `{module path}.{variable}`; it reports whether each KL is closed form; the
# fused estimator gives the same ELBO and gradients as `TraceMeanField_ELBO` (float64, same seed); it
# trains a few steps with both estimators; it predicts with `S = 0` and `S > 0`; and it saves and loads to
# identical predictions. `run_contract` runs all of it and raises on the first failure:

# %%
custom = BaRAConfig(r=4, prior={"sparsity": {"name": "decaying_beta", "decay": 0.5}})
report = run_contract(custom)
first = report.sites[0].rpartition(".")[0]
print("sites of one layer:", [s.rpartition(".")[2] for s in report.sites if s.rpartition(".")[0] == first])
print("every KL closed form:", report.kl_is_analytic)
print("fused estimator equals TraceMeanField_ELBO:", report.fused_matches_svi)
print("losses per estimator:", {k: [round(v, 3) for v in losses] for k, losses in report.losses.items()})

# %% [markdown]
# In a test suite, the same checks are a mixin that pytest collects, one test per part of the contract:
#
# ```python
# from bara_pyro.testing import GateContract
#
# class TestDecayingBeta(GateContract):
#     config = {"r": 4, "prior": {"sparsity": {"name": "decaying_beta", "decay": 0.5}}}
#     expect_analytic = True
# ```
#
# And the new prior on the synthetic problem, next to the others:

# %%
usage, gate, rank, local_kl = fit_synthetic(BaRAConfig(r=R, prior={"sparsity": {"name": "decaying_beta"}}))
print(f"decaying beta x gamma: effective rank {rank:.2f}; usage per component {[round(float(u), 3) for u in usage]}")

# %% [markdown]
# ## 5. A slab that vanishes at zero
#
# Priors on the weights swap the same way. In the `bara_singular` preset (BaRA on the singular directions
# of the update, docs/model.md) each component's magnitude $\lambda_k$ has a slab, and the gate decides
# whether the component acts on a token. With a Gaussian slab $N(0, \sigma^2)$, whose density is largest
# at 0, a component the data do not need can be *off* (its gate) or *tiny* (its magnitude) at almost the
# same price, so nothing moves its gate away from the prior. The second-moment non-local prior
# (Johnson & Rossell 2012), the preset's slab,
#
# $$p(\lambda) = \frac{\lambda^2}{\sigma^2}\, N(\lambda; 0, \sigma^2)$$
#
# vanishes at 0: a component kept in the slab must have a size, and an unneeded one is cheaper switched
# off. One line of config again: `weights: {name: singular_slab, slab: gaussian}` (or `moment`), or
# `--set adapter.weights.slab=gaussian`.

# %%
from torch.distributions import Normal, kl_divergence  # noqa: E402

from bara_pyro.methods import load_preset  # noqa: E402
from bara_pyro.models.moment_prior import MomentNormal  # noqa: E402

singular = load_preset("bara_singular")["adapter"]
slabs = {name: BaRAConfig.from_dict({**singular, "r": R, "weights": {**singular["weights"], "slab": name}})
         for name in ("gaussian", "moment")}
for name, config in slabs.items():
    model = get_bara_model(tiny_bert(), config, forward_fn=toy.scores)
    path = model.adapter_items[0][0]
    closed = {s.rpartition(".")[2]: c for s, c in model.kl_report().items() if s.rpartition(".")[0] == path}
    print(f"{name:>8} slab: magnitude site lora_S, KL {'closed form' if closed['lora_S'] else 'Monte Carlo'}")

# %% [markdown]
# The magnitude's posterior is $q(\lambda) = N(m, \tau^2)$. Its KL from the Gaussian slab is the usual one;
# from the moment prior it is that minus $E_q[\log \lambda^2] - \log \sigma^2$, in closed form (a Poisson
# series; `bara_pyro/models/moment_prior.py`). The cell draws both priors and the price of a magnitude
# kept at mean $m$ with a small posterior scale, checked against a Monte Carlo estimate:

# %%
sigma, tau = torch.tensor(1.0), torch.tensor(0.05)
grid = torch.linspace(-3, 3, 601)
priors = {"gaussian": Normal(torch.tensor(0.0), sigma), "moment": MomentNormal(sigma)}
means = torch.linspace(0.0, 2.0, 41)
kls = {name: kl_divergence(Normal(means, tau), prior.expand(means.shape)) for name, prior in priors.items()}

fig = Figure(figsize=(11, 3.5), layout="constrained")
ax_p, ax_kl = fig.subplots(1, 2)
for name, prior in priors.items():
    ax_p.plot(grid, prior.log_prob(grid).exp(), label=f"{name} slab")
    ax_kl.plot(means, kls[name], label=f"{name} slab")
ax_p.set(xlabel="magnitude lambda", ylabel="prior density", title=f"slabs, sigma = {sigma:g}")
ax_kl.set(xlabel="posterior mean m", ylabel="KL(q || slab), nats", title=f"price of a magnitude, tau = {tau:g}")
ax_p.legend(fontsize=8)
fig

# %%
torch.manual_seed(SEED)
for m in (0.0, 0.1, 0.5, 1.0):
    q = Normal(torch.tensor(m), tau)
    x = q.sample((200_000,))
    mc = (q.log_prob(x) - priors["moment"].log_prob(x)).mean()
    closed = {name: float(kl_divergence(q, prior)) for name, prior in priors.items()}
    print(f"m = {m:3.1f}: KL Gaussian {closed['gaussian']:6.2f}, moment {closed['moment']:6.2f} "
          f"(Monte Carlo {float(mc):6.2f}) nats")

# %% [markdown]
# Near $m = 0$ the Gaussian slab charges a few nats (the posterior's width against the prior's), the moment
# prior about $\log(\sigma^2 / \tau^2) + 1.27$ more, and $\log(\sigma^2 / m^2)$ more for $\tau \ll m < \sigma$:
# keeping a component in the slab at a tiny size costs nats, switching it off with its gate does not. At
# $m = \sigma$ the two slabs charge the same, and beyond it the moment prior charges less. What this does to the
# gates on real data (every component then carries part of the update and the gates do the switching) is in
# docs/model.md, section "Gating singular directions".
