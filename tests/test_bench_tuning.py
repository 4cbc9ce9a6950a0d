"""The tuned quality protocol: a grid per method on validation, the choice per task, the final runs' configs."""

import json

from bara_pyro.bench import quality, quality_options, tuning


def _base(tmp_path, *extra):
    argv = ["--quick", "--methods", "lora,blob,ensemble", "--tasks", "winogrande_s,arc_easy",
            "--output", str(tmp_path), *extra]
    args = tuning.build_parser().parse_args(argv)
    return quality_options.options_from_args(args, argv), args


def test_grid_selection_and_final_configs(tmp_path):
    base, args = _base(tmp_path, "--lrs", "0.0001,0.001", "--grid", "blob:adapter.weights.prior_scale=0.1,0.2")
    grids = tuning._parse_grids(args.grid)
    grid, points = tuning.grid_options(base, args.lrs, grids, [1])
    quality_options.check_options(grid)
    # lora: 2 points; blob: 2 x 2; the ensemble takes LoRA's choice and has no grid of its own
    assert sorted(points) == sorted(["lora@lr=0.0001", "lora@lr=0.001", "blob@lr=0.0001,prior_scale=0.1",
                                     "blob@lr=0.0001,prior_scale=0.2", "blob@lr=0.001,prior_scale=0.1",
                                     "blob@lr=0.001,prior_scale=0.2"])
    specs = quality.plan_runs(grid)
    assert {s.config["eval"]["splits"] == ["validation"] for s in specs} == {True}  # the test split is not run
    assert {s.config["train"]["lr"] for s in specs if s.method.startswith("lora")} == {1e-4, 1e-3}

    def nll(spec):  # a made-up validation NLL: lr 1e-3 best on arc_easy, 1e-4 on winogrande_s; blob prior 0.2
        lr = spec.config["train"]["lr"]
        good = (lr == 1e-3) == (spec.task == "arc_easy")
        return 0.5 - 0.1 * good - 0.01 * (spec.config["adapter"].get("weights", {}).get("prior_scale") == 0.2)

    for spec in specs:
        spec.run_dir.mkdir(parents=True)
        (spec.run_dir / "metrics.json").write_text(json.dumps({"validation": {"nll": nll(spec)}}))
    choices, table = tuning.select(grid, points, "nll")
    assert choices[("lora", "arc_easy")] == {"train.lr": 1e-3}
    assert choices[("lora", "winogrande_s")] == {"train.lr": 1e-4}
    assert choices[("blob", "arc_easy")] == {"train.lr": 1e-3, "adapter.weights.prior_scale": 0.2}
    assert table["lora"]["arc_easy"]["lora@lr=0.001"] == 0.4

    final = tuning.final_options(base, choices)
    lrs = {(s.method, s.task): s.config["train"]["lr"] for s in quality.plan_runs(final)}
    assert lrs[("lora", "arc_easy")] == lrs[("ensemble", "arc_easy")] == 1e-3
    assert lrs[("lora", "winogrande_s")] == lrs[("ensemble", "winogrande_s")] == 1e-4
    md = tuning.tuning_markdown(choices, table, "nll", base.tasks, args.lrs, grids, [1])
    assert "| lora | lr=0.001 |" in md and "**0.400**" in md and "ensemble takes lora's choice" in md


def test_a_missing_grid_run_is_not_chosen(tmp_path):
    base, args = _base(tmp_path, "--lrs", "0.0001,0.001")
    grid, points = tuning.grid_options(base, args.lrs, {}, [1])
    for spec in quality.plan_runs(grid):
        if spec.config["train"]["lr"] == 1e-4:  # only the lr 1e-4 runs finished
            spec.run_dir.mkdir(parents=True)
            (spec.run_dir / "metrics.json").write_text(json.dumps({"validation": {"nll": 1.0}}))
    choices, table = tuning.select(grid, points, "nll")
    assert choices[("lora", "arc_easy")] == {"train.lr": 1e-4}
    assert table["lora"]["arc_easy"]["lora@lr=0.001"] is None


