"""Each registered closed-form KL against a Monte Carlo estimate, and no MC fallback on default sites."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import Bernoulli, Gamma, kl_divergence

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.models.distributions import BinaryConcreteStraightThrough, ReparameterizedWeibull
from bara_pyro.models.kl import kl_weibull_gamma

from builders import make_batch


@pytest.mark.parametrize("scale,conc,shape,rate", [(1.0, 2.0, 4.0, 4.0), (0.3, 0.7, 1.0, 2.5), (2.5, 5.0, 9.0, 3.0)])
def test_kl_weibull_gamma_matches_monte_carlo(scale, conc, shape, rate):
    torch.manual_seed(0)
    q = ReparameterizedWeibull(torch.tensor(scale, dtype=torch.float64), torch.tensor(conc, dtype=torch.float64))
    p = Gamma(torch.tensor(shape, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64))
    x = q.rsample((400_000,))
    mc = (q.log_prob(x) - p.log_prob(x)).mean()
    se = (q.log_prob(x) - p.log_prob(x)).std() / 400_000 ** 0.5
    closed = kl_divergence(q, p)
    assert closed == pytest.approx(float(kl_weibull_gamma(q.scale, q.concentration, p.concentration, p.rate)))
    assert abs(float(closed - mc)) < 5 * float(se) + 1e-4


def test_weibull_log_prob_and_moments_match_torch():
    scale, conc = torch.tensor([0.5, 2.0]), torch.tensor([0.8, 3.0])
    ours, ref = ReparameterizedWeibull(scale, conc), torch.distributions.Weibull(scale, conc)
    x = torch.tensor([0.3, 1.7])
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.mean, ref.mean)
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    samples = ours.rsample((200_000,))
    torch.testing.assert_close(samples.mean(0), ref.mean, rtol=0.02, atol=0.0)


@pytest.mark.parametrize("q_logit,p", [(0.3, 0.5), (-2.0, 0.9), (3.0, 0.05)])
def test_kl_binary_concrete_bernoulli_is_kl_of_the_bernoullis(q_logit, p):
    torch.manual_seed(0)
    q = BinaryConcreteStraightThrough(0.5, torch.tensor(q_logit, dtype=torch.float64))
    prior = Bernoulli(torch.tensor(p, dtype=torch.float64))
    z = q.rsample((400_000,))
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    assert float(z.mean()) == pytest.approx(float(torch.sigmoid(torch.tensor(q_logit))), abs=0.005)
    # Monte Carlo of the surrogate: E_{z ~ Bernoulli(q)}[log q(z) - log p(z)] with the hard samples
    mc = (Bernoulli(logits=q.logits).log_prob(z) - prior.log_prob(z)).mean()
    assert float(kl_divergence(q, prior)) == pytest.approx(float(mc), abs=0.01)
    closed = kl_divergence(Bernoulli(logits=q.logits), prior)
    assert float(kl_divergence(q, prior)) == pytest.approx(float(closed), rel=1e-9)


def test_trace_mean_field_uses_closed_form_kl_for_every_default_site(tiny_bert, monkeypatch):
    """TraceMeanField_ELBO silently falls back to Monte Carlo when kl_divergence raises; no default site may."""
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, gamma0=2.0))
    batch = make_batch()
    model.dataset_size = 40
    guide_tr = pyro.poutine.trace(model.guide).get_trace(batch)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=guide_tr)).get_trace(batch)
    latent = [n for n, s in model_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and not n in ("sequences", "tokens", "data")]
    assert {n.rsplit(".", 1)[1] for n in latent} == {"pi", "lambda", "z", "theta"}
    for name in latent:
        kl_divergence(guide_tr.nodes[name]["fn"], model_tr.nodes[name]["fn"])  # raises NotImplementedError if absent

    fallback = []
    original = TraceMeanField_ELBO._differentiable_loss_particle

    def spy(self, model_trace, guide_trace):
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                try:
                    kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
                except NotImplementedError:
                    fallback.append(name)
        return original(self, model_trace, guide_trace)

    monkeypatch.setattr(TraceMeanField_ELBO, "_differentiable_loss_particle", spy)
    TraceMeanField_ELBO(max_plate_nesting=2).loss(model.model, model.guide, batch)
    assert fallback == []
