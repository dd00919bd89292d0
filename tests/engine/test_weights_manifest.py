"""Air-gapped weights on the tiny set: manifest, fast and full verify, bundle/import, pull.

The hub is never contacted: pull runs against a fake of huggingface_hub's download functions
that copies from the tiny set, i.e. only the network boundary is replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from pipelines import load_registry
from pipelines import weights_manifest as wm
from pipelines.cli_weights import import_command, verify_command
from pipelines.weights_bundle import bundle, import_bundle
from pipelines.weights_manifest import (
    HASH_CACHE_NAME,
    ManifestError,
    verify,
    write_manifest,
)
from pipelines.weights_pull import pull

ROOT = Path(__file__).resolve().parents[2]
REAL_HUB = {n: getattr(huggingface_hub, n) for n in ("model_info", "snapshot_download", "hf_hub_download")}
TRANSFORMER = "qwen-image-edit/transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    from pipelines import build_tiny_weights

    return build_tiny_weights(tmp_path_factory.mktemp("tiny-src")).parent


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def weights(tiny_source, tmp_path) -> Path:
    """A private copy of the tiny set (tests tamper with it), with its manifest written."""
    shutil.copytree(tiny_source, tmp_path / "set")
    path = tmp_path / "set" / "weights.yaml"
    write_manifest(load_registry(path))
    return path


def flip_byte(path: Path, *, keep_mtime: bool) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_manifest_lists_every_file_and_verify_passes(weights):
    manifest = json.loads((weights.parent / "weights.manifest.json").read_text())
    recorded = manifest["entries"]
    assert set(recorded) == {
        "qwen-image-edit-tiny",
        "qwen-image-edit-tiny.loras.lightning-8",
        "qwen-image-edit-tiny.loras.lightning-4",
        "qwen-image-edit-tiny.loras.anime-style",
        "qwen-image-edit-2509-tiny",
        "qwen-image-edit-2509-tiny.loras.lightning-8",
        "qwen-image-edit-2509-tiny.loras.lightning-4",
        "qwen-image-edit-2509-tiny.loras.anime-style",
        "qwen-image-2.1-tiny",
        "z-image-turbo-tiny",
    }
    edit = recorded["qwen-image-edit-tiny"]
    assert (edit["hub_id"], edit["revision"]) == ("retouch/tiny-random-qwen-image-edit", "local")
    on_disk = {
        p.relative_to(weights.parent / "qwen-image-edit").as_posix()
        for p in weights.parent.glob("qwen-image-edit/**/*")
        if p.is_file()
    }
    assert set(edit["files"]) == on_disk and "model_index.json" in on_disk
    file = weights.parent / TRANSFORMER
    meta = edit["files"]["transformer/diffusion_pytorch_model.safetensors"]
    assert meta == {"size": file.stat().st_size, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    lora = recorded["qwen-image-edit-tiny.loras.lightning-8"]
    assert list(lora["files"]) == ["lightning-8steps.safetensors"]
    registry = load_registry(weights)
    assert verify(registry, full=True) == [] and verify(registry, full=False) == []


def test_tampered_byte_is_caught_by_full_verify_and_by_fast_verify_once_mtime_moves(weights):
    registry = load_registry(weights)
    file = weights.parent / TRANSFORMER
    flip_byte(file, keep_mtime=True)
    # Same size and mtime: the fast path trusts its cache by design; the full rehash does not.
    assert verify(registry, full=False) == []
    (problem,) = verify(registry, full=True)
    assert "SHA-256 mismatch" in problem and str(file) in problem and "qwen-image-edit-tiny" in problem
    write_manifest(registry)
    flip_byte(file, keep_mtime=False)
    (problem,) = verify(registry, full=False)
    assert "SHA-256 mismatch" in problem and str(file) in problem


def test_missing_and_truncated_files_are_named(weights):
    registry = load_registry(weights)
    vae = weights.parent / "z-image-turbo/vae/diffusion_pytorch_model.safetensors"
    vae.unlink()
    lora = weights.parent / "qwen-image-lightning/lightning-4steps.safetensors"
    lora.write_bytes(lora.read_bytes()[:-10])
    problems = verify(registry, full=False)
    assert len(problems) == 2
    assert any(p.startswith("z-image-turbo-tiny: missing file") and str(vae) in p for p in problems)
    assert any("lightning-4: size mismatch" in p and str(lora) in p for p in problems)


def test_fast_verify_reads_no_unchanged_file(weights, monkeypatch):
    registry = load_registry(weights)
    assert (registry.base_dir() / HASH_CACHE_NAME).is_file()
    calls: list[Path] = []
    real = wm.sha256_file
    monkeypatch.setattr(wm, "sha256_file", lambda p: calls.append(p) or real(p))
    assert verify(registry, full=False) == [] and calls == []
    n_files = sum(len(e["files"]) for e in wm.read_manifest(registry)["entries"].values())
    assert verify(registry, full=True) == [] and len(calls) == n_files
    calls.clear()
    touched = weights.parent / "qwen-image-lightning/anime-style.safetensors"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 5_000_000_000))
    assert verify(registry, full=False) == [] and calls == [touched]
    calls.clear()
    assert verify(registry, full=False) == [] and calls == []


def test_bundle_then_import_gives_a_verified_loadable_set(weights, tmp_path):
    tar_path = bundle(load_registry(weights), tmp_path / "set.tar")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert names[:2] == ["weights.yaml", "weights.manifest.json"]
    assert TRANSFORMER in names and "qwen-image-lightning/anime-style.safetensors" in names
    assert not any(HASH_CACHE_NAME in n for n in names)
    imported = import_bundle(tar_path, tmp_path / "airgapped")
    assert imported == tmp_path / "airgapped" / "weights.yaml"
    registry = load_registry(imported)
    assert registry.missing_files() == [] and verify(registry, full=True) == []
    assert (tmp_path / "airgapped" / TRANSFORMER).read_bytes() == (weights.parent / TRANSFORMER).read_bytes()
    with pytest.raises(ManifestError, match="not empty"):
        import_bundle(tar_path, tmp_path / "airgapped")


def test_bundle_of_a_registry_whose_root_is_a_subfolder(weights, tmp_path):
    # The production weights.yaml sits beside ./weights; in the bundle the files sit beside it.
    text = weights.read_text().replace("root: .", "root: ./set # the weights folder")
    outer = tmp_path / "prod.yaml"
    outer.write_text(text)
    registry = load_registry(outer)
    write_manifest(registry)
    assert (tmp_path / "prod.manifest.json").is_file()
    imported = import_bundle(bundle(registry, tmp_path / "prod.tar"), tmp_path / "airgapped")
    assert "root: .\n" in imported.read_text()
    assert verify(load_registry(imported), full=True) == []


def test_bundle_refuses_a_tampered_set_and_leaves_no_tar(weights, tmp_path):
    flip_byte(weights.parent / TRANSFORMER, keep_mtime=False)
    with pytest.raises(ManifestError, match="refusing to bundle.*diffusion_pytorch_model.safetensors"):
        bundle(load_registry(weights), tmp_path / "set.tar")
    assert not list(tmp_path.glob("set.tar*"))


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("weights.yaml", "weights.manifest.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_import_refuses_unsafe_members(tmp_path, kind):
    member = tarfile.TarInfo({"dotdot": "../evil", "absolute": "/tmp/evil"}.get(kind, "evil"))
    if kind == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "device":
        member.type = tarfile.CHRTYPE
    tar_path = _tar_with(tmp_path, member)
    with pytest.raises(ManifestError, match="refusing unsafe member"):
        import_bundle(tar_path, tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest" / "evil").exists() and not (tmp_path / "dest" / "inner").exists()


def test_import_names_a_file_altered_inside_the_bundle(weights, tmp_path):
    good = bundle(load_registry(weights), tmp_path / "set.tar")
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = bytearray(src.extractfile(m).read())
            if m.name == TRANSFORMER:
                data[100] ^= 1
            dst.addfile(m, io.BytesIO(bytes(data)))
    with pytest.raises(ManifestError, match="SHA-256 mismatch.*transformer/diffusion_pytorch_model"):
        import_bundle(bad, tmp_path / "airgapped")


class FakeHub:
    """Stands in for huggingface_hub's network calls: 'repos' are folders of the tiny set."""

    def __init__(self, repos: dict[str, Path]):
        self.repos, self.calls = repos, []

    def model_info(self, repo_id, revision=None, **_):
        self.calls.append(("model_info", repo_id, revision))
        return SimpleNamespace(sha=hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest())

    def snapshot_download(self, repo_id, *, revision, local_dir, **_):
        self.calls.append(("snapshot_download", repo_id, revision, Path(local_dir)))
        shutil.copytree(self.repos[repo_id], local_dir, dirs_exist_ok=True)
        # The real client keeps resume metadata here; it must stay out of the manifest.
        meta = Path(local_dir) / ".cache/huggingface/download/model_index.json.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(revision)
        return str(local_dir)

    def hf_hub_download(self, repo_id, filename, *, revision, local_dir, **_):
        self.calls.append(("hf_hub_download", repo_id, filename, revision, Path(local_dir)))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.repos[repo_id] / Path(filename).name, target)
        return str(target)

    def install(self, monkeypatch):
        for name in ("model_info", "snapshot_download", "hf_hub_download"):
            monkeypatch.setattr(huggingface_hub, name, getattr(self, name))
        return self