def test_grid_for_an_unknown_method_is_a_usage_error(tmp_path, capsys):
    assert tuning.main(["--quick", "--methods", "lora", "--grid", "bara:train.lr=1", "--output", str(tmp_path)]) == 2
    assert "error: --grid names method(s) ['bara']" in capsys.readouterr().err


def test_dry_run_prints_the_grid_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["--dry-run", "--methods", "lora", "--tasks", "arc_easy", "--seeds", "1", "--lrs", "3e-4,1e-3",
            "--output", str(out)]
    assert tuning.main(argv) == 0
    printed = capsys.readouterr().out
    assert "lora@lr=0.0003/arc_easy/seed1" in printed and "lora@lr=0.001/arc_easy/seed1" in printed
    assert "2 runs (2 trainings of 1000 steps)" in printed
    assert not out.exists()


def test_dry_run_after_the_grid_plans_the_final_runs_and_writes_nothing(tmp_path, capsys):
    """Once the grid has finished, --dry-run also prints the final runs at the chosen values, the tuning seed's
    runs that --test-in-grid takes from the grid counted as finished, and leaves the output folder as it was."""
    out = tmp_path / "tuned"
    grid_argv = ["--quick", "--methods", "lora", "--tasks", "winogrande_s", "--seeds", "1", "--lrs", "1e-4,1e-2",
                 "--test-in-grid", "--output", str(out)]
    assert tuning.main([*grid_argv, "--grid-only"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    argv = [*grid_argv, "--seeds", "1,2", "--dry-run"]
    assert tuning.main(argv) == 0
    printed = capsys.readouterr().out
    final = printed.split("the final runs, each method at its chosen values:")[1]
    assert "lora/winogrande_s/seed1" in final and "lora/winogrande_s/seed2" in final
    assert "2 runs (2 trainings of 3 steps), 0 OOD evaluations; finished: 1 runs" in final
    assert "1 of them taken from the grid (the same config and seed)" in final
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and not (out / "runs").exists()


def test_a_null_grid_value_reaches_the_config_as_none(tmp_path):
    base, args = _base(tmp_path, "--lrs", "0.001", "--grid", "lora:train.clip_norm=null,1.0")
    grid, points = tuning.grid_options(base, args.lrs, tuning._parse_grids(args.grid), [1])
    assert sorted(p for p in points if p.startswith("lora")) == ["lora@lr=0.001,clip_norm=1",
                                                                 "lora@lr=0.001,clip_norm=null"]
    clips = {s.method: s.config["train"]["clip_norm"] for s in quality.plan_runs(grid) if s.method.startswith("lora")}
    assert clips == {"lora@lr=0.001,clip_norm=null": None, "lora@lr=0.001,clip_norm=1": 1.0}


def test_test_in_grid_takes_the_tuning_seeds_final_runs_from_the_grid(tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["--quick", "--methods", "lora", "--tasks", "winogrande_s", "--seeds", "1", "--lrs", "1e-4,1e-2",
            "--test-in-grid", "--output", str(out)]
    assert tuning.main(argv) == 0
    assert "taken from the grid (the same config and seed): lora/winogrande_s/seed1" in capsys.readouterr().out
    chosen = json.loads((out / "results.json").read_text())["tuning"]["choices"][0]["values"]["train.lr"]
    grid_run = out / "grid" / "runs" / f"lora@lr={chosen:g}" / "winogrande_s" / "seed1"
    final_run = out / "runs" / "lora" / "winogrande_s" / "seed1"
    grid_metrics = json.loads((grid_run / "metrics.json").read_text())
    assert set(grid_metrics) >= {"validation", "test"}
    assert json.loads((final_run / "metrics.json").read_text()) == grid_metrics
    # the final stage trained nothing: its log is the grid run's, byte for byte
    assert (final_run / "train_log.jsonl").read_bytes() == (grid_run / "train_log.jsonl").read_bytes()
    assert "- command: `python -m bara_pyro.bench.tuning --quick" in (out / "results.md").read_text()
