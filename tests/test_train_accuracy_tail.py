"""benchmarks/train_accuracy_tail.py: the mean logged training accuracy after a step."""

import gzip
import json

import pytest
from builders import benchmark_script


def test_tail_accuracy_reads_plain_and_gzipped_logs(tmp_path):
    rows = [{"step": s, "accuracy": a} for s, a in [(10, 0.0), (20, 0.5), (30, 1.0)]] + [{"step": 40, "loss": 1.0}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    plain, packed = tmp_path / "a", tmp_path / "b"
    plain.mkdir(), packed.mkdir()
    (plain / "train_log.jsonl").write_text(text)
    with gzip.open(packed / "train_log.jsonl.gz", "wt") as f:
        f.write(text)
    script = benchmark_script("train_accuracy_tail")
    for run in (plain, packed):
        assert script.tail_accuracy(run, 10) == pytest.approx(0.75)
    with pytest.raises(SystemExit, match="no accuracy after step 30"):
        script.tail_accuracy(plain, 30)
    with pytest.raises(SystemExit, match="no train_log"):
        script.tail_accuracy(tmp_path, 0)
