"""``retouch serve``: check the weights, then run the app under uvicorn."""

from __future__ import annotations

import logging

import typer
from pydantic import ValidationError

from pipelines.errors import RegistryError
from pipelines.registry import load_registry, require_files
from pipelines.weights_manifest import manifest_path, verify


def serve_command(flags: dict) -> None:
    from .settings import Settings

    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        typer.echo(f"invalid setting: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        # Fail here, with the list of missing paths, rather than in every worker later.
        registry = load_registry(settings.weights)
        require_files(registry)
    except RegistryError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    # Weights that were pulled or imported carry a manifest: refuse to serve a tampered or
    # truncated file (fast path: sizes plus hashes cached by mtime).
    problems = verify(registry, full=False) if manifest_path(registry).exists() else []
    if problems:
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        typer.echo("error: weights do not match their manifest; re-import or re-pull them", err=True)
        raise typer.Exit(2)

    import uvicorn

    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(settings)
    typer.echo(
        f"retouch serving on {settings.base_url} (server_id={settings.server_id}, workers={settings.workers},"
        f" data={settings.data_dir.resolve()}); webhook secret in {settings.data_dir / 'webhook_secret'}",
        err=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
