"""Shapes, site names, LoRA equivalence (ours and peft's), padding, save/load."""

import copy

import pyro
import pytest
import torch
from builders import make_batch

from bara_pyro import BaRAConfig, BaRAModel, get_bara_model
from bara_pyro.models import ConfigError
from bara_pyro.tasks.base import Batch

BERT_PATHS = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
LLAMA_PATHS = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]


def lm_forward(backbone, batch):
    return backbone(**batch.inputs).logits[:, -1, :3]


def _sites(model, batch):
    tr = pyro.poutine.trace(model.guide).get_trace(batch)
    return {n for n, s in tr.nodes.items() if s["type"] == "sample"}, tr


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_site_names_and_shapes(arch, tiny_bert, tiny_llama):
    backbone, paths, fwd = (tiny_bert, BERT_PATHS, None) if arch == "bert" else (tiny_llama, LLAMA_PATHS, lm_forward)
    model = get_bara_model(backbone, BaRAConfig(r=4, gamma0=2.0), forward_fn=fwd)
    assert [p for p, _ in model.adapter_items] == paths
    batch = make_batch(num_examples=3, seq_len=6)
    names, tr = _sites(model, batch)
    expected = {f"{p}.{s}" for p in paths for s in ("pi", "lambda", "z", "theta")} | {"sequences", "tokens"}
    assert names == expected
    for p in paths:
        assert tr.nodes[f"{p}.pi"]["value"].shape == (4,)
        assert tr.nodes[f"{p}.z"]["value"].shape == (3, 6, 4)
        assert tr.nodes[f"{p}.theta"]["fn"].batch_shape == (3, 6)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=tr)).get_trace(batch)
    model_names = {n for n, s in model_tr.nodes.items() if s["type"] == "sample"}
    assert model_names == expected | {"data", "obs"}
    assert model.scores(batch).shape == (3, 3)


def test_param_store_names_are_unique_per_adapter(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, gamma0=2.0))
    pyro.poutine.trace(model.guide).get_trace(make_batch())
    names = list(pyro.get_param_store().keys())
    for p in BERT_PATHS:
        assert f"bara.adapters.{p}.lora_A$$$weight" in names
        assert f"bara.adapters.{p}.gate.pi_alpha" in names
    tensors = [pyro.param(n).unconstrained() for n in names]
    assert len({id(t) for t in tensors}) == len(names), "two param-store names share one tensor"
    adapters_a = {id(a.lora_A.weight) for _, a in model.adapter_items}
    assert len(adapters_a) == len(BERT_PATHS)


def test_backbone_frozen_and_head_trained(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, gamma0=2.0))
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(id(p) in trainable for p in tiny_bert.classifier.parameters())
    assert not any(id(p) in trainable for p in tiny_bert.bert.parameters())


def _randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, a in model.adapter_items:
            a.lora_B.weight.copy_(2.0 * torch.randn(a.lora_B.weight.shape, generator=g))


def test_train_and_eval_reach_the_backbone(tiny_bert):
    """``model.eval()`` switches the backbone's dropout off too (it is outside the module tree), as for a PEFT model;
    two posterior-mean predictions then agree."""
    model = get_bara_model(tiny_bert.train(), BaRAConfig(r=4, name="bara"))
    batch = make_batch()
    assert model.eval() is model and not model.backbone.training and not model.training
    with torch.no_grad():
        assert torch.equal(model.scores(batch, mode="mean"), model.scores(batch, mode="mean"))
    model.train()
    assert model.backbone.training and all(m.training for m in model.backbone.modules())


