"""``retouch weights pull``: each registry entry from the Hugging Face hub at its pinned revision,
then the manifest (pipelines/weights_manifest.py). The one place the project talks to the network:
every failure becomes one line naming the entry, the repository and the revision."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .registry import Registry
from .weights_manifest import Entry, ManifestError, entries, write_manifest


def _hub_error(exc: Exception) -> str:
    from huggingface_hub import constants, errors

    if isinstance(exc, errors.GatedRepoError):
        return "the repository is gated: accept its licence on the hub, then log in (HF_TOKEN)"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "repository not found on the hub (or private: log in with HF_TOKEN)"
    if isinstance(exc, errors.RevisionNotFoundError):
        return "revision not found in the repository"
    offline = (ConnectionError, TimeoutError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)
    if isinstance(exc, offline) or any(c.__name__ == "TransportError" for c in type(exc).__mro__):
        if constants.HF_HUB_OFFLINE:
            return "cannot reach the Hugging Face hub: HF_HUB_OFFLINE is set, unset it to pull"
        return "cannot reach the Hugging Face hub; pull on a connected machine and carry a bundle"
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return "file not found in the repository at that revision"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _hub(e: Entry, call: Callable, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # the network boundary: every failure becomes one line naming the entry
        raise ManifestError(f"pull {e.name} ({e.hub_id}@{e.revision or 'main'}): {_hub_error(exc)}") from exc


def pull(registry: Registry, only: str | None = None, progress: bool = True) -> Path:
    """Download each entry at its pinned revision into its declared path, then write the manifest."""
    import huggingface_hub as hf
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    commits: dict[str, str] = {}
    fetched: dict[tuple[str, str], str] = {}
    try:
        for e in entries(registry, only):
            if e.hub_id is None:
                if progress:
                    print(f"skip {e.name}: no hub_id, a local file", file=sys.stderr)
                continue
            target = registry.resolve(e.path)
            if (e.hub_id, str(target)) in fetched:  # one file several models declare (a shared LoRA)
                commits[e.name] = fetched[(e.hub_id, str(target))]
                continue
            if progress:
                print(f"pull {e.name}: {e.hub_id}@{e.revision or 'main'} -> {target}", file=sys.stderr)
            rel = PurePosixPath(Path(e.path).as_posix())
            if e.kind == "lora" and (Path(e.path).is_absolute() or ".." in rel.parts or len(rel.parts) < 2):
                raise ManifestError(f"{e.name}: path {e.path!r} must be <repo folder>/<file in repo>")
            # Resolve the revision once so every file comes from the same commit, and record it.
            commit = _hub(e, hf.model_info, e.hub_id, revision=e.revision).sha
            if e.kind == "model":
                _hub(e, hf.snapshot_download, e.hub_id, revision=commit, local_dir=target)
            else:
                local_dir, filename = registry.resolve(rel.parts[0]), "/".join(rel.parts[1:])
                _hub(e, hf.hf_hub_download, e.hub_id, filename, revision=commit, local_dir=local_dir)
            commits[e.name] = fetched[(e.hub_id, str(target))] = commit
    finally:
        if quiet:
            enable_progress_bars()
    return write_manifest(registry, only=only, commits=commits, progress=progress)
