"""Manifests for weights obtained any way: the demo set's own, files already on disk, a hub cache.

The hub cache is built in the test from the tiny set, laid out as huggingface_hub lays it out
(``models--ORG--NAME/{blobs,refs,snapshots/<commit>}`` with relative symlinks into ``blobs``), and
the import runs with no network at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub.file_download import repo_folder_name
from typer.testing import CliRunner

from pipelines import load_registry
from pipelines.registry import require_files
from pipelines.weights_manifest import entries, read_manifest, verify
from server.cli import app

TRANSFORMER = "qwen-image-edit/transformer/diffusion_pytorch_model.safetensors"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_source(tiny_weights) -> Path:
    """The session's demo set (tests/conftest.py); every test works on a copy of it."""
    return tiny_weights.parent


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def demo(tiny_source, tmp_path) -> Path:
    shutil.copytree(tiny_source, tmp_path / "demo")
    return tmp_path / "demo" / "weights.yaml"


def retouch(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_demo_set_verifies_out_of_the_box_and_names_a_flipped_byte(demo):
    assert (demo.parent / "weights.manifest.json").is_file()
    code, out, err = retouch("weights", "verify", "--weights", str(demo))
    assert code == 0 and out.startswith("ok:"), err
    flip_byte(demo.parent / TRANSFORMER)
    code, _, err = retouch("weights", "verify", "--full", "--weights", str(demo))
    assert code == 2 and "transformer/diffusion_pytorch_model.safetensors" in err


def test_demo_set_bundles_and_imports_end_to_end(demo, tmp_path):
    tar = tmp_path / "demo.tar"
    assert retouch("weights", "bundle", str(tar), "--weights", str(demo))[0] == 0
    code, out, err = retouch("weights", "import", str(tar), "--dest", str(tmp_path / "carried"))
    assert code == 0, err
    assert verify(load_registry(tmp_path / "carried" / "weights.yaml"), full=True) == []


def test_manifest_command_hashes_the_files_on_disk_and_names_extra_and_missing_ones(demo):
    (demo.parent / "weights.manifest.json").unlink()
    stray = demo.parent / "qwen-image-lightning" / "notes.txt"
    stray.write_text("not a declared LoRA")
    code, out, err = retouch("weights", "manifest", "--weights", str(demo))
    assert code == 0, err
    assert f"extra (declared by no entry, left out): {stray}" in err
    registry = load_registry(demo)
    assert verify(registry, full=True) == []
    assert "qwen-image-lightning/notes.txt" not in str(read_manifest(registry))

    lora = demo.parent / "qwen-image-lightning" / "lightning-4steps.safetensors"
    lora.unlink()
    code, _, err = retouch("weights", "manifest", "--weights", str(demo))
    assert code == 2 and str(lora) in err and "Traceback" not in err


def test_manifest_command_takes_the_commit_from_huggingface_hub_local_dir_metadata(demo):
    commit = "ab" * 20
    meta = demo.parent / "z-image-turbo" / ".cache" / "huggingface" / "download" / "model_index.json.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text(f'{commit}\n"etag"\n1700000000.0\n')
    assert retouch("weights", "manifest", "--weights", str(demo))[0] == 0
    recorded = read_manifest(load_registry(demo))["entries"]
    assert recorded["z-image-turbo-tiny"]["commit"] == commit
    assert recorded["qwen-image-edit-tiny"]["commit"] is None  # no metadata: the registry's "local" pin


# -- a hub cache, exactly as huggingface_hub lays it out ---------------------------------------
def build_hub_cache(tiny_source: Path, cache: Path) -> dict[str, str]:
    """The tiny set's repositories as a hub cache at ref ``local``; returns hub id -> commit."""
    registry = load_registry(tiny_source / "weights.yaml")
    repos: dict[str, list[tuple[str, Path]]] = {}
    for e in entries(registry):
        if e.kind == "model":
            folder = registry.resolve(e.path)
            files = [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()]
        else:
            files = [("/".join(Path(e.path).parts[1:]), registry.resolve(e.path))]
        repos.setdefault(e.hub_id, []).extend(files)
    commits = {}
    for hub_id, files in repos.items():
        repo = cache / repo_folder_name(repo_id=hub_id, repo_type="model")
        commit = hashlib.sha1(hub_id.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "local").write_text(commit)
        for rel, src in dict(files).items():  # a LoRA file both edit models declare is one file
            blob = repo / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, blob)
            link = repo / "snapshots" / commit / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        commits[hub_id] = commit
    return commits


