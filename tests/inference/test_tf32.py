"""``train.tf32``: TF32 matrix products while training, the previous setting restored after."""

import pytest
import torch

from bara_pyro.inference import TrainConfig, fit


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_on_while_training_and_restored_after(tf32):
    from test_train_packing import _config, _preset

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        model, task, rows = _preset("lora")
        seen = []
        fit(model, task, rows, _config(tf32=tf32), progress=False, on_log=lambda row: seen.append(matmul.allow_tf32))
        assert seen and all(value == tf32 for value in seen)
        assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before


def test_tf32_that_is_not_true_or_false_is_refused():
    from bara_pyro.models.config import ConfigError

    with pytest.raises(ConfigError, match="tf32 must be true or false, got 'yes'"):
        TrainConfig(tf32="yes")
