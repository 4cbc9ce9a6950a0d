import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _analysis_runs import LAYER_NAMES, RANK, TOKENS, make_gates, make_predictions

from bara_pyro.analysis import (
    compare,
    global_posterior_idata,
    interpret_khat,
    loo,
    psis_khat,
    rhat_across_fits,
    summary,
    token_gate_dataset,
    weight_concentration,
)


@pytest.fixture(autouse=True)
def no_warnings():
    """Nothing from ArviZ (or anything else) may warn in normal use."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture(scope="module")
def idata():
    return global_posterior_idata(make_gates(0), num_draws=500, seed=1, predictions=make_predictions(0))


def test_global_posterior_dims_and_coords(idata):
    for var in ("pi", "lambda"):
        da = idata.posterior[var]
        assert da.dims == ("chain", "draw", "layer", "rank")
        assert da.shape == (1, 500, 3, RANK)
        assert list(da["layer"].values) == LAYER_NAMES and list(da["rank"].values) == list(range(RANK))
    assert ((idata.posterior["pi"] > 0) & (idata.posterior["pi"] < 1)).all()
    assert (idata.posterior["lambda"] > 0).all()


def test_global_posterior_without_a_magnitude_prior():
    gates = {k: v for k, v in make_gates(0).items() if not k.startswith("lambda_")}
    idata = global_posterior_idata(gates, num_draws=50)
    assert list(idata.posterior.data_vars) == ["pi"]
    assert list(summary(idata).index)[0].startswith("pi[")
    assert list(rhat_across_fits([idata, global_posterior_idata(gates, num_draws=50, seed=1)]).data_vars) == ["pi"]
    with pytest.raises(KeyError, match="pi_alpha"):
        global_posterior_idata({k: v for k, v in gates.items() if k != "pi_alpha"})


def test_global_posterior_matches_guide_moments():
    gates = make_gates(0)
    post = global_posterior_idata(gates, num_draws=20000).posterior
    mean_pi = gates["pi_alpha"] / (gates["pi_alpha"] + gates["pi_beta"])
    assert np.allclose(post["pi"].mean(("chain", "draw")), mean_pi, atol=0.01)
    mean_lambda = gates["lambda_shape"] / gates["lambda_rate"]
    assert np.allclose(post["lambda"].mean(("chain", "draw")), mean_lambda, rtol=0.03)


def test_predictive_groups(idata):
    pred = make_predictions(0)
    assert {"posterior", "log_likelihood", "posterior_predictive", "observed_data"} <= set(idata.groups())
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "example") and ll.shape == (1, 40, 120)
    assert np.allclose(ll.values[0], pred["sample_loglik"])
    y = idata.posterior_predictive["y"]
    assert y.shape == (1, 40, 120) and set(np.unique(y.values)) <= {0, 1}
    agree = (y.values[0] == pred["sample_probs"].argmax(-1)).mean()
    assert agree > 0.7  # drawn labels follow the per-sample probabilities
    assert idata.posterior_predictive["y_prob"].dims == ("chain", "draw", "example", "class")


def test_no_predictive_groups_without_sample_loglik():
    pred = {k: v for k, v in make_predictions(0).items() if k in ("probs", "labels")}
    assert "log_likelihood" not in global_posterior_idata(make_gates(0), num_draws=50, predictions=pred).groups()


def test_token_gate_dataset():
    ds = token_gate_dataset(make_gates(0))
    assert isinstance(ds, xr.Dataset)
    assert ds["gate_prob"].dims == ("layer", "token", "rank") and ds["gate_prob"].shape == (3, 12, RANK)
    assert ds["expected_gate"].dims == ("layer", "token", "rank")
    assert ds["example_gate_prob"].dims == ("layer", "example_token", "rank")
    assert list(ds["example_token_text"].values) == TOKENS and list(ds["layer"].values) == LAYER_NAMES


def test_summary(idata):
    table = summary(idata)
    assert isinstance(table, pd.DataFrame) and len(table) == 2 * 3 * RANK
    assert {"mean", "sd"} <= set(table.columns) and "r_hat" not in table.columns
    gates = make_gates(0)
    row = table.loc[f"pi[{LAYER_NAMES[1]}, 2]", "mean"]
    assert row == pytest.approx(gates["pi_alpha"][1, 2] / (gates["pi_alpha"][1, 2] + gates["pi_beta"][1, 2]), abs=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psis_khat_good_for_nearly_constant_weights(seed):
    log_w = np.random.default_rng(seed).normal(-3000.0, 0.05, size=1000)
    khat, text = psis_khat(log_w)
    assert khat < 0.5 and text.startswith("good")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psis_khat_large_for_heavy_tailed_weights(seed):
    rng = np.random.default_rng(seed)
    cauchy = np.log(np.abs(rng.standard_cauchy(1000)))  # weight tail index 1 -> k ~ 1
    pareto = np.log1p(rng.pareto(0.8, size=1000))  # tail index 0.8 -> k ~ 1.25
    for log_w in (cauchy, pareto):
        khat, text = psis_khat(log_w)
        assert khat > 0.7 and text.startswith("unreliable")


def test_psis_khat_edge_cases():
    assert psis_khat(np.zeros(100)).khat == -np.inf
    with pytest.raises(ValueError, match="21 draws"):
        psis_khat(np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        psis_khat(np.array([np.nan] * 50))
    assert interpret_khat(0.6).startswith("ok")


def test_weight_concentration_is_kish_ess_and_stays_finite_where_khat_is_not():
    log_w = np.log(np.array([1.0, 2.0, 3.0, 4.0])) - 700.0  # shares 0.1 .. 0.4, far below exp's range
    ess, share, spread = weight_concentration(log_w)
    assert ess == pytest.approx(1.0 / (0.1 ** 2 + 0.2 ** 2 + 0.3 ** 2 + 0.4 ** 2))
    assert share == pytest.approx(0.4) and spread == pytest.approx(np.log(4.0))
    assert weight_concentration(np.full(32, -5.0)) == pytest.approx((32.0, 1 / 32, 0.0))
    degenerate = -np.linspace(0.0, 20000.0, 32)  # one draw carries every weight: PSIS has no tail to fit
    assert psis_khat(degenerate).khat == np.inf
    assert weight_concentration(degenerate) == pytest.approx((1.0, 1.0, 20000.0))
    with pytest.raises(ValueError, match="finite"):
        weight_concentration(np.array([0.0, np.nan]))


def test_loo_and_compare():
    good = global_posterior_idata(make_gates(0), num_draws=100, predictions=make_predictions(0, sharp=3.0))
    bad = global_posterior_idata(make_gates(1), num_draws=100, predictions=make_predictions(0, sharp=0.5))
    elpd = loo(good)
    assert elpd["n_data_points"] == 120 and np.asarray(elpd["pareto_k"]).shape == (120,)
    table = compare({"good": good, "bad": bad})
    assert list(table.index) == ["good", "bad"] and table.loc["good", "elpd_loo"] > table.loc["bad", "elpd_loo"]
    with pytest.raises(KeyError, match="log_likelihood"):
        loo(global_posterior_idata(make_gates(0), num_draws=10))


def test_rhat_across_fits_agreeing_and_disagreeing():
    same = [global_posterior_idata(make_gates(0), num_draws=1000, seed=s) for s in range(3)]
    rhat = rhat_across_fits(same)
    assert set(rhat.data_vars) == {"pi", "lambda"} and rhat["pi"].dims == ("layer", "rank")
    assert float(rhat["pi"].max()) < 1.02 and float(rhat["lambda"].max()) < 1.02
    different = [global_posterior_idata(make_gates(s), num_draws=1000, seed=s) for s in range(3)]
    assert float(rhat_across_fits(different)["pi"].max()) > 1.5


def test_rhat_across_fits_arrays():
    rng = np.random.default_rng(0)
    same = [rng.normal(size=(800, 5)) for _ in range(4)]
    assert np.all(np.abs(rhat_across_fits(same) - 1) < 0.02)
    shifted = [rng.normal(loc=2.0 * i, size=800) for i in range(4)]
    assert rhat_across_fits(shifted) > 1.5
    with pytest.raises(ValueError, match="at least two"):
        rhat_across_fits(same[:1])
