import json

import numpy as np
import pytest
from _analysis_runs import DEAD, LAYER_NAMES, RANK, make_gates, make_run_dir, make_train_log

from bara_pyro.analysis import (
    component_usage,
    dead_components,
    effective_rank,
    gate_confidence,
    kl_traces,
    load_run,
    log_predictive_density,
    posterior_mean_lambda,
    posterior_mean_pi,
    read_train_log,
    reliability_bins,
)


def test_posterior_means():
    gates = make_gates()
    assert np.allclose(posterior_mean_pi(gates), gates["pi_alpha"] / (gates["pi_alpha"] + gates["pi_beta"]))
    assert np.allclose(posterior_mean_lambda(gates), gates["lambda_shape"] / gates["lambda_rate"])


def test_dead_components_synthetic():
    assert dead_components(make_gates()) == [DEAD]


def test_dead_components_needs_both_criteria():
    gates = dict(make_gates())
    alpha, beta = np.full((3, RANK), 5.0), np.full((3, RANK), 5.0)
    token_prob = np.full((3, 12, RANK), 0.5)
    alpha[0, 1], beta[0, 1] = 0.01, 100.0  # globally off, and off for every token -> dead
    token_prob[0, :, 1] = 0.001
    alpha[1, 2], beta[1, 2] = 0.01, 100.0  # globally off, but one token switches it on -> alive
    token_prob[1, :, 2] = 0.001
    token_prob[1, 5, 2] = 0.9
    token_prob[2, :, 0] = 0.001  # tokens off but global usage 0.5 -> alive
    gates.update(pi_alpha=alpha, pi_beta=beta, token_gate_prob=token_prob)
    assert dead_components(gates) == [(LAYER_NAMES[0], 1)]
    assert dead_components(gates, threshold=1e-6) == []
    del gates["token_gate_prob"]  # global criterion only
    assert dead_components(gates) == [(LAYER_NAMES[0], 1), (LAYER_NAMES[1], 2)]


def test_effective_rank():
    gates = make_gates()
    p = gates["token_gate_prob"]
    er = effective_rank(gates)
    assert er.per_layer_token.shape == (3, 12) and er.per_layer.shape == (3,) and er.per_token.shape == (12,)
    assert er.overall == pytest.approx(p.sum(-1).mean())
    assert np.allclose(er.per_layer, p.sum(-1).mean(1))
    assert np.allclose(er.per_token, p.sum(-1).mean(0))
    assert 0 < er.overall < RANK


