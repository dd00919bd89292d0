"""Air-gapped weights: pull at pinned revisions, a SHA-256 manifest, offline verify, tar bundles.

The manifest (``<registry stem>.manifest.json`` next to weights.yaml) records, per declared model
folder and LoRA file, the hub id, the declared revision, the commit it resolved to when pulled, and
every file's path (relative to the model folder, or the LoRA's own folder), size and SHA-256.

Pull layout rule for a LoRA: the first component of its declared path (relative to the registry
root) is the folder its hub repository is mirrored into; the rest is the filename inside the repo.
``Qwen-Image-Lightning/Qwen-Image-Edit-2509/x.safetensors`` from ``lightx2v/Qwen-Image-Lightning``
is ``Qwen-Image-Edit-2509/x.safetensors`` of that repo, written under ``<root>/Qwen-Image-Lightning``.

Only ``pull`` touches the network (through huggingface_hub); everything else works offline.
``bundle`` and ``import_bundle`` live in ``weights_bundle``, which builds on this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import RegistryError
from .registry import Registry

MANIFEST_VERSION = 1
HASH_CACHE_NAME = ".retouch-hash-cache.json"
# Names inside a bundle, whatever the source registry file is called.
BUNDLE_REGISTRY = "weights.yaml"
BUNDLE_MANIFEST = "weights.manifest.json"
# huggingface_hub keeps resume metadata and locks in <local_dir>/.cache: bookkeeping, not weights.
_SKIP_DIRS = {".cache"}


class ManifestError(RegistryError):
    """Weights that do not match their manifest, or a pull/bundle/import that cannot proceed."""


@dataclass(frozen=True)
class Entry:
    name: str  # "model" or "model.loras.lora", as Registry.missing_files names them
    model: str
    kind: str  # "model" (a diffusers folder) or "lora" (one file)
    path: str  # as declared in weights.yaml
    hub_id: str | None
    revision: str | None

    def base(self, registry: Registry) -> Path:
        """The folder the entry's manifest paths are relative to."""
        p = registry.resolve(self.path)
        return p if self.kind == "model" else p.parent


def entries(registry: Registry, only: str | None = None) -> list[Entry]:
    """Declared entries; ``only`` is a model name (with its LoRAs), a LoRA name or a full entry name."""
    found: list[Entry] = []
    for name, m in registry.models.items():
        found.append(Entry(name, name, "model", m.path, m.hub_id, m.revision))
        for lname, lora in m.loras.items():
            found.append(Entry(f"{name}.loras.{lname}", name, "lora", lora.path, lora.hub_id, lora.revision))
    if only is None:
        return found
    chosen = [e for e in found if only in (e.name, e.model, e.name.rpartition(".loras.")[2])]
    if not chosen:
        raise ManifestError(f"--only {only!r}: no such model or LoRA (have {[e.name for e in found]})")
    return chosen


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class _HashCache:
    """SHA-256 per file keyed by (path, size, mtime_ns), so an unchanged file is never reread.

    Kept under the weights root; where that is read-only (a ``:ro`` volume) it falls back to the
    user's cache folder, and if neither is writable the fast path simply rehashes.
    """

    def __init__(self, registry: Registry):
        root = registry.base_dir()
        user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "retouch"
        tag = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        self.paths = [root / HASH_CACHE_NAME, user / f"hash-cache-{tag}.json"]
        self.data: dict[str, list] = {}
        for p in self.paths:
            try:
                self.data = json.loads(p.read_text())["files"]
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
        self.dirty = False

    def digest(self, path: Path, st: os.stat_result, *, trust: bool) -> str:
        hit = self.data.get(str(path))
        if trust and isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return hit[2]
        sha = sha256_file(path)
        after = path.stat()
        # A file written while it was hashed must not be cached under its new mtime.
        if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            self.data[str(path)] = [st.st_size, st.st_mtime_ns, sha]
            self.dirty = True
        return sha

    def save(self) -> None:
        if not self.dirty:
            return
        text = json.dumps({"version": 1, "files": self.data}, indent=0, sort_keys=True)
        for p in self.paths:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(p, text)
                return
            except OSError:
                continue


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="hashing", disable=not enabled, leave=False)


def manifest_path(registry: Registry) -> Path:
    if not registry.source:
        raise ManifestError("this registry was not read from a file, so it has no manifest location")
    src = Path(registry.source)
    return src.with_name(f"{src.stem}.manifest.json")


