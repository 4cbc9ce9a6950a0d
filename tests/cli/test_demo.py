"""``bara-pyro demo`` end to end on a tiny random backbone: every demo method trains, evaluates, lands in the
table and in the report."""

from bara_pyro.demo import DEMO_METHODS, run_demo

TINY = ["model=tiny-bert", "data.max_train_examples=16", "eval.max_examples=8", "eval.num_samples=2",
        "eval.gate_examples=8", "eval.importance_draws=0", "train.steps=2", "train.batch_size=4",
        "train.checkpoint_every=0", "train.kl_warmup_steps=1"]


def test_demo_runs_every_method_and_reports_them(tmp_path, capsys):
    assert DEMO_METHODS[0] == "lora" and "bara_singular" in DEMO_METHODS  # a BaRA whose gates allocate rank
    results = run_demo(tmp_path, extra_overrides=TINY, progress=False, report=True)
    assert list(results) == list(DEMO_METHODS)
    table = (tmp_path / "results.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == list(DEMO_METHODS)
    for method in DEMO_METHODS:
        assert (tmp_path / method / "metrics.json").exists()
        assert (tmp_path / method / "gates.npz").exists() == method.startswith("bara")
    report = (tmp_path / "report" / "report.md").read_text()
    assert all(method in report for method in DEMO_METHODS)
    assert "bara_singular" in capsys.readouterr().out
