"""docs/benchmarks.md's quality tables are the committed suite's `results.md`, cell for cell."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SUITE_MD = ROOT / "benchmarks" / "results" / "quality_h200x4_2026-11-22" / "suite" / "results.md"
LOCAL_KL_MD = ROOT / "benchmarks" / "results" / "quality_h200x2_2026-11-22_local_kl" / "suite_lkl" / "results.md"
TUNED_DIR = ROOT / "benchmarks" / "results" / "quality_h100_2026-12-07_tuned"
TUNED_SEED1_MD = TUNED_DIR / "results_seed1.md"  # sections 15-16: the tuned suite's seed 1 alone
TUNED_SEED12_MD = TUNED_DIR / "results_seed12.md"  # section 17: seeds 1-2
TUNED_SEED123_MD = TUNED_DIR / "results_seed123_ens2.md"  # section 18: seeds 1-3, the ensemble seed 2
OCCAM_DIR = ROOT / "benchmarks" / "results" / "quality_h100_2026-12-07_direction_occam"


def _table_rows(text: str, header_start: str) -> dict[str, list[str]]:
    """Rows (method -> cells) of the first Markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _results_section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"results.md has no section {title!r}"
    return match.group(1)


@pytest.mark.parametrize("section, results_md", [("### 3. ", SUITE_MD), ("### 4. ", LOCAL_KL_MD),
                                                 ("### 16. ", TUNED_SEED1_MD),
                                                 ("### 17. ", TUNED_SEED12_MD), ("### 18. ", TUNED_SEED123_MD),
                                                 ("### 19. ", TUNED_DIR / "results.md")])
def test_suite_tables_in_docs_match_results_md(section, results_md):
    docs, results = DOCS.read_text(), results_md.read_text()
    docs = docs[docs.index(section):]  # the section's own tables come first from here
    for docs_header, title in (("| ACC (%) |", "ACC (%), test"), ("| NLL |", "NLL, test"),
                               ("| ECE (%) |", "ECE (%), test")):
        documented = _table_rows(docs, docs_header)
        produced = _table_rows(_results_section(results, title), "| Method |")
        assert documented.keys() == produced.keys(), title
        for method, cells in documented.items():
            assert cells == produced[method], f"{title}, {method}: docs {cells} != results.md {produced[method]}"


def test_ood_auroc_rows_in_docs_match_results_md():
    docs, results = DOCS.read_text(), SUITE_MD.read_text()
    for score, section in (("predictive entropy", "OOD AUROC of predictive entropy (%)"),
                           ("mutual information", "OOD AUROC of mutual information (%)")):
        produced = _table_rows(results.split(f"### {section}")[1], "| Method |")
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in docs.splitlines()
                if line.startswith(f"| {score} |")]
        # every method with a score (deterministic ones have none for mutual information: "–")
        assert {cells[1] for cells in rows} == {m for m, cells in produced.items() if cells[0] != "–"}, score
        for cells in rows:
            assert cells[2:] == produced[cells[1]], f"{score}, {cells[1]}"


def test_documented_targets_are_results_md_targets():
    docs, results = DOCS.read_text(), SUITE_MD.read_text()
    ece = re.search(r"BaRA ([\d.]+)% vs LoRA ([\d.]+)%: ratio ([\d.]+)", results).groups()
    assert f"{ece[0]}% against {ece[1]}%, a ratio of {ece[2]}" in docs
    nll = re.search(r"BaRA ([\d.]+) vs LoRA ([\d.]+) \(diff [^)]*\) and BLoB ([\d.]+)", results).groups()
    assert f"{float(nll[0]):.3f} against LoRA's {float(nll[1]):.3f} and BLoB's {float(nll[2]):.3f}" in docs
    local_kl = LOCAL_KL_MD.read_text()
    ece = re.search(r"\(bara_lkl\) ([\d.]+)% vs LoRA ([\d.]+)%: ratio ([\d.]+)", local_kl).groups()
    assert f"{ece[0]}% against {ece[1]}%, a ratio of {ece[2]}" in docs
    nll = re.search(r"\(bara_lkl\) ([\d.]+) vs LoRA ([\d.]+) \(diff [^)]*\) and BLoB ([\d.]+)", local_kl).groups()
    assert f"{nll[0]} against LoRA's {nll[1]}" in docs and f"BLoB's {nll[2]}" in docs
    acc = re.search(r"\(bara_lkl\) [\d.]+% vs LoRA [\d.]+%: ([-+][\d.]+) points", local_kl).group(1)
    assert f"missed.** {acc} points" in docs


SEED1_DIR = ROOT / "benchmarks" / "results" / "quality_h200_2026-12-04_seed1"
SEED2_DIR = ROOT / "benchmarks" / "results" / "quality_h200_2026-12-04_seed2"
SEED3_DIR = ROOT / "benchmarks" / "results" / "quality_h200_2026-12-05_seed3"
LRGRID_MD = ROOT / "benchmarks" / "results" / "quality_h200_2026-12-04_lrgrid" / "grid" / "results.md"
PRIOR_DIR = ROOT / "benchmarks" / "results" / "quality_h200_2026-12-04_singular_prior" / "grid"
LR1E3_DIR = ROOT / "benchmarks" / "results" / "quality_h200_2026-12-04_lr1e-3"
SUITE_ORDER = ["winogrande_s", "arc_challenge", "arc_easy", "winogrande_m", "openbookqa", "boolq"]


def _test_split(task_dir: Path, seed: int = 1) -> dict:
    """The test-split metrics of the run ``<task_dir>/seed<seed>`` (its metrics.json)."""
    return json.loads((task_dir / f"seed{seed}" / "metrics.json").read_text())["test"]


def _lora_seed1_row(metric: str) -> list[str]:
    """Section 3's LoRA (MLE) seed-1 test values, formatted as the results tables format them."""
    runs = ROOT / "benchmarks" / "results" / "quality_h200x4_2026-11-22" / "suite" / "runs" / "lora"
    values = [_test_split(runs / task)[metric] for task in SUITE_ORDER]
    scale, fmt = (1.0, "{:.3f}") if metric == "nll" else (100.0, "{:.1f}")
    return [fmt.format(scale * v) for v in values] + [fmt.format(scale * sum(values) / len(values))]