@pytest.fixture
def cache_and_empty_registry(tiny_source, tmp_path):
    cache = tmp_path / "hub"
    commits = build_hub_cache(tiny_source, cache)
    empty = tmp_path / "fresh"
    empty.mkdir()
    shutil.copyfile(tiny_source / "weights.yaml", empty / "weights.yaml")
    return cache, empty / "weights.yaml", commits


def test_import_from_hf_cache_lays_out_hard_links_and_writes_a_verifying_manifest(cache_and_empty_registry):
    cache, weights, commits = cache_and_empty_registry
    code, out, err = retouch("weights", "import", "--from-hf-cache", str(cache), "--weights", str(weights))
    assert code == 0, err
    registry = load_registry(weights)
    require_files(registry)  # the engine's own check: everything `serve` loads is there
    assert verify(registry, full=True) == []
    recorded = read_manifest(registry)["entries"]
    assert recorded["qwen-image-edit-tiny"]["commit"] == commits["retouch/tiny-random-qwen-image-edit"]
    assert (
        recorded["qwen-image-edit-tiny.loras.lightning-8"]["commit"]
        == commits["retouch/tiny-random-lightning"]
    )
    placed = weights.parent / TRANSFORMER
    snap = cache / "models--retouch--tiny-random-qwen-image-edit" / "snapshots"
    blob = (snap / commits["retouch/tiny-random-qwen-image-edit"] / TRANSFORMER.split("/", 1)[1]).resolve()
    assert not placed.is_symlink() and placed.stat().st_ino == blob.stat().st_ino  # a hard link, no copy


def test_import_from_hf_cache_with_copy_copies(cache_and_empty_registry):
    cache, weights, _ = cache_and_empty_registry
    assert (
        retouch("weights", "import", "--from-hf-cache", str(cache), "--weights", str(weights), "--copy")[0]
        == 0
    )
    placed = weights.parent / TRANSFORMER
    assert placed.stat().st_nlink == 1 and verify(load_registry(weights), full=True) == []


def test_a_cache_without_the_pinned_revision_is_one_line_naming_path_and_revision(cache_and_empty_registry):
    cache, weights, _ = cache_and_empty_registry
    registry = yaml.safe_load(weights.read_text())
    registry["models"]["z-image-turbo-tiny"]["revision"] = "v2"
    weights.write_text(yaml.safe_dump(registry))
    code, _, err = retouch("weights", "import", "--from-hf-cache", str(cache), "--weights", str(weights))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "retouch/tiny-random-z-image-turbo@v2" in lines[0]
    assert str(cache / "models--retouch--tiny-random-z-image-turbo" / "refs" / "v2") in lines[0]
    assert not (weights.parent / "qwen-image-edit").exists()  # nothing half-imported


def test_a_file_the_cache_lacks_is_one_line_naming_it(cache_and_empty_registry):
    cache, weights, commits = cache_and_empty_registry
    snapshot = (
        cache
        / "models--retouch--tiny-random-lightning"
        / "snapshots"
        / commits["retouch/tiny-random-lightning"]
    )
    (snapshot / "lightning-4steps.safetensors").unlink()
    code, _, err = retouch("weights", "import", "--from-hf-cache", str(cache), "--weights", str(weights))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "retouch/tiny-random-lightning@local" in lines[0] and "lightning-4steps.safetensors" in lines[0]
    assert "Traceback" not in err
