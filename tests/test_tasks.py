"""Tasks on tiny random backbones with the real MiniLM (WordPiece) and SmolLM2 (BPE) tokenizers."""

import pytest
import torch
from transformers import AutoTokenizer

from bara_pyro.assets import asset_status, resolve_model
from bara_pyro.backbones import tiny_backbone
from bara_pyro.tasks import Batch, MultipleChoiceTask, SequenceClassificationTask, Task, get_task

# The SmolLM2 tokenizer is cheap once the asset is converted; converting it (~30 s) is slow.
TOKENIZERS = [
    "minilm-l6",
    pytest.param("smollm2-135m", marks=() if asset_status("smollm2-135m") == "ready" else pytest.mark.slow),
]

MC_ROWS = [
    {
        "contexts": ["Question: Which is a planet?\nAnswer:"] * 3,
        "continuations": [" Mars", " the Moon", " a comet"],
        "label": 0,
        "question": "Question: Which is a planet?",
        "choices": ["Mars", "the Moon", "a comet"],
    },
    {
        "contexts": ["The trophy did not fit in the suitcase because the trophy",
                     "The trophy did not fit in the suitcase because the suitcase"],
        "continuations": [" was too big."] * 2,
        "label": 0,
        "question": "Fill in the blank: The trophy did not fit in the suitcase because the ___ was too big.",
        "choices": ["trophy", "suitcase"],
    },
    {
        "contexts": ["Passage about water.\nQuestion: is water wet?\nAnswer:"] * 4,
        "continuations": [" yes", " no", " maybe, it depends on what you mean by wet", " no"],
        "label": 1,
        "question": "Passage about water.\nQuestion: is water wet?",
        "choices": ["yes", "no", "maybe, it depends on what you mean by wet", "no"],
    },
]  # fmt: skip


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(request.param))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    return tiny_backbone("causal_lm", "llama", tokenizer).eval()


def reference_cloze_scores(model, task, rows):
    """Per-choice loop on unpadded sequences: mean log-likelihood of the continuation tokens."""
    width = max(len(row["choices"]) for row in rows)
    scores = torch.full((len(rows), width), float("-inf"))
    for example, row in enumerate(rows):
        for choice, (context, continuation) in enumerate(zip(row["contexts"], row["continuations"])):
            context_ids = task.prefix_ids + task.tokenizer(context, add_special_tokens=False)["input_ids"]
            continuation_ids = task.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            context_ids = context_ids[-(task.max_length - len(continuation_ids)) :]
            ids = torch.tensor([context_ids + continuation_ids])
            with torch.no_grad():
                log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
            start = len(context_ids)
            token_log_probs = [log_probs[t - 1, ids[0, t]] for t in range(start, ids.shape[1])]
            scores[example, choice] = torch.stack(token_log_probs).mean()
    return scores


def test_classification_collate_and_scores():
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    model = tiny_backbone("sequence_classification", "bert", tokenizer, num_labels=2).eval()
    task = SequenceClassificationTask(tokenizer, num_labels=2, max_length=16)
    rows = [{"text": "A charming, often affecting journey.", "label": 1}, {"text": "Dull.", "label": 0},
            {"text": "word " * 50, "label": 0}]  # fmt: skip
    batch = task.collate(rows)
    input_ids = batch.inputs["input_ids"]
    assert input_ids.shape == (3, 16) and batch.labels.tolist() == [1, 0, 0]
    assert torch.equal(batch.token_mask, batch.inputs["attention_mask"].bool())
    assert batch.token_mask.sum(1).tolist()[1] < 16 and input_ids[1, -1] == tokenizer.pad_token_id
    with torch.no_grad():
        scores = task.scores(model, batch)
        assert scores.shape == (3, 2)
        single = model(**tokenizer(rows[1]["text"], return_tensors="pt")).logits
    torch.testing.assert_close(scores[1:2], single, atol=1e-5, rtol=1e-5)
    assert task.row_lengths(rows) == [task.collate([row]).inputs["input_ids"].shape[-1] for row in rows] != [16] * 3


