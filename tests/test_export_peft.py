"""Every method trains on instruction data and round-trips through PEFT: the exported LoRA adapter, loaded with
``peft.PeftModel.from_pretrained`` on a fresh base, gives BaRA's prediction with the same fixed gates."""

import json

import numpy as np
import pytest
import torch

from bara_pyro.experiment import build_backbone_and_task, load_run_config, run_experiment
from bara_pyro.experiment_config import load_config
from bara_pyro.export import export_peft, fixed_gates
from bara_pyro.methods import preset_names
from bara_pyro.models.bara_model import BaRAModel
from bara_pyro.models.errors import ConfigError

TINY = ["model=tiny-llama", "dataset=arc_easy_qa", "data.max_train_examples=8", "eval.max_examples=4",
        "eval.splits=[validation]", "eval.num_samples=2", "eval.batch_size=4", "eval.gate_examples=4",
        "eval.importance_draws=0", "train.steps=3", "train.batch_size=4", "train.lr=0.05", "train.device=cpu",
        "train.checkpoint_every=100", "task.max_length=48"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _tiny_config(method):
    return load_config(method=method, overrides=TINY + (["ensemble.members=2"] if method == "ensemble" else []))


def _peft_logits(config, adapter_dir, batch):
    from peft import PeftModel

    base, _, task, _ = build_backbone_and_task(config)  # a fresh base: transformers + peft only
    peft_model = PeftModel.from_pretrained(base.eval(), str(adapter_dir)).eval()
    with torch.no_grad():
        return task.scores(peft_model.get_base_model(), batch)


@pytest.mark.parametrize("method", preset_names())
def test_method_trains_on_instructions_and_round_trips_through_peft(runs, method):
    config = _tiny_config(method)
    run_dir = runs / method
    if method in ("laplace_lora", "projected_subspace_laplace"):  # a Laplace posterior over the vocabulary: refused
        with pytest.raises(ConfigError, match="needs a classification task"):
            run_experiment(config, run_dir, progress=False)
        return
    metrics = run_experiment(config, run_dir, progress=False)
    val = metrics["validation"]
    assert val["num_tokens"] > 0 and np.isfinite(val["nll"]) and val["perplexity"] == pytest.approx(np.exp(val["nll"]))
    assert 0 <= val["ece"] <= 1 and val["mean_entropy"] > 0

    member = 0 if config["ensemble"]["members"] > 1 else None
    out = runs / f"{method}_peft"
    result = export_peft(run_dir, out, prune_below=0.0, member=member, progress=False)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM"

    config = load_run_config(run_dir)
    backbone, _, task, data = build_backbone_and_task(config)
    source = run_dir / "member_0" if member is not None else run_dir
    model = BaRAModel.from_pretrained(backbone, source, forward_fn=task.scores).eval()
    batch = task.collate([data["validation"][i] for i in range(3)])
    with torch.no_grad(), fixed_gates(model, result.fixed):
        ours = model.scores(batch, mode="mean")
    theirs = _peft_logits(config, out, batch)
    real = torch.isfinite(ours)
    assert torch.equal(real, torch.isfinite(theirs))
    assert (ours - theirs)[real].abs().max() < 1e-4
    with torch.no_grad():
        assert (model.scores(batch, mode="off") - ours)[real].abs().max() > 1e-3  # the adapter does something
    assert result.posterior_mean == (method in ("blob", "bara_slab", "bara_singular", "bayesian_lora", "bayeslora"))
    if method.startswith("bara"):
        assert result.fixed and all(c.shape == (config["adapter"]["r"],) for c in result.fixed.values())
        gates = np.load(run_dir / "gates.npz")
        tokens, example = gates["example_tokens"], gates["example_gate_prob"]
        assert example.shape[:2] == (len(result.fixed), len(tokens)) and len(tokens) > 3  # per-token gates
        from bara_pyro.analysis import component_norms

        norms = component_norms(model)  # the report's usage-against-size: each component's norm, in layer order
        np.testing.assert_allclose(gates["component_norm"], np.stack([norms[str(p)] for p in gates["layer_names"]]),
                                   rtol=1e-5)
        prompt = data["validation"][0]["prompt"]  # the report's token gate map: a real example, prompt + response
        assert "".join(str(t) for t in tokens).replace("\u0120", " ").startswith(prompt.split()[0])
        from bara_pyro.analysis.plots import plot_token_gate_map

        figure = plot_token_gate_map(gates)
        assert [t.get_text() for t in figure.axes[0].get_yticklabels()][: len(tokens)] == [str(t) for t in tokens]


def test_bara_export_prunes_with_rank_pattern_and_merges(runs):
    """Pruning sets per-layer ranks through rank_pattern/alpha_pattern and the PEFT logits follow the pruned gates;
    --merge writes a full model whose logits equal the adapter's."""
    from transformers import AutoModelForCausalLM

    run_dir = runs / "bara"
    if not (run_dir / "metrics.json").exists():  # the test above ran in another process (pytest -n) or not at all
        run_experiment(_tiny_config("bara"), run_dir, progress=False)
    probe = export_peft(run_dir, runs / "probe", prune_below=0.0, progress=False)
    spread = max(probe.factors.values(), key=lambda c: max(c) - min(c))  # a layer whose components differ
    threshold = float(np.median(spread)) + 1e-7
    result = export_peft(run_dir, runs / "pruned", prune_below=threshold, progress=False)
    saved = json.loads((runs / "pruned" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] and set(saved["rank_pattern"]) == set(saved["alpha_pattern"])
    assert result.exported_parameters < result.lora_parameters
    assert result.peft_max_abs_diff is not None and result.peft_max_abs_diff < 1e-4
    names = set(result.cost)
    assert {"BaRA, S = 0 (token gates)", "folded gates", "folded and pruned (exported)"} <= names

    config = load_run_config(run_dir)
    _, _, task, data = build_backbone_and_task(config)
    batch = task.collate([data["validation"][i] for i in range(2)])
    adapter_logits = _peft_logits(config, runs / "pruned", batch)
    export_peft(run_dir, runs / "merged", prune_below=threshold, merge=True, progress=False)
    merged = AutoModelForCausalLM.from_pretrained(runs / "merged").eval()
    with torch.no_grad():
        merged_logits = task.scores(merged, batch)
    real = torch.isfinite(adapter_logits)
    assert (merged_logits - adapter_logits)[real].abs().max() < 1e-4

