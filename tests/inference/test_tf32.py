"""``train.tf32``: TF32 matrix products while training, the previous setting restored after."""

import pytest
import torch

from bara_pyro.inference import TrainConfig, fit


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_on_while_training_and_restored_after(tf32):
    from test_train_packing import _config, _preset

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        model, task, rows = _preset("lora")
        seen = []
        fit(model, task, rows, _config(tf32=tf32), progress=False, on_log=lambda row: seen.append(matmul.allow_tf32))
        assert seen and all(value == tf32 for value in seen)
        assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before


def test_tf32_that_is_not_true_or_false_is_refused():
    from bara_pyro.models.config import ConfigError

    with pytest.raises(ConfigError, match="tf32 must be true or false, got 'yes'"):
        TrainConfig(tf32="yes")


@pytest.mark.parametrize("tf32", [False, True])
def test_eval_tf32_is_on_in_every_prediction_pass_and_restored_after(tf32, tmp_path, monkeypatch):
    """``eval.tf32``: on while the run's evaluation predicts (training keeps ``train.tf32``, off here), off after."""
    import bara_pyro.experiment as experiment
    from bara_pyro.experiment_config import load_config

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    seen = []
    predict = experiment.predict

    def recording_predict(*args, **kwargs):
        seen.append(matmul.allow_tf32)
        return predict(*args, **kwargs)

    monkeypatch.setattr(experiment, "predict", recording_predict)
    try:
        config = load_config(method="lora", overrides=[
            "model=tiny-bert", "train.steps=1", "train.batch_size=2", "train.device=cpu", "data.max_train_examples=4",
            "eval.max_examples=2", "eval.splits=[validation, test]", f"eval.tf32={str(tf32).lower()}"])
        experiment.run_experiment(config, tmp_path / "run", progress=False)
        assert len(seen) == 2 and all(value == tf32 for value in seen)
        assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before


def test_eval_tf32_defaults_off_is_checked_and_old_run_configs_read_it_as_off(tmp_path):
    import yaml

    from bara_pyro.experiment import load_run_config
    from bara_pyro.experiment_config import load_config
    from bara_pyro.models.config import ConfigError

    config = load_config(overrides=["model=tiny-bert"])
    assert config["eval"]["tf32"] is False
    with pytest.raises(ConfigError, match="eval.tf32 must be true or false, got 'on GPUs'"):
        load_config(overrides=["model=tiny-bert", "eval.tf32=on GPUs"])
    del config["eval"]["tf32"]  # a run saved before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_run_config(tmp_path)["eval"]["tf32"] is False


def test_eval_tf32_covers_the_ood_evaluation_of_a_finished_run(tmp_path, monkeypatch):
    """``evaluate_ood`` reads ``eval.tf32`` from the run's config: on in its in-distribution and OOD passes."""
    import bara_pyro.experiment as experiment
    from bara_pyro.bench.quality_ood import evaluate_ood
    from bara_pyro.experiment_config import load_config

    config = load_config(method="lora", overrides=[
        "model=tiny-llama", "dataset=openbookqa", "train.steps=1", "train.batch_size=2", "train.device=cpu",
        "data.max_train_examples=4", "eval.max_examples=2", "eval.gate_examples=0", "eval.tf32=true"])
    experiment.run_experiment(config, tmp_path / "run", progress=False)
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    seen = []
    predict = experiment.predict

    def recording_predict(*args, **kwargs):
        seen.append(matmul.allow_tf32)
        return predict(*args, **kwargs)

    monkeypatch.setattr(experiment, "predict", recording_predict)
    try:
        evaluate_ood(tmp_path / "run", ood_sets=["mmlu_high_school_psychology"])
        assert seen == [True, True] and matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before
