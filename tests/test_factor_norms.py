"""benchmarks/factor_norms.py: the root mean square of a saved run's factors."""

import pytest
import torch
from builders import benchmark_script

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.testing import tiny_bert


def test_factor_rms_is_the_mean_over_adapters_of_each_factors_rms(tmp_path):
    model = get_bara_model(tiny_bert(), BaRAConfig(r=4, prior="fixed", name="lora"))
    with torch.no_grad():
        for _, adapter in model.adapter_items:
            adapter.lora_B.weight.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    expected = {f: torch.stack([getattr(a, f).weight.pow(2).mean().sqrt() for _, a in model.adapter_items]).mean()
                for f in ("lora_A", "lora_B")}
    got = benchmark_script("factor_norms").factor_rms(tmp_path)
    for factor, value in expected.items():
        assert got[factor] == pytest.approx(float(value), rel=1e-6)
    with pytest.raises(SystemExit, match="no trained adapter"):
        benchmark_script("factor_norms").factor_rms(tmp_path / "missing")
