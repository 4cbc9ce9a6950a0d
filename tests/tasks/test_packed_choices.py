"""A multiple-choice example's choices packed in one row score as they do unpacked, at fewer positions."""

import pyro
import pytest
import torch
from builders import question_rows, tiny_cloze_model

from bara_pyro import get_bara_model
from bara_pyro.backbones import tiny_backbone
from bara_pyro.experiment import _adapter_config, build_backbone_and_task, task_likelihood
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import predict
from bara_pyro.methods import preset_names
from bara_pyro.tasks import MultipleChoiceTask

UNPACKED_WHEN_SAMPLING = {"bara", "bara_sparsity_only", "balora", "laplace_lora", "projected_subspace_laplace"}


def _rows():
    return question_rows(9, mixed=True)


def _backbone(tokenizer, implementation):
    backbone = tiny_backbone("causal_lm", "llama", tokenizer=tokenizer).eval()
    backbone.config._attn_implementation = implementation
    return backbone


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_scores_equal_unpacked_scores(smollm_tokenizer, implementation):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    backbone = _backbone(smollm_tokenizer, implementation)
    batch = task.collate(_rows())
    packed = task.pack(batch)
    assert task.packs(backbone)
    assert packed.inputs["input_ids"].shape[0] == batch.num_examples
    assert packed.token_mask.sum() < batch.token_mask.sum()  # the shared prefixes once
    with torch.no_grad():
        expected, actual = task.scores(backbone, batch), task.scores(backbone, packed)
    assert torch.equal(expected.isinf(), actual.isinf())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_batch_packed_for_the_captured_step_scores_as_its_padded_batch(smollm_tokenizer, implementation):
    """pack_padded: pad_batch's padding (dummy sequences, weighted scored tokens), packed, width a multiple of 16."""
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    backbone = _backbone(smollm_tokenizer, implementation)
    batch = task.collate(_rows())
    padded, packed = task.pad_batch(batch, 16), task.pack_padded(batch, 16)
    assert packed.inputs["input_ids"].shape[1] % 16 == 0
    assert packed.token_mask.sum() == task.pack(batch).token_mask.sum()  # the padding adds no real token
    assert padded.extras["choice_mask"].logical_not().any()  # row 4 has a missing choice: a dummy sequence
    with torch.no_grad():
        expected, actual = task.scores(backbone, padded), task.scores(backbone, packed)
    assert torch.equal(expected.isinf(), actual.isinf())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_a_packed_row_holds_each_choice_once(smollm_tokenizer):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    rows = _rows()
    batch, packed = task.collate(rows), task.pack(task.collate(rows))
    for e in range(len(rows)):
        sequences = (batch.extras["example_index"] == e).nonzero().flatten()
        shared = int(batch.extras["shared_length"][sequences[0]])
        row = packed.inputs["input_ids"][e]
        position = packed.inputs["position_ids"][e]
        mask = packed.inputs["attention_mask"][e, 0]
        column = shared
        for s in sequences:
            tokens = batch.inputs["input_ids"][s][batch.token_mask[s]]
            rest = len(tokens) - shared
            assert torch.equal(row[:shared], tokens[:shared])
            assert torch.equal(row[column:column + rest], tokens[shared:])
            assert torch.equal(position[column:column + rest], torch.arange(shared, len(tokens)))
            # a choice's tokens see the shared prefix and their own choice, not the other choices
            seen = mask[column + rest - 1]
            assert seen[:shared].all() and seen[column:column + rest].all() and seen.sum() == len(tokens)
            column += rest
        assert not packed.token_mask[e, column:].any()


TIED = {"guide": {"local": {"name": "conditional_prior"}}, "prior": {"sparsity": {"name": "contextual_beta_process"}}}


