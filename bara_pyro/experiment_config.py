"""Run configuration: one YAML mapping (model, dataset, task, adapter, train, eval, ensemble), validated at load.

Resolution order, later wins: built-in defaults < the method preset (``preset: NAME`` in the file or
``--method NAME``) < the YAML file < ``--set section.key=value`` overrides.  Every section is checked
when the config is loaded: unknown keys and impossible values raise :class:`ConfigError` with the
legal choices, so a bad config never reaches torch.

``eval.max_rows_per_pass`` (default 128) bounds one prediction forward pass: a batch of B rows with S
draws is S x B expanded rows, run in groups of ``max_rows_per_pass // S`` rows when larger
(:func:`~bara_pyro.inference.predict`); null: no bound, the whole batch at once.  ``eval.tf32`` (default false):
the evaluation's CUDA fp32 matrix products on TF32 tensor cores, as ``train.tf32`` does for training.

``ensemble``: ``members`` M (1: one model) and ``seed_stride`` (default 1000): member m trains with seed
``train.seed + m * seed_stride`` (adapter initialisation, data order and noise; member 0 keeps ``train.seed``,
so it is the single-model run of that seed).  With the default stride, ensembles whose ``train.seed`` values
differ and are below 1000 never share a member.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import os
from pathlib import Path
from typing import Any

import yaml

from .config_yaml import load_yaml
from .inference.train_config import TrainConfig
from .methods import merge_mappings
from .models.config import BaRAConfig, ConfigError

__all__ = ["DEFAULTS", "load_config", "validate_config", "parse_override", "save_config", "TINY_MODELS",
           "model_folders_unchecked"]

_MODEL_FOLDERS_CHECKED = contextvars.ContextVar("model_folders_checked", default=True)


@contextlib.contextmanager
def model_folders_unchecked():
    """Within this context a config may name a model folder that does not exist here: for reading the configs of
    runs made on another machine (aggregating their saved results) without loading the model."""
    token = _MODEL_FOLDERS_CHECKED.set(False)
    try:
        yield
    finally:
        _MODEL_FOLDERS_CHECKED.reset(token)

TINY_MODELS = {"tiny-bert": "bert", "tiny-llama": "llama",  # random miniature backbones, for tests and smoke runs
               "random-smollm2-135m": "smollm2-135m"}  # random weights at SmolLM2-135M's shapes, for speed runs

DEFAULTS: dict[str, Any] = {
    "method": "bara",
    "description": "",
    "model": "minilm-l6",
    "tokenizer": None,  # only for tiny-* models: the packaged model whose tokenizer they use
    "dataset": "rt_sst2",
    "task": {"scoring": "cloze", "max_length": None},
    "adapter": {},
    "train": {},
    "eval": {"num_samples": 10, "batch_size": 32, "ece_bins": 15, "splits": ["test"], "max_examples": None,
             "gate_examples": 256, "importance_draws": 32, "max_rows_per_pass": 128, "tf32": False},
    "ensemble": {"members": 1, "seed_stride": 1000},  # member m: train.seed + m * seed_stride
    "data": {"seed": 0, "max_train_examples": None,  # a user's file or hf: dataset: how to read it (data/user_data.py)
             "kind": None, "columns": {}, "classes": None, "num_choices": None, "validation_fraction": 0.1},
}
SECTIONS = {"task", "adapter", "train", "eval", "ensemble", "data"}
TOP_LEVEL = set(DEFAULTS) | {"preset"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=200"`` -> ``(["train", "steps"], 200)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = load_yaml(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return path, parsed


def _read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, method: str | None = None,
                overrides: list[str] | None = None) -> dict:
    """Resolve and validate a run config (see the module docstring for the order)."""
    file_data = _read_yaml(path) if path is not None else {}
    preset_name = method or file_data.get("preset")
    config = copy.deepcopy(DEFAULTS)
    if preset_name:
        from .methods import load_preset

        config = merge_mappings(config, load_preset(preset_name))
    config = merge_mappings(config, {k: v for k, v in file_data.items() if k != "preset"})
    for item in overrides or []:
        keys, value = parse_override(item)
        target = config
        for k in keys[:-1]:
            if not isinstance(target.get(k), dict):
                target[k] = {}
            target = target[k]
        target[keys[-1]] = value
    return validate_config(config)


def validate_config(config: dict) -> dict:
    """Check every section; return the config with adapter/train defaults filled in."""
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; legal keys: {sorted(TOP_LEVEL - {'preset'})}")
    config.pop("preset", None)
    for section in SECTIONS:
        if not isinstance(config.get(section), dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {config.get(section)!r}")
    for section in ("eval", "ensemble", "data", "task"):
        extra = sorted(set(config[section]) - set(DEFAULTS[section]))
        if extra:
            raise ConfigError(f"unknown {section} key(s) {extra}; legal keys: {sorted(DEFAULTS[section])}")
    _check_model(config)
    _check_dataset(config["dataset"], config["data"])
    if config["task"]["scoring"] not in ("cloze", "lettered"):
        raise ConfigError(f"task.scoring must be 'cloze' or 'lettered', got {config['task']['scoring']!r}")
    ml = config["task"]["max_length"]
    if ml is not None and not (isinstance(ml, int) and ml >= 8):
        raise ConfigError(f"task.max_length must be an integer >= 8 or null, got {ml!r}")
    config["adapter"] = BaRAConfig.from_dict(config["adapter"]).to_dict()
    config["train"] = TrainConfig.from_dict(config["train"]).to_dict()
    ev = config["eval"]
    if not (isinstance(ev["num_samples"], int) and ev["num_samples"] >= 0):
        raise ConfigError(f"eval.num_samples must be an integer >= 0, got {ev['num_samples']!r}")
    if not (isinstance(ev["batch_size"], int) and ev["batch_size"] >= 1):
        raise ConfigError(f"eval.batch_size must be a positive integer, got {ev['batch_size']!r}")
    mrp = ev["max_rows_per_pass"]
    if mrp is not None and not (isinstance(mrp, int) and not isinstance(mrp, bool) and mrp >= 1):
        raise ConfigError(f"eval.max_rows_per_pass must be a positive integer or null, got {mrp!r}")
    if not isinstance(ev["tf32"], bool):
        raise ConfigError(f"eval.tf32 must be true or false, got {ev['tf32']!r}")
    if not (isinstance(ev["ece_bins"], int) and ev["ece_bins"] >= 1):
        raise ConfigError(f"eval.ece_bins must be a positive integer, got {ev['ece_bins']!r}")
    splits = ev["splits"]
    if not (isinstance(splits, list) and splits and all(s in ("validation", "test") for s in splits)):
        raise ConfigError(f"eval.splits must be a non-empty list of 'validation'/'test', got {splits!r}")
    for key, least in (("max_examples", 1), ("gate_examples", 0), ("importance_draws", 0)):
        v = ev[key]
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= least):
            kind = "positive" if least else "non-negative"
            raise ConfigError(f"eval.{key} must be a {kind} integer or null, got {v!r}")
    members = config["ensemble"]["members"]
    if not (isinstance(members, int) and not isinstance(members, bool) and members >= 1):
        raise ConfigError(f"ensemble.members must be a positive integer, got {members!r}")
    stride = config["ensemble"]["seed_stride"]
    if not (isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1):
        raise ConfigError(f"ensemble.seed_stride must be a positive integer, got {stride!r}")
    mte = config["data"]["max_train_examples"]
    if mte is not None and not (isinstance(mte, int) and mte >= 1):
        raise ConfigError(f"data.max_train_examples must be a positive integer or null, got {mte!r}")
    return config


def _check_model(config: dict) -> None:
    from .assets import MODEL_ASSETS as PACKAGED_MODELS

    name = config["model"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model must be a name, a local folder or a hub id, got {name!r}")
    if name in TINY_MODELS or name in PACKAGED_MODELS or Path(name).expanduser().is_dir():
        return
    if name.startswith((os.sep, ".", "~")):  # a path, not a hub id
        if not _MODEL_FOLDERS_CHECKED.get():
            return
        raise ConfigError(f"model folder {name} does not exist; give a from_pretrained folder, a packaged model "
                          f"({', '.join(sorted(PACKAGED_MODELS))}) or a hub id (org/name)")
    if "/" in name:
        return
    raise ConfigError(f"unknown model {name!r}; packaged models: {sorted(PACKAGED_MODELS)}, test models: "
                      f"{sorted(TINY_MODELS)}; or give a local folder or a hub id (org/name)")


def _check_dataset(name: str, options: dict) -> None:
    from .data import DATASETS
    from .data.user_data import check_user_dataset, is_user_dataset

    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset must be a registry name, a data file or hf:NAME, got {name!r}")
    if name not in DATASETS and is_user_dataset(name):
        check_user_dataset(name, options)
        return
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}, or a data file "
                          "(.csv, .jsonl, .json, .parquet), a folder of split files or hf:NAME")


def save_config(config: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)
