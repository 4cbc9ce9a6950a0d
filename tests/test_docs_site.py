"""The documentation site builds with warnings as errors, documents exactly the public names, and fails
on a broken reference (mkdocs.yml; ``mkdocs build --strict``)."""

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocstrings")
pytest.importorskip("mkdocs_jupyter")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
mkdocs_hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mkdocs_hooks)


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1", "BARA_DOCS_EXECUTE": "false"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _directives(page: Path) -> list[str]:
    """The modules a reference page renders with their members (``::: name`` not followed by members: false)."""
    text = page.read_text()
    return [m.group(1) for m in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", text + "\n", re.M)
            if "members: false" not in m.group(2)]


def test_site_builds_strictly_and_documents_exactly_the_public_names(tmp_path):
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    assert "Two commands on a fresh machine" in (site / "index.html").read_text()  # the README is the home page
    for tutorial in sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]_*.py")):
        assert (site / "tutorials" / tutorial.stem / "index.html").is_file()
    pages = sorted(p for p in (ROOT / "docs" / "api").glob("*.md") if p.stem != "index")
    documented = set()
    for page in pages:
        html = (site / "api" / page.stem / "index.html").read_text()
        for module in _directives(page):
            documented.add(module)
            shown = set(re.findall(rf'id="{re.escape(module)}\.([A-Za-z_]\w*)"', html)) - {
                m.rpartition(".")[2] for m in _directives(page) if m.startswith(module + ".")}
            public = set(importlib.import_module(module).__all__)
            assert shown == public, f"{module}: missing {sorted(public - shown)}, not public {sorted(shown - public)}"
    packages = {f"bara_pyro.{p.name}" for p in (ROOT / "bara_pyro").iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"bara_pyro.presets"} <= documented | {"bara_pyro.bench"}, "a package has no reference page"


def test_a_broken_reference_fails_the_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Broken\n\n::: bara_pyro.models.NoSuchPrior\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: broken\ndocs_dir: {tmp_path / 'docs'}\nplugins:\n  - mkdocstrings:\n"
                      f"      handlers:\n        python:\n          paths: [{ROOT}]\n")
    result = _build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "NoSuchPrior" in result.stdout + result.stderr


@pytest.mark.parametrize("rst, markdown", [
    ("see :class:`~bara_pyro.models.BaRAConfig`", "see `BaRAConfig`"),
    ("see :func:`bara_pyro.inference.fit`", "see `bara_pyro.inference.fit`"),
    (r"rank :math:`s = \sum_k p_k`", r"rank $s = \sum_k p_k$"),
    ("written as nested specs::\n\n    prior: x", "written as nested specs:\n\n    prior: x"),
    ("Text\n\n.. math::\n    a = b\n\nAfter", "Text\n\n\n$$\na = b\n$$\n\nAfter"),
    ("==  ==\na   b\n==  ==\n1   2\n==  ==\nafter", "```text\n==  ==\na   b\n==  ==\n1   2\n==  ==\n```\nafter"),
])
def test_docstring_rst_is_rewritten_as_markdown(rst, markdown):
    assert mkdocs_hooks.rst_to_markdown(rst) == markdown
