"""Prediction batches rows of similar length (longest first) and returns its results in the rows' order."""

import pyro
import torch
from builders import question_rows, tiny_cloze_model

from bara_pyro.inference import predict
from bara_pyro.inference.predictive import length_order
from bara_pyro.tasks import MultipleChoiceTask


class ShapeRecordingTask:
    """Records the ``(n_seq, T)`` of every batch predict collates (``row_lengths`` passes through unrecorded)."""

    def __init__(self, task):
        self.task, self.shapes = task, []

    def collate(self, rows):
        batch = self.task.collate(rows)
        self.shapes.append(tuple(batch.inputs["input_ids"].shape))
        return batch

    def __getattr__(self, name):
        return getattr(self.task, name)


def _predict(model, task, rows, **kwargs):
    pyro.set_rng_seed(0)
    recorder = ShapeRecordingTask(task)
    return predict(model, recorder, rows, batch_size=4, progress=False, **kwargs), recorder.shapes


def test_length_order_puts_the_longest_rows_first(smollm_tokenizer):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    rows = question_rows(13)
    order = length_order(task, rows)
    lengths = [task.collate([rows[i]]).inputs["input_ids"].shape[-1] for i in order]
    assert sorted(order) == list(range(len(rows))) and lengths == sorted(lengths, reverse=True)
    assert length_order(object(), rows) is None  # a task without row_lengths keeps the rows' order


def test_by_length_predicts_the_same_in_the_rows_order_with_less_padding(smollm_tokenizer):
    model, task = tiny_cloze_model(smollm_tokenizer)
    rows = question_rows(13)
    plain, plain_shapes = _predict(model, task, rows, num_samples=0, by_length=False)
    ordered, ordered_shapes = _predict(model, task, rows, num_samples=0)
    assert torch.equal(ordered.labels, torch.tensor([row["label"] for row in rows]))
    torch.testing.assert_close(ordered.probs, plain.probs, rtol=1e-5, atol=1e-6)
    assert [t for _, t in ordered_shapes] == sorted((t for _, t in ordered_shapes), reverse=True)
    assert sum(n * t for n, t in ordered_shapes) < sum(n * t for n, t in plain_shapes)
    assert ordered.effective_rank.keys() == plain.effective_rank.keys()


def test_sampled_predictions_come_back_in_the_rows_order(smollm_tokenizer):
    """Without gates every draw is the deterministic prediction: each of the S draws of a row equals it."""
    model, task = tiny_cloze_model(smollm_tokenizer, gate="none")
    rows = question_rows(13)
    plain, _ = _predict(model, task, rows, num_samples=0, by_length=False)
    assert (plain.probs[:, 0].max() - plain.probs[:, 0].min()) > 1e-3  # the rows' predictions differ
    pred, _ = _predict(model, task, rows, num_samples=3)
    assert pred.sample_probs.shape == (3, len(rows), 3)
    for draw in pred.sample_probs:
        torch.testing.assert_close(draw, plain.probs, rtol=1e-5, atol=1e-6)
    assert torch.equal(pred.labels, torch.tensor([row["label"] for row in rows]))