def test_section5_tables_are_the_seed1_results_md():
    docs, results = DOCS.read_text(), (SEED1_DIR / "results.md").read_text()
    docs = docs[docs.index("### 5. "):docs.index("### 6. ")]
    for docs_header, title, metric in (("| ACC (%) |", "ACC (%), test", "accuracy"), ("| NLL |", "NLL, test", "nll"),
                                       ("| ECE (%) |", "ECE (%), test", "ece")):
        documented = _table_rows(docs, docs_header)
        assert documented.pop("LoRA (MLE), seed 1") == _lora_seed1_row(metric), title
        produced = _table_rows(_results_section(results, title), "| Method |")
        assert documented == produced, title


@pytest.mark.parametrize("seed, results_dir", [(2, SEED2_DIR), (3, SEED3_DIR)])
def test_section5_later_seed_tables_are_their_results_md(seed, results_dir):
    """Section 5's seed-2 and seed-3 tables: the results.md rows that have a result (all-"–" rows left out)."""
    docs, results = DOCS.read_text(), (results_dir / "results.md").read_text()
    docs = docs[docs.index("### 5. "):docs.index("### 6. ")]
    for metric, title in (("ACC (%)", "ACC (%), test"), ("NLL", "NLL, test"), ("ECE (%)", "ECE (%), test")):
        produced = _table_rows(_results_section(results, title), "| Method |")
        produced = {method: cells for method, cells in produced.items() if set(cells) != {"–"}}
        assert _table_rows(docs, f"| seed {seed}: {metric} |") == produced, title


def _validation_tables(results: str) -> dict[str, dict[str, dict[str, str]]]:
    """A grid's results.md as {title: {method: {task column: cell}}} for its ACC, NLL and ECE validation tables."""
    tables = {}
    for title in ("ACC (%), validation", "NLL, validation", "ECE (%), validation"):
        section = _results_section(results, title)
        header = next(line for line in section.splitlines() if line.startswith("| Method |"))
        columns = [c.strip() for c in header.strip("|").split("|")][1:]
        tables[title] = {m: dict(zip(columns, cells)) for m, cells in _table_rows(section, "| Method |").items()}
    return tables


def test_section6_grid_cells_are_the_grid_results_md():
    """Every ACC / NLL / ECE cell of section 6's table is the grid's validation value of that run."""
    docs, results = DOCS.read_text(), LRGRID_MD.read_text()
    docs = docs[docs.index("### 6. "):]
    tables = _validation_tables(results)
    table = docs[docs.index("| validation, seed 1 |"):].splitlines()[2:]
    lines = table[:next(i for i, line in enumerate(table) if not line.startswith("| "))]
    assert len(lines) == 8
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = f"{cells[0].strip('`').replace('LoRA', 'lora')}@lr={float(cells[1]):g}"
        for col, task in ((2, "ARC-E"), (3, "WG-S"), (4, "OBQA")):
            for value, title in zip(cells[col].split(" / "), tables):
                assert tables[title][name][task] == value, (name, task, title)


def test_section6_prior_table_is_the_prior_grid():
    """Section 6's bara_singular prior table: every ACC / NLL / ECE cell is the grid's validation value, and the
    rank columns are the range over the tasks of the runs' metrics.json."""
    docs, results = DOCS.read_text(), (PRIOR_DIR / "results.md").read_text()
    docs = docs[docs.index("### 6. "):]
    tables = _validation_tables(results)
    rows = _table_rows(docs, "| prior, validation, seed 1 |")
    assert len(rows) == 3
    for name, cells in rows.items():
        method = f"{name.strip('`')}@lr=0.001"
        for col, task in ((1, "ARC-E"), (2, "WG-S"), (3, "OBQA")):
            for value, title in zip(cells[col].split(" / "), tables):
                assert tables[title][method][task] == value, (name, task, title)
        metrics = [json.loads((PRIOR_DIR / "runs" / method / task / "seed1" / "metrics.json").read_text())
                   for task in ("arc_easy", "winogrande_s", "openbookqa")]
        for col, key in ((4, "effective_rank"), (5, "update_rank")):
            values = [m[key] for m in metrics]
            assert cells[col] == f"{min(values):.2f}-{max(values):.2f}", (name, key)


def test_section7_tables_and_ranks_are_the_lr1e3_runs():
    docs, results = DOCS.read_text(), (LR1E3_DIR / "results.md").read_text()
    docs = docs[docs.index("### 7. "):docs.index("## KL ablation")]
    for docs_header, title in (("| lr 1e-3, seed 1: ACC (%) |", "ACC (%), test"),
                               ("| lr 1e-3, seed 1: NLL |", "NLL, test"),
                               ("| lr 1e-3, seed 1: ECE (%) |", "ECE (%), test")):
        assert _table_rows(docs, docs_header) == _table_rows(_results_section(results, title), "| Method |"), title
    metrics = [json.loads(p.read_text()) for p in sorted(LR1E3_DIR.glob("runs/bara_singular/*/seed1/metrics.json"))]
    assert len(metrics) == 6
    ranks = [m["effective_rank"] for m in metrics]
    layers = [r for m in metrics for r in m["effective_rank_per_layer"].values()]
    updates = [m["update_rank"] for m in metrics]
    docs = " ".join(docs.split())  # the prose wraps
    assert f"{min(ranks):.2f}-{max(ranks):.2f} over the tasks (mean {sum(ranks) / 6:.2f})" in docs
    assert f"per layer {min(layers):.2f}-{max(layers):.2f}" in docs
    assert f"{min(updates):.2f}-{max(updates):.2f} directions per layer" in docs



