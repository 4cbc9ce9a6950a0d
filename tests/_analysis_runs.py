"""Synthetic run directories following the trainer's run-dir contract (see bara_pyro/analysis/rundir.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

LAYER_NAMES = [
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.0.attention.self.value",
    "bert.encoder.layer.1.attention.self.query",
]
TOKENS = ["[CLS]", "a", "gripping", ",", "beautifully", "shot", "film", "with", "a", "weak", "ending", "[SEP]"]
RANK = 4
DEAD = ("bert.encoder.layer.1.attention.self.query", 3)  # the one component built to be dead


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_gates(seed: int = 0, n_tokens: int = 12, n_weights: int = 400) -> dict[str, np.ndarray]:
    """Plausible gates.npz arrays: L=3 layers, r=4, ``n_tokens`` tokens; component DEAD is switched off."""
    rng = np.random.default_rng(seed)
    n_layers = len(LAYER_NAMES)
    mean = rng.uniform(0.2, 0.9, size=(n_layers, RANK))
    mean[2, 3] = 0.001
    concentration = rng.uniform(20.0, 80.0, size=(n_layers, RANK))
    logits = np.log(mean / (1 - mean))[:, None, :] + rng.normal(0.0, 1.2, size=(n_layers, n_tokens, RANK))
    token_prob = _sigmoid(logits)
    token_prob[2, :, 3] = rng.uniform(0.0, 0.004, size=n_tokens)
    shape = rng.uniform(5.0, 30.0, size=(n_layers, RANK))
    rate = shape / rng.uniform(0.5, 2.0, size=(n_layers, RANK))
    norm = rng.uniform(0.3, 2.0, size=(n_layers, RANK))
    norm[0, 1] = 0.01  # carries almost none of its layer's update
    n_example = len(TOKENS)
    example_logits = np.log(mean / (1 - mean))[:, None, :] + rng.normal(0.0, 1.2, size=(n_layers, n_example, RANK))
    return {
        "layer_names": np.asarray(LAYER_NAMES),
        "pi_alpha": mean * concentration,
        "pi_beta": (1 - mean) * concentration,
        "lambda_shape": shape,
        "lambda_rate": rate,
        "token_gate_prob": token_prob,
        "token_row": np.repeat(np.arange(n_tokens // 4 + 1), 4)[:n_tokens],  # sequences of 4 tokens
        "token_expected_gate": token_prob * (shape / rate)[:, None, :],
        "component_norm": norm,
        "example_tokens": np.asarray(TOKENS),
        "example_gate_prob": _sigmoid(example_logits),
        "log_importance_weights": rng.normal(-1500.0, 0.3, size=n_weights),
        "dead_threshold": np.asarray(0.01),
    }


def make_predictions(seed: int = 0, n: int = 120, n_classes: int = 2, n_samples: int = 40, sharp: float = 2.0):
    """predictions.npz arrays: a noisy but better-than-chance classifier with per-sample predictions."""
    rng = np.random.default_rng(seed + 1000)
    labels = rng.integers(0, n_classes, size=n)
    base = rng.normal(0.0, 1.0, size=(n, n_classes))
    base[np.arange(n), labels] += sharp
    logits = base[None] + rng.normal(0.0, 0.5, size=(n_samples, n, n_classes))
    sample_probs = np.exp(logits - logits.max(-1, keepdims=True))
    sample_probs /= sample_probs.sum(-1, keepdims=True)
    return {
        "probs": sample_probs.mean(0),
        "labels": labels,
        "sample_loglik": np.log(sample_probs[:, np.arange(n), labels]),
        "sample_probs": sample_probs,
    }


def make_train_log(bayesian: bool, steps: int = 30) -> list[dict]:
    rows = []
    for i in range(steps):
        step = 10 * (i + 1)
        nll = 0.7 * np.exp(-i / 10) + 0.25
        row = {"step": step, "nll": nll, "lr": 1e-3 * (1 - i / steps)}
        if bayesian:
            beta = min(1.0, (i + 1) / 10)
            kl_layer = {name: 0.02 * (j + 1) * (1 - np.exp(-i / 8)) for j, name in enumerate(LAYER_NAMES)}
            kl_global = float(sum(kl_layer.values()))
            kl_local = 0.05 * (1 - np.exp(-i / 5))
            row.update(
                kl_global=kl_global,
                kl_local=kl_local,
                beta=beta,
                kl_per_layer=kl_layer,
                loss=nll + beta * (kl_global + kl_local),
            )
        else:
            row["loss"] = nll
        rows.append(row)
    return rows


def make_run_dir(
    path: Path, method: str = "bara", seed: int = 0, gated: bool = True, sample_loglik: bool = True
) -> Path:
    """Write a complete run directory; a LoRA-like run has no gates.npz (and optionally no sample_loglik)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"method": method, "model": "bert-tiny", "seed": seed}))
    predictions = make_predictions(seed, sharp=2.5 if gated else 2.0)
    if not sample_loglik:
        predictions = {k: predictions[k] for k in ("probs", "labels")}
    np.savez(path / "predictions.npz", **predictions)
    rows = make_train_log(bayesian=gated)
    (path / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    gates = make_gates(seed) if gated else None
    if gates is not None:
        np.savez(path / "gates.npz", **gates)
    probs, labels = predictions["probs"], predictions["labels"]
    metrics = {
        "method": method,
        "test": {
            "accuracy": float((probs.argmax(1) == labels).mean()),
            "nll": float(-np.log(probs[np.arange(len(labels)), labels]).mean()),
            "ece": 0.05,
            "brier": 0.2,
        },
        "effective_rank": float(gates["token_gate_prob"].sum(-1).mean()) if gates is not None else None,
        "update_rank": 2.3456,
        "update_rank_per_layer": {name: 1.5 + 0.25 * i for i, name in enumerate(LAYER_NAMES)},
        "trainable_parameters": 12345,
        "wall_time_s": 12.5,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def rgba(fig) -> np.ndarray:
    """Render a matplotlib Figure with its Agg canvas into an ``(H, W, 4)`` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def ink_fractions(image: np.ndarray) -> tuple[float, float]:
    """(fraction of non-white pixels, fraction of coloured pixels) of an RGB(A) image, uint8 or float in [0, 1]."""
    rgb = np.asarray(image)[..., :3].astype(float)
    if rgb.max() <= 1.0:
        rgb = rgb * 255.0
    non_white = (rgb.min(axis=-1) < 235).mean()
    coloured = ((rgb.max(axis=-1) - rgb.min(axis=-1)) > 40).mean()
    return float(non_white), float(coloured)


def assert_not_blank(image: np.ndarray, min_ink: float = 0.02, min_colour: float = 0.003) -> None:
    """The image has drawn content (ink) and data marks in colour, not only black axes and text."""
    non_white, coloured = ink_fractions(image)
    rgb = np.asarray(image)[..., :3].astype(float)
    assert (rgb * (255.0 if rgb.max() <= 1.0 else 1.0)).std() > 5.0
    assert non_white > min_ink, f"only {non_white:.3%} non-white pixels"
    assert coloured > min_colour, f"only {coloured:.3%} coloured pixels"
