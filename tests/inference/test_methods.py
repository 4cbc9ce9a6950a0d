"""Every packaged method preset trains (SVI and fused) and evaluates on a tiny classification task and a tiny
multiple-choice (cloze) task, through the same adapters, trainer and predictive."""

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.methods import list_methods, load_preset, preset_names
from bara_pyro.metrics import classification_metrics
from bara_pyro.models import ConfigError
from bara_pyro.tasks import MultipleChoiceTask, SequenceClassificationTask

METHODS = ["bara", "bara_global_only", "bara_singular", "bara_slab", "bara_sparsity_only", "blob", "ensemble", "lora",
           "lora_map", "mc_dropout"]
# trained end to end in tests/cli/test_presets_end_to_end.py; their defining properties in tests/models/test_weights_*
OTHER_BAYESIAN = ["balora", "bayesian_lora", "bayeslora", "laplace_lora", "projected_subspace",
                  "projected_subspace_laplace"]
ALL_METHODS = sorted(METHODS + OTHER_BAYESIAN)
WORDS = ("the a film movie was is great awful good bad fun dull plot acting which planet mars moon comet sun "
         "question answer water wet yes no cat dog sits runs . ? :").split()
TEXTS = [("the film was great fun", 1), ("a dull plot and bad acting", 0), ("the movie is good", 1),
         ("awful acting . dull", 0), ("great acting and a fun plot", 1), ("the plot was bad", 0)]
MC_ROWS = [
    {"contexts": ["question : which is a planet ? answer :"] * 3, "continuations": [" mars", " the moon", " a comet"],
     "label": 0, "question": "which is a planet ?", "choices": ["mars", "the moon", "a comet"]},
    {"contexts": ["question : is water wet ? answer :"] * 2, "continuations": [" yes", " no"], "label": 0,
     "question": "is water wet ?", "choices": ["yes", "no"]},
    {"contexts": ["the cat", "the dog"], "continuations": [" sits", " sits"], "label": 1,
     "question": "who sits ?", "choices": ["cat", "dog"]},
]


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def _classification(tokenizer, seed):
    torch.manual_seed(seed)
    backbone = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2, max_position_embeddings=64)).eval()
    rows = [{"text": t, "label": y} for t, y in TEXTS]
    return backbone, SequenceClassificationTask(tokenizer, num_labels=2, max_length=16), rows


def _multiple_choice(tokenizer, seed):
    torch.manual_seed(seed)
    backbone = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)).eval()
    return backbone, MultipleChoiceTask(tokenizer, scoring="cloze", max_length=32, num_choices=3), MC_ROWS


TASKS = {"classification": _classification, "multiple_choice": _multiple_choice}


def test_list_methods_and_presets():
    assert preset_names() == ALL_METHODS
    listed = list_methods()
    assert [name for name, _ in listed] == ALL_METHODS
    assert all(description and "\n" not in description for _, description in listed)
    with pytest.raises(ConfigError, match=r"unknown method 'bayes'; packaged methods: \['balora', 'bara', "):
        load_preset("bayes")
    preset = load_preset("bara")
    preset["adapter"]["r"] = 99
    assert "r" not in load_preset("bara")["adapter"]  # a fresh copy each time


