"""Write requirements.lock: every package that ``pip install -r requirements.txt`` installs, pinned.

Usage (from the repository root, with CPython 3.11 on linux x86_64, the platform the lock is for)::

    python3 tools/lock.py

pip resolves requirements.txt from scratch (``--dry-run --ignore-installed --report``), so the
result does not depend on what the running environment already has. torch keeps its local
version label (``2.13.0+cpu``): the lock names the CPU build, never a CUDA build.

``./run`` installs the lock with ``pip install --no-deps``: the lock is the complete set, so pip
resolves nothing further. That lets the lock leave out packages in ``EXCLUDED``, which a dependency
declares but the library never imports and which would break the install (see their reasons).
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Declared by a dependency, never imported by bara_pyro's code paths, and harmful when installed.
EXCLUDED = {
    # laplace-torch and backpack-for-pytorch declare it; PyPI's torchvision is built against the CUDA
    # torch and fails to import beside the CPU build ("operator torchvision::nms does not exist"),
    # and transformers then fails to import its model classes.
    "torchvision": "breaks transformers' imports beside the CPU build of torch",
}

HEADER = """\
# Complete lock of requirements.txt: every package ./run installs, each pinned exactly.
# Install with --no-deps (./run does): the set is complete, and torchvision, which laplace-torch declares
# but never needs here, is left out on purpose (tools/lock.py says why).
# For CPython 3.11 on linux x86_64. torch is the CPU build: pip takes it from a local wheel or from PyTorch's
# CPU index (pip install --no-deps --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock).
# Refresh after editing requirements.txt:  python3 tools/lock.py
"""


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name (``PyYAML`` -> ``pyyaml``, ``typing_extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(requirements: Path) -> dict[str, str]:
    """Ask pip for the full install set of ``requirements``; returns canonical name -> version."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), "-r", str(requirements)],
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    return {canonical_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def main() -> int:
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
        print(f"error: the lock is for CPython 3.11 on linux x86_64; this is Python "
              f"{platform.python_version()} on {sys.platform} {platform.machine()}", file=sys.stderr)
        return 2
    pins = resolve(ROOT / "requirements.txt")
    if not pins.get("torch", "").endswith("+cpu"):
        print(f"error: pip resolved torch {pins.get('torch')!r}, not the CPU build", file=sys.stderr)
        return 2
    lines = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in EXCLUDED]
    (ROOT / "requirements.lock").write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote requirements.lock ({len(lines)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
