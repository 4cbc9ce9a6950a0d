"""benchmarks/ablation_seeds.py: means over seeds and paired differences from the reference, from metrics.json files."""

import json
import math

import numpy as np
from builders import benchmark_script


def _write(base, seed, variant, acc, nll, ece=0.02, rank=None, gate_probs=None):
    run = base / f"seed{seed}" / variant
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"validation": {"accuracy": acc, "nll": nll, "ece": ece},
                                                  "effective_rank": rank}))
    if gate_probs is not None:
        np.savez(run / "gates.npz", token_gate_prob=np.asarray(gate_probs, dtype=float))


def test_means_and_paired_differences(tmp_path, capsys):
    script = benchmark_script("ablation_seeds")
    for seed, (a_ref, a_var) in enumerate([(0.80, 0.79), (0.82, 0.80), (0.78, 0.78)]):
        _write(tmp_path, seed, "lora", a_ref, 0.40)
        _write(tmp_path, seed, "gated", a_var, 0.41 + 0.01 * seed, rank=4.0 + seed,
               gate_probs=[[[0.5, 0.9, 0.3, 0.05]]] if seed < 2 else [[[0.5, 0.5, 0.5, 0.99]]])
    _write(tmp_path, 3, "gated", 0.90, 0.30, rank=7.0)  # a seed the reference did not run: in the mean, not the diff
    (tmp_path / "notes").mkdir()  # not a seed folder
    rows = {r["variant"]: r for r in script.summarize(script.read_runs(tmp_path), ["lora", "gated"], "lora")}

    gated = rows["gated"]
    assert gated["seeds"] == [0, 1, 2, 3]
    assert math.isclose(gated["accuracy"][0], (0.79 + 0.80 + 0.78 + 0.90) / 4)
    assert math.isclose(gated["gate_rank"][0], 5.5)
    assert math.isclose(gated["undecided"][0], (0.5 + 0.5 + 0.75) / 3)  # seed 3 wrote no gates.npz
    diffs = [-0.01, -0.02, 0.0]  # seeds 0-2 only
    assert math.isclose(gated["diff_accuracy"][0], sum(diffs) / 3)
    assert math.isclose(gated["diff_accuracy"][1], 0.01 / math.sqrt(3))  # sd of the differences is 0.01
    assert math.isclose(gated["diff_nll"][0], 0.02)
    assert rows["lora"]["diff_accuracy"] is None and rows["lora"]["gate_rank"] is None
    assert rows["lora"]["undecided"] is None

    assert script.main([str(tmp_path), "--variants", "lora", "gated"]) == 0
    out = capsys.readouterr().out
    assert "| gated | 0,1,2,3 | 0.818 ± 0.028 |" in out
    assert "| -0.010 ± 0.006 |" in out


def test_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    assert benchmark_script("ablation_seeds").main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
