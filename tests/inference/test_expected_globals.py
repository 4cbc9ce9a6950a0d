"""``train.local_kl: expected``: the local KL's expectation over q(pi) q(lambda), in closed form.

Claims: the closed form equals the Monte Carlo mean over global draws (value and gradients); the
fused loss then equals the mean of the ``draw`` loss's KL over global draws, with no noise from them;
bad combinations are clear configuration errors.  (Training with it still recovers the active components:
``test_training.py::test_posterior_recovery_of_active_components[expected]``.)
"""

import pytest
import torch
from builders import TokenTask, make_batch, make_tiny_bert
from test_training import toy_rows

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.models.errors import ConfigError
from bara_pyro.models.fused_kernels import bara_globals_expected
from bara_pyro.models.kl import kl_bernoulli_logits_probs, kl_weibull_gamma


def _local_kl(logits, scale, conc, a, pi, lam):
    return (kl_bernoulli_logits_probs(logits, pi) + kl_weibull_gamma(scale, conc, a, a / lam)).sum(-1)


def test_expected_local_kl_is_the_monte_carlo_mean_over_global_draws():
    """E_{q(pi) q(lambda)}[KL] in closed form against 400,000 draws: value and every gradient within 5 SE."""
    torch.manual_seed(0)
    d, (L, r) = torch.float64, (2, 3)
    leaves = {"alpha": torch.rand(L, r, dtype=d) * 5 + 1, "beta": torch.rand(L, r, dtype=d) * 5 + 1,
              "shape": torch.rand(L, r, dtype=d) * 5 + 1.5, "rate": torch.rand(L, r, dtype=d) * 2 + 0.5,
              "logits": torch.randn(L, r, dtype=d), "scale": torch.rand(L, r, dtype=d) + 0.5,
              "conc": torch.rand(L, r, dtype=d) * 2 + 0.5}
    for t in leaves.values():
        t.requires_grad_(True)
    a = torch.tensor(4.0, dtype=d)
    g = leaves
    pi_eff, lam_eff, offset, _ = bara_globals_expected(g["alpha"], g["beta"], g["shape"], g["rate"], g["alpha"],
                                                       g["beta"], g["shape"], g["rate"], a)
    exact = (_local_kl(g["logits"], g["scale"], g["conc"], a, pi_eff, lam_eff) + offset).sum()
    exact_grads = torch.autograd.grad(exact, list(leaves.values()))

    chunks, per_chunk = 20, 20_000  # chunk means give the standard error of the value and of each gradient
    values, grads = [], []
    for _ in range(chunks):
        pi = torch.distributions.Beta(g["alpha"], g["beta"]).rsample((per_chunk,))
        lam = torch.distributions.Gamma(g["shape"], g["rate"]).rsample((per_chunk,))
        mc = _local_kl(g["logits"], g["scale"], g["conc"], a, pi, lam).sum(-1).mean()
        values.append(mc.detach())
        grads.append(torch.autograd.grad(mc, list(leaves.values())))
    values = torch.stack(values)
    se = values.std() / chunks ** 0.5
    assert abs(values.mean() - exact.detach()) < 5 * se, (values.mean(), exact, se)
    for name, exact_grad, chunk_grads in zip(leaves, exact_grads, zip(*grads)):
        chunk_grads = torch.stack(chunk_grads)
        se = chunk_grads.std(0) / chunks ** 0.5 + 1e-12
        assert ((chunk_grads.mean(0) - exact_grad).abs() < 5 * se).all(), name


def _broad_globals(model):
    """Widen q(pi), q(lambda) (the presets start them sharp) so that the globals' noise is visible."""
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            gate = adapter.gate
            for name, value in (("pi_alpha", 3.0), ("pi_beta", 2.0), ("lambda_shape", 4.0), ("lambda_rate", 4.0)):
                getattr(gate, f"{name}_unconstrained").fill_(float(torch.tensor(value).log()))


def test_fused_loss_with_expected_globals_averages_the_draws_local_kl():
    torch.manual_seed(0)
    model = get_bara_model(make_tiny_bert(), BaRAConfig(r=4, gamma0=2.0))
    _broad_globals(model)
    model.dataset_size = 37
    batch = make_batch()
    with torch.no_grad():
        model.ctx.expected_globals = True
        expected = [model.fused_loss(batch)[1] for _ in range(3)]
        model.ctx.expected_globals = False
        drawn = [model.fused_loss(batch)[1] for _ in range(2000)]
    assert len({float(p["kl_local"]) for p in expected}) == 1  # no draw of the globals is left in it
    assert len({float(p["kl_global"]) for p in expected + drawn}) == 1  # closed form in both
    kl = torch.stack([p["kl_local"] for p in drawn]).double()
    se = kl.std() / len(kl) ** 0.5
    assert kl.std() > 0.01 * kl.mean()  # the draws do vary, so the comparison below has teeth
    assert abs(kl.mean() - expected[0]["kl_local"]) < 5 * se, (kl.mean(), expected[0]["kl_local"], se)


def test_local_kl_config_errors():
    with pytest.raises(ConfigError, match="local_kl must be one of"):
        TrainConfig(local_kl="closed")
    with pytest.raises(ConfigError, match="needs estimator: fused"):
        TrainConfig(local_kl="expected", estimator="svi")
    task = TokenTask()
    model = get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, prior={"magnitude": "horseshoe"}),
                           forward_fn=task.scores)
    with pytest.raises(ConfigError, match="needs the default BaRA gate"):
        fit(model, task, toy_rows(8), TrainConfig(steps=1, batch_size=4, estimator="fused", local_kl="expected",
                                                  checkpoint_every=0), progress=False)


def test_a_model_without_gates_trains_with_expected_globals():
    """LoRA has no gates: the setting changes nothing (one config can set it for every method)."""
    task = TokenTask()
    runs = []
    for local_kl in ("draw", "expected"):
        model = get_bara_model(make_tiny_bert(num_labels=2), BaRAConfig(r=4, gate="none"), forward_fn=task.scores)
        result = fit(model, task, toy_rows(16), TrainConfig(steps=4, batch_size=4, estimator="fused", log_every=2,
                                                            checkpoint_every=0, local_kl=local_kl), progress=False)
        runs.append([row["loss"] for row in result.history])
    assert runs[0] == runs[1]