def test_cloze_collate(tokenizer):
    task = MultipleChoiceTask(tokenizer, scoring="cloze")
    batch = task.collate(MC_ROWS)
    n_seq = 3 + 2 + 4
    assert batch.num_examples == 3 and batch.inputs["input_ids"].shape[0] == n_seq
    assert batch.token_mask.shape == batch.inputs["input_ids"].shape == batch.extras["continuation_mask"].shape
    assert torch.equal(batch.token_mask, batch.inputs["attention_mask"].bool())
    assert (batch.extras["continuation_mask"] <= batch.token_mask).all()  # continuations are real tokens
    assert batch.extras["example_index"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert batch.extras["choice_index"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert batch.extras["num_choices"].tolist() == [3, 2, 4]
    # the last real token of every sequence is the end of its continuation
    last = batch.token_mask.sum(1) - 1
    assert batch.extras["continuation_mask"][torch.arange(n_seq), last].all()


def test_cloze_scores_match_per_choice_loop(tokenizer, tiny_llama):
    task = MultipleChoiceTask(tokenizer, scoring="cloze")
    batch = task.collate(MC_ROWS)
    with torch.no_grad():
        scores = task.scores(tiny_llama, batch)
    assert scores.shape == (3, 4)
    assert torch.isinf(scores[0, 3]) and torch.isinf(scores[1, 2:]).all() and (scores[1, 2:] < 0).all()
    torch.testing.assert_close(scores, reference_cloze_scores(tiny_llama, task, MC_ROWS), atol=1e-5, rtol=0)
    # identical context and continuation give identical scores
    torch.testing.assert_close(scores[2, 1], scores[2, 3], atol=1e-5, rtol=0)


def test_cloze_truncates_context_from_the_left(tokenizer, tiny_llama):
    rows = [dict(MC_ROWS[0], contexts=["many words " * 40 + row for row in MC_ROWS[0]["contexts"]])]
    task = MultipleChoiceTask(tokenizer, scoring="cloze", max_length=24)
    batch = task.collate(rows)
    assert batch.inputs["input_ids"].shape[1] <= 24
    with torch.no_grad():
        scores = task.scores(tiny_llama, batch)
    torch.testing.assert_close(scores, reference_cloze_scores(tiny_llama, task, rows), atol=1e-5, rtol=0)


def test_fixed_width_and_gradients(tokenizer, tiny_llama):
    task = MultipleChoiceTask(tokenizer, scoring="cloze", num_choices=5)
    batch = task.collate(MC_ROWS).to("cpu")
    scores = task.scores(tiny_llama, batch)
    assert scores.shape == (3, 5) and torch.isinf(scores[:, 4]).all()
    loss = torch.nn.functional.cross_entropy(scores, batch.labels)
    loss.backward()
    gradients = [p.grad for p in tiny_llama.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
    tiny_llama.zero_grad()
    with pytest.raises(ValueError, match="more than num_choices"):
        MultipleChoiceTask(tokenizer, num_choices=2).collate(MC_ROWS)


def test_lettered_scores(tokenizer, tiny_llama):
    task = MultipleChoiceTask(tokenizer, scoring="lettered")
    prompt = task.lettered_prompt(MC_ROWS[0])
    assert prompt == "Question: Which is a planet?\n A. Mars\n B. the Moon\n C. a comet\nAnswer:"
    batch = task.collate(MC_ROWS)
    assert batch.inputs["input_ids"].shape[0] == 3 and batch.extras["letter_ids"].shape == (4,)
    with torch.no_grad():
        scores = task.scores(tiny_llama, batch)
    assert scores.shape == (3, 4) and torch.isinf(scores[0, 3]) and torch.isinf(scores[1, 2:]).all()
    for example, row in enumerate(MC_ROWS):
        prompt_ids = tokenizer(task.lettered_prompt(row), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([task.prefix_ids + prompt_ids])
        with torch.no_grad():
            next_token = tiny_llama(input_ids=ids).logits[0, -1]
        count = len(row["choices"])
        expected = next_token[batch.extras["letter_ids"][:count]]
        torch.testing.assert_close(scores[example, :count], expected, atol=1e-5, rtol=1e-5)


def test_get_task(tokenizer):
    classification = get_task("rt_sst2", tokenizer)
    assert isinstance(classification, SequenceClassificationTask) and classification.num_labels == 2
    cloze = get_task("arc_easy", tokenizer)
    lettered = get_task("winogrande_s", tokenizer, scoring="lettered", max_length=64)
    assert isinstance(cloze, MultipleChoiceTask) and cloze.scoring == "cloze" and cloze.num_choices == 5
    assert lettered.scoring == "lettered" and lettered.max_length == 64 and lettered.name == "winogrande_s"
    assert all(isinstance(task, Task) for task in (classification, cloze, lettered))
    with pytest.raises(ValueError, match="scoring"):
        get_task("arc_easy", tokenizer, scoring="generative")


def test_batch_to_keeps_extras(tokenizer):
    batch = MultipleChoiceTask(tokenizer).collate(MC_ROWS)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.extras["width"] == 4
    assert torch.equal(moved.extras["continuation_mask"], batch.extras["continuation_mask"])


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("kind", ["sequence_classification", "causal_lm"])
def test_tiny_backbone(arch, kind):
    model = tiny_backbone(kind, arch, num_labels=3)
    assert model.config.vocab_size == 128 and model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    before = torch.random.get_rng_state()
    again = tiny_backbone(kind, arch, num_labels=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    input_ids = torch.randint(128, (2, 5))
    logits = model(input_ids=input_ids).logits
    assert logits.shape == ((2, 3) if kind == "sequence_classification" else (2, 5, 128))
