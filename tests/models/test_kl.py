"""Each registered closed-form KL against a Monte Carlo estimate, and no MC fallback on default sites."""

import pyro
import pytest
import torch
from builders import make_batch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import Bernoulli, Beta, Gamma, kl_divergence

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.models.distributions import (
    BinaryConcreteStraightThrough,
    ReparameterizedKumaraswamy,
    ReparameterizedWeibull,
)
from bara_pyro.models.kl import kl_kumaraswamy_beta, kl_weibull_gamma


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
              and n not in ("sequences", "tokens", "data")]
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


@pytest.mark.parametrize("a,b,alpha,beta", [(7.4, 1.0, 4.0, 1.0), (0.5, 0.4, 1.0, 2.0), (3.0, 0.3, 0.5, 5.0),
                                            (2.0, 5.0, 0.3, 0.7), (1.0, 1.0, 2.0, 3.0)])
def test_kl_kumaraswamy_beta_matches_monte_carlo(a, b, alpha, beta):
    """The truncated Taylor series of Nalisnick & Smyth (plus its closed-form tail) against Monte Carlo."""
    torch.manual_seed(0)
    a, b, alpha, beta = (torch.tensor(v, dtype=torch.float64) for v in (a, b, alpha, beta))
    q, p = ReparameterizedKumaraswamy(a, b), Beta(alpha, beta)
    x = q.rsample((400_000,))
    terms = q.log_prob(x) - p.log_prob(x)
    closed = kl_divergence(q, p)
    assert float(closed) == pytest.approx(float(kl_kumaraswamy_beta(a, b, alpha, beta)))
    assert abs(float(closed - terms.mean())) < 5 * float(terms.std()) / 400_000 ** 0.5 + 1e-4
    # the 64-term series with its tail agrees with a 100,000-term sum
    assert float(closed) == pytest.approx(float(kl_kumaraswamy_beta(a, b, alpha, beta, terms=100_000)), rel=1e-5)


def test_kumaraswamy_sampler_log_prob_and_mean():
    a, b = torch.tensor([0.7, 3.0], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)
    q = ReparameterizedKumaraswamy(a, b)
    x = q.rsample((300_000,))
    torch.testing.assert_close(x.mean(0), q.mean, rtol=5e-3, atol=0.0)
    for point in (0.1, 0.5, 0.9):  # empirical CDF against F(x) = 1 - (1 - x^a)^b
        torch.testing.assert_close((x < point).double().mean(0), 1 - (1 - point**a) ** b, atol=4e-3, rtol=0)
    # log_prob is the derivative of that CDF
    point = torch.tensor([0.3, 0.6], dtype=torch.float64)
    step = 1e-6
    cdf = lambda v: 1 - (1 - v**a) ** b  # noqa: E731
    torch.testing.assert_close(q.log_prob(point).exp(), (cdf(point + step) - cdf(point - step)) / (2 * step),
                               rtol=1e-6, atol=0)


ANALYTIC = {
    # (sparsity, magnitude, local guide, global guide) -> sites whose KL is Monte Carlo
    ("beta_process", "gamma", "amortized", "mean_field"): set(),
    ("ibp", "gamma", "amortized", "mean_field"): set(),
    ("beta_process", "horseshoe", "amortized", "mean_field"): {"tau", "lambda"},
    ("beta_process", "horseshoe", "delta", "delta"): set(),
    ("none", "horseshoe", "mean_field", "mean_field"): {"tau", "lambda"},
}


@pytest.mark.parametrize("combo,monte_carlo", ANALYTIC.items(), ids=["-".join(c) for c in ANALYTIC])
def test_kl_report_names_the_monte_carlo_sites(combo, monte_carlo, tiny_bert):
    s, m, local, glob = combo
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, prior={"sparsity": s, "magnitude": m},
                                                 guide={"local": local, "global": glob}))
    report = model.kl_report()
    assert {name.rsplit(".", 1)[1] for name, analytic in report.items() if not analytic} == monte_carlo
    assert model.kl_is_analytic == (not monte_carlo)


def test_ibp_inclusion_probabilities_decrease_and_use_the_kumaraswamy_guide(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, prior={"sparsity": {"name": "ibp", "alpha": 2.0}}))
    gate = model.gates[0][1]
    assert isinstance(gate.guide_global("v"), ReparameterizedKumaraswamy)
    v = torch.tensor([0.9, 0.5, 0.8, 0.7])
    torch.testing.assert_close(gate.sparsity.inclusion_probs(gate.sparsity_hp, {"v": v}), torch.cumprod(v, 0))
    prior = gate.prior_global("v", {})
    torch.testing.assert_close(prior.mean, torch.full((4,), 2.0 / 3.0))