@pytest.fixture
def empty_tiny_registry(tiny_source, tmp_path, monkeypatch):
    shutil.copyfile(tiny_source / "weights.yaml", tmp_path / "weights.yaml")
    lightning = tiny_source / "qwen-image-lightning"
    repos = {
        "retouch/tiny-random-qwen-image-edit": tiny_source / "qwen-image-edit",
        "retouch/tiny-random-qwen-image-edit-2509": tiny_source / "qwen-image-edit-2509",
        "retouch/tiny-random-qwen-image-2.1": tiny_source / "qwen-image-2.1",
        "retouch/tiny-random-z-image-turbo": tiny_source / "z-image-turbo",
        "retouch/tiny-random-lightning": lightning,
        "retouch/tiny-random-style": lightning,
    }
    return load_registry(tmp_path / "weights.yaml"), FakeHub(repos).install(monkeypatch)


def test_pull_downloads_at_the_resolved_commit_and_writes_the_manifest(empty_tiny_registry):
    registry, hub = empty_tiny_registry
    manifest = pull(registry, progress=False)
    root = registry.base_dir()
    assert (root / TRANSFORMER).is_file() and (
        root / "qwen-image-lightning/lightning-8steps.safetensors"
    ).is_file()
    commit = hashlib.sha1(b"retouch/tiny-random-qwen-image-edit@local").hexdigest()
    assert (
        "snapshot_download",
        "retouch/tiny-random-qwen-image-edit",
        commit,
        root / "qwen-image-edit",
    ) in hub.calls
    assert ("hf_hub_download", "retouch/tiny-random-lightning", "lightning-8steps.safetensors") in {
        c[:3] for c in hub.calls
    }
    recorded = json.loads(manifest.read_text())["entries"]
    assert recorded["qwen-image-edit-tiny"]["commit"] == commit
    assert not any(".cache" in f for f in recorded["qwen-image-edit-tiny"]["files"])
    assert verify(registry, full=True) == []


