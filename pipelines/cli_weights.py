"""Bodies of ``retouch weights pull|verify|bundle|import``; the typer wiring lives in ``server.cli``.

Each failure prints one ``error:`` line per problem on stderr and exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from .errors import RegistryError
from .registry import Registry, load_registry


def _fail(problems: list[str]) -> NoReturn:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    raise SystemExit(2)


def _load(weights: str) -> Registry:
    try:
        return load_registry(weights)
    except RegistryError as e:
        _fail([line.strip() for line in str(e).splitlines()])


def pull_command(weights: str, only: str | None) -> None:
    from .weights_pull import pull

    registry = _load(weights)
    try:
        manifest = pull(registry, only=only, progress=True)
    except RegistryError as e:
        _fail([str(e)])
    print(f"pulled; manifest written to {manifest}")


def verify_command(weights: str, full: bool) -> None:
    from .weights_manifest import verify

    registry = _load(weights)
    problems = verify(registry, full=full, progress=sys.stderr.isatty())
    if problems:
        _fail(problems)
    print(f"ok: every declared file matches the manifest ({'full rehash' if full else 'fast check'})")


def bundle_command(weights: str, out: str) -> None:
    from .weights_bundle import bundle
    from .weights_manifest import verify

    registry = _load(weights)
    # Verify here first so each problem gets its own line; bundle() refuses on its own as well.
    problems = verify(registry, full=False, progress=sys.stderr.isatty())
    if problems:
        _fail([f"refusing to bundle: {p}" for p in problems])
    try:
        path = bundle(registry, out)
    except RegistryError as e:
        _fail([str(e)])
    print(f"wrote {path} ({Path(path).stat().st_size / 2**30:.2f} GiB)")


def import_command(tar: str, dest: str) -> None:
    from .weights_bundle import import_bundle

    try:
        path = import_bundle(tar, dest)
    except RegistryError as e:
        _fail([str(e)])
    print(f"imported and verified: {path}; serve it with `retouch serve --weights {path}`")


def manifest_command(weights: str) -> None:
    from .weights_local import manifest_for_disk

    registry = _load(weights)
    try:
        path, extra = manifest_for_disk(registry)
    except RegistryError as e:
        _fail([p.strip() for p in str(e).split(";")])
    for file in extra:
        print(f"extra (declared by no entry, left out): {file}", file=sys.stderr)
    print(f"manifest written to {path}; `retouch weights verify --weights {weights}` checks it")


def import_hf_cache_command(weights: str, cache_dir: str, copy: bool) -> None:
    from .weights_local import import_from_hf_cache

    registry = _load(weights)
    try:
        path = import_from_hf_cache(registry, cache_dir, link=not copy)
    except RegistryError as e:
        _fail([str(e)])
    print(f"imported from {cache_dir}; manifest written to {path}; serve it with --weights {weights}")
