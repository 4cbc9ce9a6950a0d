"""``ConfigError``: the one exception every configuration check raises."""

from __future__ import annotations

__all__ = ["ConfigError", "dataclass_from_dict"]


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and the legal values."""


def dataclass_from_dict(cls, data: dict, label: str):
    """``cls(**data)`` for a config dataclass, refusing unknown keys with the list of legal ones."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {label} field(s) {unknown}; legal fields: {sorted(known)}")
    return cls(**data)
