"""benchmarks/rank_allocation_synthetic.py: what each further rank-1 component of the least-squares fit gains."""

import torch
from builders import benchmark_script

from bara_pyro.synthetic import low_rank_update


def test_rank_one_gains_add_up_to_the_least_squares_fit_and_fall_to_the_noise_after_the_true_rank():
    script = benchmark_script("rank_allocation_synthetic")
    gains = script.rank_one_gains(2)
    data = low_rank_update(2, noise=script.NOISE)
    x = torch.stack([r["x"] for r in data.rows])
    with torch.no_grad():
        residual = torch.stack([r["y"] for r in data.rows]) - data.backbone.proj(x)
    fit = x @ torch.linalg.lstsq(x, residual).solution
    rss_drop = float(residual.pow(2).sum() - (residual - fit).pow(2).sum())
    assert abs(sum(gains) - rss_drop / (2 * script.NOISE**2)) < 1e-3 * sum(gains)  # all 16 components: the full fit
    assert gains == sorted(gains, reverse=True)
    assert min(gains[:2]) > 100 * max(gains[2:])  # the true rank's components against the noise's
    # the noise's largest direction: of the order of (d_in + d_out) / 2 = 16 nats, half a nat per parameter of a
    # rank-1 direction pair, and the noise's together about half a nat per parameter of the other 14 components
    assert 16 / 4 < gains[2] < 16 * 2
    assert 0.25 * 16 * 14 / 2 < sum(gains[2:]) < 16 * 14 / 2
