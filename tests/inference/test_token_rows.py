"""Each recorded token's sequence (``token_row``), and the within-sequence spread of the per-token rank built on it."""

import json

import numpy as np
import pytest
import torch
from builders import question_rows, tiny_cloze_model

from bara_pyro.analysis.diagnostics import token_rank_spread, token_rank_spread_per_layer
from bara_pyro.inference import predict


def test_token_rows_number_the_sequences_across_batches(smollm_tokenizer):
    """Three cloze rows of three choices each in batches of two rows: nine sequences, numbered 0-8 in order, each
    with as many recorded tokens as its mask keeps; the same rows in every layer."""
    model, task = tiny_cloze_model(smollm_tokenizer)
    rows = question_rows(3)
    pred = predict(model, task, rows, num_samples=0, batch_size=2, record_tokens=True, progress=False)
    token_rows = [stats["token_row"] for stats in pred.token_stats.values()]
    assert len(token_rows) == 4 and all(torch.equal(t, token_rows[0]) for t in token_rows)
    counts = torch.cat([task.collate(rows[:2]).token_mask.sum(1), task.collate(rows[2:]).token_mask.sum(1)])
    assert torch.equal(torch.bincount(token_rows[0]), counts)
    assert bool((token_rows[0][1:] >= token_rows[0][:-1]).all())


def test_spread_is_the_mean_within_sequence_std_of_the_rank():
    # layer 0: sequence 0 has ranks 1 and 3 (std 1), sequence 1 is constant (std 0), sequence 2 has one token (left
    # out); layer 1: every rank 2 (std 0).  Mean over sequences then layers: (0.5 + 0) / 2.
    probs = np.zeros((2, 5, 4))
    probs[0, :, 0] = [1.0, 1.0, 0.5, 0.5, 0.7]
    probs[0, 1, 1:3] = 1.0
    probs[0, 2:4, 1] = 0.5
    probs[1, :, :2] = 1.0
    gates = {"token_gate_prob": probs, "token_row": np.array([0, 0, 1, 1, 2])}
    assert token_rank_spread(gates) == pytest.approx(0.25)
    assert token_rank_spread_per_layer(gates) == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError, match="two tokens"):
        token_rank_spread({"token_gate_prob": probs[:, :1], "token_row": np.array([0])})


def test_gates_of_one_value_per_sequence_have_no_spread(smollm_tokenizer):
    """Instance-wise gates (``per: sequence``) give every token of a sequence the same rank; per-token gates on a
    contextual prior do not."""
    rows = question_rows(4)
    spreads = {}
    for per in ("sequence", "token"):
        model, task = tiny_cloze_model(smollm_tokenizer, prior={"sparsity": {"name": "contextual_beta_process"},
                                                                "magnitude": "none"},
                                       guide={"local": {"name": "conditional_prior", "per": per}})
        pred = predict(model, task, rows, num_samples=0, batch_size=4, record_tokens=True, progress=False)
        stats = list(pred.token_stats.values())
        spreads[per] = token_rank_spread({"token_gate_prob": np.stack([s["token_prob"].numpy() for s in stats]),
                                          "token_row": stats[0]["token_row"].numpy()})
    assert spreads["sequence"] == pytest.approx(0.0, abs=1e-6) and spreads["token"] > 1e-3, spreads


def test_a_gated_runs_metrics_hold_the_spread_per_layer(tmp_path):
    """``metrics.json`` of a run with per-token gates: the spread per adapted layer, named as in gates.npz, whose
    mean is the run's ``token_rank_spread``."""
    from bara_pyro.experiment import run_experiment
    from bara_pyro.experiment_config import load_config

    overrides = ["model=tiny-bert", "dataset=rt_sst2", "data.max_train_examples=16", "eval.max_examples=8",
                 "eval.num_samples=0", "eval.importance_draws=0", "train.steps=2", "train.batch_size=4",
                 "train.device=cpu", "eval.splits=[validation]"]
    metrics = run_experiment(load_config(method="bara_singular", overrides=overrides), tmp_path / "run",
                             progress=False)
    per_layer = metrics["token_rank_spread_per_layer"]
    assert list(per_layer) == [str(n) for n in np.load(tmp_path / "run" / "gates.npz")["layer_names"]]
    assert np.mean(list(per_layer.values())) == pytest.approx(metrics["token_rank_spread"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["token_rank_spread_per_layer"] == per_layer
