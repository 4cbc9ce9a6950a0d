import re
import shutil
import subprocess
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from _analysis_runs import assert_not_blank, ink_fractions, make_gates, make_run_dir

from bara_pyro.analysis import write_report
from bara_pyro.analysis.diagnostics import token_rank_spread

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [
        make_run_dir(root / "lora", method="lora", seed=0, gated=False, sample_loglik=False),
        make_run_dir(root / "bara_seed0", method="bara", seed=0),
        make_run_dir(root / "bara_seed1", method="bara", seed=1),
        make_run_dir(root / "mc_dropout", method="mc_dropout", seed=2, gated=False),  # samples, no gates
    ]


@pytest.fixture(scope="module")
def report(runs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return write_report(runs, num_draws=300)


def _pngs(md_path: Path) -> list[str]:
    return sorted(p.name for p in (md_path.parent / "figures").glob("*.png"))


def test_report_files_and_default_location(runs, report):
    html_path, md_path = report
    assert html_path == runs[0].parent / "report" / "report.html" and md_path.name == "report.md"
    assert html_path.stat().st_size > 10_000 and md_path.stat().st_size > 1_000
    figures = _pngs(md_path)
    kinds = ("reliability", "training_curves", "rank_usage", "effective_rank", "token_gate_map", "forest_pi")
    for run in ("bara_seed0", "bara_seed1"):
        assert all(f"{run}_{kind}.png" in figures for kind in kinds)
    assert {"lora_reliability.png", "lora_training_curves.png"} <= set(figures)
    assert not any(name.startswith("lora_rank") for name in figures)


def test_report_references_every_figure(report):
    html_path, md_path = report
    html, md = html_path.read_text(), md_path.read_text()
    figures = _pngs(md_path)
    for name in figures:
        assert f"](figures/{name})" in md
        assert f'data-file="figures/{name}"' in html
    assert html.count('src="data:image/png;base64,') == len(figures)


def test_report_html_is_self_contained(report):
    html = report[0].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert re.search(r"<style>.+</style>", html, re.DOTALL)


def test_report_content(report):
    html_path, md_path = report
    md = md_path.read_text()
    for needle in (
        "## Metrics",
        "PSIS k-hat",
        "k-hat",
        "| ESS | largest weight |",
        "Dead components",
        "Effective rank",
        "Usage against size",
        "Gate confidence",
        "entropy / log 2",
        "elpd_loo",
        "R-hat",
        "az.summary of pi",
        "bert.encoder.layer.1.attention.self.query",
    ):
        assert needle in md, needle
    assert "each chain is an independent fit" in md  # two seeds of bara -> R-hat across fits is shown
    assert "| bara_seed0 | bara | bert-tiny |" in md
    assert "| update rank |" in md and "| 2.346 |" in md  # the metrics table's update rank
    assert "| sum_k E[pi_lk] | update rank |" in md and "| 1.75 |" in md  # per layer, from metrics.json
    assert md.count("| mc_dropout |") == 3  # metrics, lppd/LOO and compare tables; it has no gates section
    assert "| lora |" in md and md.count("| lora |") == 1  # no sample_loglik: metrics table only
    spread = token_rank_spread(make_gates(seed=0))  # the first bara run's gates: sequences of 4 tokens
    assert f"within a sequence a token's rank differs from the sequence's mean by {spread:.3f} components" in md


def test_single_run_report_explains_missing_rhat(tmp_path):
    run = make_run_dir(tmp_path / "bara", method="bara")
    html_path, md_path = write_report(run, num_draws=200)
    assert html_path.parent == run / "report"
    md = md_path.read_text()
    assert "R-hat is not shown for a single fit" in md and "compare ranks" in md


def test_plain_lora_run_report(tmp_path):
    run = make_run_dir(tmp_path / "lora", method="lora", gated=False, sample_loglik=False)
    (run / "train_log.jsonl").unlink()
    (run / "predictions.npz").unlink()
    html_path, md_path = write_report([run], out_dir=tmp_path / "out")
    assert _pngs(md_path) == [] and "no gates.npz" in md_path.read_text()
    assert "<table>" in html_path.read_text()


def test_partial_gates_report(tmp_path):
    """gates.npz with only the global guide: the token-level parts are skipped, not crashed on."""
    run = make_run_dir(tmp_path / "bara", method="bara")
    gates = make_gates(0)
    keep = ("layer_names", "pi_alpha", "pi_beta", "lambda_shape", "lambda_rate")
    np.savez(run / "gates.npz", **{k: gates[k] for k in keep})
    _, md_path = write_report(run, num_draws=200)
    md = md_path.read_text()
    assert "no log_importance_weights" in md
    assert {p.split("_", 1)[1] for p in _pngs(md_path)} == {
        "reliability.png",
        "training_curves.png",
        "rank_usage.png",
        "forest_pi.png",
    }


def test_report_of_runs_without_a_magnitude_prior(tmp_path):
    """Gates with q(pi) but no q(lambda) (a preset with ``magnitude: none``), two seeds: pi is summarised and
    compared across fits, lambda is left out instead of failing."""
    runs = []
    for seed in (0, 1):
        run = make_run_dir(tmp_path / f"slab_seed{seed}", method="bara_slab", seed=seed)
        gates = dict(np.load(run / "gates.npz"))
        np.savez(run / "gates.npz", **{k: v for k, v in gates.items() if not k.startswith("lambda_")})
        runs.append(run)
    _, md_path = write_report(runs, num_draws=200)
    md = md_path.read_text()
    assert "az.summary of pi" in md and "az.summary of lambda" not in md
    assert "| bara_slab | bert-tiny | slab_seed0, slab_seed1 |" in md  # R-hat across the two fits, pi only
    assert "| - | - |" in md


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (install: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    screenshot = tmp_path / "report.png"
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,2000",
        report[0].resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    image = mpimg.imread(screenshot)
    assert image.shape[:2] == (2000, 1200)
    print("chromium screenshot ink fractions", ink_fractions(image))
    assert_not_blank(image, min_ink=0.03, min_colour=0.005)  # tables, text and the first embedded figures


def test_usage_against_size_when_every_component_carries(tmp_path):
    """Components of equal norm all carry the update: no 'others', shown as '-', and they add 0 to the rank."""
    run = make_run_dir(tmp_path / "bara", method="bara")
    gates = dict(make_gates(0))
    gates["component_norm"] = np.ones_like(gates["component_norm"])
    np.savez(run / "gates.npz", **gates)
    _, md_path = write_report(run, num_draws=200)
    rows = [line for line in md_path.read_text().splitlines() if line.startswith("| 0.2 |")]
    assert rows == [f"| 0.2 | {gates['component_norm'].size} of {gates['component_norm'].size} | "
                    f"{gates['token_gate_prob'].mean():.3g} | - | 0 |"]