def test_section15_tables_are_the_tuned_results_md():
    """Section 15: the grid's validation NLL and the test cells at the chosen rates, as results.md gives them."""
    docs, results = DOCS.read_text(), TUNED_SEED1_MD.read_text()
    docs = docs[docs.index("### 15. "):]
    grid_rows = [[c.strip() for c in line.strip("|").split("|")] for line in
                 results.split("### Grid: validation NLL")[1].splitlines() if line.startswith("| lora |")
                 or line.startswith("| bara_singular |")]
    documented = _table_rows(docs, "| validation NLL |")
    names = {"lora": "LoRA", "bara_singular": "`bara_singular`"}
    assert len(grid_rows) == len(documented) == 6
    for method, point, *cells in grid_rows:
        lr = {"lr=0.0003": "3e-4", "lr=0.001": "1e-3", "lr=0.003": "3e-3"}[point]
        assert documented[f"{names[method]}, {lr}"] == cells, (method, point)
    tests = {title: _table_rows(_results_section(results, title), "| Method |")
             for title in ("ACC (%), test", "NLL, test", "ECE (%), test")}
    chosen = _table_rows(docs, "| test, at the chosen rate (ACC % / NLL / ECE %) |")
    for docs_row, method in (("LoRA, chosen by validation NLL", "LoRA (MLE)"),
                             ("`bara_singular`, chosen by either", "BaRA (singular directions)")):
        expected = [" / ".join(cells) for cells in zip(*(tests[t][method] for t in tests))]
        assert chosen[docs_row] == expected, docs_row


def test_section16_baseline_grid_is_the_tuned_grid():
    """Section 16: the baselines' validation NLL at each grid point, as results.md's grid table gives it."""
    docs, results = DOCS.read_text(), TUNED_SEED1_MD.read_text()
    documented = _table_rows(docs[docs.index("### 16. "):], "| validation NLL, baselines |")
    names = {"lora_map": "MAP", "mc_dropout": "MC-dropout", "blob": "BLoB"}
    grid_rows = [[c.strip() for c in line.strip("|").split("|")] for line in
                 results.split("### Grid: validation NLL")[1].splitlines()
                 if any(line.startswith(f"| {m} |") for m in names)]
    assert len(grid_rows) == len(documented) == 9
    for method, point, *cells in grid_rows:
        lr = {"lr=0.0003": "3e-4", "lr=0.001": "1e-3", "lr=0.003": "3e-3"}[point]
        assert documented[f"{names[method]}, {lr}"] == cells, (method, point)


def test_section16_near_uniform_runs_and_five_task_ece_are_the_run_files():
    """Section 16's WG-S entropies and accuracies at 3e-3, and the mean test ECE over the five other tasks."""
    docs = DOCS.read_text()
    docs = docs[docs.index("### 16. "):docs.index("## KL ablation")]
    grid = TUNED_DIR / "grid" / "runs"
    test_metrics = _test_split
    runs = [test_metrics(grid / f"{m}@lr=0.003" / "winogrande_s") for m in ("mc_dropout", "lora_map")]
    assert f"entropy {runs[0]['mean_entropy']:.3f} and {runs[1]['mean_entropy']:.3f} nats" in docs
    assert f"accuracy {100 * runs[0]['accuracy']:.1f} and {100 * runs[1]['accuracy']:.1f} %" in docs
    assert f"NLL {runs[0]['nll']:.3f} and {runs[1]['nll']:.3f}" in docs
    bara = test_metrics(grid / "bara_singular@lr=0.003" / "winogrande_s")
    assert f"entropy {bara['mean_entropy']:.3f}\n  and accuracy {100 * bara['accuracy']:.1f} %" in docs
    others = [t for t in SUITE_ORDER if t != "winogrande_s"]
    ece = {m: 100 * sum(test_metrics(TUNED_DIR / "runs" / m / t)["ece"] for t in others) / len(others)
           for m in ("lora", "lora_map", "mc_dropout", "blob", "bara_singular")}
    assert min(ece, key=ece.get) == "bara_singular"
    ranges = _table_rows(_results_section(TUNED_SEED1_MD.read_text(), "Per-layer rank range (the "
                                          "largest per-layer effective rank less the smallest)"), "| Method |")
    cells = [float(c) for c in ranges["BaRA (singular directions)"][:-1]]
    assert f"per-layer ranks span {min(cells):.2f}-{max(cells):.2f} components per task" in docs
    documented = re.search(r"mean ECE is the lowest of the five methods: ([\d.]+) %\s+against ([\d.]+) \(MC-dropout\), "
                           r"([\d.]+) \(BLoB\), ([\d.]+) \(MAP\) and ([\d.]+) % \(LoRA\)", docs).groups()
    assert documented == tuple(f"{ece[m]:.2f}" for m in ("bara_singular", "mc_dropout", "blob", "lora_map", "lora"))


PACKING_DIR = ROOT / "benchmarks" / "results" / "speed_fit_h100_2026-12-07_packing"


def test_packed_training_gpu_table_is_the_result_files():
    """"Training: tokens per step": each setting's fit time and replayed-step time are its result file's."""
    from bara_pyro.bench.fit_speed import _replay_ms

    documented = _table_rows(DOCS.read_text(), "| setting | LoRA fit s |")
    files = {"fp32, unpacked (the suite)": "fp32_unpacked", "fp32, packed": "fp32_packed",
             "TF32 matrix products, packed": "tf32_packed", "bf16 autocast, packed": "bf16_packed"}
    assert set(documented) == set(files)
    for label, name in files.items():
        fit = json.loads((PACKING_DIR / f"{name}.json").read_text())["fit"]
        steps = fit["config"]["steps"]
        lora, bara = (fit["rows"][m]["graphs"] for m in ("lora", "bara_singular"))
        expected = [f"{lora['train_s']:.1f}", f"{_replay_ms(lora, steps):.1f}", f"{bara['train_s']:.1f}",
                    f"{_replay_ms(bara, steps):.1f}", f"{_replay_ms(bara, steps) / _replay_ms(lora, steps):.2f}"]
        assert documented[label] == expected, label