def test_pull_only_one_lora_fetches_just_that_file(empty_tiny_registry):
    registry, hub = empty_tiny_registry
    pull(registry, only="anime-style", progress=False)
    assert [c[0] for c in hub.calls] == ["model_info", "hf_hub_download"]
    problems = verify(registry, full=False)
    assert any("qwen-image-edit-tiny: not in the manifest" in p for p in problems)
    assert not any("anime-style" in p for p in problems)
    with pytest.raises(ManifestError, match="no such model or LoRA"):
        pull(registry, only="nope", progress=False)


def test_pull_maps_production_lora_paths_to_repo_filenames(tiny_source, tmp_path, monkeypatch):
    registry = load_registry(ROOT / "weights.yaml").model_copy(
        update={"source": str(tmp_path / "weights.yaml")}
    )
    lora_src = tmp_path / "lora-repo"
    lora_src.mkdir(parents=True)
    for version in ("2509", "2511"):
        for steps in (4, 8):
            name = f"Qwen-Image-Edit-{version}-Lightning-{steps}steps-V1.0-bf16.safetensors"
            tiny_lora = tiny_source / "qwen-image-lightning/lightning-8steps.safetensors"
            shutil.copyfile(tiny_lora, lora_src / name)
    hub = FakeHub(
        {
            "Qwen/Qwen-Image-Edit-2511": tiny_source / "qwen-image-edit",
            "Qwen/Qwen-Image-Edit-2509": tiny_source / "qwen-image-edit-2509",
            "Qwen/Qwen-Image-2.1": tiny_source / "qwen-image-2.1",
            "Tongyi-MAI/Z-Image-Turbo": tiny_source / "z-image-turbo",
            "lightx2v/Qwen-Image-Lightning": lora_src,
        }
    ).install(monkeypatch)
    pull(registry, progress=False)
    lora_calls = {c[2]: c[4] for c in hub.calls if c[0] == "hf_hub_download"}
    for version in ("2509", "2511"):  # the repo's folder per model, into the declared folder
        name = f"Qwen-Image-Edit-{version}/Qwen-Image-Edit-{version}-Lightning-8steps-V1.0-bf16.safetensors"
        assert lora_calls[name] == tmp_path / "weights" / "Qwen-Image-Lightning"
    assert registry.missing_files() == [] and verify(registry, full=False) == []


