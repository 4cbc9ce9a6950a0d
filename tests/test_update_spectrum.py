"""The spectrum of an adapter's mean update: its effective rank, the dense SVD it stands for, and recovery of
the rank of a known synthetic update by a fitted LoRA."""

import numpy as np
import pytest
import torch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.analysis import component_norms, spectral_effective_rank, update_ranks, update_singular_values
from bara_pyro.inference import TrainConfig, fit
from bara_pyro.methods import load_preset
from bara_pyro.models import GaussianLikelihood
from bara_pyro.synthetic import RegressionTask, low_rank_update

NOISE = 0.3


def test_spectral_effective_rank_values():
    assert spectral_effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert spectral_effective_rank([2.0] * 5) == pytest.approx(5.0)
    assert spectral_effective_rank([0.0, 0.0]) == 0.0
    assert 1.0 < spectral_effective_rank([1.0, 0.5, 0.1]) < 3.0
    # invariant to the update's scale
    assert spectral_effective_rank([4.0, 2.0, 1.0]) == pytest.approx(spectral_effective_rank([8.0, 4.0, 2.0]))


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], [1.0, -0.5]])
def test_spectral_effective_rank_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        spectral_effective_rank(bad)


def _model(method: str, data, r: int = 8):
    preset = load_preset(method)
    config = BaRAConfig.from_dict({**preset["adapter"], "r": r, "alpha": 2 * r, "target_modules": ["proj"]})
    return get_bara_model(data.backbone, config, forward_fn=RegressionTask().scores,
                          likelihood=GaussianLikelihood(NOISE)), preset


@pytest.mark.parametrize("method", ["lora", "bara"])
def test_singular_values_are_those_of_the_dense_update(method):
    torch.manual_seed(0)
    model, _ = _model(method, low_rank_update(2))
    (path, adapter), = model.adapter_items
    with torch.no_grad():
        adapter.lora_B.weight.normal_()  # LoRA starts B at zero: a non-trivial update
    gates = torch.linspace(0.2, 1.0, adapter.r)
    a, b = adapter.lora_A.weight.detach(), adapter.lora_B.weight.detach()
    expected = torch.linalg.svdvals((adapter.scaling * (b * gates) @ a).double())[:adapter.r].numpy()
    got = update_singular_values(model, {path: gates})[path]
    assert got.shape == (adapter.r,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    ungated = update_singular_values(model)[path]
    np.testing.assert_allclose(ungated, torch.linalg.svdvals((adapter.scaling * b @ a).double())[:adapter.r].numpy(),
                               rtol=1e-6)


def test_component_norms():
    """Each component's norm in the mean update, ``(alpha / r) |B_:k| |A_k:|``; with ``bara_singular``'s orthonormal
    factors these are the update's singular values, the magnitudes folded into B."""
    torch.manual_seed(0)
    model, _ = _model("lora", low_rank_update(2))
    (path, adapter), = model.adapter_items
    with torch.no_grad():
        adapter.lora_B.weight.normal_()
    a, b = adapter.lora_A.weight.detach().double(), adapter.lora_B.weight.detach().double()
    expected = [adapter.scaling * float(b[:, k].norm() * a[k].norm()) for k in range(adapter.r)]
    np.testing.assert_allclose(component_norms(model)[path], expected, rtol=1e-6)

    model, _ = _model("bara_singular", low_rank_update(2))
    (path, adapter), = model.adapter_items
    with torch.no_grad():
        adapter.lora_S_loc.copy_(torch.linspace(-1.0, 2.0, adapter.r).unsqueeze(0))
    norms = component_norms(model)[path]
    np.testing.assert_allclose(np.sort(norms)[::-1], update_singular_values(model)[path], rtol=1e-5)


def test_update_ranks_fold_the_recorded_gate_means():
    """``update_ranks`` with a run's gate arrays: ``c`` is the mean over the recorded tokens."""
    torch.manual_seed(0)
    model, _ = _model("bara", low_rank_update(2))
    (path, adapter), = model.adapter_items
    with torch.no_grad():
        adapter.lora_B.weight.normal_()
    tokens = np.random.default_rng(0).uniform(size=(1, 5, adapter.r)).astype(np.float32)
    gates = {"layer_names": np.asarray([path]), "token_expected_gate": tokens}
    expected = spectral_effective_rank(update_singular_values(model, {path: torch.from_numpy(tokens[0].mean(0))})[path])
    assert update_ranks(model, gates) == {path: pytest.approx(expected)}
    assert update_ranks(model) == {path: pytest.approx(spectral_effective_rank(update_singular_values(model)[path]))}
    assert update_ranks(model, gates)[path] != pytest.approx(update_ranks(model)[path])


@pytest.mark.parametrize("rank", [2, 6])
def test_fitted_lora_update_recovers_the_true_spectrum(rank):
    """LoRA with r = 8 fitted to ``y = (W0 + dW) x + noise``, ``dW`` of rank 2 or 6: the top singular values of
    its fitted update are those of ``dW``, the others are at the noise level, and the effective rank is within
    1 of the true rank (the noise's small singular values raise it a little)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = low_rank_update(rank, noise=NOISE)
        model, preset = _model("lora", data)
        train = TrainConfig.from_dict({**preset.get("train", {}), "steps": 1500, "batch_size": 64, "lr": 0.02,
                                       "warmup_ratio": 0.0, "checkpoint_every": 0, "seed": 0})
        fit(model, RegressionTask(), data.rows, train, progress=False)
    finally:
        torch.set_num_threads(threads)
    (path, _), = model.adapter_items
    fitted = update_singular_values(model)[path]
    truth = torch.linalg.svdvals(data.delta.double()).numpy()
    np.testing.assert_allclose(fitted[:rank], truth[:rank], rtol=0.05)
    assert (fitted[rank:] < 0.05 * fitted[0]).all(), fitted
    assert abs(spectral_effective_rank(fitted) - rank) <= 1.0, fitted


def test_run_evaluation_imports_no_arviz_or_matplotlib():
    """Evaluation imports ``update_spectrum`` through the analysis package: that must not pull in ArviZ or
    matplotlib (a training machine may lack them), while the package's names still load on first use."""
    import subprocess
    import sys

    code = ("import sys, bara_pyro.analysis.update_spectrum, bara_pyro.experiment\n"
            "heavy = [m for m in ('arviz', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import bara_pyro.analysis as a\n"
            "assert callable(a.plot_rank_usage) and 'matplotlib' in sys.modules\n"
            "assert a.GLOBAL_VARS == ('pi', 'lambda') and 'arviz' in sys.modules\n"
            "assert set(a.__all__) <= set(dir(a))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
