"""benchmarks/direction_occam.py: the Occam factor is the Laplace log-determinant of each direction's
exact curvature in a linear-Gaussian layer."""

from pathlib import Path

import torch
from builders import benchmark_script


def test_direction_occam_is_the_laplace_log_determinant_of_the_exact_curvature(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    script = benchmark_script("direction_occam")
    torch.manual_seed(0)
    n, d_in, d_out, noise = 40, 5, 4, 0.3
    x = torch.randn(n, d_in, dtype=torch.float64)
    a = torch.linalg.qr(torch.randn(d_in, 2, dtype=torch.float64))[0].T  # (2, d_in) orthonormal rows
    b = torch.linalg.qr(torch.randn(d_out, 2, dtype=torch.float64))[0]  # (d_out, 2) orthonormal columns
    lam, pi = torch.tensor([1.7, 0.4], dtype=torch.float64), torch.tensor([1.0, 0.6], dtype=torch.float64)
    y = torch.randn(n, d_out, dtype=torch.float64)

    expected = 0.0
    for k in range(2):
        scale = pi[k].sqrt() * lam[k]  # the usage enters the curvature as s_k = lambda_k^2 pi_k

        def nll_b(bk):
            return ((y - scale * (x @ a[k])[:, None] * bk) ** 2).sum() / (2 * noise**2)

        def nll_a(ak):
            return ((y - scale * (x @ ak)[:, None] * b[:, k]) ** 2).sum() / (2 * noise**2)

        h_b = torch.autograd.functional.hessian(nll_b, b[:, k])
        h_a = torch.autograd.functional.hessian(nll_a, a[k])
        expected += 0.5 * (torch.logdet(torch.eye(d_out, dtype=torch.float64) + h_b / d_out)
                           + torch.logdet(torch.eye(d_in, dtype=torch.float64) + h_a / d_in))
    got = script.direction_occam(a, b, lam**2 * pi, x.T @ x, torch.eye(d_out, dtype=torch.float64) / noise**2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_kronecker_statistics_are_the_scaled_input_outer_products_and_the_empirical_fisher(monkeypatch):
    """One fused training pass of ``bara_singular`` on the synthetic regression: ``C`` is ``N / B`` times the batch's
    ``X^T X``; ``G`` (started at 0, one step of the running average) is the mean over examples of the Gaussian
    likelihood's gradient in the layer's output, ``(y - f) / noise^2``, times itself."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    script = benchmark_script("direction_occam")
    from bara_pyro import BaRAConfig, get_bara_model
    from bara_pyro.methods import load_preset
    from bara_pyro.models import GaussianLikelihood
    from bara_pyro.synthetic import RegressionTask, low_rank_update

    torch.manual_seed(0)
    data, task, noise = low_rank_update(2), RegressionTask(), 0.3
    config = BaRAConfig.from_dict({**load_preset("bara_singular")["adapter"], "r": 4, "alpha": 4,
                                   "target_modules": ["proj"]})
    model = get_bara_model(data.backbone, config, forward_fn=task.scores, likelihood=GaussianLikelihood(noise))
    model.dataset_size = len(data.rows)
    with torch.no_grad():  # a non-zero update, so the adapter's output takes part in the likelihood's gradient
        for _, adapter in model.adapter_items:
            adapter.lora_S_loc.fill_(0.1)
    batch = task.collate(data.rows[:16])
    stats = script.KroneckerStatistics()
    with script.recording(stats):
        loss, parts = model.fused_loss(batch)
        loss.backward()
    ((_, adapter),) = model.adapter_items
    recorded = stats.stats[id(adapter)]
    x, residual = batch.inputs["x"], batch.labels - parts["scores"]
    torch.testing.assert_close(recorded["C"], len(data.rows) / 16 * x.T @ x)
    fisher = (residual / noise**2).T @ (residual / noise**2) / 16
    torch.testing.assert_close(recorded["G"], (1 - script.DECAY) * fisher, rtol=1e-4, atol=1e-4)
