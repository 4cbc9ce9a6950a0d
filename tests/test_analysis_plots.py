import numpy as np
import pytest
from _analysis_runs import assert_not_blank, ink_fractions, make_gates, make_predictions, make_train_log, rgba
from matplotlib.figure import Figure

from bara_pyro.analysis import (
    global_posterior_idata,
    plot_component_usage,
    plot_effective_rank_distribution,
    plot_forest_pi,
    plot_rank_usage,
    plot_reliability,
    plot_token_gate_map,
    plot_training_curves,
    short_layer_names,
)


@pytest.fixture(scope="module")
def gates():
    return make_gates(seed=0)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda g: plot_rank_usage(g), id="rank_usage"),
        pytest.param(lambda g: plot_effective_rank_distribution(g), id="effective_rank"),
        pytest.param(lambda g: plot_token_gate_map(g), id="token_gate_map"),
        pytest.param(lambda g: plot_component_usage(g), id="component_usage"),
        pytest.param(lambda g: plot_forest_pi(global_posterior_idata(g, num_draws=300)), id="forest_pi"),
        pytest.param(
            lambda g: plot_reliability(**{k: make_predictions()[k] for k in ("probs", "labels")}), id="reliability"
        ),
        pytest.param(lambda g: plot_training_curves(make_train_log(bayesian=True)), id="training_curves_bayes"),
        pytest.param(lambda g: plot_training_curves(make_train_log(bayesian=False)), id="training_curves_plain"),
    ],
)
def test_figure_is_drawn(gates, make, recwarn):
    fig = make(gates)
    assert isinstance(fig, Figure)
    assert_not_blank(rgba(fig))
    assert not [w for w in recwarn if "arviz" in str(w.filename) or "matplotlib" in str(w.filename)]


def test_blank_figure_is_detected():
    fig = Figure(figsize=(4, 3))
    fig.add_subplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    _, coloured = ink_fractions(rgba(fig))
    assert coloured < 0.005  # axes and ticks alone do not pass the colour check


def test_reliability_title_has_ece():
    pred = make_predictions()
    fig = plot_reliability(pred["probs"], pred["labels"], n_bins=10)
    assert "ECE = " in fig.axes[0].get_title()


def test_training_curves_panels():
    assert len(plot_training_curves(make_train_log(bayesian=True)).axes) == 4  # loss, KL (+ beta twin), per-layer
    assert len(plot_training_curves(make_train_log(bayesian=False)).axes) == 1


def test_short_layer_names():
    names = [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.11.attention.self.query",
    ]
    assert short_layer_names(names) == ["0.query", "0.value", "11.query"]
    assert short_layer_names(["model.layers.0.q_proj", "model.layers.1.q_proj"]) == ["0.q_proj", "1.q_proj"]
    assert short_layer_names(["a.b.c", "a.b.d.e"]) == ["c", "d.e"]
    assert short_layer_names(["x.query"]) == ["query"]


def test_token_gate_map_labels(gates):
    fig = plot_token_gate_map(gates)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [str(t) for t in gates["example_tokens"]]
    assert np.allclose(fig.axes[0].images[0].get_array(), gates["example_gate_prob"].sum(-1).T)
