"""The second-moment non-local prior: its density, sampler and closed-form KL from a Gaussian against Monte Carlo."""

import pytest
import torch

from bara_pyro.models.moment_prior import MomentNormal, expected_log_square, kl_normal_moment


def test_density_integrates_to_one_vanishes_at_zero_and_matches_the_sampler():
    p = MomentNormal(torch.tensor(0.7, dtype=torch.float64))
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    assert float(p.log_prob(grid).exp().sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-9)
    assert float(p.log_prob(torch.tensor(0.0, dtype=torch.float64)).exp()) == 0.0
    torch.manual_seed(0)
    draws = p.rsample((400_000,))
    assert float(draws.pow(2).mean()) == pytest.approx(3 * 0.49, rel=0.01)  # |x| / s ~ chi_3
    assert float((draws > 0).double().mean()) == pytest.approx(0.5, abs=0.005)
    # the histogram's density is p's
    hist = torch.histc(draws, bins=40, min=-2.0, max=2.0) / (draws.numel() * 0.1)
    centres = torch.linspace(-1.95, 1.95, 40, dtype=torch.float64)
    torch.testing.assert_close(hist, p.log_prob(centres).exp(), atol=0.02, rtol=0.05)


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), (0.3, 1.0), (2.0, 0.5), (1.0, 0.1302), (1.0, 0.1289),
                                        (3.0, 0.01), (0.0, 0.005), (0.01, 0.005)])
def test_expected_log_square_and_kl_match_monte_carlo(loc, scale):
    """Both sides of the switch from the series to the expansion (delta = 60 at 1 / 0.1291) and far from it."""
    torch.manual_seed(1)
    loc, scale = torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    x = loc + scale * torch.randn(2_000_000, dtype=torch.float64)
    mc = x.pow(2).log()
    assert float(expected_log_square(loc, scale)) == pytest.approx(float(mc.mean()), abs=5 * float(mc.std()) / 1414)
    q, p = torch.distributions.Normal(loc, scale), MomentNormal(torch.tensor(0.7, dtype=torch.float64))
    ratio = q.log_prob(x) - p.log_prob(x)
    assert float(torch.distributions.kl_divergence(q, p)) == pytest.approx(float(ratio.mean()),
                                                                         abs=5 * float(ratio.std()) / 1414)
    assert float(kl_normal_moment(loc, scale, p.scale)) == float(torch.distributions.kl_divergence(q, p))


def test_gradients_are_finite_at_zero_and_at_the_switch():
    loc = torch.tensor([0.0, 1.0, 7.746], requires_grad=True)
    scale = torch.tensor([0.005, 0.1291, 1.0], requires_grad=True)
    expected_log_square(loc, scale).sum().backward()
    assert bool(torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all())
    assert float(loc.grad[0]) == 0.0  # symmetric in loc
