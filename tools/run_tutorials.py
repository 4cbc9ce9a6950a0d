"""Execute the tutorials (jupytext percent-format sources in docs/tutorials/) into notebooks with outputs.

Usage (from the repository root)::

    python tools/run_tutorials.py            # every tutorial, full setting -> docs/tutorials/*.ipynb
    python tools/run_tutorials.py --fast     # the short setting the test suite uses
    python tools/run_tutorials.py 02 --out /tmp/nb   # tutorials whose file name starts with 02

The executed ``.ipynb`` files are build outputs (git-ignored), ready to open in Jupyter. Each tutorial
reads ``BARA_TUTORIAL_FAST`` in its parameters cell; a cell that raises stops the run with the cell's
traceback (``nbclient.exceptions.CellExecutionError``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"


def tutorial_sources() -> list[Path]:
    """The tutorial sources, in reading order (``NN_name.py``)."""
    return sorted(p for p in TUTORIALS.glob("[0-9][0-9]_*.py"))


def execute_tutorial(source: Path, out: Path | None = None, fast: bool = False, workdir: Path | None = None,
                     timeout: int = 900) -> "nbformat.NotebookNode":  # noqa: F821
    """Run ``source`` in a fresh Python kernel, working in ``workdir`` (default: the source's folder).

    ``fast`` sets ``BARA_TUTORIAL_FAST=1`` for the kernel. Writes the executed notebook to ``out`` when
    given and returns it; raises ``CellExecutionError`` on the first failing cell.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(source)
    previous = os.environ.get("BARA_TUTORIAL_FAST")
    os.environ["BARA_TUTORIAL_FAST"] = "1" if fast else "0"
    try:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir or source.parent)}})
        client.execute()
    finally:
        if previous is None:
            os.environ.pop("BARA_TUTORIAL_FAST", None)
        else:
            os.environ["BARA_TUTORIAL_FAST"] = previous
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="file-name prefixes of the tutorials to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="the short setting (BARA_TUTORIAL_FAST=1)")
    parser.add_argument("--out", type=Path, default=TUTORIALS, help="folder for the executed notebooks")
    args = parser.parse_args(argv)
    sources = [s for s in tutorial_sources() if not args.names or any(s.name.startswith(n) for n in args.names)]
    if not sources:
        print(f"error: no tutorial in {TUTORIALS} matches {args.names}", file=sys.stderr)
        return 2
    for source in sources:
        t0 = time.perf_counter()
        out = args.out / source.with_suffix(".ipynb").name
        execute_tutorial(source, out, fast=args.fast)
        print(f"{out}  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
