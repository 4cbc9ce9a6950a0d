"""Contract checks for priors, guides and weight families, shipped so users can test their own.

Every configuration of the adapters (any registered prior x guide x weight family, built-in or
yours) must: build on a tiny BERT with one set of sites per adapted layer named
``{module path}.{variable}``; report whether each site's KL is closed-form; give the same ELBO
and gradients with the fused estimator as with ``TraceMeanField_ELBO`` (float64, same seed),
unless a factor is sampled by flipout; train a few steps with both estimators; predict with
``S = 0`` and ``S > 0``; and save and load to identical predictions.

Check a component of your own with the mixin (pytest collects it like any test class)::

    from bara_pyro.testing import GateContract

    class TestMyPrior(GateContract):
        config = {"r": 4, "prior": {"sparsity": {"name": "my_prior", "rate": 0.3}}}
        expect_analytic = True          # optional: assert what kl_is_analytic reports

or call :func:`run_contract` on a :class:`~bara_pyro.models.BaRAConfig` and read the returned
:class:`ContractReport`.  Needs ``pytest`` only for :class:`GateContract`'s skips.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from .inference import TrainConfig, fit, predict
from .models import BaRAConfig, BaRAModel, get_bara_model
from .tasks.base import Batch

__all__ = ["ContractReport", "GateContract", "ToyTokenTask", "run_contract", "tiny_bert", "toy_rows"]

PLATES = ("sequences", "tokens", "data")


def tiny_bert(num_labels: int = 2, seed: int = 0):
    """A randomly initialised BERT classifier (vocab 100, hidden 32, 2 layers), built without downloads."""
    from transformers import BertConfig, BertForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, num_labels=num_labels, max_position_embeddings=64)
        return BertForSequenceClassification(cfg).eval()


class ToyTokenTask:
    """Rows ``{"ids": (T,) long, "label": int}``; id 0 is padding.  Label 1 iff token 7 occurs."""

    name = "toy_tokens"

    def collate(self, rows: list[dict]) -> Batch:
        ids = torch.stack([r["ids"] for r in rows])
        mask = (ids > 0).long()
        return Batch(inputs={"input_ids": ids, "attention_mask": mask},
                     labels=torch.tensor([r["label"] for r in rows]), token_mask=mask.bool())

    def scores(self, backbone, batch: Batch) -> torch.Tensor:
        return backbone(**batch.inputs).logits


def toy_rows(n: int = 16, length: int = 6, seed: int = 0) -> list[dict]:
    """``n`` rows for :class:`ToyTokenTask`, every third one right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(8, 100, (length,), generator=g)
        label = i % 2
        if label:
            ids[int(torch.randint(0, length - 2, (1,), generator=g))] = 7
        if i % 3 == 0:
            ids[-2:] = 0
        rows.append({"ids": ids, "label": label})
    return rows


@dataclass
class ContractReport:
    """What :func:`run_contract` found for one configuration."""

    config: BaRAConfig
    sites: list[str]  # latent sites of the guide, in order
    kl_report: dict[str, bool]  # site -> closed-form KL?
    kl_is_analytic: bool
    fused_matches_svi: bool  # False: a factor uses flipout, so the equality check was skipped
    losses: dict[str, list[float]] = field(default_factory=dict)  # estimator -> per-step loss / N


def _as_config(config: BaRAConfig | dict[str, Any]) -> BaRAConfig:
    return config if isinstance(config, BaRAConfig) else BaRAConfig.from_dict(dict(config))


def build(config: BaRAConfig | dict[str, Any], seed: int = 0) -> tuple[BaRAModel, ToyTokenTask]:
    """The configuration on a fresh :func:`tiny_bert`, with its task."""
    task = ToyTokenTask()
    return get_bara_model(tiny_bert(seed=seed), _as_config(config), forward_fn=task.scores), task


def check_sites(model: BaRAModel, batch: Batch) -> list[str]:
    """Guide and replayed model have the same latent sites, each ``{adapted path}.{variable}``; returns them."""
    guide_tr = pyro.poutine.trace(model.guide).get_trace(batch)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=guide_tr)).get_trace(batch)
    guide_sites = [n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and n not in PLATES]
    model_latent = [n for n, s in model_tr.nodes.items()
                    if s["type"] == "sample" and not s["is_observed"] and n not in PLATES]
    assert guide_sites == model_latent, f"guide sites {guide_sites} != model latent sites {model_latent}"
    paths = [p for p, _ in model.adapter_items]
    for name in guide_sites:
        path, _, variable = name.rpartition(".")
        assert path in paths and variable, f"site {name!r} is not named '{{adapted module path}}.{{variable}}'"
    per_layer = {p: sorted(n.rpartition(".")[2] for n in guide_sites if n.rpartition(".")[0] == p) for p in paths}
    assert len({tuple(v) for v in per_layer.values()}) <= 1, f"layers have different sites: {per_layer}"
    assert "obs" in model_tr.nodes and model_tr.nodes["obs"]["is_observed"]
    return guide_sites