def test_predict_packs_where_the_draws_allow_it(smollm_tokenizer):
    model, task = tiny_cloze_model(smollm_tokenizer, **TIED)  # gates tied to their prior, choice_draws: prefix
    rows = _rows()
    assert model.packs_choices(0) and model.packs_choices(3)
    pyro.set_rng_seed(0)
    packed = predict(model, task, rows, num_samples=0, batch_size=4, progress=False)
    pyro.set_rng_seed(0)
    unpacked = predict(model, task, rows, num_samples=0, batch_size=4, progress=False, pack_choices=False)
    torch.testing.assert_close(packed.probs, unpacked.probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(packed.labels, unpacked.labels)
    sampled = predict(model, task, rows, num_samples=3, batch_size=4, progress=False)
    assert sampled.sample_probs.shape == (3, len(rows), 3)
    torch.testing.assert_close(sampled.probs.sum(-1), torch.ones(len(rows)))
    example, _ = tiny_cloze_model(smollm_tokenizer, choice_draws="example", **TIED)
    assert example.packs_choices(0) and not example.packs_choices(3)  # its continuations share draws
    amortized, _ = tiny_cloze_model(smollm_tokenizer)  # a per-token KL: the gates are drawn per choice sequence
    assert amortized.packs_choices(0) and not amortized.packs_choices(3)
    per_sequence, _ = tiny_cloze_model(smollm_tokenizer, guide={"local": {"name": "conditional_prior",
                                                                          "per": "sequence"}},
                                       prior={"sparsity": {"name": "contextual_beta_process"}})
    assert not per_sequence.packs_choices(0)  # a per-sequence gate pools one choice's context


def test_packed_sampling_shares_the_prefix_draws(smollm_tokenizer):
    """At S > 0 with choice_draws: prefix, packed and unpacked prediction draw the same gates in distribution: the
    averaged probabilities agree to Monte Carlo error."""
    model, task = tiny_cloze_model(smollm_tokenizer, **TIED)
    rows = _rows()
    pyro.set_rng_seed(1)
    packed = predict(model, task, rows, num_samples=200, batch_size=9, progress=False)
    pyro.set_rng_seed(2)
    unpacked = predict(model, task, rows, num_samples=200, batch_size=9, progress=False, pack_choices=False)
    spread = unpacked.sample_probs.std(0) / 200 ** 0.5
    assert ((packed.probs - unpacked.probs).abs() < 5 * spread + 1e-4).all()


def test_row_lengths_are_the_widths_of_each_rows_batch(smollm_tokenizer, monkeypatch):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    rows = _rows()
    monkeypatch.setattr("bara_pyro.tasks.multiple_choice.LENGTH_CHUNK", 4)  # chunks of rows, the last one short
    assert task.row_lengths(rows) == [task.collate([row]).inputs["input_ids"].shape[-1] for row in rows]
    assert task.row_lengths(rows, packed=True) == [task.pack(task.collate([row])).inputs["input_ids"].shape[-1]
                                                   for row in rows]


@pytest.mark.parametrize("method", [m for m in preset_names() if m != "ensemble"])
def test_every_preset_predicts_the_same_packed(method):
    """At S = 0 packed prediction equals unpacked for every method.  At S > 0 the methods whose per-token draws are
    made per choice sequence (a guide with a per-token KL, BaLoRA's noise) and Laplace's linearised predictive do not
    pack."""
    config = load_config(method=method, overrides=["model=tiny-llama", "dataset=arc_easy", "task.scoring=cloze"])
    backbone, _, task, data = build_backbone_and_task(config)
    torch.manual_seed(0)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores,
                           likelihood=task_likelihood(task))
    for _, adapter in model.adapter_items:
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.05)
    rows = list(data["test"])[:6]
    packed = predict(model, task, rows, num_samples=0, batch_size=3, progress=False)
    unpacked = predict(model, task, rows, num_samples=0, batch_size=3, progress=False, pack_choices=False)
    torch.testing.assert_close(packed.probs, unpacked.probs, atol=1e-5, rtol=1e-5)
    assert model.packs_choices(2) == (method not in UNPACKED_WHEN_SAMPLING)
    sampled = predict(model, task, rows, num_samples=2, batch_size=3, progress=False)
    torch.testing.assert_close(sampled.probs.sum(-1), torch.ones(len(rows)))
