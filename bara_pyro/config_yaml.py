"""Read configuration YAML with every number a user types read as a number.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``5e-4``, ``1E-3`` and
``1e4`` stay strings and ``3.0e4`` too.  :func:`load_yaml` is ``yaml.safe_load`` plus one implicit
resolver for scientific notation (YAML 1.2 and Python read the same literals):

* ``5e-4``, ``1E-3``, ``3.0e-4``, ``.5e-3``, ``-2.5E+2`` -> float;
* ``1e4``, ``2E+3`` (integer mantissa, exponent >= 0) -> int, so that integer settings accept them;
* ``1_000`` -> int and ``1_000.5`` -> float already (YAML 1.1 digit grouping).

Quoted scalars (``'5e-4'``) stay strings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["ConfigLoader", "load_yaml"]

_FLOAT_TAG = "tag:yaml.org,2002:float"
_SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_INTEGRAL_SCIENTIFIC = re.compile(r"^[-+]?[0-9][0-9_]*[eE]\+?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also resolves scientific notation to numbers (see the module docstring)."""


def _construct_number(loader: ConfigLoader, node: yaml.ScalarNode) -> float | int:
    value = loader.construct_yaml_float(node)
    if _INTEGRAL_SCIENTIFIC.match(node.value) and value == int(value):
        return int(value)
    return value


ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _SCIENTIFIC, list("-+.0123456789"))
ConfigLoader.add_constructor(_FLOAT_TAG, _construct_number)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with scientific notation read as numbers."""
    return yaml.load(text, Loader=ConfigLoader)
