"""Deep-ensemble members: ``ensemble.seed_stride`` is validated, and member m trains with seed
``train.seed + m * seed_stride`` (adapter initialisation and TrainConfig)."""

import pyro
import pytest

from bara_pyro import experiment
from bara_pyro.experiment import load_run_config, member_seed, run_experiment
from bara_pyro.experiment_config import load_config, save_config
from bara_pyro.models.config import ConfigError

TINY = ["model=tiny-bert", "dataset=rt_sst2", "data.max_train_examples=8", "eval.max_examples=4",
        "eval.importance_draws=0", "train.steps=1", "train.batch_size=4", "train.checkpoint_every=0",
        "train.device=cpu"]


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true"])
def test_bad_seed_stride_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"ensemble\.seed_stride must be a positive integer") as err:
        load_config(method="ensemble", overrides=[f"ensemble.seed_stride={value}"])
    assert len(str(err.value).splitlines()) == 1


def test_member_seed_is_the_seed_plus_a_stride_per_member():
    config = load_config(method="ensemble", overrides=["train.seed=2"])
    assert config["ensemble"]["seed_stride"] == 1000
    assert [member_seed(config, m) for m in range(5)] == [2, 1002, 2002, 3002, 4002]
    other = load_config(method="ensemble", overrides=["train.seed=3"])
    assert not {member_seed(config, m) for m in range(5)} & {member_seed(other, m) for m in range(5)}


def test_run_config_saved_before_the_stride_existed_keeps_stride_1(tmp_path):
    """Such runs trained member m with train.seed + m; reloading them (evaluate, resume) must say so."""
    config = load_config(method="ensemble", overrides=["train.seed=2"])
    del config["ensemble"]["seed_stride"]
    save_config(config, tmp_path / "config.yaml")
    assert load_run_config(tmp_path)["ensemble"]["seed_stride"] == 1


def test_members_train_with_strided_seeds(tmp_path, monkeypatch):
    fit_seeds, rng_seeds = [], []
    real_fit, real_set_rng_seed = experiment.fit, pyro.set_rng_seed

    def recording_fit(model, task, rows, config, **kwargs):
        fit_seeds.append(config.seed)
        return real_fit(model, task, rows, config, **kwargs)

    def recording_set_rng_seed(seed):
        rng_seeds.append(seed)
        real_set_rng_seed(seed)

    monkeypatch.setattr(experiment, "fit", recording_fit)
    monkeypatch.setattr(pyro, "set_rng_seed", recording_set_rng_seed)
    config = load_config(method="ensemble", overrides=[*TINY, "ensemble.members=3", "train.seed=2"])
    metrics = run_experiment(config, tmp_path, progress=False)
    assert metrics["ensemble_members"] == 3
    assert fit_seeds == [2, 1002, 2002]
    # run_experiment seeds before building each member's adapter, then fit() seeds its training
    assert rng_seeds[:6] == [2, 2, 1002, 1002, 2002, 2002]
    assert all((tmp_path / f"member_{m}" / "adapter_model.safetensors").exists() for m in range(3))
