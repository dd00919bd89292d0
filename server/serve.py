"""``retouch serve``: check the weights, then run the app under uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from pydantic import ValidationError

from pipelines.errors import RegistryError
from pipelines.registry import load_registry, require_files
from pipelines.weights_manifest import manifest_path, verify
from pipelines.weights_set import DEMO_NOTICE, describe, none_on_disk


def _demo_instead(settings, registry, demo_dir: str):
    """Build (once) and switch to the demo set: what ``--demo-if-missing`` does on a fresh clone."""
    from pipelines import build_tiny_weights

    path = Path(demo_dir) / "weights.yaml"
    if not path.is_file():
        typer.echo(f"building the demo weights set into {demo_dir} (once, about a minute) ...", err=True)
        build_tiny_weights(demo_dir)
    for line in DEMO_NOTICE:
        typer.echo(f"notice: {line.format(registry=settings.weights)}", err=True)
    return settings.model_copy(update={"weights": str(path)}), load_registry(path)


def serve_command(flags: dict, demo_if_missing: str | None = None) -> None:
    """``demo_if_missing``: a folder for the demo set, served when none of the registry's files exist."""
    from .settings import Settings

    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        typer.echo(f"invalid setting: {exc}", err=True)
        raise typer.Exit(2) from None
    from .auth import KeyRing, KeysFile, key_checking, parse_env_keys, unsafe_bind_reason

    ring = KeyRing(KeysFile(settings.keys_path), parse_env_keys(settings.api_keys, settings.key_budgets_usd))
    refusal = unsafe_bind_reason(settings, ring)
    if refusal:
        typer.echo(f"error: {refusal}", err=True)
        raise typer.Exit(2)
    try:
        # Fail here, with the list of missing paths, rather than in every worker later.
        registry = load_registry(settings.weights)
        # An API pod validates jobs against weights.yaml but loads no weights; a custom engine
        # factory (benchmarks' full-size random models, test fakes) brings its own.
        loads_files = (
            settings.role != "api"
            and settings.engine_factory == Settings.model_fields["engine_factory"].default
        )
        if loads_files and demo_if_missing and none_on_disk(registry):
            settings, registry = _demo_instead(settings, registry, demo_if_missing)
        if settings.role != "api":
            # what this pod loads: its edit model's and the refiner's licences must be accepted
            # (a declared model no pod loads is refused per job, naming its licence)
            pod = registry.holding(settings.edit_model)
            refused = pod.unaccepted_licenses(pod.pod_models())
            if refused:
                raise RegistryError(f"{registry.source}: licences not accepted:\n  " + "\n  ".join(refused))
        if loads_files:
            require_files(registry.holding(settings.edit_model))
    except RegistryError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    # Weights that were pulled or imported carry a manifest: refuse to serve a tampered or
    # truncated file (fast path: sizes plus hashes cached by mtime).
    has_manifest = loads_files and manifest_path(registry).exists()
    problems = verify(registry, full=False) if has_manifest else []
    if problems:
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        typer.echo("error: weights do not match their manifest; re-import or re-pull them", err=True)
        raise typer.Exit(2)

    # Each server gets a fresh directory for its workers' metric files (server/metrics.py), never
    # one inherited from the environment: another process's samples would mix into ours.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from . import http_limits, shutdown
    from .app import create_app
    from .logging_setup import configure_logging
    from .secret_bootstrap import bootstrap_secrets

    bootstrap_secrets(settings)  # before logging is set up, so every secret is known to the redactor
    configure_logging(settings, process_name="api")
    app = create_app(settings)
    log = logging.getLogger("retouch.serve")
    weights = describe(registry, settings.weights)
    if weights["set"] == "demo":
        log.warning("serving the DEMO weights set: random-weight models, pictures are noise", extra=weights)
    else:
        log.info("serving the weights of %s", settings.weights, extra=weights)
    log.info("api keys: %s", key_checking(ring, settings.keys_path))
    log.info(
        "retouch serving on %s",
        settings.base_url,
        extra={
            "server_id": settings.server_id,
            "workers": settings.workers,
            "data_dir": str(settings.data_dir.resolve()),
            "webhook_secret_file": str(settings.data_dir / "webhook_secret"),
        },
    )
    # log_config=None: uvicorn keeps the JSON handler configured above instead of installing its own.
    # SIGTERM drains first (server/shutdown.py): /readyz 503, no new job, running ones finish or go back.
    # Header limits are ours (server/http_limits.py): over them, 431 instead of a reset connection.
    shutdown.run(
        app,
        settings,
        log_config=None,
        log_level=settings.log_level.lower(),
        **http_limits.uvicorn_options(settings),
    )
