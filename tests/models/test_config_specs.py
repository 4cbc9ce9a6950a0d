"""Declarative priors, guides and weights in BaRAConfig: normalisation, flat-field defaults, errors, round trips."""

import copy
import dataclasses

import pytest
import yaml

from bara_pyro import BaRAConfig
from bara_pyro.models import PRIORS, ConfigError, available_components
from bara_pyro.models.priors import BetaProcessPrior, HorseshoePrior, StickBreakingIBPPrior

SWAPPED = """
r: 8
prior:
  sparsity: {name: ibp, alpha: 3}
  magnitude: {name: horseshoe, global_scale: 0.5}
guide:
  local: {name: amortized, hidden: 16}
  global: {name: mean_field}
weights: {name: map_gaussian, prior_scale: 0.5}
"""


def test_defaults_are_the_bara_components_with_the_flat_values():
    config = BaRAConfig(r=8, gamma0=3.0, concentration=2.0, e0=1.5, a_theta=9.0, temperature=0.5, guide_hidden=7)
    assert config.prior == {"sparsity": {"name": "beta_process"}, "magnitude": {"name": "gamma"}}
    assert config.guide == {"local": {"name": "amortized"}, "global": {"name": "mean_field"}}
    assert config.weights == {"name": "point"}
    parts = config.components
    assert parts.sparsity.spec() == {"name": "beta_process", "gamma0": 3.0, "concentration": 2.0}
    assert parts.magnitude.spec() == {"name": "gamma", "shape": 1.5, "local_shape": 9.0}
    assert parts.local.spec() == {"name": "amortized", "hidden": 7, "temperature": 0.5, "init_logit": 2.0}
    assert config.has_gate


def test_a_value_in_a_spec_wins_over_the_flat_field():
    config = BaRAConfig(r=8, gamma0=3.0, prior={"sparsity": {"name": "beta_process", "gamma0": 5}})
    assert config.components.sparsity.gamma0 == 5
    assert config.gamma0 == 3.0
    ibp = BaRAConfig(r=8, gamma0=3.0, prior={"sparsity": "ibp"}).components.sparsity
    assert isinstance(ibp, StickBreakingIBPPrior) and ibp.alpha == 3.0  # flat gamma0 is the IBP's alpha default


def test_yaml_spec_round_trips_exactly():
    config = BaRAConfig.from_dict(yaml.safe_load(SWAPPED))
    assert isinstance(config.components.magnitude, HorseshoePrior)
    assert config.components.magnitude.global_scale == 0.5
    data = config.to_dict()
    again = BaRAConfig.from_dict(yaml.safe_load(yaml.safe_dump(data)))
    assert again == config and again.to_dict() == data
    assert again.components == config.components
    assert BaRAConfig.from_dict(copy.deepcopy(BaRAConfig().to_dict())) == BaRAConfig()


def test_bare_names_and_partial_specs_are_normalised():
    config = BaRAConfig(prior={"magnitude": "none"}, guide={"local": "mean_field"}, weights="map_gaussian")
    assert config.prior == {"sparsity": {"name": "beta_process"}, "magnitude": {"name": "none"}}
    assert config.guide == {"local": {"name": "mean_field"}, "global": {"name": "mean_field"}}
    assert config.weights == {"name": "map_gaussian"}
    assert BaRAConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kwargs", [{"prior": "fixed"}, {"gate": "none"},
                                    {"prior": {"sparsity": "none", "magnitude": "none"}}])