TF32_DIR = ROOT / "benchmarks" / "results" / "speed_fit_h100_2026-12-07_tf32_setting"


def test_tf32_setting_table_is_the_result_files():
    """"Training: tokens per step": the replayed-step times with TF32 by the environment and by `train.tf32`."""
    from bara_pyro.bench.fit_speed import _replay_ms

    documented = _table_rows(DOCS.read_text(), "| TF32 by |")
    files = {"`TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`": "tf32_env_override_packed",
             "`train.tf32=true`": "tf32_setting_packed",
             "`train.tf32=true`, the machine's first run": "tf32_setting_packed_first"}
    assert set(documented) == set(files)
    for label, name in files.items():
        fit = json.loads((TF32_DIR / f"{name}.json").read_text())["fit"]
        overrides = fit["config"]["overrides"]
        assert "train.pack_choices=true" in overrides and ("train.tf32=true" in overrides) == ("env" not in name)
        steps = fit["config"]["steps"]
        expected = [f"{_replay_ms(fit['rows'][m]['graphs'], steps):.1f}" for m in ("lora", "bara_singular")]
        assert documented[label] == expected, label


# docs/benchmarks.md's headers of a tuned suite's Brier, rank-structure and OOD tables, and results.md's titles
RANK_OOD_TABLES = (("| Brier |", "## Brier, test"), ("| per-layer rank range |", "## Per-layer rank range"),
                   ("| token-rank spread |", "## Within-sequence token-rank spread"),
                   ("| OOD ECE (%) |", "### OOD ECE (%)"),
                   ("| OOD AUROC, predictive entropy (%) |", "### OOD AUROC of predictive entropy (%)"))


def _assert_tables_are_results_md(docs: str, results: str, tables) -> None:
    """Each docs table (by its header) equals the results.md table under ``title``, cell for cell."""
    for docs_header, title in tables:
        produced = _table_rows(results.split(f"\n{title}")[1], "| Method |")
        assert _table_rows(docs, docs_header) == produced, title


def _every_baseline_figures(results: str, metric: str) -> tuple[str, ...]:
    """The figures of results.md's "BaRA's METRIC below every baseline's" target line (NLL or ECE, ECE in %):
    BaRA, LoRA (MLE), MAP, MC-dropout, the ensemble, BaRA on the ensemble's seeds, BLoB."""
    line = re.search(rf"BaRA's {metric} below every baseline's.*", results).group(0)
    n = r"([\d.]+)" + ("%" if metric == "ECE" else "")
    return re.search(rf"\*\*met\*\* \(BaRA \(bara_singular\) {n} vs LoRA \(MLE\) {n}, MAP {n}, MC-dropout {n}, "
                     rf"Ensemble {n} \(on seeds? [\d, ]+, where BaRA \(bara_singular\) {n}\), BLoB {n}\)",
                     line).groups()


def _six_task(method: str, seed: int, metric: str) -> float:
    """The tuned suite's six-task test mean of ``metric`` for ``method`` at ``seed``."""
    runs = TUNED_DIR / "runs"
    return sum(_test_split(runs / method / task, seed)[metric] for task in SUITE_ORDER) / len(SUITE_ORDER)


def _wall_times(method: str, pattern: str) -> list[float]:
    """The ``wall_time_s`` of each run of the tuned suite's ``method`` whose folder matches ``pattern``."""
    paths = (TUNED_DIR / "runs" / method).glob(f"{pattern}/timing.json")
    return [json.loads(path.read_text())["wall_time_s"] for path in paths]


def _assert_every_baseline_targets_quoted(flat: str, results: str, after_bara: str, ensemble_seeds: str) -> None:
    """A section's targets bullet (``flat``: whitespace collapsed) quotes results.md's NLL and ECE "below every
    baseline" lines: BaRA's mean, each baseline's, and the ensemble's on ``ensemble_seeds`` beside BaRA's there."""
    bara, lora, map_, mc, ens, bara_e, blob = _every_baseline_figures(results, "NLL")
    assert (f"BaRA {bara}{after_bara} against MAP {map_}, MC-dropout {mc}, BLoB {blob} and LoRA {lora}, and against "
            f"the ensemble's {ens} on {ensemble_seeds}, where BaRA's is {bara_e}") in flat
    bara, lora, map_, mc, ens, bara_e, blob = _every_baseline_figures(results, "ECE")
    assert (f"{bara} % against {map_} (MAP), {mc} (MC-dropout), {blob} (BLoB) and {lora} % (LoRA), and against "
            f"the ensemble's {ens} % on {ensemble_seeds} (BaRA {bara_e} %)") in flat


def test_section17_brier_rank_and_ood_tables_are_the_two_seed_results_md():
    """Section 17: the Brier, rank-structure and OOD tables are results_seed12.md's, cell for cell, and the
    targets' figures quoted in its first bullet are its target lines."""
    docs, results = DOCS.read_text(), TUNED_SEED12_MD.read_text()
    docs = docs[docs.index("### 17. "):docs.index("### 18. ")]
    _assert_tables_are_results_md(docs, results, RANK_OOD_TABLES)
    nll = re.search(r"nll_every_baseline.*|BaRA's NLL below every baseline's.*", results).group(0)
    assert "**met** (BaRA (bara_singular) 0.9222 vs LoRA (MLE) 0.9987, MAP 0.9437, MC-dropout 0.9387, Ensemble " \
           "0.9425 (on seed 2, where BaRA (bara_singular) 0.9351), BLoB 0.9486)" in nll
    assert "BaRA 0.922 against MC-dropout\n  0.939, MAP 0.944, BLoB 0.949 and LoRA 0.999" in docs
    assert "ensemble's 0.942 on seed 2, where\n  BaRA's is 0.935" in docs
    bara, lora, map_, mc, ens, bara2, blob = _every_baseline_figures(results, "ECE")
    assert f"{bara} % against {mc} (MC-dropout), {map_} (MAP), {blob} (BLoB)\n  and {lora} % (LoRA)" in docs
    assert f"ensemble's {ens} % on seed 2 (BaRA {bara2} %)" in docs
    acc = re.search(r"accuracy no more than 0.5 points below LoRA \(MLE\)'s: \*\*met\*\* .*?: ([-+][\d.]+) points",
                    results).group(1)
    assert f"{acc} points over both seeds" in docs


