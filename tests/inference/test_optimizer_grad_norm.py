"""The optimizer reports the global gradient norm with and without clipping, and clips only when asked."""

import pytest
import torch

from bara_pyro.inference.optim import TorchOptimizer


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_grad_norm_is_logged_with_and_without_clipping(clip_norm, tensor_lr):
    w = torch.nn.Parameter(torch.zeros(3))
    v = torch.nn.Parameter(torch.zeros(2))
    optim = TorchOptimizer([w, v], lr=0.1, clip_norm=clip_norm, tensor_lr=tensor_lr)
    assert optim.last_grad_norm != optim.last_grad_norm  # nan before the first step
    for step, scale in enumerate((1.0, 2.0)):
        w.grad = scale * torch.tensor([3.0, 0.0, 0.0])
        v.grad = scale * torch.tensor([0.0, 4.0])
        factor = 1.0 if clip_norm is None else clip_norm / (5.0 * scale)
        applied = [factor * w.grad, factor * v.grad]
        first_moments = [optim.optimizer.state[p]["exp_avg"].clone() if step else torch.zeros_like(p) for p in (w, v)]
        optim.step_params()
        assert optim.last_grad_norm == pytest.approx(5.0 * scale)
        for p, m, g in zip((w, v), first_moments, applied):  # Adam's first moment saw the (clipped) gradient
            torch.testing.assert_close(optim.optimizer.state[p]["exp_avg"], 0.9 * m + 0.1 * g)
