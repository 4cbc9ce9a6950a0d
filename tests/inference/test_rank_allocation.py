"""The BaRA presets' rank against the data: synthetic updates of known rank, and two token (or sequence) populations
that use disjoint components, with A, B and every gate learned from LoRA's initialisation."""

import pytest
import torch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.export import mean_lora_weights
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.methods import load_preset
from bara_pyro.models import GaussianLikelihood
from bara_pyro.synthetic import (
    RegressionTask,
    SequenceRegressionTask,
    low_rank_update,
    two_populations,
    two_sequence_populations,
)

NOISE = 0.3


def fit_preset(data, steps, seed=0, task=None, per="token", batch_size=64, method="bara_slab", weights=None):
    preset = load_preset(method)
    r = 8
    adapter = {**preset["adapter"], "r": r, "alpha": r, "target_modules": ["proj"]}
    adapter["weights"] = {**adapter["weights"], **(weights or {})}
    adapter["guide"] = {**adapter["guide"], "local": {**adapter["guide"]["local"], "per": per}}
    config = BaRAConfig.from_dict(adapter)
    task = task or RegressionTask()
    model = get_bara_model(data.backbone, config, forward_fn=task.scores, likelihood=GaussianLikelihood(NOISE))
    train = TrainConfig.from_dict({**preset["train"], "steps": steps, "batch_size": batch_size, "lr": 0.05,
                                   "warmup_ratio": 0.0, "checkpoint_every": 0, "seed": seed})
    fit(model, task, data.rows, train, progress=False)
    return model, task


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("rank", [2, 6])
def test_effective_rank_follows_the_true_rank(rank):
    data = low_rank_update(rank, noise=NOISE)
    model, task = fit_preset(data, steps=4000)
    fitted = predict(model, task, data.rows, num_samples=0, progress=False).effective_rank["joint"]
    assert abs(fitted - rank) <= 1.0, fitted
    (_, adapter), = model.adapter_items
    kept = adapter.lora_A.weight.detach().norm(dim=1) > 0.1  # the slab keeps rows for the used components only
    assert int(kept.sum()) == rank, adapter.lora_A.weight.norm(dim=1)


@pytest.mark.parametrize("rank", [2, 6])
def test_singular_directions_magnitudes_follow_the_true_rank(rank):
    """``bara_singular``: exactly ``k`` components carry the update (their magnitude ``|m_k|``, with orthonormal
    factors the update's singular values); the others' magnitudes return to about zero."""
    data = low_rank_update(rank, noise=NOISE)
    model, _ = fit_preset(data, steps=4000, method="bara_singular")
    (_, adapter), = model.adapter_items
    a, b = mean_lora_weights(adapter)
    sizes = b.norm(dim=0) * a.norm(dim=1)  # |m_k| |B_k| |A_k|, |A_k| = |B_k| = 1 up to the near-Stiefel prior
    ordered = sizes.sort(descending=True).values
    assert float(ordered[rank - 1]) > 5 * float(ordered[rank]), sizes  # a gap after the k-th component
    assert float(ordered[rank]) < 0.2, sizes


@pytest.mark.parametrize("rank", [2, 6])
def test_direction_occam_makes_the_singular_gates_follow_the_true_rank(rank):
    """``bara_singular`` with the directions' Laplace Occam factor (``weights.direction_occam: kfac``), its Kronecker
    statistics collected while training: the spare components' gates switch off, so the joint effective rank is
    within 1 of the truth (without the factor the noise's directions keep two or three of them on)."""
    data = low_rank_update(rank, noise=NOISE)
    steps = 6000 if rank == 2 else 12000  # rank 6 sits near the tolerance at 6000 steps (6.9): it trains longer
    model, task = fit_preset(data, steps=steps, method="bara_singular", weights={"direction_occam": "kfac"})
    fitted = predict(model, task, data.rows, num_samples=0, progress=False).effective_rank["joint"]
    assert abs(fitted - rank) <= 1.0, fitted


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def token_gate_probs(model, task, data) -> torch.Tensor:
    """Per-token q(z = 1) ``(tokens, r)`` of the single adapter of ``model`` on every row of ``data``."""
    model.ctx.collect_stats, model.ctx.record_tokens = True, True
    with torch.no_grad():
        model.scores(task.collate(data.rows), "mean")
    (stats,) = model.gate_statistics().values()
    return stats["token_prob"]