def test_section17_seed_figures_and_costs_are_the_run_files():
    """Section 17's single-seed figures and each method's range of run wall times come from the run folders."""
    docs = DOCS.read_text()
    docs = docs[docs.index("### 17. "):docs.index("### 18. ")]
    runs = TUNED_DIR / "runs"

    def test_metrics(method, task, seed):
        return _test_split(runs / method / task, seed)

    def mean_accuracy(method):
        return 100 * sum(test_metrics(method, t, 2)["accuracy"] for t in SUITE_ORDER) / len(SUITE_ORDER)

    assert f"seed 2 alone: {mean_accuracy('bara_singular'):.1f} against {mean_accuracy('lora'):.1f} %" in docs
    arc = [test_metrics("bara_singular", "arc_challenge", s) for s in (1, 2)]
    assert f"{100 * arc[0]['accuracy']:.1f} % at seed 1, {100 * arc[1]['accuracy']:.1f} % at seed 2" in docs
    lora_arc = test_metrics("lora", "arc_challenge", 2)["nll"]
    assert f"({arc[0]['nll']:.3f}, {arc[1]['nll']:.3f}) stays below LoRA's at seed 2 ({lora_arc:.3f})" in docs
    wgs = [test_metrics("mc_dropout", "winogrande_s", s) for s in (2, 1)]
    assert (f"entropy {wgs[0]['mean_entropy']:.3f} nats and ECE {100 * wgs[0]['ece']:.1f} % (seed 1: "
            f"{wgs[1]['mean_entropy']:.3f} and {100 * wgs[1]['ece']:.1f} %)") in docs
    for label, method, pattern in (("LoRA", "lora", "*/seed2"), ("MAP", "lora_map", "*/seed2"),
                                   ("MC-dropout", "mc_dropout", "*/seed2"), ("BLoB", "blob", "*/seed2"),
                                   ("BaRA", "bara_singular", "*/seed2"),
                                   ("ensemble members", "ensemble_members", "*/seed*002"),
                                   ("an ensemble, which copies its members and evaluates\n  them on both splits,",
                                    "ensemble", "*/seed2")):
        times = _wall_times(method, pattern)
        assert len(times) == (24 if method == "ensemble_members" else 6), method
        assert f"{label} {min(times):.0f}-{max(times):.0f} s" in docs, label
    total = json.loads((TUNED_DIR / "timing_seed2.json").read_text())["wall_time_s"]
    assert f"in {total / 60:.1f} min (`timing_seed2.json`)" in docs


def test_section17_regime_table_is_training_regime_over_the_run_folders(monkeypatch):
    """Section 17's regime table: ``benchmarks/training_regime.py``'s passes, LoRA's late training accuracy and each
    method's calibration gap over seeds 1 and 2."""
    from builders import benchmark_script

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports train_accuracy_tail beside it
    regime = benchmark_script("training_regime")
    docs = DOCS.read_text()
    docs = docs[docs.index("### 17. "):docs.index("### 18. ")]
    dedented = "\n".join(line.strip() for line in docs.splitlines())  # the table sits inside a bullet
    documented = _table_rows(dedented, "| task | passes | LoRA training accuracy | gap: LoRA |")
    sizes, names = {}, dict(zip(SUITE_ORDER, ["WG-S", "ARC-C", "ARC-E", "WG-M", "OBQA", "BoolQ"]))
    assert list(documented) == list(names.values())
    for task, label in names.items():
        rows = {m: [regime.run_regime(TUNED_DIR / "runs" / m / task / f"seed{s}", 800, sizes) for s in (1, 2)]
                for m in ("lora", "lora_map", "mc_dropout", "blob", "bara_singular")}

        def mean(method, key, rows=rows):
            return sum(r[key] for r in rows[method]) / 2

        expected = [f"{mean('lora', 'passes'):.1f}", f"{mean('lora', 'train_accuracy'):.2f}",
                    *(f"{mean(m, 'gap'):+.3f}" for m in rows)]
        assert documented[label] == expected, label


def _section18() -> str:
    docs = DOCS.read_text()
    return docs[docs.index("### 18. "):docs.index("### 19. ")]


def test_section18_rank_ood_tables_and_targets_are_the_three_seed_results_md():
    """Section 18: the Brier, rank and OOD tables are results_seed123_ens2.md's, cell for cell, and the first bullet
    quotes its target lines."""
    docs, results = _section18(), TUNED_SEED123_MD.read_text()
    _assert_tables_are_results_md(docs, results, (("| joint effective rank |", "## Joint effective rank"),
                                                  *RANK_OOD_TABLES))
    flat = " ".join(docs.split())
    _assert_every_baseline_targets_quoted(flat, results, "", "seed 2")
    acc = re.search(r"accuracy no more than 0.5 points below LoRA \(MLE\)'s: \*\*met\*\* .*?: ([-+][\d.]+) points",
                    results).group(1)
    assert f"{acc} points over three seeds" in flat
    structure = re.search(r"per-layer rank range ([\d.]+-[\d.]+) \(target > 0.5\), within-sequence token-rank "
                          r"spread ([\d.]+-[\d.]+) \(target > 0.1\) over the tasks; short on ([a-z_, ]+)\)",
                          results).groups()
    assert f"span {structure[0]} components per task" in flat and f"is {structure[1]} (seeds 2-3)" in flat
    assert structure[2] == "winogrande_s, arc_challenge, arc_easy" and "below 0.1 on WG-S, ARC-C and ARC-E" in flat


