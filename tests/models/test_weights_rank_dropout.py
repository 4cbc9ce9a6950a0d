"""BayesLoRA (rank-wise variational dropout): contract, the KL approximation, pruning and the effective rank."""

import math

import pyro
import torch
from builders import make_batch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.models.config import ConfigError
from bara_pyro.models.likelihoods import GaussianLikelihood
from bara_pyro.models.weights_rank_dropout import kl_normal_log_uniform
from bara_pyro.tasks.base import Batch
from bara_pyro.testing import ToyTokenTask, toy_rows

CONFIG = BaRAConfig(r=4, prior="fixed", weights="rank_dropout")


def test_bad_values_are_rejected_at_config_load():
    for weights, words in (({"name": "rank_dropout", "init_log_alpha": 4.0}, "below prune_log_alpha"),
                           ({"name": "rank_dropout", "prune": 3}, "unknown parameter")):
        try:
            BaRAConfig(r=4, prior="fixed", weights=weights)
        except ConfigError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{weights} was accepted")
    try:
        BaRAConfig(r=4, weights="rank_dropout")
    except ConfigError as exc:
        assert "prior: fixed" in str(exc)


def test_kl_approximation_has_the_shape_of_the_monte_carlo_kl():
    """KL(N(mu, alpha mu^2) || 1/|w|) = const - log(alpha)/2 + E log|eps|, eps ~ N(1, alpha): the approximation
    minus this Monte Carlo estimate is the same constant for every alpha (to Molchanov et al.'s accuracy)."""
    g = torch.Generator().manual_seed(0)
    gaps = []
    for log_alpha in (-3.0, -1.0, 1.0, 3.0):
        eps = 1 + math.exp(0.5 * log_alpha) * torch.randn(400_000, generator=g, dtype=torch.float64)
        mc = -0.5 * log_alpha + torch.log(eps.abs()).mean()
        gaps.append(float(kl_normal_log_uniform(torch.tensor(log_alpha, dtype=torch.float64)) - mc))
    assert max(gaps) - min(gaps) < 0.03, gaps


class _Linear(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = torch.nn.Linear(d, d, bias=False)


class _Task:
    def collate(self, chunk):
        return Batch({"x": torch.stack([c["x"] for c in chunk])}, torch.stack([c["y"] for c in chunk]),
                     torch.ones(len(chunk), 1, dtype=torch.bool))

    def scores(self, model, batch):
        return model.proj(batch.inputs["x"])


def _train_on_update_of_rank(k: int, d: int = 8, n: int = 16):
    """Regression y = (W0 + 2 B* A* / sqrt(d)) x + N(0, 1) with a rank-k update, adapted with r = 4."""
    torch.manual_seed(0)
    backbone = _Linear(d)
    a, b = torch.randn(d, k), torch.randn(d, k)
    x = torch.randn(n, d)
    y = backbone.proj(x).detach() + 2 * (x @ a) @ b.T / math.sqrt(d) + torch.randn(n, d)
    rows = [{"x": x[i], "y": y[i]} for i in range(n)]
    task = _Task()
    # prune at log alpha >= -3: at this training length the noise of unneeded components has grown from
    # log alpha = -4 to about -2 .. 0, not yet to the default threshold 3
    config = BaRAConfig(r=4, alpha=4.0, prior="fixed", target_modules=["proj"],
                        weights={"name": "rank_dropout", "prune_log_alpha": -3.0})
    model = get_bara_model(backbone, config, forward_fn=task.scores, likelihood=GaussianLikelihood(1.0))
    fit(model, task, rows, TrainConfig(steps=400, batch_size=16, lr=5e-2, warmup_ratio=0.0, lr_schedule="constant",
                                       estimator="fused", checkpoint_every=0, log_every=100), progress=False)
    adapter = model.adapter_items[0][1]
    rank = predict(model, task, rows, num_samples=0, progress=False).effective_rank["joint"]
    return adapter.weights.log_alpha(adapter).detach(), int(adapter.weights.kept(adapter).sum()), rank


def test_pruned_rank_falls_on_data_from_a_rank_one_update():
    log_alpha_1, kept_1, rank_1 = _train_on_update_of_rank(1)
    log_alpha_4, kept_4, rank_4 = _train_on_update_of_rank(4)
    assert float(log_alpha_1.mean()) > float(log_alpha_4.mean()) + 2, (log_alpha_1, log_alpha_4)
    assert kept_1 <= 2 and kept_4 == 4, (log_alpha_1, log_alpha_4)
    assert (rank_1, rank_4) == (kept_1, kept_4)


def test_effective_rank_counts_the_kept_components_in_prediction(tiny_bert):
    pyro.set_rng_seed(0)
    model = get_bara_model(tiny_bert, CONFIG, forward_fn=ToyTokenTask().scores)
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            adapter.lora_E_log_sigma2[0, :3] = 5.0  # log alpha = 5 > 3: three of four components pruned
            adapter.lora_B.weight.normal_()
    rows = toy_rows(8)
    for s in (0, 3):
        pred = predict(model, ToyTokenTask(), rows, num_samples=s, progress=False)
        assert pred.effective_rank["joint"] == 1.0
    batch = make_batch(num_examples=2)
    with torch.no_grad():
        model.ctx.reset("mean")
        for _, adapter in model.adapter_items:  # the pruned components do not reach B
            h = adapter.weights.rank_transform(adapter, torch.ones(2, 7, 4))
            assert torch.equal(h[..., :3], torch.zeros(2, 7, 3))
    assert batch.num_examples == 2
