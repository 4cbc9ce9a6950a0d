"""PSIS importance log-ratios of the global guide for every gated preset: the latent weights of a weight family
(drawn after the gates' globals) enter them, and the run's ``gates.npz`` holds them."""

import math

import numpy as np
import pytest

from bara_pyro.experiment import log_importance_weights, run_experiment
from bara_pyro.experiment_config import load_config

TINY = ["model=tiny-bert", "dataset=rt_sst2", "data.max_train_examples=16", "eval.max_examples=8",
        "eval.num_samples=2", "eval.gate_examples=8", "eval.importance_draws=3", "train.steps=2",
        "train.batch_size=4", "train.checkpoint_every=0", "train.device=cpu"]


@pytest.mark.parametrize("method,extra", [("bara", []), ("bara_slab", []), ("bara_singular", []),
                                          ("bara_slab", ["adapter.weights.sampler=flipout"])])
def test_gated_preset_writes_finite_importance_weights(method, extra, tmp_path):
    run_experiment(load_config(method=method, overrides=TINY + extra), tmp_path, progress=False)
    logw = np.load(tmp_path / "gates.npz")["log_importance_weights"]
    assert logw.shape == (3,) and np.isfinite(logw).all()
    assert np.ptp(logw) > 0  # they vary with the global draws


def test_latent_weights_enter_the_log_ratio():
    """With the magnitudes' posterior means far out in their prior's tail (and the likelihood made blind to
    them), the log-ratio falls by at least ``m^2 / (2 s^2)`` per magnitude under a Gaussian slab: the weights' draws
    are in it."""
    from bara_pyro import get_bara_model
    from bara_pyro.experiment import _adapter_config, build_backbone_and_task

    config = load_config(method="bara_singular", overrides=TINY + ["adapter.weights.slab=gaussian"])
    backbone, _, task, data = build_backbone_and_task(config)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores)
    rows = [data["train"][i] for i in range(8)]
    adapters = [a for _, a in model._adapter_items]
    for a in adapters:  # B = 0: the update, hence the likelihood, no longer depends on the magnitudes
        a.lora_B.weight.data.zero_()
    before = log_importance_weights(model, task, rows, 4)
    for a in adapters:  # every magnitude's posterior mean 40 slab scales out (sigma = 1, pi <= 1)
        a.lora_S_loc.data.fill_(40.0 / math.sqrt(a.out_features))
    after = log_importance_weights(model, task, rows, 4)
    num_magnitudes = sum(a.r for a in adapters)
    assert np.isfinite(after).all() and after.mean() < before.mean() - 0.5 * 40**2 * num_magnitudes


def test_flipout_factors_are_drawn_whole_for_the_log_ratio(monkeypatch):
    """The importance pass runs the factors it drew (and whose densities it counted), not flipout's perturbation."""
    from bara_pyro import get_bara_model
    from bara_pyro.experiment import _adapter_config, build_backbone_and_task
    from bara_pyro.models import adapter as adapter_module

    config = load_config(method="bara_slab", overrides=TINY + ["adapter.weights.sampler=flipout"])
    backbone, _, task, data = build_backbone_and_task(config)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores)
    assert all(a._flipout for _, a in model._adapter_items)

    def no_flipout(*args, **kwargs):
        raise AssertionError("flipout perturbation used in the importance pass")

    monkeypatch.setattr(adapter_module, "flipout_linear", no_flipout)
    logw = log_importance_weights(model, task, [data["train"][i] for i in range(8)], 3)
    assert np.isfinite(logw).all()
