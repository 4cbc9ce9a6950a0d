import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from bara_pyro.metrics import (
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    mutual_information,
    nll,
    ood_auroc,
    predictive_entropy,
)


def random_predictions(num_examples=2000, num_classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(num_examples, num_classes, generator=generator)
    labels = torch.randint(num_classes, (num_examples,), generator=generator)
    return logits.softmax(-1), labels


@pytest.mark.parametrize("num_classes", [2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_torchmetrics(num_classes, seed):
    probs, labels = random_predictions(num_classes=num_classes, seed=seed)
    reference = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")(probs, labels)
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(reference.item(), abs=1e-6)


def test_ece_hand_example():
    # Two bins used: conf 0.9 (both correct -> gap 0.1) and conf 0.6 (one of two correct -> gap 0.1).
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.1)


def test_accuracy_nll_brier_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 1, 0])
    assert accuracy(probs, labels) == pytest.approx(1 / 3)  # argmax ties resolve to the first class
    assert nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.5) + math.log(0.1)) / 3)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.5**2 + 0.5**2 + 0.0) + (0.9**2 + 0.1**2 + 0.8**2)) / 3
    assert brier_score(probs, labels) == pytest.approx(brier)


def test_missing_choices_with_zero_probability_are_fine():
    probs = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    metrics = classification_metrics(probs, labels)
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["nll"] == pytest.approx(-math.log(0.75) / 2)
    assert predictive_entropy(probs)[1].item() == 0.0


def test_accepts_numpy():
    probs, labels = random_predictions(num_examples=50, num_classes=3)
    assert brier_score(probs.numpy(), labels.numpy()) == pytest.approx(brier_score(probs, labels))
    assert isinstance(predictive_entropy(np.asarray(probs)), torch.Tensor)


def test_auroc_hand_examples():
    assert ood_auroc([0.1, 0.2, 0.3], [0.4, 0.5]) == 1.0
    assert ood_auroc([0.4, 0.5], [0.1, 0.2, 0.3]) == 0.0
    assert ood_auroc([1.0, 1.0], [1.0]) == 0.5  # all tied
    # in = {0.1, 0.4, 0.35, 0.8}, out = {0.4, 0.9}: 0.4 beats 2 and ties 1, 0.9 beats 4 -> (2 + 0.5 + 4) / 8
    assert ood_auroc([0.1, 0.4, 0.35, 0.8], [0.4, 0.9]) == pytest.approx(6.5 / 8)


def test_auroc_matches_pairwise_definition():
    generator = torch.Generator().manual_seed(0)
    scores_in = torch.randint(0, 10, (60,), generator=generator).double()
    scores_out = torch.randint(3, 13, (40,), generator=generator).double()
    greater = (scores_out[:, None] > scores_in[None, :]).double()
    equal = (scores_out[:, None] == scores_in[None, :]).double()
    assert ood_auroc(scores_in, scores_out) == pytest.approx((greater + equal / 2).mean().item())


def test_mutual_information():
    generator = torch.Generator().manual_seed(0)
    sample_probs = torch.randn(8, 30, 4, generator=generator).softmax(-1)
    information = mutual_information(sample_probs)
    assert information.shape == (30,)
    assert (information >= 0).all() and (information > 0).any()
    agreeing = sample_probs[:1].expand(8, -1, -1)
    assert torch.allclose(mutual_information(agreeing), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    # Two confident samples that disagree: H[mean] = log 2, mean H ~ 0.
    disagreeing = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert mutual_information(disagreeing).item() == pytest.approx(math.log(2))


def test_classification_metrics_keys():
    probs, labels = random_predictions(num_examples=100, num_classes=4)
    metrics = classification_metrics(probs, labels)
    assert set(metrics) == {"accuracy", "nll", "brier", "ece", "mean_entropy"}
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, labels))
