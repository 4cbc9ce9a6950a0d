"""The training log's per-layer gate KL: the fused step's recorded values equal each gate's closed-form KL."""

import pytest
import torch
from builders import make_batch, make_tiny_bert

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference.trainer import _gate_global_kls

CONFIGS = {
    "bara": BaRAConfig(r=4),
    "bara_singular": BaRAConfig(r=4, gamma0=2.0, prior={"sparsity": "contextual_beta_process", "magnitude": "none"},
                                guide={"local": {"name": "conditional_prior"},
                                       "global": {"name": "mean_field", "init_strength": 10.0}},
                                weights={"name": "singular_slab", "ard": "off", "slab": "moment"}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recorded_layer_kls_equal_the_gates_own(name):
    model = get_bara_model(make_tiny_bert(), CONFIGS[name])
    with torch.no_grad():
        for _, gate in model.gates:
            for p in gate.parameters():
                p.add_(torch.randn_like(p) * 0.3)  # every layer's posterior its own
    model.dataset_size = 37
    model.fused_loss(make_batch())
    assert model.ctx.kl_gate_layers is not None  # the fused step recorded them
    recorded = _gate_global_kls(model, model.gates)
    model.ctx.kl_gate_layers = None
    per_gate = _gate_global_kls(model, model.gates)
    assert set(recorded) == set(per_gate) == {p for p, _ in model.gates}
    assert len(set(per_gate.values())) == len(per_gate)
    for path, value in per_gate.items():
        assert recorded[path] == pytest.approx(value, rel=1e-5, abs=1e-6)
