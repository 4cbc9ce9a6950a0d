"""docs/benchmarks.md's quality tables are the committed suite's `results.md`, cell for cell."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SUITE_MD = ROOT / "benchmarks" / "results" / "quality_h200x4_2026-11-22" / "suite" / "results.md"
LOCAL_KL_MD = ROOT / "benchmarks" / "results" / "quality_h200x2_2026-11-22_local_kl" / "suite_lkl" / "results.md"


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


@pytest.mark.parametrize("section, results_md", [("### 3. ", SUITE_MD), ("### 4. ", LOCAL_KL_MD)])
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
