"""The directions' Laplace Occam factor of ``singular_slab`` (``direction_occam: kfac``)."""

import pytest
import torch
from builders import assert_globals_at_once_equal_per_adapter, make_batch, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.methods import load_preset
from bara_pyro.models import ConfigError, GaussianLikelihood
from bara_pyro.models.direction_occam import occam_nats, refresh_statistics
from bara_pyro.synthetic import RegressionTask, low_rank_update
from bara_pyro.testing import check_fused_equals_svi


def occam_config(per="token", **weights):
    return BaRAConfig(r=4, gamma0=1.0, prior={"sparsity": "contextual_beta_process", "magnitude": "none"},
                      guide={"local": {"name": "conditional_prior", "per": per},
                             "global": {"name": "mean_field", "init_strength": 10.0}},
                      weights={"name": "singular_slab", "ard": "off", "slab": "moment", "direction_occam": "kfac",
                               **weights})


def fill_statistics(model):
    """Random positive semi-definite ``C`` and ``G`` on every adapter, refreshed, and non-zero magnitudes."""
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            for name in ("C", "G"):
                running = getattr(adapter, f"occam_{name}")
                m = torch.randn(running.shape[0], 3 * running.shape[0], dtype=running.dtype)
                running.copy_(m @ m.T)
            refresh_statistics(adapter)
            adapter.lora_S_loc.normal_(0, 0.2)


def test_the_factor_is_the_laplace_log_determinant_of_the_exact_curvature():
    """In a linear-Gaussian layer the Kronecker form is exact: the factor equals ``1/2 log det(I + H / d)`` with
    each direction's Hessian of the negative log-likelihood taken by autograd."""
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

        def nll_b(bk, k=k, scale=scale):
            return ((y - scale * (x @ a[k])[:, None] * bk) ** 2).sum() / (2 * noise**2)

        def nll_a(ak, k=k, scale=scale):
            return ((y - scale * (x @ ak)[:, None] * b[:, k]) ** 2).sum() / (2 * noise**2)

        h_b = torch.autograd.functional.hessian(nll_b, b[:, k])
        h_a = torch.autograd.functional.hessian(nll_a, a[k])
        expected += 0.5 * (torch.logdet(torch.eye(d_out, dtype=torch.float64) + h_b / d_out)
                           + torch.logdet(torch.eye(d_in, dtype=torch.float64) + h_a / d_in))
    c, g = x.T @ x, torch.eye(d_out, dtype=torch.float64) / noise**2
    got = occam_nats(a, b, lam**2 * pi, c, g, torch.linalg.eigvalsh(c), torch.linalg.eigvalsh(g))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_statistics_are_the_scaled_input_outer_products_and_the_empirical_fisher():
    """One fused training pass on the synthetic regression: ``C`` is ``N / B`` times the batch's ``X^T X``, ``G`` the
    mean over examples of the Gaussian likelihood's gradient in the layer's output, ``(y - f) / noise^2``, times
    itself; the factor reads neither before a refresh."""
    torch.manual_seed(0)
    data, task, noise = low_rank_update(2), RegressionTask(), 0.3
    adapter_section = load_preset("bara_singular")["adapter"]
    adapter_section["weights"] = {**adapter_section["weights"], "direction_occam": "kfac"}
    config = BaRAConfig.from_dict({**adapter_section, "r": 4, "alpha": 4, "target_modules": ["proj"]})
    model = get_bara_model(data.backbone, config, forward_fn=task.scores, likelihood=GaussianLikelihood(noise))
    model.dataset_size = len(data.rows)
    ((_, adapter),) = model.adapter_items
    with torch.no_grad():  # a non-zero update, so the adapter's output takes part in the likelihood's gradient
        adapter.lora_S_loc.fill_(0.1)
    batch = task.collate(data.rows[:16])
    loss, parts = model.fused_loss(batch)
    loss.backward()
    x, residual = batch.inputs["x"], batch.labels - parts["scores"]
    torch.testing.assert_close(adapter.occam_C, len(data.rows) / 16 * x.T @ x)
    fisher = (residual / noise**2).T @ (residual / noise**2) / 16
    torch.testing.assert_close(adapter.occam_G, fisher, rtol=1e-4, atol=1e-4)
    assert float(adapter.occam_C_used.abs().sum()) == 0.0 and float(adapter.occam_C_eig.abs().sum()) == 0.0
    model.after_optimizer_step(20, 100)  # occam_refresh_every: 20
    torch.testing.assert_close(adapter.occam_C_used, adapter.occam_C)
    torch.testing.assert_close(adapter.occam_G_eig, torch.linalg.eigvalsh(adapter.occam_G).clamp_min(0))


@pytest.mark.parametrize("per", ["token", "sequence"])
def test_fused_loss_equals_trace_mean_field_elbo_with_the_factor(per):
    assert check_fused_equals_svi(occam_config(per), make_batch(), prepare=fill_statistics)


def test_globals_of_all_adapters_at_once_equal_the_per_adapter_path_with_the_factor(monkeypatch):
    def build():
        model = get_bara_model(make_tiny_bert(), occam_config())
        fill_statistics(model)
        return model

    assert_globals_at_once_equal_per_adapter(build, monkeypatch)


def test_the_factor_enters_the_loss_and_grows_with_the_magnitudes():
    torch.manual_seed(0)
    model = get_bara_model(make_tiny_bert(), occam_config())
    fill_statistics(model)
    batch = make_batch()
    values = []
    for size in (0.0, 0.2, 1.0):
        with torch.no_grad():
            for _, adapter in model.adapter_items:
                adapter.lora_S_loc.fill_(size)  # the posterior scale stays at its start, 0.005
        torch.manual_seed(1)
        model.fused_loss(batch)
        values.append(sum(float(a.weights.global_factor(a).detach()) for _, a in model.adapter_items))
    assert values[0] < 0.05 * values[1] and values[1] < values[2]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="direction_occam must be one of"):
        occam_config(direction_occam="exact")
    with pytest.raises(ConfigError, match="occam_decay must be in"):
        occam_config(occam_decay=1.0)
    with pytest.raises(ConfigError, match="occam_refresh_every must be a whole number"):
        occam_config(occam_refresh_every=0)


def test_one_refresh_of_every_adapter_equals_a_refresh_of_each():
    """The model's refresh decomposes same-sized matrices of all adapters in one batched call: the eigenvalues
    (and the copies the factor reads) are those of one adapter at a time, and only the refresh steps refresh."""
    torch.manual_seed(0)
    model = get_bara_model(make_tiny_bert(), occam_config(occam_refresh_every=5))
    fill_statistics(model)
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            for name in ("C", "G"):
                running = getattr(adapter, f"occam_{name}")
                m = torch.randn(running.shape[0], 2 * running.shape[0])
                running.copy_(m @ m.T)
    adapters = [a for _, a in model.adapter_items]
    assert len(adapters) > 2
    before = {id(a): a.occam_G_eig.clone() for a in adapters}
    model.after_optimizer_step(4, 100)  # not a refresh step
    assert all(torch.equal(a.occam_G_eig, before[id(a)]) for a in adapters)
    model.after_optimizer_step(5, 100)
    for adapter in adapters:
        for name in ("C", "G"):
            running = getattr(adapter, f"occam_{name}")
            assert torch.equal(getattr(adapter, f"occam_{name}_used"), running)
            alone = torch.linalg.eigvalsh(running).clamp_min(0)
            torch.testing.assert_close(getattr(adapter, f"occam_{name}_eig"), alone, rtol=1e-6, atol=1e-5)