def _safe_relative(rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and rel not in ("", ".")


def read_manifest(registry: Registry) -> dict:
    path = manifest_path(registry)
    try:
        data = json.loads(path.read_text())
        recorded = data["entries"]
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}: run `retouch weights pull` (it writes one)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{path}: not a valid weights manifest ({e})") from None
    for name, rec in recorded.items():
        bad = [f for f in rec.get("files", {}) if not _safe_relative(f)]
        if bad:
            raise ManifestError(f"{path}: entry {name} lists an unsafe path {bad[0]!r}")
    return data


def _disk_files(registry: Registry, e: Entry) -> list[str] | None:
    """Relative paths of an entry's files on disk, or None when the folder/file is missing."""
    target = registry.resolve(e.path)
    if e.kind == "lora":
        return [target.name] if target.is_file() else None
    if not target.is_dir():
        return None
    found = []
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        found += [(Path(dirpath) / f).relative_to(target).as_posix() for f in filenames]
    return sorted(f for f in found if f != HASH_CACHE_NAME)


def write_manifest(
    registry: Registry, *, only: str | None = None, commits: dict[str, str] | None = None, progress=False
) -> Path:
    """Hash the declared files and write the manifest; with ``only``, other entries keep their record."""
    path = manifest_path(registry)
    try:
        old = read_manifest(registry)["entries"]
    except ManifestError:
        old = {}
    wanted = {e.name for e in entries(registry, only)}
    listed = {e.name: _disk_files(registry, e) for e in entries(registry)}
    missing = [n for n in wanted if listed[n] is None]
    if missing:
        raise ManifestError(f"cannot write the manifest, not on disk: {', '.join(sorted(missing))}")
    cache = _HashCache(registry)
    todo = [(e, f) for e in entries(registry) if e.name in wanted for f in listed[e.name]]
    bar = _progress(sum((e.base(registry) / f).stat().st_size for e, f in todo), progress)
    out: dict[str, dict] = {}
    for e in entries(registry):
        prev = old.get(e.name, {})
        if e.name not in wanted:
            if prev:
                out[e.name] = prev
            continue
        same_pin = (prev.get("hub_id"), prev.get("revision")) == (e.hub_id, e.revision)
        commit = (commits or {}).get(e.name) or (prev.get("commit") if same_pin else None)
        if commit is None and e.revision and re.fullmatch(r"[0-9a-f]{40}", e.revision):
            commit = e.revision
        files = {}
        for f in listed[e.name]:
            p = e.base(registry) / f
            st = p.stat()
            files[f] = {"size": st.st_size, "sha256": cache.digest(p, st, trust=False)}
            bar.update(st.st_size)
        out[e.name] = dict(kind=e.kind, path=e.path, hub_id=e.hub_id, revision=e.revision, commit=commit)
        out[e.name]["files"] = files
    bar.close()
    cache.save()
    _atomic_write(path, json.dumps({"version": MANIFEST_VERSION, "entries": out}, indent=2) + "\n")
    return path


def verify(registry: Registry, *, full: bool, progress: bool = False) -> list[str]:
    """Problems with the declared files against the manifest; empty when everything matches.

    ``full=False`` trusts the hash cache for files whose size and mtime are unchanged, so a second
    verify after no change reads no file contents; ``full=True`` rehashes every file.
    """
    try:
        recorded = read_manifest(registry)["entries"]
    except ManifestError as e:
        return [str(e)]
    problems: list[str] = []
    todo: list[tuple[Entry, Path, dict]] = []
    for e in entries(registry):
        rec = recorded.get(e.name)
        if rec is None:
            problems.append(f"{e.name}: not in the manifest; run `retouch weights pull --only {e.name}`")
            continue
        if rec.get("path") != e.path:
            problems.append(
                f"{e.name}: declared path is {e.path!r} but the manifest recorded {rec.get('path')!r}"
            )
            continue
        if rec.get("hub_id") != e.hub_id or e.revision not in (rec.get("revision"), rec.get("commit")):
            problems.append(
                f"{e.name}: weights.yaml pins {e.hub_id}@{e.revision} but the files are "
                f"{rec.get('hub_id')}@{rec.get('commit') or rec.get('revision')}; pull again"
            )
        todo += [(e, e.base(registry) / f, meta) for f, meta in rec["files"].items()]
    cache = _HashCache(registry)
    bar = _progress(sum(meta["size"] for _, _, meta in todo), progress)
    for e, p, meta in todo:
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{e.name}: missing file {p}")
            continue
        if st.st_size != meta["size"]:
            problems.append(
                f"{e.name}: size mismatch for {p}: {st.st_size} bytes, manifest says {meta['size']}"
            )
        elif cache.digest(p, st, trust=not full) != meta["sha256"]:
            problems.append(f"{e.name}: SHA-256 mismatch for {p} (changed or corrupt since the manifest)")
        bar.update(meta["size"])
    bar.close()
    cache.save()
    return problems
