"""The shipped docs and code speak to users about the library, not about how it was made.

Scanned: README.md, everything under docs/ (Markdown, tutorial sources), the scripts and modules in
benchmarks/ and tools/ (``*.sh``, ``*.py``), the package (``bara_pyro/**``: code, docstrings, error messages,
presets), the tests and the entry-point scripts.  Not scanned: ``benchmarks/results/**``, which is data
(each ``results.md`` keeps the text its command printed on the day it ran, e.g. the protocol's former
name), and this file, which has to spell out the words it looks for.

Flagged: issue or pull-request numbers (``issue 6``, ``issue-6``, ``#12``), work sessions and rounds of
work, device budgets and call limits of a borrowed machine, and the hand-over vocabulary of a team
(``the lead``, ``the brief``).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "an issue number": r"\bissues?[ -]?#?\d+",
    "a '#N' reference": r"(?<![\w&#/])#\d+\b(?![;\w])(?!\s*[{;])",
    "a work session": r"\bsessions?\b",
    "a round of work": r"\b(this|that|next|last|previous|earlier|later|first|second|third) rounds?\b"
                       r"|\brounds? of work\b",
    "a device budget": r"\bdevice[ -](budget|time|tool|session|call)s?\b|\bbudget_left\b",
    "a call limit": r"\bcall limits?\b|\bper[ -]call limit\b",
    "a borrowed machine": r"\b(rented|lent|borrowed) (GPU|machine|device)s?\b|\bworkplace\b",
    "team hand-over words": r"\bthe (lead|brief)\b(?=\s*([.,;:)]|$))",
}
PATTERN = re.compile("|".join(f"(?P<g{i}>{p})" for i, p in enumerate(FORBIDDEN.values())), re.IGNORECASE)
LABELS = list(FORBIDDEN)


def shipped_files() -> list[Path]:
    """README, docs, benchmark scripts, the package, the tests and the entry points (not results data)."""
    files = [ROOT / "README.md", ROOT / "run", ROOT / ".ci" / "run", ROOT / "pyproject.toml"]
    files += sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in {".md", ".py", ".yml", ".yaml"})
    files += sorted(p for d in ("benchmarks", "tools") for p in (ROOT / d).glob("*") if p.suffix in {".sh", ".py"})
    files += sorted(p for p in (ROOT / "bara_pyro").rglob("*") if p.suffix in {".py", ".yaml", ".md", ".html"})
    files += sorted(p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve())
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def offending_lines(text: str) -> list[str]:
    """``'line N: <label>: <match>'`` for every forbidden phrase in ``text``."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in PATTERN.finditer(line):
            label = LABELS[int(m.lastgroup[1:])]
            found.append(f"line {n}: {label}: {m.group(0)!r}")
    return found


@pytest.mark.parametrize("text, flagged", [
    ("Targets (issue 6): met", True), ("see #16 for details", True), ("the sixth session", True),
    ("in this round of work", True), ("609 s of device time", True), ("the device budget", True),
    ("a lent GPU machine", True), ("the wiring proposal is in the report to the lead", True),
    ("color: #444; margin: 0", False), ("round-trips through to_dict", False), ("round-robin", False),
    ("a PyroModule's issues are shown", False), ("the lead dimensions of x", False),
])
def test_the_patterns_flag_what_they_should(text, flagged):
    assert bool(offending_lines(text)) is flagged


def test_shipped_files_do_not_narrate_how_the_project_was_made():
    files = shipped_files()
    assert ROOT / "docs" / "benchmarks.md" in files and ROOT / "bara_pyro" / "bench" / "quality.py" in files
    problems = [f"{p.relative_to(ROOT)} {hit}" for p in files for hit in offending_lines(p.read_text(errors="replace"))]
    assert not problems, "words that tie the docs to how the project was made:\n" + "\n".join(problems)
