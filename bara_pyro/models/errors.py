"""``ConfigError``: the one exception every configuration check raises."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and the legal values."""
