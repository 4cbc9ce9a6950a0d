"""Which modules of a backbone get adapters: PEFT's matching rules and per-architecture defaults."""

from __future__ import annotations

import re

from torch import nn

from .config import ConfigError

__all__ = ["DEFAULT_TARGET_MODULES", "default_target_modules", "find_target_modules", "module_matches"]

DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
}


def module_matches(name: str, patterns: list[str] | str) -> bool:
    """A list matches ``name`` exactly or as a ``.suffix``; a string is a regex that must match in full."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def default_target_modules(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise ConfigError(f"no default target_modules for model type {model_type!r}; set target_modules "
                          f"(known defaults: {sorted(DEFAULT_TARGET_MODULES)})")
    return list(DEFAULT_TARGET_MODULES[model_type])


def find_target_modules(model: nn.Module, target_modules: list[str] | str | None,
                        exclude_modules: list[str] | str | None = None) -> list[str]:
    """Paths of the ``nn.Linear`` modules to adapt, in the backbone's module order."""
    targets = default_target_modules(model) if target_modules is None else target_modules
    found, not_linear = [], []
    for name, module in model.named_modules():
        if not name or not module_matches(name, targets):
            continue
        if exclude_modules is not None and module_matches(name, exclude_modules):
            continue
        (found if isinstance(module, nn.Linear) else not_linear).append(name)
    if not_linear:
        raise ConfigError(f"target_modules {targets!r} matched modules that are not nn.Linear: {not_linear[:5]}")
    if not found:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"target_modules {targets!r} matched no nn.Linear module of the model; "
                          f"its linear modules end in: {suffixes}")
    return found
