"""CPU smoke test of the speed benchmark's code path: tiny shapes, two steps, no timing assertions."""

import json

from bara_pyro.bench import speed


def small_config(**kw):
    base = dict(shapes=["tiny"], settings=["eager"], methods=["frozen", "lora", "bara"],
                gate_impls=["reference", "torch"], examples=2, seq_len=12, cont_len=4, samples=2, steps=2, warmup=1,
                svi_steps=1, check=False, device="cpu", bf16=False)
    base.update(kw)
    return speed.SpeedConfig(**base)


def test_speed_benchmark_rows_and_keys():
    result = speed.run_speed_benchmark(small_config(), log=lambda msg: None)
    assert {"device", "date", "versions", "config", "shapes", "table", "notes"} <= set(result)
    res = result["shapes"]["tiny"]
    assert set(res["train"]) == {"frozen", "lora", "bara[reference]", "bara[torch]"}
    assert set(res["predict"]) == {"lora_fwd", "lora_fwd_x2", "bara_s0[torch]", "bara_s2[torch]"}
    rows = result["table"]
    assert {"shape", "setting", "kind", "method", "ms", "ratio", "peak_gib", "peak_ratio", "status"} <= set(rows[0])
    assert all(row["status"] == "ok" for row in rows), [r for r in rows if r["status"] != "ok"]
    lora = next(r for r in rows if r["kind"] == "train" and r["method"] == "lora")
    assert lora["ratio"] == 1.0
    table = speed.format_table(result)
    assert "bara[torch]" in table and "xLoRA" in table


def test_speed_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["--shapes", "tiny", "--device", "cpu", "--fp32", "--settings", "eager", "--methods", "lora", "bara",
            "bara_expected", "bara_svi", "bara_svi_jit", "--gate-impls", "torch", "--steps", "1", "--warmup", "1",
            "--svi-steps", "1",
            "--examples", "2", "--seq-len", "8", "--cont-len", "3", "--samples", "2", "--no-predict", "--out", str(out)]
    assert speed.main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["shapes"]["tiny"]["train"]) == {"lora", "bara[torch]", "bara_expected[torch]", "bara_svi",
                                                    "bara_svi_jit"}
    assert "ms" in data["shapes"]["tiny"]["train"]["bara_expected[torch]"]["eager"]
    assert "ms" in data["shapes"]["tiny"]["train"]["bara_svi"]["eager"]
    assert "ms" in data["shapes"]["tiny"]["train"]["bara_svi_jit"]["eager"]
    assert "lora" in capsys.readouterr().out