def test_section18_seed_pairs_arc_and_costs_are_the_run_files():
    """Section 18's per-seed paired differences, BaRA's ARC-C figures and the run wall times come from the runs."""
    flat = " ".join(_section18().split())
    runs = TUNED_DIR / "runs"

    def paired(other, metric):
        return [_six_task("bara_singular", s, metric) - _six_task(other, s, metric) for s in (1, 2, 3)]

    for other in ("lora", "lora_map", "mc_dropout", "blob"):
        assert all(d < 0 for d in paired(other, "nll")), other
    for other in ("lora", "lora_map", "blob"):
        assert all(d < 0 for d in paired(other, "ece")), other
    nll_mc, ece_mc = paired("mc_dropout", "nll"), [100 * d for d in paired("mc_dropout", "ece")]
    assert "against MC-dropout " + ", ".join(f"{d:.3f}" for d in nll_mc) + " at seeds 1, 2, 3" in flat
    assert f"seeds 2 and 3 ({ece_mc[1]:.1f} and {ece_mc[2]:.1f} points), above it at seed 1 ({ece_mc[0]:+.1f})" in flat
    ece_map = [100 * d for d in paired("lora_map", "ece")]
    assert f"seed-1 and seed-3 margins are {-ece_map[0]:.1f} and {-ece_map[2]:.1f} points" in flat
    arc = [_test_split(runs / "bara_singular" / "arc_challenge", s) for s in (1, 2, 3)]
    assert ", ".join(f"{100 * m['accuracy']:.1f}" for m in arc[:2]) + f" and {100 * arc[2]['accuracy']:.1f} %" in flat
    assert "(" + ", ".join(f"{m['nll']:.3f}" for m in arc) + ")" in flat
    labels = {"lora": "LoRA", "lora_map": "MAP", "mc_dropout": "MC-dropout", "blob": "BLoB", "bara_singular": "BaRA"}
    for method, label in labels.items():
        times = _wall_times(method, "*/seed3")
        assert len(times) == 6 and f"{label} {min(times):.0f}-{max(times):.0f} s" in flat, method
    total = json.loads((TUNED_DIR / "timing_seed3.json").read_text())["wall_time_s"]
    assert f"in {total / 60:.1f} min (`timing_seed3.json`)" in flat


def _section19() -> str:
    docs = DOCS.read_text()
    return docs[docs.index("### 19. "):docs.index("### 20. ")]


def test_section19_ood_tables_and_targets_are_results_md():
    """Section 19: the OOD tables are results.md's, cell for cell, and the targets bullet quotes its target lines
    (the ensemble on its seeds 2 and 3)."""
    docs, results = _section19(), (TUNED_DIR / "results.md").read_text()
    _assert_tables_are_results_md(docs, results, RANK_OOD_TABLES[3:])
    assert "Ensemble 0.9390 (on seeds 2, 3, where" in results
    _assert_every_baseline_targets_quoted(" ".join(docs.split()), results, " over three seeds", "seeds 2-3")


def test_section19_seed_pairs_member_check_and_costs_are_the_run_files():
    """Section 19's paired differences against the ensemble, the retrained first member's validation figures and
    the wall times come from the run folders."""
    flat = " ".join(_section19().split())
    runs = TUNED_DIR / "runs"

    nll = [_six_task("ensemble", s, "nll") - _six_task("bara_singular", s, "nll") for s in (2, 3)]
    ece = [100 * (_six_task("ensemble", s, "ece") - _six_task("bara_singular", s, "ece")) for s in (2, 3)]
    assert f"NLL is lower by {nll[0]:.3f} and {nll[1]:.3f} and its ECE by {ece[0]:.1f} and {ece[1]:.1f} points" in flat
    for task, label in (("openbookqa", "OBQA"), ("boolq", "BoolQ")):
        d = [_test_split(runs / "bara_singular" / task, s)["nll"] - _test_split(runs / "ensemble" / task, s)["nll"]
             for s in (2, 3)]
        assert f"{d[0]:+.3f} and {d[1]:+.3f} on {label}" in flat, task
    accuracy = [100 * sum(_six_task(m, s, "accuracy") for s in (2, 3)) / 2 for m in ("ensemble", "bara_singular")]
    assert f"Its accuracy, {accuracy[0]:.1f} %, is above BaRA's on the same seeds ({accuracy[1]:.1f} %)" in flat

    def validation(method, task):
        return json.loads((runs / method / task / "seed3" / "metrics.json").read_text())["validation"]

    same = [t for t in SUITE_ORDER if validation("lora", t)["accuracy"] == validation("ensemble_members", t)["accuracy"]
            and abs(validation("lora", t)["nll"] - validation("ensemble_members", t)["nll"]) < 1e-6]
    assert same == ["winogrande_s", "arc_easy"]
    member, lora = validation("ensemble_members", "arc_challenge"), validation("lora", "arc_challenge")
    assert (f"ARC-C accuracy {100 * member['accuracy']:.1f} against {100 * lora['accuracy']:.1f} %, NLL "
            f"{member['nll']:.3f} against {lora['nll']:.3f}") in flat
    members, ensembles = _wall_times("ensemble_members", "*/seed*3"), _wall_times("ensemble", "*/seed3")
    assert len(members) == 30 and len(ensembles) == 6
    assert f"ensemble members {min(members):.0f}-{max(members):.0f} s" in flat
    assert f"both splits, {min(ensembles):.0f}-{max(ensembles):.0f} s" in flat
    total = json.loads((TUNED_DIR / "timing_ensemble_seed3.json").read_text())["wall_time_s"]
    assert f"took {total:.0f} s in two segments (`timing_ensemble_seed3.json`" in flat


