"""CPU smoke test of the speed benchmark's code path: tiny shapes, two steps, no timing assertions."""

import json
import re

from bara_pyro.bench import speed, speed_setup


def small_config(**kw):
    base = dict(shapes=["tiny"], settings=["eager"], methods=["frozen", "lora", speed_setup.DRAW],
                gate_impls=["reference", "torch"], examples=2, seq_len=12, cont_len=4, samples=2, steps=2, warmup=1,
                svi_steps=1, check=False, device="cpu", bf16=False)
    base.update(kw)
    return speed.SpeedConfig(**base)


def test_speed_benchmark_rows_and_keys():
    result = speed.run_speed_benchmark(small_config(), log=lambda msg: None)
    assert {"device", "date", "versions", "config", "shapes", "table", "notes"} <= set(result)
    res = result["shapes"]["tiny"]
    assert set(res["train"]) == {"frozen", "lora", f"{speed_setup.DRAW}@reference", f"{speed_setup.DRAW}@torch"}
    assert set(res["predict"]) == {"lora", "lora[eval.num_samples=2]", "bara[eval.num_samples=0]@torch",
                                   "bara[eval.num_samples=2]@torch"}
    assert result["row_names"] == "presets"
    rows = result["table"]
    assert {"shape", "setting", "kind", "method", "ms", "ratio", "peak_gib", "peak_ratio", "status"} <= set(rows[0])
    assert all(row["status"] == "ok" for row in rows), [r for r in rows if r["status"] != "ok"]
    lora = next(r for r in rows if r["kind"] == "train" and r["method"] == "lora")
    assert lora["ratio"] == 1.0
    table = speed.format_table(result)
    assert "bara[train.local_kl=draw]@torch" in table and "xLoRA" in table


def test_speed_cli_writes_json(tmp_path, capsys):
    """On a CPU the BaRA rows time the torch gate path unless --gate-impls says otherwise (Triton needs a GPU)."""
    out = tmp_path / "speed.json"
    argv = ["--shapes", "tiny", "--device", "cpu", "--fp32", "--settings", "eager", "--methods", "lora", "bara",
            speed_setup.DRAW, speed_setup.SVI, speed_setup.SVI_JIT, "--steps", "1", "--warmup", "1", "--svi-steps", "1",
            "--examples", "2", "--seq-len", "8", "--cont-len", "3", "--samples", "2", "--no-predict", "--out", str(out)]
    assert speed.main(argv) == 0
    data = json.loads(out.read_text())
    train = data["shapes"]["tiny"]["train"]
    assert set(train) == {"lora", "bara@torch", "bara[train.local_kl=draw]@torch",
                          "bara[train.estimator=svi,train.local_kl=draw]",
                          "bara[train.estimator=svi,train.jit=true,train.local_kl=draw]"}
    assert all("ms" in rows["eager"] for rows in train.values())
    assert "lora" in capsys.readouterr().out


def test_rows_follow_the_presets():
    """A row means what --method means: its adapter is the preset's, and the bara row trains as the preset."""
    from bara_pyro.methods import load_preset
    from bara_pyro.models import BaRAConfig

    cfg = small_config()
    for preset in ("lora", "bara", "blob", *speed_setup.PRESET_METHODS):
        expected = BaRAConfig.from_dict({**load_preset(preset)["adapter"], "r": cfg.r, "alpha": cfg.alpha,
                                         "target_modules": cfg.targets})
        assert speed_setup.adapter_config(cfg, speed_setup.TRAIN_ROWS[preset]).to_dict() == expected.to_dict()
    assert load_preset("bara")["train"]["local_kl"] == "expected" and speed_setup.TRAIN_ROWS["bara"] == "bara_expected"
    torch_gate = speed_setup.TRAIN_ROWS[speed_setup.SINGULAR_TORCH_GATE]  # the preset, its gate op by op
    assert speed_setup.PRESET_GATE_IMPL[torch_gate] == "torch"
    assert speed_setup.adapter_config(cfg, torch_gate).to_dict() == speed_setup.adapter_config(
        cfg, "bara_singular").to_dict()
    for name in speed_setup.TRAIN_ROWS:
        assert name == "frozen" or re.split(r"[[@]", name)[0] in ("lora", "bara", "blob", *speed_setup.PRESET_METHODS)


