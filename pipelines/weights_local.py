"""Manifests for weights obtained any way: files already on disk, or an existing Hugging Face cache.

``manifest_for_disk`` hashes what the registry names as it is on disk (revisions from the registry,
or from the metadata huggingface_hub leaves in a ``local_dir`` download); ``import_from_hf_cache``
takes the registry's files from a hub cache (``models--ORG--NAME/snapshots/<commit>/...``) at the
pinned revision, offline, hard-linking where it can. Both end in ``write_manifest``, so ``verify``,
``bundle`` and ``serve`` treat the result like a pull.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path, PurePosixPath

from .registry import Registry
from .weights_manifest import Entry, ManifestError, entries, write_manifest

_COMMIT = re.compile(r"[0-9a-f]{40}")
# huggingface_hub's local_dir bookkeeping: <local_dir>/.cache/huggingface/download/<file>.metadata,
# whose first line is the commit the file was downloaded at.
_METADATA_DIR = Path(".cache") / "huggingface" / "download"


def _repo_file(e: Entry) -> str:
    """A LoRA's path inside its hub repository (the pull layout rule in weights_manifest)."""
    parts = PurePosixPath(Path(e.path).as_posix()).parts
    if len(parts) < 2 or ".." in parts:
        raise ManifestError(f"{e.name}: path {e.path!r} must be <repo folder>/<file in repo>")
    return "/".join(parts[1:])


def _local_dir(registry: Registry, e: Entry) -> tuple[Path, str | None]:
    """The folder huggingface_hub downloaded into, and the file inside it (None: the whole folder)."""
    if e.kind == "model":
        return registry.resolve(e.path), None
    return registry.resolve(PurePosixPath(Path(e.path).as_posix()).parts[0]), _repo_file(e)


def _downloaded_commit(registry: Registry, e: Entry) -> str | None:
    local_dir, filename = _local_dir(registry, e)
    meta_dir = local_dir / _METADATA_DIR
    candidates = [meta_dir / f"{filename}.metadata"] if filename else sorted(meta_dir.rglob("*.metadata"))
    for meta in candidates:
        try:
            first = meta.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            continue
        if _COMMIT.fullmatch(first):
            return first
    return None


def _extra_files(registry: Registry) -> list[str]:
    """Files in a LoRA mirror folder that no entry declares: left out of the manifest, said aloud."""
    declared = {registry.resolve(e.path) for e in entries(registry) if e.kind == "lora"}
    folders = {_local_dir(registry, e)[0] for e in entries(registry) if e.kind == "lora"}
    extra = []
    for folder in sorted(folders):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and path not in declared and ".cache" not in path.relative_to(folder).parts:
                extra.append(str(path))
    return extra


def manifest_for_disk(registry: Registry) -> tuple[Path, list[str]]:
    """Hash the declared files as they are; (manifest path, extra files). Missing files: one error."""
    missing = registry.missing_files()
    if missing:
        raise ManifestError("cannot write the manifest, missing: " + "; ".join(missing))
    commits = {e.name: c for e in entries(registry) if (c := _downloaded_commit(registry, e))}
    return write_manifest(registry, commits=commits, progress=True), _extra_files(registry)


def _snapshot(cache: Path, e: Entry) -> tuple[str, Path]:
    """(commit, snapshot folder) of an entry's pinned revision in a hub cache."""
    if not e.hub_id:
        raise ManifestError(f"{e.name}: declares no hub_id, so it cannot be found in a hub cache")
    repo = cache / f"models--{e.hub_id.replace('/', '--')}"
    revision = e.revision or "main"
    if not repo.is_dir():
        raise ManifestError(f"{e.name}: {e.hub_id}@{revision} is not in the hub cache (no {repo})")
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref = repo / "refs" / revision
        if not ref.is_file():
            raise ManifestError(f"{e.name}: {e.hub_id}@{revision}: the cache has no ref {revision!r} ({ref})")
        commit = ref.read_text().strip()
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        raise ManifestError(f"{e.name}: {e.hub_id}@{revision} ({commit}) is not in the cache ({snapshot})")
    return commit, snapshot


def _place(src: Path, dst: Path, link: bool) -> None:
    """Hard-link (same filesystem) or copy one cached file; the cache's symlinks lead to blobs."""
    blob = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        if not link:
            raise OSError("copy asked for")
        os.link(blob, tmp)
    except OSError:
        shutil.copyfile(blob, tmp)
    os.replace(tmp, dst)


def import_from_hf_cache(registry: Registry, cache_dir: str | Path, *, link: bool = True) -> Path:
    """Lay the registry's files out from a hub cache at their pinned revisions; write the manifest."""
    cache = Path(cache_dir)
    if not cache.is_dir():
        raise ManifestError(f"{cache}: no such hub cache folder")
    plan: list[tuple[Entry, str, list[tuple[Path, Path]]]] = []
    for e in entries(registry):
        commit, snapshot = _snapshot(cache, e)
        if e.kind == "model":
            files = [p for p in sorted(snapshot.rglob("*")) if p.is_file()]
            if not files:
                raise ManifestError(f"{e.name}: {e.hub_id}@{e.revision} ({commit}): the snapshot is empty")
            target = registry.resolve(e.path)
            pairs = [(p, target / p.relative_to(snapshot)) for p in files]
        else:
            src = snapshot / _repo_file(e)
            if not src.is_file():
                raise ManifestError(
                    f"{e.name}: {e.hub_id}@{e.revision} ({commit}): the cache lacks {_repo_file(e)} ({src})"
                )
            pairs = [(src, registry.resolve(e.path))]
        plan.append((e, commit, pairs))
    # Everything was found before anything is written: a bad cache leaves the weights folder as it was.
    for _, _, pairs in plan:
        for src, dst in pairs:
            _place(src, dst, link)
    missing = registry.missing_files()
    if missing:
        raise ManifestError("the hub cache's snapshots lack files the registry needs: " + "; ".join(missing))
    return write_manifest(registry, commits={e.name: commit for e, commit, _ in plan})