def check_fused_equals_svi(config: BaRAConfig, batch: Batch, dataset_size: int = 37, prepare=None) -> bool:
    """Fused loss and gradients equal ``TraceMeanField_ELBO``'s in float64 for one seed; False if skipped
    (a factor sampled by flipout cannot share the guide's draws).  ``prepare(model)``, if given, runs on the model
    before the comparison (e.g. to fill statistics a factor of the model reads)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, _ = build(config)
        if not model.fused_matches_svi:
            return False
        with torch.no_grad():
            for _, adapter in model.adapter_items:
                adapter.lora_B.weight.normal_(0, 0.1)  # so the likelihood depends on every factor
        if prepare is not None:
            prepare(model)
        model.dataset_size = dataset_size
        params = model.trainable_parameters()
        pyro.set_rng_seed(11)
        ref = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch)
        ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
        pyro.set_rng_seed(11)
        fused, _ = model.fused_loss(batch)
        fused_grads = torch.autograd.grad(fused, params, allow_unused=True)
    finally:
        torch.set_default_dtype(previous)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-9)
    for p, a, b in zip(params, ref_grads, fused_grads):
        assert (a is None) == (b is None), f"a parameter of shape {tuple(p.shape)} gets a gradient on one path only"
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
    return True


def check_training(config: BaRAConfig, rows: list[dict], estimator: str, steps: int = 2) -> list[float]:
    """``steps`` optimizer steps with ``estimator``: finite losses, and every trainable tensor that gets a
    gradient moves.  Returns the per-step losses (divided by N, as in the training log)."""
    model, task = build(config)
    before = {id(p): p.detach().clone() for p in model.trainable_parameters()}
    result = fit(model, task, rows, TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup_ratio=0.0, log_every=1,
                                                checkpoint_every=0, estimator=estimator), progress=False)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    moved = [not torch.equal(before[id(p)], p.detach()) for p in model.trainable_parameters()]
    assert any(moved), f"{estimator}: no trainable parameter changed"
    return losses


def check_prediction_and_round_trip(config: BaRAConfig, rows: list[dict], directory) -> None:
    """``S = 0`` and ``S = 3`` predictive probabilities are distributions; save -> load predicts identically."""
    model, task = build(config)
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            adapter.lora_B.weight.normal_(0, 0.5)
    for s in (0, 3):
        pred = predict(model, task, rows, num_samples=s, batch_size=8, progress=False)
        assert pred.probs.shape == (len(rows), 2)
        torch.testing.assert_close(pred.probs.sum(-1), torch.ones(len(rows)))
        assert (pred.sample_probs is None) == (s == 0)
    model.save_pretrained(directory)
    loaded = BaRAModel.from_pretrained(tiny_bert(), directory, forward_fn=task.scores)
    assert dataclasses.replace(loaded.config, modules_to_save=None) == dataclasses.replace(model.config,
                                                                                           modules_to_save=None)
    a = predict(model, task, rows, num_samples=0, progress=False).probs
    b = predict(loaded, task, rows, num_samples=0, progress=False).probs
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def run_contract(config: BaRAConfig | dict[str, Any], estimators=("svi", "fused"), steps: int = 2) -> ContractReport:
    """Every check above on one configuration; raises ``AssertionError`` on the first failure."""
    config = _as_config(config)
    assert BaRAConfig.from_dict(copy.deepcopy(config.to_dict())) == config, "config does not round-trip"
    rows = toy_rows()
    task = ToyTokenTask()
    batch = task.collate(rows[:4])
    model, _ = build(config)
    model.dataset_size = 37
    sites = check_sites(model, batch)
    kl_report = model.kl_report()
    assert set(kl_report) == set(sites), f"kl_report covers {sorted(kl_report)}, the guide samples {sites}"
    assert all(isinstance(v, bool) for v in kl_report.values())
    matches = check_fused_equals_svi(config, batch)
    losses = {estimator: check_training(config, rows, estimator, steps) for estimator in estimators}
    with tempfile.TemporaryDirectory() as directory:
        check_prediction_and_round_trip(config, rows, directory)
    return ContractReport(config, sites, kl_report, model.kl_is_analytic, matches, losses)


class GateContract:
    """pytest mixin: set ``config`` (a :class:`BaRAConfig` or a dict of its fields) and, optionally,
    ``expect_analytic``; each test method checks one part of the contract (see the module docstring)."""

    config: BaRAConfig | dict[str, Any] | None = None
    expect_analytic: bool | None = None
    steps: int = 2

    def setup_method(self, method=None):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)

    def _config(self) -> BaRAConfig:
        if self.config is None:
            raise TypeError(f"{type(self).__name__} must set `config`")
        return _as_config(self.config)

    def _batch(self) -> Batch:
        return ToyTokenTask().collate(toy_rows()[:4])

    def test_config_round_trips(self):
        config = self._config()
        assert BaRAConfig.from_dict(copy.deepcopy(config.to_dict())) == config

    def test_sites_are_named_per_layer(self):
        model, _ = build(self._config())
        model.dataset_size = 37
        check_sites(model, self._batch())

    def test_kl_is_analytic_is_reported(self):
        model, _ = build(self._config())
        report = model.kl_report()
        assert all(isinstance(v, bool) for v in report.values())
        assert model.kl_is_analytic == all(report.values())
        if self.expect_analytic is not None:
            assert model.kl_is_analytic == self.expect_analytic, report

    def test_fused_loss_equals_trace_mean_field(self):
        import pytest

        if not check_fused_equals_svi(self._config(), self._batch()):
            pytest.skip("a factor is sampled by flipout in the fused path: its draws differ by design")

    def test_trains_with_both_estimators(self):
        for estimator in ("svi", "fused"):
            check_training(self._config(), toy_rows(), estimator, self.steps)

    def test_predicts_and_round_trips(self, tmp_path):
        check_prediction_and_round_trip(self._config(), toy_rows(), tmp_path)