def test_component_usage_splits_the_effective_rank():
    """Carrying components are those at >= threshold of their layer's largest norm; the others' usage, summed per
    layer and averaged over layers, is their part of the joint effective rank."""
    gates = dict(make_gates())
    probs = np.full((3, 12, RANK), 0.5)
    probs[0, :, 0] = 1.0
    probs[0, :, 3] = 0.25
    norm = np.array([[4.0, 2.0, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    gates.update(token_gate_prob=probs, component_norm=norm)
    usage = component_usage(gates, threshold=0.2)
    np.testing.assert_array_equal(usage.carrying, [[True, True, False, False], [True] * 4, [False] * 4])
    np.testing.assert_allclose(usage.relative_norm[0], [1.0, 0.5, 0.125, 0.025])
    np.testing.assert_allclose(usage.usage, probs.mean(1))
    assert usage.carrying_usage == pytest.approx((1.0 + 0.5 + 4 * 0.5) / 6)
    assert usage.spare_usage == pytest.approx((0.5 + 0.25 + 4 * 0.5) / 6)
    assert usage.spare_rank == pytest.approx(((0.5 + 0.25) + 0.0 + 2.0) / 3)
    assert effective_rank(gates).overall == pytest.approx(usage.spare_rank + usage.usage[usage.carrying].sum() / 3)
    assert component_usage(gates, threshold=0.6).carrying[0].tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="threshold"):
        component_usage(gates, threshold=0.0)
    gates["component_norm"] = norm[:, :2]
    with pytest.raises(ValueError, match="component_norm has shape"):
        component_usage(gates)
    del gates["component_norm"]
    with pytest.raises(KeyError, match="component_norm"):
        component_usage(gates)


def test_gate_confidence_is_the_bernoulli_entropy_and_the_undecided_share():
    """Decided gates (0 or 1) have entropy 0, a fair coin 1 (in units of log 2); p = 0.1 and 0.9 have the entropy
    0.469 and lie outside the band [0.2, 0.8], 0.3 and 0.5 inside it."""
    gates = dict(make_gates())
    probs = np.zeros((3, 4, RANK))
    probs[0] = 1.0  # layer 0: decided, on
    probs[1] = 0.5  # layer 1: fair coins
    probs[2, :, :2], probs[2, :, 2], probs[2, :, 3] = 0.1, 0.9, 0.3  # layer 2: mixed
    gates["token_gate_prob"] = probs
    conf = gate_confidence(gates)
    h = lambda p: -(p * np.log2(p) + (1 - p) * np.log2(1 - p))  # noqa: E731
    np.testing.assert_allclose(conf.entropy_per_layer, [0.0, 1.0, (3 * h(0.1) + h(0.3)) / 4])
    np.testing.assert_allclose(conf.undecided_per_layer, [0.0, 1.0, 0.25])
    assert conf.entropy == pytest.approx(conf.entropy_per_layer.mean())
    assert conf.undecided == pytest.approx(1.25 / 3) and conf.band == 0.2
    assert gate_confidence(gates, band=0.05).undecided_per_layer[2] == 1.0
    with pytest.raises(ValueError, match="band"):
        gate_confidence(gates, band=0.5)


def test_kl_traces_bayesian_and_plain():
    traces = kl_traces(make_train_log(bayesian=True, steps=5)[::-1])  # order restored by step
    assert np.all(np.diff(traces.step) > 0)
    assert traces.has_kl and set(traces.kl_per_layer) == set(LAYER_NAMES)
    assert traces.kl_per_layer[LAYER_NAMES[0]].shape == (5,)
    assert np.allclose(traces.loss, traces.nll + traces.beta * (traces.kl_global + traces.kl_local))
    plain = kl_traces(make_train_log(bayesian=False, steps=5))
    assert not plain.has_kl and np.isnan(plain.kl_global).all() and plain.kl_per_layer == {}


def test_reliability_bins_and_ece():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.count.sum() == 4 and bins.count[9] == 2 and bins.count[5] == 1 and bins.count[6] == 1
    assert bins.accuracy[9] == 0.5 and bins.confidence[9] == pytest.approx(0.95)
    # ECE = 2/4 * |0.5 - 0.95| + 1/4 * |1 - 0.6| + 1/4 * |1 - 0.7|
    assert bins.ece == pytest.approx(0.5 * 0.45 + 0.25 * 0.4 + 0.25 * 0.3)
    assert reliability_bins(np.eye(3), np.arange(3)).ece == pytest.approx(0.0)  # confidence 1 lands in last bin


def test_log_predictive_density():
    loglik = np.log(np.array([[0.2, 0.9], [0.6, 0.5]]))
    assert np.allclose(log_predictive_density(loglik), np.log([0.4, 0.7]))


def test_load_run_missing_pieces(tmp_path):
    run = make_run_dir(tmp_path / "lora", method="lora", gated=False, sample_loglik=False)
    (run / "train_log.jsonl").unlink()
    data = load_run(run)
    assert data.method == "lora" and data.model == "bert-tiny" and data.train_log == []
    assert data.gates is None and not data.has_sample_loglik and data.predictions["probs"].shape == (120, 2)
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        load_run(tmp_path)


def test_read_train_log_truncated_last_line(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n\n" + '{"step": 2, "lo')
    assert read_train_log(path) == [{"step": 1, "loss": 1.0}]
    path.write_text('{"step": 1, "lo\n' + json.dumps({"step": 2}) + "\n")
    with pytest.raises(ValueError, match=":1:"):
        read_train_log(path)


def test_object_arrays_rejected_with_clear_message(tmp_path):
    np.savez(tmp_path / "gates.npz", layer_names=np.array(["a", "b"], dtype=object))
    with pytest.raises(ValueError, match="unicode"):
        dead_components(tmp_path)
