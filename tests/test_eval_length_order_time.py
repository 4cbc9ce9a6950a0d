"""benchmarks/eval_length_order_time.py: one evaluation pass timed in three layouts that give the same probabilities."""

import sys

from builders import benchmark_script


def test_layouts_time_the_same_predictions(monkeypatch, capsys):
    script = benchmark_script("eval_length_order_time")
    monkeypatch.setattr(sys, "argv", ["eval_length_order_time.py", "--device", "cpu", "--model", "tiny-llama",
                                      "--methods", "lora", "--datasets", "openbookqa", "--max-examples", "6",
                                      "--batch-size", "2", "--samples", "0", "2", "--repeats", "1"])
    script.main()
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| lora")]
    assert [int(row[3]) for row in rows] == [0, 2]
    for row in rows:
        assert all(float(cell) > 0 for cell in row[4:8])  # three times and their ratio
    assert float(rows[0][8]) < 1e-5 and rows[1][8].strip() == "-"  # S = 0: the layouts agree