def test_gates_fixed_to_one_equal_plain_lora_and_peft(tiny_bert):
    peft = pytest.importorskip("peft")
    batch = make_batch()
    bara = get_bara_model(copy.deepcopy(tiny_bert), BaRAConfig(r=4, gamma0=2.0, alpha=8.0))
    _randomize_lora(bara)
    lora = get_bara_model(copy.deepcopy(tiny_bert), BaRAConfig(r=4, alpha=8.0, gate="none"))
    lora.load_state_dict({k: v for k, v in bara.state_dict().items() if "gate" not in k})
    with torch.no_grad():
        ours = bara.scores(batch, mode="ones")
        plain = lora.scores(batch)
        base = bara.scores(batch, mode="off")
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)
    assert (ours - base).abs().max() > 1e-3  # the adapter does something

    ref = peft.get_peft_model(copy.deepcopy(tiny_bert), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                           target_modules=["query", "value"]))
    with torch.no_grad():
        for path, a in bara.adapter_items:
            layer = ref.get_submodule("base_model.model." + path)
            layer.lora_A["default"].weight.copy_(a.lora_A.weight)
            layer.lora_B["default"].weight.copy_(a.lora_B.weight)
        ref.base_model.model.classifier.load_state_dict(tiny_bert.classifier.state_dict())
        peft_scores = ref(**batch.inputs).logits
    torch.testing.assert_close(ours, peft_scores, atol=1e-6, rtol=0)


def test_padding_contributes_neither_likelihood_nor_kl(tiny_bert):
    model = get_bara_model(tiny_bert, BaRAConfig(r=4, gamma0=2.0))
    _randomize_lora(model)
    model.dataset_size = 20
    batch = make_batch()
    other = make_batch()
    pad = ~batch.token_mask
    other.inputs["input_ids"] = torch.where(pad, torch.randint(1, 100, pad.shape), batch.inputs["input_ids"])
    assert not torch.equal(other.inputs["input_ids"], batch.inputs["input_ids"])
    fused_kls = []
    for estimator in ("fused", "svi"):
        losses = []
        for b in (batch, other):
            pyro.set_rng_seed(3)
            if estimator == "fused":
                loss, parts = model.fused_loss(b)
                fused_kls.append(parts["kl_local"])
            else:
                loss = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(
                    model.model, model.guide, b)
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(fused_kls[0], fused_kls[1], atol=1e-5, rtol=1e-6)
    # and the padded positions really would have cost KL: unmask them and the local KL changes
    pyro.set_rng_seed(3)
    _, parts_unmasked = model.fused_loss(Batch(batch.inputs, batch.labels, torch.ones_like(batch.token_mask)))
    assert parts_unmasked["kl_local"] > fused_kls[0] + 1e-3


def test_save_load_round_trip_gives_identical_predictions(tiny_bert, tmp_path):
    model = get_bara_model(copy.deepcopy(tiny_bert), BaRAConfig(r=4, gamma0=2.0))
    _randomize_lora(model)
    with torch.no_grad():
        for _, g in model.gates:
            g.pi_alpha_unconstrained.add_(0.3)
            g.local_net.out.bias.add_(0.1)
        tiny_bert.classifier.weight.add_(0.5)
    batch = make_batch()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh_backbone = copy.deepcopy(tiny_bert)
    with torch.no_grad():
        fresh_backbone.classifier.weight.zero_()
    loaded = BaRAModel.from_pretrained(fresh_backbone, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.scores(batch), model.scores(batch), atol=0, rtol=0)
        pyro.set_rng_seed(5)
        a = model.scores(batch, mode="sample")
        pyro.set_rng_seed(5)
        b = loaded.scores(batch, mode="sample")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"r": 0}, "r must be a positive integer"),
    ({"r": 8, "gamma0": 9}, "gamma0"),
    ({"temperature": 0.0}, "temperature"),
    ({"gate": "magic"}, "gate must be one of"),
])
def test_bad_config_values_are_rejected_clearly(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BaRAConfig(**kwargs)


def test_target_modules_that_match_nothing(tiny_bert):
    with pytest.raises(ConfigError, match="matched no nn.Linear"):
        get_bara_model(tiny_bert, BaRAConfig(target_modules=["q_proj"]))
    model = get_bara_model(copy.deepcopy(tiny_bert),
                           BaRAConfig(target_modules=r".*layer\.1\.attention\.self\.(query|key)"))
    assert [p for p, _ in model.adapter_items] == ["bert.encoder.layer.1.attention.self.query",
                                                   "bert.encoder.layer.1.attention.self.key"]
    model2 = get_bara_model(tiny_bert, BaRAConfig(exclude_modules=["bert.encoder.layer.0.attention.self.value"]))
    assert len(model2.adapter_items) == 3
    with pytest.raises(ValueError, match="already carries a BaRA adapter"):
        get_bara_model(tiny_bert, BaRAConfig())