def test_old_result_files_read_with_todays_names(tmp_path):
    old = {"config": {"methods": ["frozen", "lora", "bara", "bara_expected", "bara_svi"]},
           "shapes": {"s": {"train": {"lora": {}, "bara[triton]": {}, "bara_expected[triton]": {}, "bara_svi": {}},
                            "predict": {"lora_fwd": {}, "lora_fwd_x10": {}, "bara_s0[triton]": {},
                                        "bara_s10[triton]": {}, "bara_s4[torch]": {}}}},
           "table": [{"kind": "train", "method": "bara[triton]"}, {"kind": "predict", "method": "lora_fwd_x10"}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    new = speed.load_result(path)
    assert list(new["shapes"]["s"]["train"]) == ["lora", "bara[train.local_kl=draw]@triton", "bara@triton",
                                                 "bara[train.estimator=svi,train.local_kl=draw]"]
    assert list(new["shapes"]["s"]["predict"]) == ["lora", "lora[eval.num_samples=10]",
                                                   "bara[eval.num_samples=0]@triton", "bara@triton",
                                                   "bara[eval.num_samples=4]@torch"]
    assert [r["method"] for r in new["table"]] == ["bara[train.local_kl=draw]@triton", "lora[eval.num_samples=10]"]
    assert new["config"]["methods"] == ["frozen", "lora", "bara[train.local_kl=draw]", "bara", speed_setup.SVI]
    assert speed.relabel(json.loads(json.dumps(new))) == new  # a current file is left as it is
    assert speed.main(["--relabel", str(path)]) == 0 and json.loads(path.read_text()) == new


def test_deterministic_rows_and_the_cost_comparison(tmp_path):
    import importlib.util

    import torch

    out = tmp_path / "det.json"
    argv = ["--shapes", "tiny", "--device", "cpu", "--fp32", "--settings", "eager", "--methods", "lora", "bara",
            "--gate-impls", "auto", "--steps", "1", "--warmup", "1", "--examples", "2", "--seq-len", "8",
            "--cont-len", "3", "--no-predict", "--deterministic", "--out", str(out)]
    assert speed.main(argv) == 0 and not torch.are_deterministic_algorithms_enabled()
    on = json.loads(out.read_text())
    assert on["config"]["deterministic"] is True
    assert all("ms" in rows["eager"] for rows in on["shapes"]["tiny"]["train"].values())

    spec = importlib.util.spec_from_file_location("deterministic_cost", speed.Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "deterministic_cost.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    off = json.loads(json.dumps(on))
    for rows in off["shapes"]["tiny"]["train"].values():
        rows["eager"]["ms"] = rows["eager"]["ms"] / 2
    table = script.compare(off, on)
    assert table[2].startswith("| tiny | lora |") and table[2].endswith("| 2.000 |")


def test_laplace_prediction_row_fits_its_posterior_on_the_bf16_backbone(monkeypatch):
    """The GPU rows run a bf16 backbone under bf16 autocast; the post-hoc Laplace fit runs under it too (CPU
    autocast stands in for CUDA's here)."""
    import torch

    from bara_pyro.bench import speed as sp

    monkeypatch.setattr(sp, "_autocast", lambda cfg, device: torch.autocast(device_type="cpu", dtype=torch.bfloat16))
    cfg = sp.SpeedConfig(shapes=["tiny"], examples=2, seq_len=32, cont_len=8)
    backbone = sp.build_backbone("tiny", torch.device("cpu"), torch.bfloat16, seed=0)
    batch = sp.make_batch(cfg, backbone.config.vocab_size, torch.device("cpu"), repeat=cfg.samples)
    step = sp._preset_predict_step("laplace_lora", backbone, batch, cfg)
    try:
        step.run()
    finally:
        step.close()


def test_preset_variant_row_and_the_after_step_cost():
    """The direction-Occam row is the bara_singular preset with that option, and its rows report what ``fit()``
    does after each optimizer step (the factor's eigenvalue refresh), amortized: more than the plain preset's."""
    cfg = small_config(methods=["bara_singular", speed_setup.SINGULAR_OCCAM], predict=False)
    variant = speed_setup.adapter_config(cfg, speed_setup.TRAIN_ROWS[speed_setup.SINGULAR_OCCAM])
    assert variant.to_dict()["weights"]["direction_occam"] == "kfac"
    plain = speed_setup.adapter_config(cfg, "bara_singular").to_dict()
    assert {**plain, "weights": {**plain["weights"], "direction_occam": "kfac"}} == variant.to_dict()
    assert speed_setup.SINGULAR_OCCAM not in speed.SpeedConfig().methods
    result = speed.run_speed_benchmark(cfg, log=lambda msg: None)
    train = result["shapes"]["tiny"]["train"]
    after = {name: rows["eager"]["after_step_ms"] for name, rows in train.items()}
    assert after[speed_setup.SINGULAR_OCCAM] > after["bara_singular"] >= 0
    assert "after ms" in speed.format_table(result)


def test_no_gpu_is_one_error_line(capsys, monkeypatch):
    """``bara-pyro bench speed`` on a machine without CUDA: an ``error:`` line and status 2, no traceback."""
    import torch

    from bara_pyro.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "speed", "--device", "cuda", "--shapes", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the speed benchmark needs a CUDA device") and "Traceback" not in err


def test_show_prints_the_fit_table_with_the_replayed_steps_cost(tmp_path, capsys):
    """``--show``: a saved result's fit table; ``replay ms`` leaves out each shape's warm-up and capture steps."""
    row = {"wall_s": 20.0, "train_s": 12.0, "ms_per_step": 40.0, "eval_s": 0.2, "val_accuracy": 0.3,
           "graph_shapes": 3, "setup_steps": 10, "setup_s": 2.0, "first_step_s": 1.0}
    rows = {"lora": {"graphs": row, "eager": {**row, "setup_steps": None}}}
    result = {"device": "GPU X", "date": "2026-01-01", "table": [], "fit": {"config": {"steps": 210}, "rows": rows}}
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(result))
    assert speed.main(["--show", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    graphs = next(line for line in lines if line.startswith("lora     graphs"))
    eager = next(line for line in lines if line.startswith("lora     eager"))
    assert graphs.split()[-1] == "50.0"  # (12 - 2) s over 200 replayed steps
    assert eager.split()[-1] == "-"
