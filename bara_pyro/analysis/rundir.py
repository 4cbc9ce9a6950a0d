"""Reading a training run directory: the file contract between the trainer and the analysis.

A run directory holds (only the first two are required)::

    config.yaml        resolved config, a mapping with at least ``method`` and ``model``
    metrics.json       {"method", "test": {...}, "validation": {...}?, "effective_rank",
                        "trainable_parameters", "wall_time_s"}
    train_log.jsonl    one JSON object per logged step: step, loss, nll, kl_global, kl_local,
                        beta, lr, kl_per_layer
    predictions.npz    probs (N, C), labels (N,), sample_loglik (S, N)?, sample_probs (S, N, C)?
    gates.npz          layer_names (L,), pi_alpha / pi_beta / lambda_shape / lambda_rate (L, r),
                        token_gate_prob / token_expected_gate (L, n_tokens, r), token_row (n_tokens,)?,
                        component_norm (L, r),
                        example_tokens (T,), example_gate_prob (L, T, r), log_importance_weights (S,),
                        dead_threshold?

A plain LoRA run has no ``gates.npz`` and usually no ``sample_loglik``; every consumer checks
:attr:`RunData.gates` / :attr:`RunData.predictions` for ``None`` instead of assuming them.
String arrays in the ``.npz`` files must be saved as unicode arrays (``np.asarray(list_of_str)``),
never as object arrays: they are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..config_yaml import load_yaml

__all__ = ["GatesLike", "RunData", "as_arrays", "load_npz", "load_run", "read_train_log"]

#: A loaded ``gates.npz`` (any mapping of name -> array), or a path to the file or to its run dir.
GatesLike = Union[Mapping[str, Any], str, os.PathLike]


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file into a plain dict (the file is closed on return)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(
                f"{path} contains an object array; save string arrays as unicode "
                "(np.asarray(list_of_str)) so they load without pickle"
            ) from err
        raise


def as_arrays(obj: GatesLike, filename: str = "gates.npz") -> Mapping[str, Any]:
    """Accept a mapping as is, or load ``obj`` (an ``.npz`` path or a run dir holding ``filename``)."""
    if isinstance(obj, Mapping):
        return obj
    path = Path(obj)
    if path.is_dir():
        path = path / filename
    return load_npz(path)


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``train_log.jsonl`` (one JSON object per line; gzip-compressed when the name ends in ``.gz``).

    Blank lines are skipped; a truncated *last* line (a trainer still writing) is dropped, a
    malformed line anywhere else raises :class:`ValueError` with its line number.
    """
    path = Path(path)
    lines = (gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()).splitlines()
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from err
    return rows


@dataclass
class RunData:
    """Everything the analysis reads from one run directory.

    :param path: the run directory.
    :param name: a display name (the directory name unless given).
    :param config: parsed ``config.yaml``.
    :param metrics: parsed ``metrics.json``.
    :param train_log: rows of ``train_log.jsonl`` (empty when the file is missing).
    :param predictions: arrays of ``predictions.npz`` or ``None``.
    :param gates: arrays of ``gates.npz`` or ``None`` (non-BaRA methods).
    """

    path: Path
    name: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    train_log: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, np.ndarray] | None = None
    gates: dict[str, np.ndarray] | None = None

    @property
    def method(self) -> str:
        """The method name (``metrics.json`` first, then ``config.yaml``)."""
        return str(self.metrics.get("method") or self.config.get("method") or "unknown")

    @property
    def model(self) -> str:
        """The backbone name from ``config.yaml`` (``"unknown"`` if absent)."""
        return str(self.config.get("model", "unknown"))

    @property
    def has_gates(self) -> bool:
        """True for runs with a gated (BaRA) adapter, i.e. a ``gates.npz``."""
        return self.gates is not None

    @property
    def has_sample_loglik(self) -> bool:
        """True if ``predictions.npz`` has per-sample log-likelihoods (needed for PSIS-LOO)."""
        return self.predictions is not None and "sample_loglik" in self.predictions


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> RunData:
    """Load a run directory; ``config.yaml`` and ``metrics.json`` are required, the rest optional."""
    run_dir = Path(run_dir)
    for required in ("config.yaml", "metrics.json"):
        if not (run_dir / required).is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory: {required} is missing")
    config = load_yaml((run_dir / "config.yaml").read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{run_dir / 'config.yaml'} must hold a YAML mapping, got {type(config).__name__}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log_path, pred_path, gates_path = (run_dir / n for n in ("train_log.jsonl", "predictions.npz", "gates.npz"))
    return RunData(
        path=run_dir,
        name=name or run_dir.resolve().name,
        config=config,
        metrics=metrics,
        train_log=read_train_log(log_path) if log_path.is_file() else [],
        predictions=load_npz(pred_path) if pred_path.is_file() else None,
        gates=load_npz(gates_path) if gates_path.is_file() else None,
    )
