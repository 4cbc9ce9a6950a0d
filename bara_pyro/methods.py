"""The methods ``bara-pyro`` can run: one packaged preset (YAML) per method, all configurations of one machinery.

A preset is a partial run config (``method``, ``description``, ``adapter``, ``eval``, ``ensemble``, ...)
merged over the defaults by the run layer; every method uses the same adapters, training loop,
prediction and metrics and differs only in its ``adapter`` block (prior, guide, weight family)
and evaluation sample count::

    lora                LoRA (MLE)                           prior: fixed
    lora_map            LoRA-MAP                             weights: map_gaussian
    mc_dropout          MC-dropout LoRA                      weights: mc_dropout, lora_dropout: 0.1, S = 10
    ensemble            deep ensemble of LoRAs               ensemble.members: 5 (run level)
    blob                BLoB                                 weights: blob_gaussian, S = 10
    bara                BaRA                                 the default prior and guide, S = 10
    bara_sparsity_only  BaRA without the gamma magnitude     prior.magnitude: none
    bara_global_only    BaRA without amortization            guide.local: mean_field
    bara_slab           BaRA, spike-and-slab                 slab_gaussian weights, conditional_prior gates
    bara_singular       BaRA on singular directions          singular_slab weights, gates at guide_lr 0.02
    bayesian_lora       Bayesian-LoRA                        weights: inducing_gaussian, S = 10
    balora              BaLoRA (designed from its abstract)  weights: adaptive_noise, S = 10
    bayeslora           BayesLoRA                            weights: rank_dropout, S = 10
    projected_subspace  LoRA-XS core with SWAG               weights: projected_subspace, S = 10
    projected_subspace_laplace  the same core, Laplace        posterior_kind: laplace, S = 10
    laplace_lora        Laplace-LoRA (post-hoc)              weights: laplace, S = 10

docs/methods.md describes the last six: each one's model, what comes from its paper and what is chosen here.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources

from .config_yaml import load_yaml
from .models.config import ConfigError

__all__ = ["list_methods", "load_preset", "merge_mappings", "preset_names", "preset_section"]

PRESET_PACKAGE = "bara_pyro.presets"


@lru_cache(maxsize=None)
def _read_all() -> dict[str, dict]:
    presets = {}
    for entry in resources.files(PRESET_PACKAGE).iterdir():
        if entry.name.endswith(".yaml"):
            data = load_yaml(entry.read_text())
            if not isinstance(data, dict):
                raise ConfigError(f"preset {entry.name} must hold a mapping")
            presets[entry.name[: -len(".yaml")]] = data
    return presets


def preset_names() -> list[str]:
    """Names of the packaged presets, sorted."""
    return sorted(_read_all())


def list_methods() -> list[tuple[str, str]]:
    """``[(name, one-line description), ...]`` of every packaged method, sorted by name."""
    return [(name, str(data.get("description", ""))) for name, data in sorted(_read_all().items())]


def load_preset(name: str) -> dict:
    """The preset ``name`` as a fresh dict (the packaged YAML); unknown names raise, listing the known ones."""
    presets = _read_all()
    if name not in presets:
        raise ConfigError(f"unknown method {name!r}; packaged methods: {sorted(presets)}")
    return copy.deepcopy(presets[name])


def merge_mappings(base: dict, update: dict) -> dict:
    """A copy of ``base`` with ``update`` merged in: a mapping in both is merged key by key, any other value of
    ``update`` replaces ``base``'s."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_section(name: str, section: str, overrides: dict | None = None) -> dict:
    """Block ``section`` (``adapter``, ``train``, ``eval``, ...) of preset ``name``, empty where the preset sets
    none, with ``overrides`` merged in (:func:`merge_mappings`): what ``--method NAME --set section.key=value`` gives
    that block, for building configs in Python (``BaRAConfig.from_preset``, ``TrainConfig.from_preset``)."""
    block = load_preset(name).get(section) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"preset {name!r}: {section} must be a mapping, got {block!r}")
    return merge_mappings(block, overrides or {})
