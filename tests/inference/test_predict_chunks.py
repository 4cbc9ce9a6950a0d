"""max_rows_per_pass: a batch of S x B expanded rows runs in groups of max_rows_per_pass // S rows, each group
exactly a batch of that many rows (same draws, same order), so the pass equals the one at that batch size."""

import pyro
import pytest
import torch
from builders import TokenTask, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import predict


class CountingTask:
    """Records the number of expanded rows of every forward pass."""

    def __init__(self, task):
        self.task, self.sizes = task, []

    def collate(self, rows):
        self.sizes.append(len(rows))
        return self.task.collate(rows)

    def __getattr__(self, name):
        return getattr(self.task, name)


def rows(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"ids": torch.randint(1, 100, (6,), generator=g), "label": i % 2} for i in range(n)]


@pytest.fixture
def model():
    task = TokenTask()
    return get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, gamma0=2.0), forward_fn=task.scores)


def run(model, data, seed=0, **kwargs):
    pyro.set_rng_seed(seed)
    task = CountingTask(TokenTask())
    pred = predict(model, task, data, progress=False, **kwargs)
    return pred, task.sizes, torch.rand(3)  # where the pass left the random stream


@pytest.mark.parametrize("num_samples", [0, 3])
def test_bounded_pass_equals_the_smaller_batch_bit_for_bit(model, num_samples):
    data = rows(37)
    s = max(num_samples, 1)
    bounded, sizes, after = run(model, data, num_samples=num_samples, batch_size=16, max_rows_per_pass=5 * s - 1)
    assert max(sizes) <= 5 * s - 1 and sizes[:4] == [4 * s] * 4  # groups of 4 rows x S draws
    small, small_sizes, small_after = run(model, data, num_samples=num_samples, batch_size=4)
    assert sizes == small_sizes  # 16 = 4 x 4: the same groups
    assert torch.equal(bounded.probs, small.probs) and torch.equal(bounded.labels, small.labels)
    if num_samples:
        assert torch.equal(bounded.sample_probs, small.sample_probs)
    assert bounded.effective_rank == small.effective_rank
    assert torch.equal(after, small_after)


def test_no_bound_or_a_large_one_leaves_the_batch_whole(model):
    data = rows(20)
    whole, sizes, _ = run(model, data, num_samples=3, batch_size=8)
    large, large_sizes, _ = run(model, data, num_samples=3, batch_size=8, max_rows_per_pass=24)
    assert sizes == large_sizes == [24, 24, 12]
    assert torch.equal(whole.sample_probs, large.sample_probs)


def test_bound_below_s_still_runs_one_row_at_a_time(model):
    pred, sizes, _ = run(model, rows(5), num_samples=4, batch_size=8, max_rows_per_pass=2)
    assert sizes == [4] * 5 and pred.sample_probs.shape == (4, 5, 2)
    with pytest.raises(ValueError, match="max_rows_per_pass"):
        run(model, rows(5), num_samples=4, max_rows_per_pass=0)


def test_config_key_is_checked_and_filled_for_runs_saved_before_it(tmp_path):
    import yaml

    from bara_pyro.experiment import load_run_config
    from bara_pyro.experiment_config import load_config, save_config
    from bara_pyro.models.config import ConfigError

    assert load_config(overrides=["model=tiny-bert"])["eval"]["max_rows_per_pass"] == 128
    unbounded = load_config(overrides=["model=tiny-bert", "eval.max_rows_per_pass=null"])
    assert unbounded["eval"]["max_rows_per_pass"] is None
    with pytest.raises(ConfigError, match="eval.max_rows_per_pass must be a positive integer or null"):
        load_config(overrides=["model=tiny-bert", "eval.max_rows_per_pass=0"])
    config = load_config(overrides=["model=tiny-bert"])
    del config["eval"]["max_rows_per_pass"]
    save_config(config, tmp_path / "config.yaml")
    assert "max_rows_per_pass" not in yaml.safe_load((tmp_path / "config.yaml").read_text())["eval"]
    assert load_run_config(tmp_path)["eval"]["max_rows_per_pass"] == 128


@pytest.mark.parametrize("num_samples", [0, 3])
def test_token_predictive_bounded_pass_equals_the_smaller_batch(num_samples):
    """The instruction task's predictive with ``max_rows_per_pass``: the same per-token outputs as at the smaller
    batch size it implies (right padding does not reach a causal LM's real tokens)."""
    from bara_pyro import get_bara_model
    from bara_pyro.experiment import _adapter_config, build_backbone_and_task
    from bara_pyro.experiment_config import load_config
    from bara_pyro.inference.token_predictive import predict_tokens

    config = load_config(method="bara", overrides=["model=tiny-llama", "dataset=arc_easy_qa"])
    backbone, _, task, data = build_backbone_and_task(config)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores)
    data = [data["validation"][i] for i in range(7)]
    s = max(num_samples, 1)
    counting = CountingTask(task)
    pyro.set_rng_seed(0)
    bounded = predict_tokens(model, counting, data, num_samples=num_samples, batch_size=4,
                             max_rows_per_pass=2 * s, progress=False)
    assert max(counting.sizes) <= 2 * s
    pyro.set_rng_seed(0)
    small = predict_tokens(model, task, data, num_samples=num_samples, batch_size=2, progress=False)
    for name in ("nll", "confidence", "correct", "entropy", "sequence"):
        torch.testing.assert_close(getattr(bounded, name), getattr(small, name), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="max_rows_per_pass"):
        predict_tokens(model, task, data, num_samples=num_samples, max_rows_per_pass=0, progress=False)
