"""Every tutorial in docs/tutorials runs top to bottom in a fresh kernel (a cell that raises fails the test).

The default run uses each tutorial's short setting (``BARA_TUTORIAL_FAST=1``, set through the parameters
cell); the full setting, as a reader runs it, is marked slow and full_tutorial (left out by default:
``-m full_tutorial`` runs it).  Tutorial cells check their own claims (e.g. a closed-form KL against Monte
Carlo, the recovered components) with ``assert``.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_tutorials", ROOT / "tools" / "run_tutorials.py")
run_tutorials = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_tutorials)

SOURCES = run_tutorials.tutorial_sources()


def test_the_four_tutorials_are_found():
    assert [s.name[:2] for s in SOURCES] == ["01", "02", "03", "04"]


def _outputs(notebook) -> str:
    return "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for o in cell.get("outputs", []))


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_tutorial_runs_in_its_fast_setting(source, tmp_path):
    notebook = run_tutorials.execute_tutorial(source, tmp_path / source.with_suffix(".ipynb").name, fast=True,
                                              workdir=tmp_path)
    assert (tmp_path / source.with_suffix(".ipynb").name).is_file()
    assert not [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert _outputs(notebook)  # the cells printed something


@pytest.mark.slow
@pytest.mark.full_tutorial
@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_tutorial_runs_in_full(source, tmp_path):
    # the fine-tuning cell trains and evaluates both methods in one cell: allow an hour on a busy machine
    run_tutorials.execute_tutorial(source, tmp_path / source.with_suffix(".ipynb").name, fast=False, workdir=tmp_path,
                                   timeout=3600)
