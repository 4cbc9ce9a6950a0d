"""Every registered prior x guide (and weight family) passes the contract of ``bara_pyro.testing``;
so does a prior defined and registered inside a test."""

import itertools

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from bara_pyro import BaRAConfig
from bara_pyro.models import GUIDES, PRIORS, WEIGHTS, ConfigError, GlobalSite, SparsityPrior, register_prior
from bara_pyro.testing import GateContract, run_contract

COMBOS = list(itertools.product(PRIORS.names("sparsity"), PRIORS.names("magnitude"), GUIDES.names("local"),
                                GUIDES.names("global")))
MONTE_CARLO = {("horseshoe", "mean_field")}  # (magnitude, global guide) pairs whose KL has no closed form
# weight families used with prior: fixed only
WITHOUT_GATES = ("adaptive_noise", "inducing_gaussian", "laplace", "projected_subspace", "rank_dropout")


@pytest.mark.parametrize("sparsity,magnitude,local,glob", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_prior_and_guide_combination(sparsity, magnitude, local, glob):
    if PRIORS.get("sparsity", sparsity).contextual and not GUIDES.get("local", local).per_token:
        with pytest.raises(ConfigError, match="per-layer gates"):
            BaRAConfig(r=4, prior={"sparsity": sparsity, "magnitude": magnitude}, guide={"local": local})
        return
    config = BaRAConfig(r=4, prior={"sparsity": sparsity, "magnitude": magnitude},
                        guide={"local": local, "global": glob})
    report = run_contract(config)
    print(f"{sparsity} x {magnitude} x {local} x {glob}: analytic={report.kl_is_analytic}")
    gated = sparsity != "none" or magnitude != "none"
    assert bool(report.sites) == gated
    if gated:
        expected = {name for name, on in (("z", sparsity != "none"), ("theta", magnitude != "none")) if on}
        assert {s.rsplit(".", 1)[1] for s in report.sites} >= expected
    assert report.kl_is_analytic == ((magnitude, glob) not in MONTE_CARLO)
    assert report.fused_matches_svi


@pytest.mark.parametrize("weights", WEIGHTS.names("weights"))
@pytest.mark.parametrize("prior", ["fixed", None])
def test_every_weight_family(weights, prior):
    spec = {"name": "blob_gaussian", "sampler": "shared"} if weights == "blob_gaussian" else weights
    if prior is None and weights in WITHOUT_GATES:
        with pytest.raises(ConfigError, match="prior: fixed"):
            BaRAConfig(r=4, prior=prior, weights=spec)
        return
    if weights in ("slab_gaussian", "singular_slab") and prior == "fixed":  # default scales: inclusion probabilities
        with pytest.raises(ConfigError, match="ard: inclusion scales"):
            BaRAConfig(r=4, prior=prior, weights=spec)
        spec = {"name": weights, "ard": "learned" if weights == "slab_gaussian" else "off"}
    config = BaRAConfig(r=4, prior=prior, weights=spec, lora_dropout=0.1 if weights == "mc_dropout" else 0.0)
    report = run_contract(config)
    latent = {s.rsplit(".", 1)[1] for s in report.sites} & {"lora_A", "lora_B", "lora_U", "lora_E", "lora_S", "xi"}
    assert latent == {"point": set(), "mc_dropout": set(), "map_gaussian": {"lora_A", "lora_B"},
                      "blob_gaussian": {"lora_A"}, "slab_gaussian": {"lora_A", "lora_B"},
                      "inducing_gaussian": {"lora_U", "lora_A"}, "rank_dropout": {"lora_E"},
                      "projected_subspace": set(), "laplace": set(), "adaptive_noise": {"xi"},
                      "singular_slab": {"lora_A", "lora_B", "lora_S"}}[weights]
    assert report.kl_is_analytic and report.fused_matches_svi


def test_blob_with_flipout_skips_only_the_equality_check():
    report = run_contract(BaRAConfig(r=4, prior="fixed", weights="blob_gaussian"))
    assert report.kl_is_analytic and not report.fused_matches_svi
    assert set(report.losses) == {"svi", "fused"}


class LogitNormalSparsity(SparsityPrior):
    r"""A user's prior: ``logit(pi_k) ~ Normal(loc, scale)``, ``z_tk ~ Bernoulli(pi_k)``; no family hint, so
    the mean-field guide is a logit-normal too (and the KL of the two logit-normals is the normals' KL)."""

    loc: float = -1.0
    scale: float = 1.5

    def resolve(self, config):
        self.need(self.scale > 0, f"scale must be > 0, got {self.scale!r}")

    def global_sites(self, r, init_prob):
        return {"pi": GlobalSite((r,), constraints.unit_interval, init_prob)}

    def hyperparameters(self, r):
        return {"loc": torch.full((r,), self.loc), "scale": torch.full((r,), self.scale)}

    def global_prior(self, name, hp, values):
        return dist.TransformedDistribution(dist.Normal(hp.loc, hp.scale), [dist.transforms.SigmoidTransform()])

    def inclusion_probs(self, hp, values):
        return values["pi"]


class HalfNormalMagnitude(SparsityPrior):
    """Only here to be registered under the wrong kind."""


@pytest.fixture
def user_prior():
    register_prior("sparsity", "logit_normal")(LogitNormalSparsity)
    yield
    PRIORS.unregister("sparsity", "logit_normal")


def test_user_defined_prior_end_to_end(user_prior):
    config = BaRAConfig.from_dict({"r": 4, "prior": {"sparsity": {"name": "logit_normal", "scale": 2.0},
                                                     "magnitude": {"name": "gamma"}}})
    assert config.components.sparsity.scale == 2.0
    report = run_contract(config)
    assert {s.rsplit(".", 1)[1] for s in report.sites} == {"pi", "lambda", "z", "theta"}
    assert report.kl_is_analytic  # KL(logit-normal || logit-normal) reduces to the normals' closed form
    with pytest.raises(ConfigError, match="scale must be > 0"):
        BaRAConfig(prior={"sparsity": {"name": "logit_normal", "scale": -1.0}})
    registered = (r"registered: \['beta_process', 'contextual_beta_process', 'contextual_ibp', 'ibp', 'logit_normal', "
                  r"'none'\]")
    with pytest.raises(ConfigError, match=registered):
        BaRAConfig(prior={"sparsity": "logit_norm"})


def test_user_prior_under_the_wrong_kind_is_refused():
    with pytest.raises(TypeError, match="must subclass MagnitudePrior"):
        register_prior("magnitude", "half_normal")(HalfNormalMagnitude)


class TestShippedContractMixinOnHorseshoe(GateContract):
    """The mixin users subclass for their own components, run here on a built-in Monte Carlo configuration."""

    config = {"r": 4, "prior": {"magnitude": {"name": "horseshoe"}}, "guide": {"local": "mean_field"}}
    expect_analytic = False


def test_a_user_family_without_validation_rows_still_fits_its_posterior():
    """A weight family written before ``fit_posterior`` took ``validation_rows`` is called without them."""
    from bara_pyro.models import get_bara_model
    from bara_pyro.models.weights import PointWeights, register_weights

    calls = []

    class OldStylePosterior(PointWeights):
        def fit_posterior(self, model, task, rows, batch_size, progress=False):
            calls.append((len(rows), batch_size))

    register_weights("old_style_posterior")(OldStylePosterior)
    try:
        config = BaRAConfig.from_dict({"r": 2, "prior": "fixed", "weights": {"name": "old_style_posterior"},
                                       "target_modules": ["0"]})
        model = get_bara_model(torch.nn.Sequential(torch.nn.Linear(3, 3)), config)
        model.fit_posterior(task=None, rows=[1, 2, 3], batch_size=2, validation_rows=[4])
    finally:
        WEIGHTS.unregister("weights", "old_style_posterior")
    assert calls == [(3, 2)]
