"""The quality benchmark on CPU (``--quick``: tiny Llama, 3 steps); its aggregation, anchor and targets."""

import json
import math
import statistics
import sys

import pytest
import torch
from safetensors.torch import load_file

from bara_pyro.bench import quality, quality_members, quality_options
from bara_pyro.experiment_config import save_config

OOD_SET = "mmlu_high_school_psychology"
SMALL = ["--set", "eval.max_examples=8"]  # --quick evaluates 16 examples per split; 8 keep the test fast


def md_table(md: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` (header row first, separator dropped)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows


def quick_argv(out, *extra):
    return ["--quick", "--methods", "lora,bara", "--tasks", "openbookqa", "--seeds", "1", "--output", str(out),
            *SMALL, *extra]


def test_quick_benchmark_with_ood_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = quick_argv(out, "--ood", "--ood-sets", OOD_SET)
    assert quality.main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert {"command", "date", "machine", "git_commit", "protocol", "methods", "tasks", "seeds", "runs",
            "aggregates", "ood", "anchor", "targets"} <= set(results)
    assert results["command"] == "bara-pyro bench quality " + " ".join(argv)
    assert results["machine"]["device"].startswith("CPU")
    assert results["git_commit"]
    assert results["protocol"]["deviations"] and "final training step" in results["protocol"]["model_selection"]
    assert {"adapter.r=8", "adapter.alpha=16", "train.batch_size=4"} <= set(results["protocol"]["overrides"])
    runs = results["runs"]
    assert [(r["method"], r["task"], r["seed"], r["status"]) for r in runs] == [
        ("lora", "openbookqa", 1, "ok"), ("bara", "openbookqa", 1, "ok")]
    for r in runs:
        assert {"accuracy", "nll", "ece", "brier"} <= set(r["metrics"]["test"]) and "validation" in r["metrics"]
        assert r["metrics"]["test"]["num_examples"] == 8
    config = (out / "configs" / "bara__openbookqa__seed1.yaml").read_text()
    assert "tiny-llama" in config and "q_proj" in config

    agg = results["aggregates"]
    for metric in quality.METRICS:
        cell = agg["test"][metric]["lora"]["openbookqa"]
        assert cell["n"] == 1 and cell["std"] is None
        assert agg["test"][metric]["lora"]["mean"]["mean"] == pytest.approx(cell["mean"])
    assert agg["effective_rank"]["lora"]["openbookqa"] is None
    assert 0 < agg["effective_rank"]["bara"]["openbookqa"]["mean"] <= 8

    # OOD: the saved adapter, reloaded, predicts exactly what training evaluated (LoRA is deterministic)
    for method in ("lora", "bara"):
        run_dir = out / "runs" / method / "openbookqa" / "seed1"
        ood = json.loads((run_dir / "ood_metrics.json").read_text())
        res = ood["ood"][OOD_SET]
        assert res["num_examples"] == 8 and 0 <= res["auroc_entropy"] <= 1
        assert (res["auroc_mutual_information"] is None) == (method == "lora")
        if method == "lora":
            trained = json.loads((run_dir / "metrics.json").read_text())["test"]
            for k in ("accuracy", "nll", "ece", "brier"):
                assert ood["in_distribution"][k] == pytest.approx(trained[k], abs=1e-6)
    assert results["ood"]["sets"] == [OOD_SET]
    assert results["ood"]["accuracy"]["bara"][OOD_SET]["n"] == 1

    targets = {t["target"]: t["status"] for t in results["targets"]}
    assert set(targets) == {"ece", "nll", "accuracy", "effective_rank", "rank_structure", "nll_every_baseline",
                            "ece_every_baseline"}
    assert targets["rank_structure"] in ("met", "missed")  # the BaRA run's per-layer ranks and token gates
    assert agg["token_rank_spread"]["bara"]["openbookqa"]["mean"] >= 0
    assert agg["layer_rank_range"]["bara"]["openbookqa"]["mean"] >= 0
    # BLoB was not run: not below LoRA already misses the target; below it, the LoRA part is met
    bara_nll, lora_nll = (agg["test"]["nll"][m]["mean"]["mean"] for m in ("bara", "lora"))
    assert targets["nll"] == ("met against LoRA; BLoB not run" if bara_nll < lora_nll else "missed")
    assert all(targets[k] in ("met", "missed") for k in ("ece", "accuracy", "effective_rank"))
    (anchor,) = results["anchor"]
    assert anchor["task"] == "openbookqa" and anchor["seed"] == 1 and anchor["peft"] == {"accuracy": 39.8, "ece": 20.4}
    assert anchor["diff"]["accuracy"] == pytest.approx(anchor["ours"]["accuracy"] - 39.8)

    md = (out / "results.md").read_text()
    for metric in quality.METRICS:
        table = md_table(md, quality.METRIC_LABELS[metric][0] + ", test")
        assert table[0] == ["Method", "OBQA", "Mean"]
        assert [row[0] for row in table[1:]] == ["LoRA (MLE)", "BaRA"]
        assert all(len(row) == 3 for row in table)
    assert md_table(md, "OOD ACC")[0] == ["Method", "OBQA (ID)", "MMLU HS psych."]
    assert md_table(md, "mutual information")[1][1] == "–"  # LoRA: deterministic
    assert md_table(md, "Anchor")[1][:2] == ["OBQA", "39.8"]
    assert f"deviates from {quality.PROTOCOL_NAME}" in md and results["git_commit"] in md
    assert f"- code: bara_pyro {results['code']['version']}, package files sha256 `" in md and "unknown" not in md
    assert results["segments"] == 1 and "invocations" not in md
    target_lines = [line for line in md.splitlines() if line.startswith("- BaRA's")]
    assert len(target_lines) == 7
    assert sum("**met**" in line or "**missed**" in line for line in target_lines[:5]) == 4
    # against every baseline, of which only LoRA ran
    assert all("**met against the 1 that ran**" in line or "**missed**" in line for line in target_lines[5:])
    assert md_table(md, "Within-sequence token-rank spread")[1][0] == "BaRA"

    # the same command again: every run and OOD evaluation is already there, nothing is redone
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*metrics.json")}
    assert len(stamps) == 4
    assert quality.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*metrics.json")} == stamps
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["aggregates"] == results["aggregates"] and again["ood"] == results["ood"]
    assert again["segments"] == 2 and again["wall_time_s"] > results["wall_time_s"]  # the calls add up
    assert "(over 2 invocations of the command)" in (out / "results.md").read_text()
    assert all(r["metrics"]["segments"] == 1 for r in again["runs"])

    # another budget into the same folder: refused per run, never mixed with the finished ones
    assert quality.main(quick_argv(out, "--steps", "4")) == 1
    mixed = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "failed" and "different config" in r["error"] for r in mixed["runs"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*metrics.json")} == stamps


def test_parallel_workers_run_the_cli_as_ray_tasks(local_ray, tmp_path):
    out = tmp_path / "bench"
    argv = ["--quick", "--methods", "lora", "--tasks", "openbookqa,winogrande_s", "--workers", "2",
            "--ood", "--ood-sets", "arc_easy", "--output", str(out), *SMALL]
    assert quality.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["ok", "ok"]
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "lora__openbookqa__seed1.log", "lora__openbookqa__seed1__ood.log", "lora__winogrande_s__seed1.log"]
    assert "bara_pyro.cli train --config" in (out / "logs" / "lora__openbookqa__seed1.log").read_text()
    assert "--ood-run" in (out / "logs" / "lora__openbookqa__seed1__ood.log").read_text()
    run_dir = out / "runs" / "lora" / "openbookqa" / "seed1"
    assert json.loads((run_dir / "ood_metrics.json").read_text())["ood_sets"] == ["arc_easy"]
    assert results["ood"]["auroc_entropy"]["lora"]["arc_easy"]["n"] == 1
    assert md_table((out / "results.md").read_text(), "ACC (%), test")[0] == ["Method", "OBQA", "WG-S", "Mean"]


def test_parallel_workers_build_only_the_datasets_of_runs_left(local_ray, tmp_path, monkeypatch):
    """Before the workers start, the parent builds the dataset caches they will race for: those of the runs
    left to train and, while an OBQA run lacks its OOD evaluation, the OOD sets; not a finished run's."""
    import bara_pyro.data

    out = tmp_path / "bench"
    argv = ["--quick", "--methods", "lora", "--workers", "2", "--output", str(out), *SMALL]
    both = [*argv, "--tasks", "openbookqa,winogrande_s", "--ood", "--ood-sets", "arc_easy"]
    built, real_load = [], bara_pyro.data.load_task_dataset

    def load_task_dataset(name, **kwargs):
        built.append(name)
        return real_load(name, **kwargs)

    monkeypatch.setattr(bara_pyro.data, "load_task_dataset", load_task_dataset)
    assert quality.main([*argv, "--tasks", "winogrande_s"]) == 0
    assert built == ["winogrande_s"]
    built.clear()
    assert quality.main(both) == 0  # WG-S has finished: OBQA and its OOD set
    assert sorted(built) == ["arc_easy", "openbookqa"]
    built.clear()
    assert quality.main(both) == 0  # all finished
    assert built == []


def test_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    def fake_train(spec):
        if spec.method == "bara":
            raise RuntimeError("boom: out of memory")
        spec.run_dir.mkdir(parents=True)
        metrics = {split: {"accuracy": 0.5, "nll": 0.69, "ece": 0.05, "brier": 0.5} for split in ("validation", "test")}
        (spec.run_dir / "metrics.json").write_text(json.dumps({**metrics, "effective_rank": None}))

    monkeypatch.setattr(quality, "_train_in_process", fake_train)
    out = tmp_path / "bench"
    assert quality.main(quick_argv(out, "--tasks", "winogrande_s,boolq")) == 1
    results = json.loads((out / "results.json").read_text())
    status = {(r["method"], r["task"]): r["status"] for r in results["runs"]}
    assert status == {("lora", "winogrande_s"): "ok", ("lora", "boolq"): "ok", ("bara", "winogrande_s"): "failed",
                      ("bara", "boolq"): "failed"}
    assert all("boom" in r["error"] for r in results["runs"] if r["status"] == "failed")
    assert "Traceback" in (out / "logs" / "bara__boolq__seed1.log").read_text()
    md = (out / "results.md").read_text()
    assert "Failed runs" in md and "bara/boolq/seed1: RuntimeError: boom" in md
    table = md_table(md, "ACC (%), test")
    assert table[0] == ["Method", "WG-S", "BoolQ", "Mean"]
    assert table[1] == ["LoRA (MLE)", "50.0", "50.0", "50.0"] and table[2] == ["BaRA", "–", "–", "–"]
    assert {t["status"] for t in results["targets"]} == {"not evaluated"}


def test_variants_and_per_method_overrides(capsys, tmp_path):
    argv = ["--dry-run", "--methods", "lora,bara,bara_fast", "--tasks", "openbookqa", "--seeds", "1",
            "--variant", "bara_fast=bara", "--method-set", "bara_fast:train.guide_lr=0.01",
            "--method-set", "bara:adapter.init_gate_logit=0.0", "--output", str(tmp_path)]
    assert quality.main(argv) == 0
    assert "bara_fast/openbookqa/seed1" in capsys.readouterr().out
    opts = quality_options.options_from_args(quality.build_parser().parse_args(argv), argv)
    configs = {s.method: s.config for s in quality.plan_runs(opts)}
    assert configs["bara_fast"]["train"]["guide_lr"] == 0.01 and configs["bara"]["train"]["guide_lr"] is None
    assert configs["bara_fast"]["adapter"] == {**configs["bara"]["adapter"], "init_gate_logit": 2.0}
    assert configs["bara"]["adapter"]["init_gate_logit"] == 0.0 and configs["lora"]["train"]["guide_lr"] is None
    assert configs["bara_fast"]["method"] == "bara" and configs["bara_fast"]["train"]["lr"] == 1e-4
    assert any("bara_fast is a variant of the bara preset" in d for d in opts.deviations())


@pytest.mark.parametrize("argv, message", [
    (["--methods", "lora,nope"], "unknown method"),
    (["--variant", "lora=bara"], "is a packaged method"),
    (["--variant", "x=nope", "--methods", "x"], "unknown preset"),
    (["--variant", "x"], "NAME=PRESET"),
    (["--methods", "lora", "--method-set", "bara:train.lr=0.1"], "not in --methods"),
    (["--methods", "lora", "--method-set", "lora=0.1"], "METHOD:KEY=VALUE"),
    (["--methods", "lora", "--method-set", "lora:train.lr=-1"], "lr must be a positive number"),
    (["--tasks", "not_a_task"], "unknown dataset"),
    (["--tasks", "boolq", "--ood"], "add it to --tasks"),
    (["--workers", "0"], "--workers"),
    (["--set", "train.lr=-1"], "lr must be a positive number"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, message):
    assert quality.main(["--quick", "--output", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_dry_run_counts_the_full_protocol(capsys):
    assert quality.main(["--dry-run", "--ood", "--output", "unused"]) == 0
    out = capsys.readouterr().out
    assert "108 runs (180 trainings of 1000 steps), 18 OOD evaluations; finished: 0 runs, 0 OOD evaluations" in out
    assert "ensemble/boolq/seed3" in out and "members 5" in out
    # member 0 of each ensemble is the LoRA run of its seed: 18 of the 90 ensemble trainings
    assert "18 ensemble member(s) can reuse an identical one-model run of this benchmark (162 trainings)" in out


def test_ensemble_member_0_is_the_lora_run_of_its_seed(tmp_path, capsys):
    """Member 0 of the seed-k ensemble trains exactly as the LoRA run of seed k, so the benchmark copies it
    (in one call, and from an earlier call's run); an ensemble trained from scratch elsewhere has the same
    weights bit for bit (CPU training is deterministic), so the copy changes nothing but the time."""
    quick = ["--quick", "--tasks", "winogrande_s", "--seeds", "1", *SMALL]  # --quick: 2 ensemble members
    one_call, two_calls, scratch = tmp_path / "one_call", tmp_path / "two_calls", tmp_path / "scratch"
    assert quality.main([*quick, "--methods", "lora,ensemble", "--output", str(one_call)]) == 0
    assert "ensemble/winogrande_s/seed1: member 0 is runs/lora/winogrande_s/seed1 (identical training), reused" \
        in capsys.readouterr().out
    assert quality.main([*quick, "--methods", "lora", "--output", str(two_calls)]) == 0
    assert quality.main([*quick, "--methods", "ensemble", "--output", str(two_calls)]) == 0
    assert "1 ensemble member(s) reused from identical one-model runs" in capsys.readouterr().out
    assert quality.main([*quick, "--methods", "ensemble", "--output", str(scratch)]) == 0

    lora = load_file(str(one_call / "runs/lora/winogrande_s/seed1/adapter_model.safetensors"))
    ensembles = {out: out / "runs/ensemble/winogrande_s/seed1" for out in (one_call, two_calls, scratch)}
    for out, run_dir in ensembles.items():
        member_0 = load_file(str(run_dir / "member_0/adapter_model.safetensors"))
        member_1 = load_file(str(run_dir / "member_1/adapter_model.safetensors"))
        assert member_0.keys() == lora.keys()
        assert all(torch.equal(member_0[k], lora[k]) for k in lora), out.name
        assert not all(torch.equal(member_1[k], lora[k]) for k in lora)  # seed 1001, another training
        assert (run_dir / "member_0/reused_from").exists() == (out != scratch)
        assert not (run_dir / "member_1/reused_from").exists()
    assert (ensembles[one_call] / "member_0/reused_from").read_text().strip() == "runs/lora/winogrande_s/seed1"
    adapter_configs = [json.loads((d / "member_0/adapter_config.json").read_text()) for d in ensembles.values()]
    assert adapter_configs[0]["bara_config"]["name"] == "bara_m0"  # the member's name, not the LoRA run's
    assert all(c == adapter_configs[0] for c in adapter_configs)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in ensembles.values()]
    assert metrics[0]["test"] == metrics[1]["test"] == metrics[2]["test"]
    lora_log = (one_call / "runs/lora/winogrande_s/seed1/train_log.jsonl").read_text()
    assert all((d / "member_0/train_log.jsonl").read_text() == lora_log for d in ensembles.values())


def test_parallel_workers_train_ensemble_members_as_runs_of_their_own(tmp_path, monkeypatch):
    """With workers, member 1 of the ensemble trains as a one-model run of its own (member 0 is the LoRA run of
    the seed), the ensemble starts after both and copies them: the same ensemble as one worker training it whole,
    to float rounding (the workers' subprocesses run one thread each); only the benchmark's runs are in the
    results."""
    monkeypatch.setitem(sys.modules, "ray", None)  # local subprocesses
    quick = ["--quick", "--methods", "lora,ensemble", "--tasks", "winogrande_s", "--seeds", "1", *SMALL]
    parallel, serial = tmp_path / "parallel", tmp_path / "serial"
    assert quality.main([*quick, "--workers", "2", "--output", str(parallel)]) == 0
    assert quality.main([*quick, "--output", str(serial)]) == 0
    member_run = parallel / "runs/ensemble_members/winogrande_s/seed1001"
    assert (member_run / "metrics.json").exists() and not (serial / "runs/ensemble_members").exists()
    ensemble = parallel / "runs/ensemble/winogrande_s/seed1"
    assert (ensemble / "member_1/reused_from").read_text().strip() == "runs/ensemble_members/winogrande_s/seed1001"
    assert (ensemble / "member_0/reused_from").read_text().strip() == "runs/lora/winogrande_s/seed1"
    copied = load_file(str(ensemble / "member_1/adapter_model.safetensors"))
    trained = load_file(str(member_run / "adapter_model.safetensors"))
    assert all(torch.equal(copied[k], trained[k]) for k in trained)
    for name in ("member_0", "member_1"):
        a, b = (load_file(str(out / "runs/ensemble/winogrande_s/seed1" / name / "adapter_model.safetensors"))
                for out in (parallel, serial))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=f"{name} {k}")
    results = json.loads((parallel / "results.json").read_text())
    assert [(r["method"], r["status"]) for r in results["runs"]] == [("lora", "ok"), ("ensemble", "ok")]
    metrics = [json.loads((out / "runs/ensemble/winogrande_s/seed1/metrics.json").read_text())["test"]
               for out in (parallel, serial)]
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-4)


def _fake_finished_run(run_dir, config):
    """A one-model run directory as run_experiment leaves it (the weights' content does not matter here)."""
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    for name in ("metrics.json", "adapter_config.json", "adapter_model.safetensors"):
        (run_dir / name).write_text("{}")


def test_only_identical_finished_runs_are_reused(tmp_path):
    argv = ["--quick", "--methods", "lora,ensemble", "--tasks", "winogrande_s", "--seeds", "1",
            "--output", str(tmp_path)]
    opts = quality_options.options_from_args(quality.build_parser().parse_args(argv), argv)
    lora, ensemble = quality.plan_runs(opts)
    assert quality_members.reusable_members(ensemble, tmp_path) == {}  # nothing finished yet
    # saved by an older version (no ensemble.seed_stride) on another device: the same run, and a source
    _fake_finished_run(lora.run_dir, {**lora.config, "train": {**lora.config["train"], "device": "cuda"},
                                      "ensemble": {"members": 1}})
    assert quality._saved_config_conflict(lora) is None
    assert quality_members.reusable_members(ensemble, tmp_path) == {0: lora.run_dir}
    member_1 = {**lora.config, "train": {**lora.config["train"], "seed": 1001}}
    other = tmp_path / "runs" / "lora" / "winogrande_s" / "seed1001"
    _fake_finished_run(other, member_1)
    assert quality_members.reusable_members(ensemble, tmp_path) == {0: lora.run_dir, 1: other}
    for path, value in (("train.lr", 0.001), ("adapter.r", 4), ("data.max_train_examples", 4)):
        section, key = path.split(".")
        changed = tmp_path / "changed" / path
        changed.mkdir(parents=True)
        _fake_finished_run(changed / "runs/lora/winogrande_s/seed1",
                           {**lora.config, section: {**lora.config[section], key: value}})
        assert quality_members.reusable_members(ensemble, changed) == {}, path
    unfinished = tmp_path / "unfinished"
    _fake_finished_run(unfinished / "runs/lora/winogrande_s/seed1", lora.config)
    (unfinished / "runs/lora/winogrande_s/seed1/metrics.json").unlink()
    assert quality_members.reusable_members(ensemble, unfinished) == {}


def test_dry_run_counts_no_member_from_a_finished_run_without_weights(tmp_path, capsys):
    """--dry-run's count of members that reuse a one-model run: a finished LoRA run of the plan counts with its
    weights and not without them (as a grid run copied without them), since the member then trains."""
    argv = ["--quick", "--methods", "lora,ensemble", "--tasks", "winogrande_s", "--seeds", "1",
            "--output", str(tmp_path)]
    opts = quality_options.options_from_args(quality.build_parser().parse_args(argv), argv)
    lora, _ = quality.plan_runs(opts)
    _fake_finished_run(lora.run_dir, lora.config)
    quality.print_plan(opts)
    assert "1 ensemble member(s) can reuse" in capsys.readouterr().out
    (lora.run_dir / "adapter_model.safetensors").unlink()
    quality.print_plan(opts)
    assert "can reuse" not in capsys.readouterr().out


def test_ensemble_assembled_from_member_predictions_equals_evaluating_it(tmp_path, capsys):
    """An ensemble whose members all finished as one-model runs (with their predictions, without their weights)
    is assembled from those files, in distribution and OOD, and equals the same ensemble trained and evaluated
    as one run, bit for bit."""
    import numpy as np

    common = ["--quick", "--tasks", "openbookqa", *SMALL, "--set", "eval.splits=[test]", "--ood-sets", OOD_SET]
    files, direct = tmp_path / "files", tmp_path / "direct"
    ensemble = ["--methods", "ensemble", "--seeds", "1", "--ood"]
    assert quality.main([*common, "--methods", "lora", "--seeds", "1,1001", "--output", str(files)]) == 0
    for weights in files.glob("runs/lora/openbookqa/seed*/adapter_model.safetensors"):
        weights.unlink()  # as when the members trained on another machine: only their small files came back
    capsys.readouterr()
    assert quality.main([*common, *ensemble, "--output", str(files), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[assembled from its members' predictions]" in out and "1 runs (0 trainings of" in out
    assert quality.main([*common, *ensemble, "--output", str(files)]) == 1  # no OOD predictions of the members
    out = capsys.readouterr().out
    assert ("ensemble/openbookqa/seed1: assembled from its members' predictions "
            "(runs/lora/openbookqa/seed1, runs/lora/openbookqa/seed1001)") in out
    assert "ood:ensemble/openbookqa/seed1 failed: assembled from its members' predictions, so it needs" in out
    assert quality.main([*common, "--methods", "lora", "--seeds", "1,1001", "--ood", "--output", str(files)]) == 1
    (tmp_path / "restore").mkdir()  # the members' OOD evaluation loads their weights: train them again here
    assert quality.main([*common, "--methods", "lora", "--seeds", "1,1001", "--ood", "--output",
                         str(tmp_path / "restore")]) == 0
    for seed in (1, 1001):
        src = tmp_path / "restore" / f"runs/lora/openbookqa/seed{seed}"
        dst = files / f"runs/lora/openbookqa/seed{seed}"
        for name in ("ood_metrics.json", "ood_predictions.npz"):
            (dst / name).write_bytes((src / name).read_bytes())
        test_metrics = [json.loads((d / "metrics.json").read_text())["test"] for d in (src, dst)]
        assert test_metrics[0] == test_metrics[1]  # the same training (CPU is deterministic)
    gpu = {"device": "NVIDIA H200", "gpu_count": 4, "torch": "2.11.0+cu130", "python": "3.12.3"}
    (files / "results.json").write_text(json.dumps({"machine": gpu}))  # the members' runs came from a GPU machine
    assert quality.main([*common, *ensemble, "--output", str(files)]) == 0
    assert "ood:ensemble/openbookqa/seed1: assembled from its members' OOD predictions" in capsys.readouterr().out
    assert json.loads((files / "results.json").read_text())["machine"] == gpu  # assembling ran nothing here
    assert quality.main([*common, *ensemble, "--output", str(files), "--dry-run"]) == 0
    assert "1 OOD evaluations; finished: 1 runs, 1 OOD evaluations" in capsys.readouterr().out
    assert quality.main([*common, *ensemble, "--output", str(direct)]) == 0

    runs = {out: out / "runs/ensemble/openbookqa/seed1" for out in (files, direct)}
    metrics = {out: json.loads((d / "metrics.json").read_text()) for out, d in runs.items()}
    assert metrics[files]["test"] == metrics[direct]["test"]
    assert metrics[files]["ensemble_members"] == metrics[direct]["ensemble_members"] == 2
    assert metrics[files]["assembled_from"] == ["runs/lora/openbookqa/seed1", "runs/lora/openbookqa/seed1001"]
    assert "assembled_from" not in metrics[direct] and not (runs[files] / "member_0").exists()
    with np.load(runs[files] / "predictions.npz") as a, np.load(runs[direct] / "predictions.npz") as b:
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    ood = {out: json.loads((d / "ood_metrics.json").read_text()) for out, d in runs.items()}
    assert ood[files] == ood[direct]
    assert ood[files]["ood"][OOD_SET]["auroc_mutual_information"] is not None  # two members: two draws
    results = json.loads((files / "results.json").read_text())
    assert [(r["method"], r["status"]) for r in results["runs"]] == [("ensemble", "ok")]
    from bara_pyro.experiment import evaluate_run

    with pytest.raises(FileNotFoundError, match="assembled from its members' predictions and holds no adapters; "
                                                "its members are the runs runs/lora/openbookqa/seed1, "):
        evaluate_run(runs[files], progress=False)


def test_only_identical_runs_with_predictions_assemble_an_ensemble(tmp_path):
    argv = ["--quick", "--methods", "lora,ensemble", "--tasks", "winogrande_s", "--seeds", "1",
            "--set", "eval.splits=[test]", "--output", str(tmp_path)]
    opts = quality_options.options_from_args(quality.build_parser().parse_args(argv), argv)
    lora, ensemble = quality.plan_runs(opts)
    member_1 = {**lora.config, "train": {**lora.config["train"], "seed": 1001}}
    for seed, config in ((1, lora.config), (1001, member_1)):
        run_dir = tmp_path / "runs" / "lora" / "winogrande_s" / f"seed{seed}"
        _fake_finished_run(run_dir, config)
        sources = quality_members.member_prediction_sources(ensemble, tmp_path, "predictions.npz")
        assert sources is None  # no predictions yet
        (run_dir / "predictions.npz").write_text("")
    sources = quality_members.member_prediction_sources(ensemble, tmp_path, "predictions.npz")
    assert sources == {0: lora.run_dir, 1: tmp_path / "runs/lora/winogrande_s/seed1001"}
    for path, value in (("eval.batch_size", 7), ("eval.max_examples", 3), ("eval.splits", ["validation"]),
                        ("train.lr", 0.001)):
        section, key = path.split(".")
        changed = tmp_path / "changed" / path
        for m, source in sources.items():
            config = {**(lora.config if m == 0 else member_1)}
            if m == 1:
                config[section] = {**config[section], key: value}
            _fake_finished_run(changed / source.relative_to(tmp_path), config)
            (changed / source.relative_to(tmp_path) / "predictions.npz").write_text("")
        assert quality_members.member_prediction_sources(ensemble, changed, "predictions.npz") is None, path
    sampled = {**ensemble.config, "eval": {**ensemble.config["eval"], "num_samples": 2}}
    assert quality_members.member_prediction_sources(quality.RunSpec(**{**ensemble.__dict__, "config": sampled}),
                                              tmp_path, "predictions.npz") is None  # not deterministic


def test_runs_with_training_done_start_first(tmp_path):
    """Evaluation-only runs, then runs that resume, then new ones: a stopped call leaves the least half done."""
    argv = ["--quick", "--methods", "lora,ensemble", "--tasks", "winogrande_s", "--seeds", "1,2,3",
            "--output", str(tmp_path)]
    opts = quality_options.options_from_args(quality.build_parser().parse_args(argv), argv)
    specs = {s.name: s for s in quality.plan_runs(opts)}

    def trained(d):
        d.mkdir(parents=True)
        (d / "DONE").write_text("trained\n")
        (d / "adapter_model.safetensors").write_text("")

    trained(specs["lora/winogrande_s/seed1"].run_dir)
    (specs["lora/winogrande_s/seed2"].run_dir / "checkpoint").mkdir(parents=True)
    ensemble_1, ensemble_2 = specs["ensemble/winogrande_s/seed1"].run_dir, specs["ensemble/winogrande_s/seed2"].run_dir
    trained(ensemble_1 / "member_0"), trained(ensemble_1 / "member_1")
    trained(ensemble_2 / "member_0")  # member 1 not started: the ensemble resumes
    ranks = {name: quality._progress_rank(spec) for name, spec in specs.items()}
    assert ranks == {"lora/winogrande_s/seed1": 0, "lora/winogrande_s/seed2": 1, "lora/winogrande_s/seed3": 2,
                     "ensemble/winogrande_s/seed1": 0, "ensemble/winogrande_s/seed2": 1,
                     "ensemble/winogrande_s/seed3": 2}


# ------------------------------------------------------------------------ aggregation on synthetic runs

TASKS = list(quality.TASKS)


def synthetic_records():
    """LoRA, BLoB and BaRA on the six tasks x 3 seeds, with known means."""
    base = {"lora": dict(accuracy=0.60, nll=0.70, ece=0.10, brier=0.50, effective_rank=None),
            "blob": dict(accuracy=0.59, nll=0.66, ece=0.05, brier=0.49, effective_rank=None),
            "bara": dict(accuracy=0.596, nll=0.68, ece=0.03, brier=0.48, effective_rank=3.5)}
    records = []
    for method, values in base.items():
        for i, task in enumerate(TASKS):
            for seed, jitter in zip((1, 2, 3), (-0.01, 0.0, 0.01)):
                test = {k: values[k] + jitter for k in ("accuracy", "nll", "ece", "brier")}
                if method == "lora" and task == "arc_easy":
                    test["accuracy"] = 0.691 + jitter  # on the anchor
                gated = {} if values["effective_rank"] is None else {
                    "effective_rank_per_layer": {"layer0": 3.0, "layer1": 4.0 + jitter},  # range 1 +- 0.01
                    "token_rank_spread": 0.2 + jitter}
                records.append({"method": method, "task": task, "seed": seed, "status": "ok",
                                "metrics": {"test": test, "validation": test,
                                            "effective_rank": values["effective_rank"], **gated}})
    return records


def test_aggregates_anchor_and_targets_from_synthetic_runs():
    records = synthetic_records()
    res = quality.aggregate(records, ["lora", "blob", "bara"], TASKS, rank_budget=8)
    ece = res["aggregates"]["test"]["ece"]
    assert ece["lora"]["winogrande_s"]["mean"] == pytest.approx(0.10)
    assert ece["lora"]["winogrande_s"]["std"] == pytest.approx(0.01)
    assert ece["bara"]["mean"]["mean"] == pytest.approx(0.03) and ece["bara"]["mean"]["n"] == 3
    assert res["aggregates"]["effective_rank"]["bara"]["mean"]["mean"] == pytest.approx(3.5)
    targets = {t["target"]: t for t in res["targets"]}
    assert targets["ece"]["status"] == "met" and "ratio 0.30" in targets["ece"]["detail"]
    assert targets["nll"]["status"] == "missed"  # below LoRA's, not below BLoB's
    assert "BLoB 0.6600" in targets["nll"]["detail"]
    # 0.4 points below LoRA on five tasks but 9.5 on ARC-E: 1.92 below on average
    assert targets["accuracy"]["status"] == "missed" and "-1.92 points" in targets["accuracy"]["detail"]
    assert targets["effective_rank"]["status"] == "met" and "r / 2 = 4" in targets["effective_rank"]["detail"]
    assert targets["rank_structure"]["status"] == "met"
    assert targets["rank_structure"]["detail"] == ("BaRA: per-layer rank range 1.00-1.00 (target > 0.5), "
                                                   "within-sequence token-rank spread 0.200-0.200 (target > 0.1) "
                                                   "over the tasks")
    flat = [{**r, "metrics": {**r["metrics"], "token_rank_spread": 0.0}}
            if r["method"] == "bara" and r["task"] == "boolq" else r for r in records]
    (structure,) = [t for t in quality.aggregate(flat, ["lora", "blob", "bara"], TASKS, rank_budget=8)["targets"]
                    if t["target"] == "rank_structure"]
    assert structure["status"] == "missed" and structure["detail"].endswith("; short on boolq")
    # ECE 3% below LoRA's 10% and BLoB's 5%, with MAP, MC-dropout and the ensemble not run
    assert targets["ece_every_baseline"]["status"] == "met against the 2 that ran"
    assert targets["ece_every_baseline"]["detail"] == ("BaRA 3.00% vs LoRA (MLE) 10.00%, BLoB 5.00%; not run on "
                                                       "every task: MAP, MC-dropout, Ensemble")
    assert targets["nll_every_baseline"]["status"] == "missed"  # 0.68 above BLoB's 0.66

    anchor = {row["task"]: row for row in res["anchor"]}
    assert set(anchor) == set(quality.PEFT_LORA_ANCHOR)  # WG-M has no peft figure
    arc = anchor["arc_easy"]
    assert arc["seed"] == 1 and arc["ours"]["accuracy"] == pytest.approx(68.1)
    assert arc["diff"]["accuracy"] == pytest.approx(-1.0)
    assert arc["within_noise"]["accuracy"] is True  # 1.0 <= 2 sqrt(2) x 1.0
    assert anchor["openbookqa"]["within_noise"]["accuracy"] is False  # 60 vs 39.8

    results = {"methods": ["lora", "blob", "bara"], "tasks": TASKS, "seeds": [1, 2, 3], "date": "today",
               "machine": {"device": "NVIDIA H100", "torch": "x", "python": "y"}, "git_commit": "abc",
               "command": "bara-pyro bench quality", "wall_time_s": 60.0,
               "protocol": {"model": "smollm2-135m", "steps": 1000, "overrides": ["adapter.r=8"],
                            "model_selection": quality.MODEL_SELECTION, "deviations": []},
               "runs": records, **res}
    md = quality.format_markdown(results)
    table = md_table(md, "ECE (%), test")
    assert table[0] == ["Method", "WG-S", "ARC-C", "ARC-E", "WG-M", "OBQA", "BoolQ", "Mean"]
    assert table[1] == ["LoRA (MLE)"] + ["10.0 ± 1.0"] * 7
    assert table[3][0] == "BaRA" and table[3][-1] == "3.0 ± 1.0"
    assert len(md_table(md, "Joint effective rank")) == 2  # header + BaRA only
    assert md_table(md, "Anchor")[1][0] == "WG-S" and "deviates" not in md
    assert "Runs: 54 of 54 finished." in md
    assert "**missed** (BaRA 0.6800 vs LoRA 0.7000" in md
    assert not math.isnan(res["aggregates"]["test"]["accuracy"]["lora"]["mean"]["mean"])

    # without BLoB: BaRA below LoRA meets the part against LoRA, above LoRA misses the target
    no_blob = [r for r in records if r["method"] != "blob"]
    for shift, status in ((0.0, "met against LoRA; BLoB not run"), (0.05, "missed")):
        shifted = [{**r, "metrics": {**r["metrics"], "test": {**r["metrics"]["test"],
                                                              "nll": r["metrics"]["test"]["nll"] + shift}}}
                   if r["method"] == "bara" else r for r in no_blob]
        res = quality.aggregate(shifted, ["lora", "bara"], TASKS, rank_budget=8)
        (nll,) = [t for t in res["targets"] if t["target"] == "nll"]
        assert nll["status"] == status and "BLoB was not run" in nll["detail"]


def test_below_every_baseline_is_met_only_when_every_baseline_ran():
    """The every-baseline targets: met when BaRA's mean is below each of the five baselines'; one baseline at or
    below it misses; a baseline missing on one task counts as not run."""
    base = [r for r in synthetic_records() if r["method"] in ("lora", "bara")]
    others = [{**r, "method": m} for m in ("lora_map", "mc_dropout", "ensemble", "blob")
              for r in synthetic_records() if r["method"] == "lora"]  # each at LoRA's NLL 0.70, above BaRA's
    methods = ["lora", "lora_map", "mc_dropout", "ensemble", "blob", "bara"]
    res = quality.aggregate(base + others, methods, TASKS, rank_budget=8)
    targets = {t["target"]: t for t in res["targets"]}
    assert targets["nll_every_baseline"]["status"] == "met"
    assert "MC-dropout 0.7000" in targets["nll_every_baseline"]["detail"]
    equal = [{**r, "metrics": {**r["metrics"], "test": {**r["metrics"]["test"], "nll": 0.68}}}
             if r["method"] == "ensemble" else r for r in others]
    res = quality.aggregate(base + equal, methods, TASKS, rank_budget=8)
    assert {t["target"]: t["status"] for t in res["targets"]}["nll_every_baseline"] == "missed"
    partial = [r for r in others if not (r["method"] == "blob" and r["task"] == "boolq")]
    res = quality.aggregate(base + partial, methods, TASKS, rank_budget=8)
    (target,) = [t for t in res["targets"] if t["target"] == "nll_every_baseline"]
    assert target["status"] == "met against the 4 that ran" and target["detail"].endswith("not run on every task: BLoB")
    res = quality.aggregate(base, ["lora", "bara"], TASKS, rank_budget=8, target_method="bara_singular")
    (target,) = [t for t in res["targets"] if t["target"] == "ece_every_baseline"]
    assert target["status"] == "not evaluated"


def test_below_every_baseline_compares_on_the_seeds_both_ran():
    """A baseline that ran fewer seeds is compared with BaRA on those seeds only: an ensemble of seed 1 alone just
    below BaRA's seed-1 NLL (0.67) misses the target, just above it meets it, though BaRA's mean over its three
    seeds (0.68) is above both."""
    base = [r for r in synthetic_records() if r["method"] in ("lora", "bara")]
    others = [{**r, "method": m} for m in ("lora_map", "mc_dropout", "blob")
              for r in synthetic_records() if r["method"] == "lora"]
    bara_seed1 = [r for r in base if r["method"] == "bara" and r["seed"] == 1]
    methods = ["lora", "lora_map", "mc_dropout", "ensemble", "blob", "bara"]
    at_seed1 = statistics.fmean(r["metrics"]["test"]["nll"] for r in bara_seed1)
    for shift, status in ((-0.001, "missed"), (0.001, "met")):
        ensemble = [{**r, "method": "ensemble", "metrics": {**r["metrics"], "test": {
            **r["metrics"]["test"], "nll": r["metrics"]["test"]["nll"] + shift}}} for r in bara_seed1]
        res = quality.aggregate(base + others + ensemble, methods, TASKS, rank_budget=8)
        (target,) = [t for t in res["targets"] if t["target"] == "nll_every_baseline"]
        assert target["status"] == status
        assert f"Ensemble {at_seed1 + shift:.4f} (on seed 1, where BaRA {at_seed1:.4f})" in target["detail"]
        assert "MAP 0.7000," in target["detail"]  # same seeds as BaRA: the tables' means, no seed note


def test_anchor_skips_runs_evaluated_on_validation_only():
    """LoRA runs without test metrics (``eval.splits=[validation]``) leave the anchor rows empty, not a crash."""
    records = [{**r, "metrics": {"validation": r["metrics"]["validation"], "effective_rank": None}}
               for r in synthetic_records() if r["method"] == "lora"]
    res = quality.aggregate(records, ["lora"], TASKS)
    assert res["anchor"] and all(row["ours"] is None and row["seed"] is None for row in res["anchor"])


def test_targets_for_a_variant_of_bara(capsys):
    """--targets-for checks the targets for a BaRA variant, named as such; the preset's rows are not used."""
    records = [r for r in synthetic_records() if r["method"] != "bara"]
    records += [{**r, "method": "bara_x"} for r in synthetic_records() if r["method"] == "bara"]
    res = quality.aggregate(records, ["lora", "blob", "bara_x"], TASKS, rank_budget=8, target_method="bara_x")
    targets = {t["target"]: t for t in res["targets"]}
    assert targets["ece"]["status"] == "met" and targets["ece"]["detail"].startswith("BaRA (bara_x) 3.00%")
    assert targets["effective_rank"]["status"] == "met"
    assert all(t["status"] == "not evaluated" for t in quality.aggregate(records, ["lora", "blob", "bara_x"],
                                                                         TASKS, rank_budget=8)["targets"])
    assert quality.main(["--targets-for", "lora", "--dry-run"]) == 2
    assert "error: --targets-for 'lora' must be a BaRA preset" in capsys.readouterr().err
    assert quality.main(["--targets-for", "bara_singular", "--methods", "lora,bara_singular", "--dry-run"]) == 0
    capsys.readouterr()
    assert quality.main(["--targets-for", "blob_x", "--variant", "blob_x=blob", "--dry-run"]) == 2
    assert "--targets-for 'blob_x'" in capsys.readouterr().err


def test_best_variant_is_chosen_on_validation_nll(tmp_path, capsys):
    records = []
    for method, val_nll, test_nll in (("bara", 0.9, 0.5), ("bara_a", 0.7, 0.9), ("bara_b", 0.8, 0.4)):
        for task in ("openbookqa", "arc_challenge"):
            metrics = {"validation": {"accuracy": 0.5, "nll": val_nll, "ece": 0.1, "brier": 0.5},
                       "test": {"accuracy": 0.5, "nll": test_nll, "ece": 0.1, "brier": 0.5}}
            records.append({"method": method, "task": task, "seed": 1, "status": "ok", "metrics": metrics})
    results = {**quality.aggregate(records, ["bara", "bara_a", "bara_b"], ["openbookqa", "arc_challenge"]),
               "method_overrides": {"bara_a": ["train.guide_lr=0.01", "adapter.a_theta=16"]}}
    name, values, means = quality.best_variant(results)
    assert name == "bara_a" and values == ["train.guide_lr=0.01", "adapter.a_theta=16"]  # not the test winner
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert quality.main(["--best-variant", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["--method-set=bara:train.guide_lr=0.01", "--method-set=bara:adapter.a_theta=16"]
    assert "chosen: bara_a" in err


def test_aggregate_only_keeps_the_machine_the_runs_trained_on(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    gpu = {"device": "NVIDIA H200", "gpu_count": 4, "torch": "2.11.0+cu130", "python": "3.12.3"}
    (out / "results.json").write_text(json.dumps({"machine": gpu}))
    quality.main(quick_argv(out, "--aggregate-only"))
    results = json.loads((out / "results.json").read_text())
    assert results["machine"] == gpu and results["aggregated_on"]["device"].startswith("CPU")


def test_results_name_the_machine_each_run_recorded(tmp_path):
    """Runs record their machine in metrics.json; results.md names it even when the tables are aggregated elsewhere."""
    out = tmp_path / "bench"
    argv = quick_argv(out).copy()
    argv[argv.index("lora,bara")] = "lora"
    assert quality.main(argv) == 0
    metrics_path = next(out.rglob("metrics.json"))
    metrics = json.loads(metrics_path.read_text())
    assert metrics["machine"]["device"].startswith("CPU") and metrics["machine"]["torch"]
    gpu = {"device": "NVIDIA H200", "gpu_count": 1, "cuda": "13.0", "torch": "2.11.0+cu130", "python": "3.12.3",
           "cpu_count": 16}
    metrics_path.write_text(json.dumps({**metrics, "machine": {**gpu, "platform": "Linux-gpu-host"}}))
    assert quality.main([*argv, "--aggregate-only"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["machine"] == gpu and results["run_machines"] == [gpu]
    assert results["aggregated_on"]["device"].startswith("CPU")
    line = next(ln for ln in (out / "results.md").read_text().splitlines() if ln.startswith("- machine:"))
    assert line.startswith("- machine: NVIDIA H200 (torch 2.11.0+cu130, python 3.12.3); tables aggregated on CPU")


def test_aggregate_only_reads_runs_that_name_another_machines_model_folder(tmp_path):
    """Runs made elsewhere name that machine's model folder; aggregating their saved results loads no model, so
    the folder need not exist here (training with it still refuses: a one-line error)."""
    out = tmp_path / "bench"
    argv = quick_argv(out).copy()
    argv[argv.index("lora,bara")] = "lora"
    assert quality.main(argv) == 0
    before = json.loads((out / "results.json").read_text())["aggregates"]
    elsewhere = "/nonexistent/gpu-host/smollm2"
    for path in [*out.rglob("config.yaml"), *out.glob("configs/*.yaml")]:
        path.write_text(path.read_text().replace("model: tiny-llama", f"model: {elsewhere}"))
    assert quality.main([*argv, "--model", elsewhere, "--aggregate-only"]) == 0
    assert json.loads((out / "results.json").read_text())["aggregates"] == before
    assert quality.main([*argv, "--model", elsewhere, "--output", str(tmp_path / "other")]) == 2


def test_aggregate_only_reports_no_wall_time_without_the_runs_timing(tmp_path):
    """Aggregating runs made elsewhere (no ``timing.json`` in the output) reports no wall time rather than the
    seconds the aggregation took; with the timing of the calls that ran them it reports theirs."""
    from bara_pyro.bench import quality_report

    times = quality._bench_times(None, tmp_path)
    assert times["wall_time_s"] is None
    assert quality_report._wall_time_line(times).startswith("- wall time: not recorded")
    (tmp_path / quality.TIMING_NAME).write_text(json.dumps({"wall_time_s": 1309.5, "segments": 1}))
    times = quality._bench_times(None, tmp_path)
    assert quality_report._wall_time_line(times) == "- wall time: 21.8 min"