def test_fixed_prior_is_plain_lora(kwargs):
    config = BaRAConfig(**kwargs)
    assert not config.has_gate
    if "sparsity" not in str(kwargs):
        assert (config.gate, config.prior) == ("none", "fixed")
        assert BaRAConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kwargs,match", [
    ({"prior": {"sparsity": "spike_and_slab"}}, r"unknown sparsity prior 'spike_and_slab'; registered: "
                                                r"\['beta_process', 'contextual_beta_process', 'contextual_ibp', "
                                                r"'ibp', 'none'"),
    ({"prior": {"magnitude": {"name": "gamma", "shap": 1}}}, r"unknown parameter\(s\) \['shap'\].*legal parameters: "
                                                             r"\['shape', 'local_shape'\]"),
    ({"prior": {"magnitude": {"name": "gamma", "shape": "big"}}}, "shape must be float or None, got 'big'"),
    ({"prior": {"sparsity": {"name": "beta_process", "gamma0": 8}}}, r"gamma0 must satisfy 0 < gamma0 < r = 8"),
    ({"prior": {"sparsity": {"name": "ibp", "alpha": -1}}}, "alpha must be a positive number"),
    ({"prior": {"magnitude": {"name": "horseshoe", "global_scale": 0}}}, "global_scale must be a positive number"),
    ({"prior": {"sparsty": "ibp"}}, r"unknown prior key\(s\) \['sparsty'\]; legal keys: \['sparsity', 'magnitude'\]"),
    ({"prior": "flat"}, "prior must be a mapping with keys"),
    ({"guide": {"local": "variational"}}, r"unknown local guide 'variational'; registered: \['amortized', "
                                          r"'conditional_prior', 'delta', 'mean_field'"),
    ({"guide": {"global": "amortized"}}, r"unknown global guide 'amortized'; registered: \['delta', 'mean_field'"),
    ({"guide": {"local": {"name": "amortized", "hidden": 0}}}, "hidden must be a positive integer"),
    ({"guide": {"local": {"name": "amortized", "hidden": 2.5}}}, "hidden must be int or None"),
    ({"weights": "gp"}, r"unknown weights 'gp'; registered: \['adaptive_noise', 'blob_gaussian', "
                        r"'inducing_gaussian', 'laplace', 'map_gaussian', 'mc_dropout', 'point'"),
    ({"weights": {"name": "blob_gaussian", "sampler": "lrt"}}, r"sampler must be one of \['flipout', 'shared'\]"),
    ({"weights": {"name": "map_gaussian", "prior_scale": 0}}, "prior_scale must be > 0"),
    ({"weights": "mc_dropout"}, "needs lora_dropout > 0"),
    ({"weights": {"prior_scale": 1}}, "weights must be a component name or a mapping with a 'name' key"),
    ({"gate": "none", "prior": {"sparsity": "ibp"}}, "gate='none' .* contradicts prior"),
])
def test_bad_component_specs_fail_at_construction_with_the_legal_choices(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BaRAConfig(**kwargs)


def test_available_components_lists_every_slot():
    slots = available_components()
    assert slots == {"prior.sparsity": ["beta_process", "contextual_beta_process", "contextual_ibp", "ibp", "none"],
                     "prior.magnitude": ["gamma", "horseshoe", "none"],
                     "guide.local": ["amortized", "conditional_prior", "delta", "mean_field"],
                     "guide.global": ["delta", "mean_field"],
                     "weights": ["adaptive_noise", "blob_gaussian", "inducing_gaussian", "laplace", "map_gaussian",
                                 "mc_dropout", "point", "projected_subspace", "rank_dropout", "singular_slab",
                                 "slab_gaussian"]}


def test_registry_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        @PRIORS.register("sparsity", "beta_process")
        class Impostor(BetaProcessPrior):
            pass
    assert PRIORS.get("sparsity", "beta_process") is BetaProcessPrior
    with pytest.raises(TypeError, match="must subclass SparsityPrior"):
        PRIORS.register("sparsity", "wrong_base")(HorseshoePrior)


def test_replace_re_resolves_the_components():
    config = BaRAConfig(r=8)
    other = dataclasses.replace(config, prior={"sparsity": "ibp"})
    assert isinstance(other.components.sparsity, StickBreakingIBPPrior)
    assert isinstance(config.components.sparsity, BetaProcessPrior)