def test_unreachable_hub_is_one_clear_line(empty_tiny_registry, monkeypatch):
    registry, _ = empty_tiny_registry
    for name, real in REAL_HUB.items():  # the real client, kept off the network by its offline switch
        monkeypatch.setattr(huggingface_hub, name, real)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ManifestError) as err:
        pull(registry, only="qwen-image-edit-tiny", progress=False)
    message = str(err.value)
    assert "\n" not in message and "cannot reach the Hugging Face hub" in message
    assert message.startswith("pull qwen-image-edit-tiny (retouch/tiny-random-qwen-image-edit@local)")

    def down(*_, **__):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", down)
    with pytest.raises(ManifestError, match="cannot reach the Hugging Face hub; pull on a connected machine"):
        pull(registry, progress=False)


def test_cli_prints_one_line_per_problem_and_exits_2(weights, tmp_path, capsys):
    verify_command(str(weights), full=False)
    assert capsys.readouterr().out.startswith("ok:")
    (weights.parent / "z-image-turbo/model_index.json").unlink()
    flip_byte(weights.parent / TRANSFORMER, keep_mtime=False)
    with pytest.raises(SystemExit) as exit_:
        verify_command(str(weights), full=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    with pytest.raises(SystemExit) as exit_:
        import_command(str(tmp_path / "missing.tar"), str(tmp_path / "dest"))
    assert exit_.value.code == 2 and "cannot read the bundle" in capsys.readouterr().err


def _retouch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip


def test_retouch_commands_verify_and_serve_refuses_a_tampered_set(weights, tmp_path):
    ok = _retouch("weights", "verify", "--weights", str(weights), cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    flip_byte(weights.parent / TRANSFORMER, keep_mtime=False)
    bad = _retouch("weights", "verify", "--full", "--weights", str(weights), cwd=tmp_path)
    assert bad.returncode == 2 and "diffusion_pytorch_model.safetensors" in bad.stderr
    served = _retouch(
        "serve", "--weights", str(weights), "--port", "0", "--data-dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert served.returncode == 2
    assert "transformer/diffusion_pytorch_model.safetensors" in served.stderr
    assert "do not match their manifest" in served.stderr
    assert "Traceback" not in served.stderr
