"""Every number a user types is read as a number, in --set overrides and in config files."""

import pytest

from bara_pyro.config_yaml import load_yaml
from bara_pyro.experiment_config import load_config, parse_override

NUMBER_FORMS = [
    ("5e-4", 5e-4, float),
    ("1E-3", 1e-3, float),
    ("3.0e-4", 3e-4, float),
    ("-2.5E+2", -250.0, float),
    (".5e-3", 5e-4, float),
    ("1.5e3", 1500.0, float),
    ("1e4", 10000, int),
    ("2E+3", 2000, int),
    ("1_000", 1000, int),
    ("1_000.5", 1000.5, float),
    ("0.0001", 1e-4, float),
]


@pytest.mark.parametrize("text,value,kind", NUMBER_FORMS)
def test_load_yaml_reads_number_forms(text, value, kind):
    parsed = load_yaml(f"x: {text}")["x"]
    assert type(parsed) is kind and parsed == pytest.approx(value)


@pytest.mark.parametrize("text", ["'5e-4'", '"1e4"', "e5", "1e", "5e-4x", "abc"])
def test_load_yaml_leaves_non_numbers_as_strings(text):
    assert isinstance(load_yaml(f"x: {text}")["x"], str)


@pytest.mark.parametrize("text,value,kind", NUMBER_FORMS)
def test_parse_override_reads_number_forms(text, value, kind):
    path, parsed = parse_override(f"train.lr={text}")
    assert path == ["train", "lr"] and type(parsed) is kind and parsed == pytest.approx(value)


def test_scientific_notation_in_set_and_config_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: tiny-bert\ntrain:\n  lr: 5e-4\n  weight_decay: 1E-3\n  steps: 1e3\n"
                   "eval:\n  max_examples: 1_000\n")
    config = load_config(cfg)
    assert config["train"]["lr"] == pytest.approx(5e-4)
    assert config["train"]["weight_decay"] == pytest.approx(1e-3)
    assert config["train"]["steps"] == 1000 and config["eval"]["max_examples"] == 1000
    config = load_config(cfg, overrides=["train.lr=3.0e-4", "train.guide_lr=1e-2", "train.batch_size=1_6"])
    assert config["train"]["lr"] == pytest.approx(3e-4) and config["train"]["guide_lr"] == pytest.approx(1e-2)
    assert config["train"]["batch_size"] == 16
