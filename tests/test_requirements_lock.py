"""requirements.lock covers requirements.txt: each top-level pin appears in the lock with the same version."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {raw!r} is not pinned with =="
        pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def test_every_requirement_is_locked_at_its_version():
    required = _pins(ROOT / "requirements.txt")
    locked = _pins(ROOT / "requirements.lock")
    for name, version in required.items():
        assert name in locked, f"{name} is in requirements.txt but not in requirements.lock (run python3 tools/lock.py)"
        # the lock keeps torch's local label (+cpu); the public version must match
        assert locked[name].split("+")[0] == version, (
            f"{name}: requirements.txt pins {version}, requirements.lock {locked[name]} (run python3 tools/lock.py)"
        )


def test_lock_keeps_the_cpu_torch_and_no_cuda_packages():
    locked = _pins(ROOT / "requirements.lock")
    assert locked["torch"].endswith("+cpu")
    assert not [name for name in locked if name.startswith("nvidia-") or name == "triton"]


def test_lock_leaves_out_torchvision():
    # PyPI's torchvision is built against the CUDA torch: beside the CPU build it fails to import,
    # and transformers' model classes with it. laplace-torch declares it but never needs it here.
    assert "torchvision" not in _pins(ROOT / "requirements.lock")


def test_run_installs_the_lock_without_resolving_further():
    # without --no-deps pip would add what the lock leaves out (torchvision) from the registry
    assert "pip install -q --no-deps -r requirements.lock" in (ROOT / "run").read_text()