def population_auroc(probs: torch.Tensor, population: torch.Tensor) -> float:
    """AUROC of the gates' score along the populations' mean gate difference (no fitting)."""
    first = population == 0
    score = probs @ (probs[first].mean(0) - probs[~first].mean(0))
    return auroc(score[first], score[~first])


@pytest.fixture(scope="module", params=["bara_slab", "bara_singular"])
def two_population_gates(request):
    """Per-token q(z = 1) of a preset's adapter trained on two populations with their own rank-2 updates."""
    torch.set_num_threads(1)
    data = two_populations(rank=2)
    model, task = fit_preset(data, steps=4000, method=request.param)
    return token_gate_probs(model, task, data), data.population


def test_token_gates_separate_two_populations(two_population_gates):
    probs, population = two_population_gates
    assert population_auroc(probs, population) >= 0.9
    ranks = [float(probs[population == p].sum(-1).mean()) for p in (0, 1)]
    assert min(ranks) < 8 - 2.0, ranks  # each population leaves components off


@pytest.mark.xfail(strict=True, reason="one population keeps 4-6 components on: spare ones fit its noise")
def test_each_population_uses_its_true_rank(two_population_gates):
    probs, population = two_population_gates
    for p in (0, 1):
        assert abs(float(probs[population == p].sum(-1).mean()) - 2) <= 1.0


def test_direction_occam_gives_each_population_its_true_rank():
    """``bara_singular`` with the directions' Laplace Occam factor (``weights.direction_occam: kfac``) on two
    populations whose rank-2 updates are disjoint singular components of one matrix (orthonormal input and output
    directions): the gates separate the populations and each population's per-token rank is within 1 of 2 (the
    spare components, which fit the noise without the factor, switch off)."""
    data = two_populations(rank=2, orthogonal_outputs=True)
    model, task = fit_preset(data, steps=12000, method="bara_singular", weights={"direction_occam": "kfac"})
    probs = token_gate_probs(model, task, data)
    assert population_auroc(probs, data.population) >= 0.9
    for p in (0, 1):
        assert abs(float(probs[data.population == p].sum(-1).mean()) - 2) <= 1.0


def test_sequence_gates_separate_two_populations_of_sequences():
    """Sequences of 4-12 tokens, each from one population with its own rank-2 update; single tokens overlap
    between the populations (separation 1), their mean over a sequence does not.  Instance-wise gates
    (``per: sequence``) give each sequence one q(z = 1), the same at every one of its tokens."""
    data = two_sequence_populations(rank=2)
    task = SequenceRegressionTask()
    model, _ = fit_preset(data, steps=1000, task=task, per="sequence", batch_size=32)
    batch = task.collate(data.rows)
    model.ctx.collect_stats, model.ctx.record_tokens = True, True
    with torch.no_grad():
        model.scores(batch, "mean")
    (stats,) = model.gate_statistics().values()
    sequence = torch.arange(len(data.rows))[:, None].expand(batch.token_mask.shape)[batch.token_mask]
    first = torch.ones_like(sequence, dtype=torch.bool)
    first[1:] = sequence[1:] != sequence[:-1]
    probs = stats["token_prob"][first]  # (sequences, r): q(z = 1) of each sequence
    torch.testing.assert_close(stats["token_prob"], probs[sequence])  # the token map is constant within a sequence
    first_population = data.population == 0
    direction = probs[first_population].mean(0) - probs[~first_population].mean(0)
    score = probs @ direction
    assert auroc(score[first_population], score[~first_population]) >= 0.9
    ranks = [float(probs[data.population == p].sum(-1).mean()) for p in (0, 1)]
    assert min(ranks) < 8 - 2.0, ranks  # each population leaves components off