def test_section18_occam_tables_are_the_grid_runs():
    """Section 18's Occam-factor tables: validation NLL, spread and rank of the two grids' seed-1 runs."""
    docs = "\n".join(line.strip() for line in _section18().splitlines())
    preset, occam = TUNED_DIR / "grid" / "runs", OCCAM_DIR / "grid" / "runs"

    def cells(root, key):
        ms = [json.loads((root / task / "seed1" / "metrics.json").read_text()) for task in SUITE_ORDER]
        value = {"nll": lambda m: f"{m['validation']['nll']:.3f}", "spread": lambda m: f"{m['token_rank_spread']:.3f}",
                 "rank": lambda m: f"{m['effective_rank']:.2f}"}[key]
        return [value(m) for m in ms]

    nll = _table_rows(docs, "| validation NLL, seed 1 |")
    other = _table_rows(docs, "| seed 1 |")
    for lr, name in (("0.0003", "3e-4"), ("0.001", "1e-3")):
        assert nll[f"preset, lr {name}"] == cells(preset / f"bara_singular@lr={lr}", "nll")
        assert nll[f"Occam factor, lr {name}"] == cells(occam / f"sing_occam@lr={lr}", "nll")
        assert other[f"Occam factor: token-rank spread, lr {name}"] == cells(occam / f"sing_occam@lr={lr}", "spread")
        assert other[f"Occam factor: effective rank, lr {name}"] == cells(occam / f"sing_occam@lr={lr}", "rank")
        assert other[f"preset: effective rank, lr {name}"] == cells(preset / f"bara_singular@lr={lr}", "rank")
        config = (occam / f"sing_occam@lr={lr}" / "openbookqa" / "seed1" / "config.yaml").read_text()
        assert "direction_occam: kfac" in config, config
    flat = " ".join(docs.split())
    low = [float(o) - float(p) for o, p in zip(cells(occam / "sing_occam@lr=0.0003", "nll"),
                                                cells(preset / "bara_singular@lr=0.0003", "nll"))]
    obqa = SUITE_ORDER.index("openbookqa")
    assert max(round(abs(d), 3) for i, d in enumerate(low) if i != obqa) == 0.006
    assert f"the Occam factor is {low[obqa]:.3f} worse on OBQA" in flat
    accuracy = [json.loads((root / "openbookqa" / "seed1" / "metrics.json").read_text())["validation"]["accuracy"]
                for root in (occam / "sing_occam@lr=0.001", preset / "bara_singular@lr=0.001")]
    assert f"accuracy {100 * accuracy[0]:.1f} against {100 * accuracy[1]:.1f} %" in flat
    model = " ".join((ROOT / "docs" / "model.md").read_text().split())
    spread = [float(v) for v in cells(occam / "sing_occam@lr=0.001", "spread")]
    assert sum(v > 0.1 for v in spread) == 5 and "lifts the spread above 0.1 on five of them at lr 1e-3" in model
    assert (f"({cells(occam / 'sing_occam@lr=0.001', 'nll')[obqa]} against "
            f"{cells(preset / 'bara_singular@lr=0.001', 'nll')[obqa]})") in model


def test_model_md_context_scale_figures_are_the_run_files():
    """docs/model.md's within-sentence bullet: the suite's spread range, and its table of the WinoGrande-S runs is
    their metrics.json."""
    text = (ROOT / "docs" / "model.md").read_text()
    flat = " ".join(text.split())
    results = (TUNED_DIR / "results.md").read_text()
    row = _table_rows(_results_section(results, "Within-sequence token-rank spread (standard deviation of the "
                                                "per-token rank over a sequence's tokens, mean over sequences "
                                                "and layers)"), "| Method |")["BaRA (singular directions)"]
    spreads = [float(c.split()[0]) for c in row[:-1]]
    assert f"{min(spreads):.3f}-{max(spreads):.3f} components per task" in flat
    assert sum(v <= 0.1 for v in spreads) == 3 and "below the 0.1 of the rank-structure target on three of six" in flat
    per_layer = [json.loads((TUNED_DIR / "runs" / "bara_singular" / task / "seed3" / "metrics.json").read_text())
                 ["token_rank_spread_per_layer"] for task in SUITE_ORDER]
    varying = [sum(v > 0.1 for v in layers.values()) for layers in per_layer]
    largest = [max(layers.values()) for layers in per_layer]
    assert all(len(layers) == 60 for layers in per_layer)
    assert f"{min(varying)}-{max(varying)} of the 60 layers per task have a spread above 0.1" in flat
    assert f"the largest {min(largest):.2f}-{max(largest):.2f} components" in flat
    assert all(sum(v > 0.1 for n, v in layers.items() if n.endswith("v_proj"))
               > sum(v > 0.1 for n, v in layers.items() if n.endswith("q_proj")) for layers in per_layer)
    runs = ROOT / "benchmarks" / "results" / "context_scale_winogrande_s_cpu_2026-12-07"
    section = text[text.index("* **Within a sentence, on SmolLM2"):]
    documented = _table_rows("\n".join(line.strip() for line in section.splitlines()), "| run | spread |")
    names = {"scale 1 (preset), seed 0": "scale1_seed0", "scale 3, seed 0": "scale3_seed0",
             "scale 1 (preset), seed 1": "scale1_seed1", "scale 3, seed 1": "scale3_seed1",
             "scale 1 with the directions' Occam factor, seed 0": "occam_seed0"}
    assert list(documented) == list(names)
    for label, folder in names.items():
        m = json.loads((runs / folder / "metrics.json").read_text())
        config = (runs / folder / "config.yaml").read_text()
        assert m["validation"]["num_examples"] == 200 and f"seed: {folder[-1]}" in config
        assert documented[label] == [f"{m['token_rank_spread']:.3f}", f"{m['validation']['nll']:.3f}",
                                     f"{m['validation']['ece']:.3f}", f"{m['effective_rank']:.2f}"], label


def test_where_the_numbers_stand_is_section17s_mean_column():
    """The quality section's summary table: each method's six-task test means, as section 17's results.md has them."""
    docs, results = DOCS.read_text(), (TUNED_DIR / "results.md").read_text()
    summary = _table_rows(docs[docs.index("**Where the numbers stand.**"):], "| six-task mean, test |")
    titles = ("ACC (%), test", "NLL, test", "ECE (%), test", "Brier, test")
    tables = [_table_rows(_results_section(results, t), "| Method |") for t in titles]
    assert list(summary) == list(tables[0])
    for method, cells in summary.items():
        assert cells == [t[method][-1] for t in tables], method
    rank = _table_rows(_results_section(results, "Joint effective rank (gated methods; expected number of active "
                                                 "components per layer)"), "| Method |")
    mean_rank = rank["BaRA (singular directions)"][-1].split()[0]
    assert f"at a joint effective rank of {mean_rank} of 8" in docs


