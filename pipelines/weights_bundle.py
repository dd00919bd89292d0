"""Carrying a verified weights set across an air gap: ``bundle`` writes one tar, ``import_bundle``
extracts it safely on the other side and verifies it against the manifest it carries.

Inside a bundle, files sit at their paths relative to the registry root, beside ``weights.yaml``
(rewritten to ``root: .``) and ``weights.manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

import yaml

from .registry import Registry, load_registry
from .weights_manifest import BUNDLE_MANIFEST, BUNDLE_REGISTRY, ManifestError, entries, read_manifest, verify


class _HashingReader:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _bundled_registry_text(registry: Registry) -> str:
    """weights.yaml as it goes in the bundle: files sit beside it there, so its root becomes "."."""
    text = Path(registry.source).read_text()
    if Path(registry.root) == Path("."):
        return text
    # A line edit keeps the operator's comments; the YAML round trip is the fallback.
    new, n = re.subn(r"^root:.*$", "root: .", text, count=1, flags=re.M)
    if n == 1 and (yaml.safe_load(new) or {}).get("root") == ".":
        return new
    raw = yaml.safe_load(text)
    raw["root"] = "."
    return yaml.safe_dump(raw, sort_keys=False)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def bundle(registry: Registry, out_tar: str | Path) -> Path:
    """Verify, then write weights.yaml, the manifest and every declared file into one tar."""
    problems = verify(registry, full=False)
    if problems:
        raise ManifestError(f"refusing to bundle, {len(problems)} problem(s): " + "; ".join(problems))
    recorded = read_manifest(registry)
    root = registry.base_dir()
    members = []
    for e in entries(registry):
        if Path(e.path).is_absolute() or ".." in Path(e.path).parts:
            raise ManifestError(f"{e.name}: path {e.path!r} must be relative to the root to be bundled")
        for f, meta in recorded["entries"][e.name]["files"].items():
            p = e.base(registry) / f
            members.append((p.relative_to(root).as_posix(), p, meta))
    out = Path(out_tar)
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, BUNDLE_REGISTRY, _bundled_registry_text(registry).encode())
            _add_bytes(tar, BUNDLE_MANIFEST, json.dumps(recorded, indent=2).encode())
            for arcname, p, meta in members:
                info = tarfile.TarInfo(arcname)
                info.size, info.mode, info.mtime = meta["size"], 0o644, int(p.stat().st_mtime)
                with p.open("rb") as f:
                    reader = _HashingReader(f)
                    tar.addfile(info, reader)
                # Hash what went into the tar, so a file changed after verify cannot slip in.
                if reader.h.hexdigest() != meta["sha256"]:
                    raise ManifestError(f"{p} changed while it was being bundled")
        os.replace(partial, out)
    except (OSError, tarfile.TarError) as e:
        raise ManifestError(f"cannot write {out}: {e}") from None
    finally:
        partial.unlink(missing_ok=True)
    return out


def import_bundle(tar_path: str | Path, dest_dir: str | Path) -> Path:
    """Safely extract a bundle into an empty folder, verify it, and return its weights.yaml."""
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise ManifestError(f"{dest} is not empty; import into a new folder so two sets never mix")
    try:
        with tarfile.open(tar_path) as tar:
            names = set()
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
                    raise ManifestError(
                        f"{tar_path}: refusing unsafe member {m.name!r} (absolute, '..' or not a file)"
                    )
                names.add(PurePosixPath(m.name).as_posix())
            if not {BUNDLE_REGISTRY, BUNDLE_MANIFEST} <= names:
                raise ManifestError(
                    f"{tar_path}: not a weights bundle (no {BUNDLE_REGISTRY} and {BUNDLE_MANIFEST})"
                )
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, filter="data")  # the same rules again, enforced by tarfile itself
    except (OSError, tarfile.TarError) as e:
        raise ManifestError(f"{tar_path}: cannot read the bundle ({e})") from None
    registry_path = dest / BUNDLE_REGISTRY
    problems = verify(load_registry(registry_path), full=True)
    if problems:
        raise ManifestError(f"imported set in {dest} does not match its manifest: " + "; ".join(problems))
    return registry_path
