"""results.md's provenance and protocol lines: the code version without git, each override once, times."""

import os
import shutil
import subprocess
import sys

from bara_pyro.bench import quality_report
from bara_pyro.bench.quality_report import code_version, effective_overrides, format_markdown, package_files_sha256


def _results(**extra):
    return {"methods": ["lora"], "tasks": ["boolq"], "seeds": [1], "date": "today", "command": "bara-pyro bench",
            "machine": {"device": "CPU", "torch": "x", "python": "y"}, "wall_time_s": 600.0,
            "protocol": {"model": "m", "steps": 3, "model_selection": "final step", "deviations": [],
                         "overrides": ["adapter.r=8", "train.lr=1e-4", "eval.num_samples=10", "adapter.r=16"]},
            "runs": [], "aggregates": {split: {m: {} for m in ("accuracy", "nll", "ece", "brier")}
                                       for split in ("test", "validation")} | {"effective_rank": {}},
            "anchor": [], "targets": [], **extra}


def test_each_override_is_shown_once_with_the_value_that_wins():
    assert effective_overrides(["adapter.r=8", "train.lr=1e-4", "adapter.r=16"]) == ["adapter.r=16", "train.lr=1e-4"]
    md = format_markdown(_results(git_commit=None, code={"version": "0.1.0", "files_sha256": "ab" * 32}))
    assert "- every run: `adapter.r=16`, `train.lr=1e-4`, `eval.num_samples=10`\n" in md


def test_code_version_without_git(tmp_path):
    """A copy without .git still records the package version and the same hash of the package's files."""
    shutil.copytree(quality_report.PACKAGE_ROOT, tmp_path / "bara_pyro", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from bara_pyro.bench import quality_report as q; print(q.git_commit()); print(q.package_files_sha256())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}).stdout.split()
    assert out == ["None", package_files_sha256()]
    version = code_version()
    md = format_markdown(_results(git_commit=None, code=version))
    assert f"- code: bara_pyro {version['version']}, package files sha256 `{version['files_sha256'][:16]}`\n" in md
    assert "unknown" not in md and "git commit" not in md


def test_files_hash_changes_with_a_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p.yaml").write_text("a: 1\n")
    before = package_files_sha256(tmp_path)
    assert package_files_sha256(tmp_path) == before
    (tmp_path / "presets" / "p.yaml").write_text("a: 2\n")
    assert package_files_sha256(tmp_path) != before


def test_wall_time_names_the_invocations():
    md = format_markdown(_results(git_commit="abc", code={"version": "0.1.0", "files_sha256": "0" * 64}, segments=3))
    assert "- wall time: 10.0 min (over 3 invocations of the command)\n" in md and "git commit abc" in md


def test_git_commit_of_this_checkout_when_there_is_one():
    root = quality_report.PACKAGE_ROOT.parent
    inside = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode == 0
    assert (quality_report.git_commit() is not None) == inside