def test_repeated_fused_gate_speed_row_is_its_result_file():
    """The repeated `bara_singular` step timing quoted under the fused-gate table is its result file's."""
    path = ROOT / "benchmarks" / "results" / "speed_bara_singular_fused_gate_nvidia-h100_2026-12-07.json"
    rows = {row["method"]: row for row in json.loads(path.read_text())["table"]}
    lora, bara = rows["lora"], rows["bara_singular"]
    flat = " ".join(DOCS.read_text().split())
    assert (f"LoRA {lora['ms']:.2f} ms, `bara_singular` {bara['ms']:.2f} ms per step, **{bara['ratio']:.3f}x**, "
            f"peak memory {bara['peak_ratio']:.3f}x") in flat


PACKED_TF32_DIR = ROOT / "benchmarks" / "results" / "quality_h100_2026-12-08_packed_tf32"


def test_section20_time_and_mean_tables_are_the_run_files():
    """Section 20: wall, train and eval seconds are the runs' timing.json, the six-task means their metrics.json,
    the fp32 repeat section 15's grid runs, and the ratio and largest differences are computed from them."""
    docs = DOCS.read_text()
    docs = docs[docs.index("### 20. "):docs.index("## KL ablation")]
    flat = " ".join(docs.split())
    settings = {"fp32, unpacked (the suite)": "fp32_unpacked", "TF32, packed": "tf32_packed"}
    walls = {}
    rows = _table_rows(docs, "| setting | 12 runs, wall s |")
    assert set(rows) == set(settings)
    for name, folder in settings.items():
        grid = PACKED_TF32_DIR / folder / "grid"
        walls[folder] = json.loads((grid / "timing.json").read_text())["wall_time_s"]
        cells = [f"{walls[folder]:.1f}"]
        for method in ("lora", "bara_singular"):
            timings = [json.loads((grid / "runs" / f"{method}@lr=0.001" / task / "seed1" / "timing.json").read_text())
                       for task in SUITE_ORDER]
            for key in ("train_time_s", "eval_time_s"):
                values = [t[key] for t in timings]
                cells.append(f"{min(values):.0f}-{max(values):.0f}")
        assert rows[name] == cells, name
        config = (grid / "runs" / "bara_singular@lr=0.001" / "boolq" / "seed1" / "config.yaml").read_text()
        assert ("pack_choices: true" in config and "tf32: true" in config) == (folder == "tf32_packed")
    assert f"took {walls['tf32_packed'] / walls['fp32_unpacked']:.2f} times the wall time" in flat
    def train_s(folder, method, task):
        path = PACKED_TF32_DIR / folder / "grid" / "runs" / f"{method}@lr=0.001" / task / "seed1" / "timing.json"
        return json.loads(path.read_text())["train_time_s"]

    speedups = []
    for method in ("lora", "bara_singular"):
        ratios = [train_s("fp32_unpacked", method, task) / train_s("tf32_packed", method, task) for task in SUITE_ORDER]
        speedups.append(f"{min(ratios):.1f}-{max(ratios):.1f}x")
    assert f"is {speedups[0]} faster for LoRA and {speedups[1]} for `bara_singular` (task by task)" in flat

    def metric(root, method, task, split, key):
        return json.loads((root / f"{method}@lr=0.001" / task / "seed1" / "metrics.json").read_text())[split][key]

    means = _table_rows(docs, "| six-task mean |")
    names = {"lora": "LoRA", "bara_singular": "`bara_singular`"}
    largest = {}
    for method, label in names.items():
        runs = {folder: PACKED_TF32_DIR / folder / "grid" / "runs" for folder in settings.values()}
        for folder, text in (("fp32_unpacked", "fp32 unpacked"), ("tf32_packed", "TF32 packed")):
            cells = [f"{sum(metric(runs[folder], method, t, 'validation', 'nll') for t in SUITE_ORDER) / 6:.3f}",
                     f"{sum(metric(runs[folder], method, t, 'test', 'nll') for t in SUITE_ORDER) / 6:.3f}",
                     f"{100 * sum(metric(runs[folder], method, t, 'test', 'accuracy') for t in SUITE_ORDER) / 6:.1f}"]
            assert means[f"{label}, {text}"] == cells, (method, folder)
        repeat = TUNED_DIR / "grid" / "runs"
        mean = sum(metric(repeat, method, t, "validation", "nll") for t in SUITE_ORDER) / 6
        assert means[f"{label}, fp32 unpacked, section 15's grid"] == [f"{mean:.3f}", "-", "-"]
        fp32, packed, again = ([metric(root, method, t, "validation", "nll") for t in SUITE_ORDER]
                               for root in (runs["fp32_unpacked"], runs["tf32_packed"], repeat))
        largest[method] = (max(abs(a - b) for a, b in zip(fp32, packed)), max(abs(a - b) for a, b in zip(fp32, again)))
    assert f"at most {largest['bara_singular'][0]:.3f} in a task's validation NLL" in flat
    assert f"of the same config differ ({largest['bara_singular'][1]:.3f})" in flat
    assert f"differ by up to {largest['lora'][0]:.3f} (ARC-C;" in flat
    assert f"the two fp32 runs differ by up to {largest['lora'][1]:.3f}" in flat
    timed = [json.loads((TUNED_DIR / name).read_text())["wall_time_s"] for name in
             ("grid/timing_baselines.json", "timing_seed2.json", "timing_seed3.json", "timing_ensemble_seed3.json")]
    assert f"timed waves took {sum(timed) / 60:.1f} min" in flat
    assert f"they would take {sum(timed) / 60 * walls['tf32_packed'] / walls['fp32_unpacked']:.1f} min" in flat
