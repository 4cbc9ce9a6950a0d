"""The choices of a multiple-choice example are scored under one draw of the example's latent variables.

Two examples, each with three identical choices: with one draw per example the choices' scores are equal,
while the two examples (the same text) still get different draws."""

import pytest
import torch
from builders import move_off_init

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.backbones import tiny_backbone
from bara_pyro.methods import load_preset
from bara_pyro.models.errors import ConfigError
from bara_pyro.models.row_shard import RowGroups, drawing_rows, uniform
from bara_pyro.tasks import MultipleChoiceTask

ROW = {"contexts": ["Question: which of these is a planet?\nAnswer:"] * 3, "continuations": [" Mars"] * 3,
       "question": "Q?", "choices": ["Mars"] * 3, "label": 0}


def _model(method: str, tokenizer):
    torch.manual_seed(0)
    backbone = tiny_backbone("causal_lm", "llama", tokenizer=tokenizer)
    task = MultipleChoiceTask(tokenizer, scoring="cloze")
    adapter = load_preset(method)["adapter"]
    config = BaRAConfig.from_dict({**adapter, "r": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    return move_off_init(get_bara_model(backbone, config, forward_fn=task.scores)), task


@pytest.mark.parametrize("method", ["bara_singular", "bara_slab", "blob", "mc_dropout"])
def test_the_choices_of_an_example_share_its_draws_in_training(method, smollm_tokenizer):
    model, task = _model(method, smollm_tokenizer)
    batch = task.collate([ROW, ROW])
    _, parts = model.fused_loss(batch)
    scores = parts["scores"]  # (2 examples, 3 choices)
    torch.testing.assert_close(scores[:, 1:], scores[:, :1].expand(2, 2), rtol=0, atol=1e-6)
    assert (scores[0] - scores[1]).abs().max() > 1e-4  # each example its own draw


def test_gates_with_a_per_token_kl_keep_one_draw_per_choice_sequence(smollm_tokenizer):
    """The ``bara`` preset's amortized guide has a KL per token and row: its rows draw their own gates."""
    model, task = _model("bara", smollm_tokenizer)
    _, parts = model.fused_loss(task.collate([ROW, ROW]))
    assert (parts["scores"][:, 1:] - parts["scores"][:, :1]).abs().max() > 1e-4


@pytest.mark.parametrize("method", ["bara_singular", "mc_dropout"])
def test_the_choices_share_their_draws_in_sampled_prediction(method, smollm_tokenizer):
    model, task = _model(method, smollm_tokenizer)
    model.eval()
    batch = task.collate([ROW] * 4)  # S = 2 sample-major copies of two examples
    with torch.no_grad():
        scores = model.scores(batch, mode="sample", num_samples=2)
    torch.testing.assert_close(scores[:, 1:], scores[:, :1].expand(4, 2), rtol=0, atol=1e-6)
    assert (scores[0] - scores[2]).abs().max() > 1e-4


def test_row_groups_share_noise_within_a_group():
    groups = RowGroups(torch.tensor([0, 0, 1, 1, 1]), 2)
    with drawing_rows(None, groups):
        u = uniform((2, 5, 3, 4), torch.float64, "cpu", row_dim=1)
    assert u.shape == (2, 5, 3, 4)
    for rows in ([0, 1], [2, 3, 4]):
        for i in rows[1:]:
            torch.testing.assert_close(u[:, i], u[:, rows[0]], rtol=0, atol=0)
    assert (u[:, 0] != u[:, 2]).all()
    with pytest.raises(ValueError, match="does not fit"), drawing_rows(None, groups):
        uniform((10, 3, 4), torch.float64, "cpu")


def test_shared_length_is_the_prefix_every_choice_of_an_example_has(smollm_tokenizer):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    differ = {**ROW, "continuations": [" Mars", " Venus", " Mars"]}
    sentences = {**ROW, "contexts": ["The trophy fits, the trophy", "The trophy fits, the suitcase"],
                 "continuations": [" is small."] * 2, "choices": ["a", "b"]}
    batch = task.collate([ROW, differ, sentences])
    ids, shared = batch.inputs["input_ids"], batch.extras["shared_length"]
    lengths = batch.inputs["attention_mask"].sum(1)
    context = len(task.prefix_ids) + len(smollm_tokenizer(ROW["contexts"][0], add_special_tokens=False)["input_ids"])
    assert shared[:3].tolist() == lengths[:3].tolist()  # identical choices: the whole sequence
    assert shared[3:6].tolist() == [context] * 3  # the question, not the answers
    first, second = ids[6], ids[7]
    k = int(shared[6])
    assert shared[6] == shared[7] and 0 < k < int(lengths[6])
    assert (first[:k] == second[:k]).all() and first[k] != second[k]
    padded = task.pad_batch(batch, 8)
    assert padded.extras["shared_length"].shape == padded.extras["example_index"].shape


def test_prefix_groups_share_noise_only_on_the_shared_prefix():
    groups = RowGroups(torch.tensor([0, 0, 1]), 2, shared_length=torch.tensor([2, 2, 4]))
    with drawing_rows(None, groups):
        u = uniform((3, 4, 5), torch.float64, "cpu")
    torch.testing.assert_close(u[0, :2], u[1, :2], rtol=0, atol=0)
    assert (u[0, 2:] != u[1, 2:]).all()  # after the shared prefix each row draws its own


def test_every_draw_of_one_pass_shares_its_prefix_mask_and_a_new_batch_makes_its_own():
    """The adapters of one pass draw through one groups object: the (n, T) mask is made once per length, and the
    draws are those of the mask made afresh (same generator state, same numbers)."""
    groups = RowGroups(torch.tensor([0, 0, 1]), 2, shared_length=torch.tensor([2, 2, 4]))
    torch.manual_seed(0)
    with drawing_rows(None, groups):
        first, second = uniform((3, 4, 5), torch.float64, "cpu"), uniform((3, 4, 5), torch.float64, "cpu")
    assert groups.shared_positions(4, "cpu") is groups.shared_positions(4, "cpu")
    torch.manual_seed(0)
    expected = []
    for _ in range(2):
        u = torch.rand(2, 4, 5, dtype=torch.float64).index_select(0, groups.index)
        shared = (torch.arange(4) < groups.shared_length[:, None])[..., None]
        expected.append(torch.where(shared, u, torch.rand(3, 4, 5, dtype=torch.float64)))
    torch.testing.assert_close(first, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(second, expected[1], rtol=0, atol=0)
    other = RowGroups(torch.tensor([0, 0, 1]), 2, shared_length=torch.tensor([1, 1, 3]))
    with drawing_rows(None, other):
        u = uniform((3, 4, 5), torch.float64, "cpu")
    assert (u[0, 0] == u[1, 0]).all() and (u[0, 1] != u[1, 1]).all()


@pytest.mark.parametrize("mode, equal", [("example", True), ("prefix", False), ("sequence", False)])
def test_choice_draws_modes(mode, equal, smollm_tokenizer):
    """Choices 0 and 2 are the same sequence, choice 1 another answer: one draw per example and position makes
    0 and 2 score alike; 'prefix' shares only the question's draws, 'sequence' none."""
    model, task = _model("bara_singular", smollm_tokenizer)
    model.config.choice_draws = mode
    row = {**ROW, "continuations": [" Mars is red", " Venus is hot", " Mars is red"]}  # scored past the question
    _, parts = model.fused_loss(task.collate([row, row]))
    gap = (parts["scores"][:, 0] - parts["scores"][:, 2]).abs().max()
    assert (gap < 1e-6) if equal else (gap > 1e-4)


def test_prefix_is_the_default(smollm_tokenizer):
    model, task = _model("bara_singular", smollm_tokenizer)
    row = {**ROW, "continuations": [" Mars is red", " Venus is hot", " Mars is red"]}
    batch = task.collate([row, row])
    scores = {}
    for mode in (None, "prefix", "example", "sequence"):
        if mode is not None:
            model.config.choice_draws = mode
        torch.manual_seed(1)
        scores[mode] = model.fused_loss(batch)[1]["scores"]
    torch.testing.assert_close(scores[None], scores["prefix"], rtol=0, atol=0)
    assert not torch.allclose(scores[None], scores["example"]) and not torch.allclose(scores[None], scores["sequence"])


def test_choice_draws_rejects_unknown_modes():
    with pytest.raises(ConfigError, match="choice_draws must be one of"):
        BaRAConfig(choice_draws="token")
