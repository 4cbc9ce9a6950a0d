"""benchmarks/factor_norms.py: the root mean square of a saved run's factors."""

import importlib.util
from pathlib import Path

import pytest
import torch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.testing import tiny_bert

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "factor_norms.py"


def _script():
    spec = importlib.util.spec_from_file_location("factor_norms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_factor_rms_is_the_mean_over_adapters_of_each_factors_rms(tmp_path):
    model = get_bara_model(tiny_bert(), BaRAConfig(r=4, prior="fixed", name="lora"))
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            adapter.lora_B.weight.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    expected = {f: torch.stack([getattr(a, f).weight.pow(2).mean().sqrt() for _, a in model.adapter_items]).mean()
                for f in ("lora_A", "lora_B")}
    got = _script().factor_rms(tmp_path)
    for factor, value in expected.items():
        assert got[factor] == pytest.approx(float(value), rel=1e-6)
    with pytest.raises(SystemExit, match="no trained adapter"):
        _script().factor_rms(tmp_path / "missing")
