"""benchmarks/train_padding.py: the tokens a training step feeds per example, as the captured step pads them and
as packing would."""

from builders import benchmark_script

from bara_pyro.tasks import MultipleChoiceTask


def test_token_counts(smollm_tokenizer):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    row = {"contexts": ["Q: is the sky blue?\nA:"] * 3, "continuations": [" yes", " no, it is not", " maybe"],
           "question": "is the sky blue", "choices": ["yes", "no", "maybe"], "label": 0}
    collated = task.collate([row])
    length, shared = collated.inputs["input_ids"].shape[1], int(collated.extras["shared_length"][0])
    own = int((collated.token_mask.sum(-1) - shared).sum())
    counts = benchmark_script("train_padding").token_counts(task, [row] * 3, steps=2, batch_size=2, multiple=16,
                                                            seed=0)
    # every batch holds two copies of the row: 3 sequences each (no missing choice: no dummies), padded to 16
    assert length < 16 and counts["unpadded"] == 3 * length
    assert counts["captured"] == 3 * 16
    assert counts["packed_unpadded"] == shared + own < 3 * length
    assert counts["packed"] == (16 if shared + own <= 16 else 32)
    assert counts["captured_shapes"] == counts["packed_shapes"] == 1  # the same rows every step: one shape