@pytest.mark.parametrize("method", ALL_METHODS)
def test_preset_uses_the_run_config_schema(method):
    preset = load_preset(method)
    assert preset["method"] == method
    assert set(preset) <= {"method", "description", "model", "dataset", "task", "adapter", "train", "eval", "ensemble"}
    assert set(preset.get("eval", {})) <= {"num_samples", "batch_size", "ece_bins"}
    assert set(preset.get("ensemble", {})) <= {"members"}
    config = BaRAConfig.from_dict(preset["adapter"])
    assert BaRAConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    TrainConfig.from_dict(preset.get("train", {}))
    expected = {"lora": (False, 0), "lora_map": (False, 0), "mc_dropout": (False, 10), "ensemble": (False, 0),
                "blob": (False, 10), "bara": (True, 10), "bara_sparsity_only": (True, 10),
                "bara_global_only": (True, 10), "bara_slab": (True, 10), "bara_singular": (True, 10),
                **{m: (False, 10) for m in OTHER_BAYESIAN},
                # draws of the linearised scores cost no backbone pass; ten change decisions (docs/methods.md)
                "laplace_lora": (False, 100), "projected_subspace_laplace": (False, 100)}[method]
    assert (config.has_gate, preset["eval"]["num_samples"]) == expected
    if method == "ensemble":
        assert preset["ensemble"]["members"] == 5
    if method == "blob":
        assert config.components.weights.prior_scale == 0.2


@pytest.mark.parametrize("task_name", list(TASKS))
@pytest.mark.parametrize("method", METHODS)
def test_preset_trains_and_evaluates(method, task_name, tokenizer):
    preset = load_preset(method)
    members = min(preset.get("ensemble", {}).get("members", 1), 2)  # the run layer fits M members; 2 suffice here
    num_samples = min(preset["eval"]["num_samples"], 4)
    member_probs = []
    for member in range(members):
        backbone, task, rows = TASKS[task_name](tokenizer, seed=member)
        config = BaRAConfig.from_dict({**preset["adapter"], "r": 4, "name": f"{method}{member}"})
        model = get_bara_model(backbone, config, forward_fn=task.scores)
        for estimator in ("svi", "fused"):  # Pyro's SVI takes the local KL at its draw of the globals
            local_kl = preset.get("train", {}).get("local_kl", "draw") if estimator == "fused" else "draw"
            train = TrainConfig.from_dict({**preset.get("train", {}), "steps": 2, "batch_size": 3, "lr": 1e-2,
                                           "estimator": estimator, "local_kl": local_kl, "checkpoint_every": 0,
                                           "log_every": 1, "seed": member})
            result = fit(model, task, rows, train, progress=False)
            assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
        prediction = predict(model, task, rows, num_samples=num_samples, batch_size=4, progress=False)
        assert (prediction.sample_probs is None) == (num_samples == 0)
        if num_samples:
            assert prediction.sample_probs.shape[0] == num_samples
        member_probs.append(prediction.probs)
    probs = torch.stack(member_probs).mean(0)  # ensemble: average the members' predictive distributions
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(rows)))
    metrics = classification_metrics(probs, prediction.labels)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["nll"] > 0


@pytest.mark.parametrize("name", ALL_METHODS)
def test_from_preset_is_the_run_configs_adapter_and_train(name):
    """``BaRAConfig.from_preset`` and ``TrainConfig.from_preset`` give what ``bara-pyro train --method NAME``
    builds, and keyword fields act as ``--set adapter.KEY=...`` / ``--set train.KEY=...`` do."""
    from bara_pyro.experiment_config import load_config

    config = load_config(method=name, overrides=["adapter.r=4", "train.steps=7"])
    assert BaRAConfig.from_preset(name, r=4) == BaRAConfig.from_dict(config["adapter"])
    assert TrainConfig.from_preset(name, steps=7) == TrainConfig.from_dict(config["train"])


def test_from_preset_merges_nested_fields_and_rejects_bad_names():
    config = BaRAConfig.from_preset("bara_singular", weights={"direction_occam": "kfac"})
    assert config.weights == {**load_preset("bara_singular")["adapter"]["weights"], "direction_occam": "kfac"}
    with pytest.raises(ConfigError, match="unknown method 'nosuch'; packaged methods: .*bara_singular"):
        BaRAConfig.from_preset("nosuch")
    with pytest.raises(ConfigError, match=r"unknown BaRAConfig field\(s\) \['rank'\]"):
        BaRAConfig.from_preset("lora", rank=8)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        TrainConfig.from_preset("bara_singular", lr=-1.0)
