"""Registries of named components (priors, guides, weight families) that a config refers to by name.

A component is a small dataclass of hyperparameters registered under ``(kind, name)``; a config
names it as ``{name: beta_process, gamma0: 4}`` (or just ``beta_process``) and
:meth:`Registry.build` turns that spec into an instance, rejecting unknown names, unknown
parameters and values of the wrong type with a :class:`~bara_pyro.models.errors.ConfigError`
that lists the legal choices.  Range checks that need the whole config (e.g. ``gamma0 < r``) live
in the component's :meth:`Component.resolve`.

The decorator turns the class into a dataclass if it is not one already, so a user component is
just annotated fields with defaults plus the methods of its base class::

    @register_prior("sparsity", "fixed_rate")
    class FixedRateSparsity(SparsityPrior):
        rate: float = 0.3
        ...
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

from .errors import ConfigError

__all__ = ["Component", "Registry", "normalize_spec"]

_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
}


def normalize_spec(value: Any, where: str) -> dict[str, Any]:
    """``"name"`` or ``{"name": ..., **params}`` -> a fresh ``{"name": ..., **params}`` dict."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    raise ConfigError(f"{where} must be a component name or a mapping with a 'name' key, got {value!r}")


class Component:
    """Base of every registered component: a dataclass of hyperparameters, stateless at run time.

    One instance is shared by every adapted layer of a model, so a component keeps no tensors of its
    own: parameters and buffers go on the module it is given (see the ``install`` hooks of the bases).
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def resolve(self, config) -> None:
        """Fill hyperparameters left at ``None`` from the flat fields of ``config`` (a ``BaRAConfig``) and
        check ranges; raise :class:`ConfigError` naming the parameter and its legal values."""

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **hyperparameters}``, as it would be written in a config."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def need(self, condition: bool, message: str) -> None:
        """Raise :class:`ConfigError` with ``message`` prefixed by this component's kind and name."""
        if not condition:
            raise ConfigError(f"{self.kind} {self.name!r}: {message}")

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None:
                self.need(value in choices, f"{f.name} must be one of {list(choices)}, got {value!r}")
                continue
            allowed = _allowed_types(f.type)
            if allowed is None:
                continue
            ok = any(isinstance(value, _SIMPLE_TYPES[t]) and (t == "bool" or not isinstance(value, bool))
                     for t in allowed)
            self.need(ok, f"{f.name} must be {' or '.join(allowed)}, got {value!r}")


def _allowed_types(annotation: Any) -> list[str] | None:
    """``"float | None"`` -> ``["float", "None"]``; None when the annotation is not a union of simple types."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    if text is None:
        return None
    parts = [p.strip() for p in text.split("|")]
    return parts if all(p in _SIMPLE_TYPES for p in parts) else None


class Registry:
    """Named components of one family (``what``), grouped by kind, each kind with its base class."""

    def __init__(self, what: str, bases: dict[str, type]):
        self.what = what
        self._bases = dict(bases)
        self._entries: dict[str, dict[str, type]] = {kind: {} for kind in bases}

    @property
    def kinds(self) -> list[str]:
        return list(self._bases)

    def _check_kind(self, kind: str) -> None:
        if kind not in self._bases:
            raise ConfigError(f"unknown {self.what} kind {kind!r}; legal kinds: {self.kinds}")

    def register(self, kind: str, name: str) -> Callable[[type], type]:
        """Class decorator: register a subclass of the kind's base under ``name`` (made a dataclass if needed).

        Registering another class under a taken name raises, unless it is the same class (same module and
        qualified name) registered again, e.g. by a re-imported module or a re-run test.
        """
        self._check_kind(kind)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")

        def decorator(cls: type) -> type:
            base = self._bases[kind]
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{self.what} {kind} {name!r} must subclass {base.__name__}")
            if "__dataclass_fields__" not in cls.__dict__:
                cls = dataclasses.dataclass(cls)
            old = self._entries[kind].get(name)
            if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"{self.what} {kind} {name!r} is already registered to {old.__qualname__}")
            cls.kind, cls.name = kind, name
            self._entries[kind][name] = cls
            return cls

        return decorator

    def unregister(self, kind: str, name: str) -> None:
        """Remove a registration (for tests that register temporary components)."""
        self._check_kind(kind)
        self._entries[kind].pop(name, None)

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self._entries[kind])

    def _label(self, kind: str) -> str:
        return self.what if kind == self.what else f"{kind} {self.what}"

    def get(self, kind: str, name: str) -> type:
        self._check_kind(kind)
        try:
            return self._entries[kind][name]
        except KeyError:
            raise ConfigError(f"unknown {self._label(kind)} {name!r}; registered: {self.names(kind)}") from None

    def build(self, kind: str, spec: dict[str, Any], where: str) -> Component:
        """Instantiate the component a normalised spec names; unknown parameters and bad types raise."""
        cls = self.get(kind, spec["name"])
        params = {k: v for k, v in spec.items() if k != "name"}
        legal = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(legal))
        if unknown:
            raise ConfigError(f"{where}: unknown parameter(s) {unknown} of {self._label(kind)} {spec['name']!r}; "
                              f"legal parameters: {legal}")
        for f in dataclasses.fields(cls):  # YAML reads an unquoted off / on as a boolean: the choice is meant
            choices, value = f.metadata.get("choices"), params.get(f.name)
            word = {False: "off", True: "on"}.get(value) if isinstance(value, bool) else None
            if choices is not None and word in choices:
                params[f.name] = spec[f.name] = word
        component = cls(**params)
        component._check_types()
        return component
