"""The ``retouch`` command. Engine commands are imported lazily so ``--help`` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Retouch: on-prem image-edit server.")
weights_app = typer.Typer(no_args_is_help=True, help="Model weights: build, check, carry.")
app.add_typer(weights_app, name="weights")


@weights_app.command("tiny")
def weights_tiny(directory: str = typer.Argument(..., help="Folder to write the tiny set into")) -> None:
    """Write tiny random-weight versions of every model plus DIR/weights.yaml (CPU demo, tests)."""
    from pipelines.cli import weights_tiny_command

    weights_tiny_command(directory)


@weights_app.command("pull")
def weights_pull(
    weights: str = typer.Option("weights.yaml", "--weights", help="Path to weights.yaml"),
    only: str | None = typer.Option(None, "--only", help="Pull one model (its name in weights.yaml)"),
) -> None:
    """On a connected machine: download every entry at its pinned revision and write the manifest."""
    from pipelines.cli_weights import pull_command

    pull_command(weights, only)


@weights_app.command("verify")
def weights_verify(
    weights: str = typer.Option("weights.yaml", "--weights", help="Path to weights.yaml"),
    full: bool = typer.Option(False, "--full", help="Re-hash every file instead of the cached fast check"),
) -> None:
    """Check the weights on disk against their manifest, offline."""
    from pipelines.cli_weights import verify_command

    verify_command(weights, full)


@weights_app.command("bundle")
def weights_bundle(
    out: str = typer.Argument(..., help="The tar file to write"),
    weights: str = typer.Option("weights.yaml", "--weights", help="Path to weights.yaml"),
) -> None:
    """Pack a verified weights set, its registry and manifest into one tar to carry across an air gap."""
    from pipelines.cli_weights import bundle_command

    bundle_command(weights, out)


@weights_app.command("import")
def weights_import(
    tar: str | None = typer.Argument(None, help="A tar written by `retouch weights bundle`"),
    dest: str | None = typer.Option(None, "--dest", help="Folder to unpack the tar into"),
    from_hf_cache: str | None = typer.Option(
        None, "--from-hf-cache", help="Instead of a tar: a Hugging Face hub cache folder (offline)"
    ),
    weights: str = typer.Option("weights.yaml", "--weights", help="With --from-hf-cache: the registry"),
    copy: bool = typer.Option(False, "--copy", help="With --from-hf-cache: copy instead of hard-linking"),
) -> None:
    """Unpack a bundle and verify it, or take the registry's files from a hub cache; both write a manifest."""
    from pipelines.cli_weights import import_command, import_hf_cache_command

    if from_hf_cache is not None and tar is None:
        import_hf_cache_command(weights, from_hf_cache, copy)
    elif tar is not None and dest is not None and from_hf_cache is None:
        import_command(tar, dest)
    else:
        typer.echo("error: give either TAR --dest DIR, or --from-hf-cache DIR [--weights W]", err=True)
        raise typer.Exit(2)


@weights_app.command("manifest")
def weights_manifest(
    weights: str = typer.Option("weights.yaml", "--weights", help="Path to weights.yaml"),
) -> None:
    """Hash the files the registry names, as they are on disk (copied, mirrored...), into its manifest."""
    from pipelines.cli_weights import manifest_command

    manifest_command(weights)


@app.command(context_settings={"allow_extra_args": False})
def edit(
    weights: str = typer.Option(..., "--weights", help="Path to weights.yaml"),
    image: list[str] = typer.Option(..., "--image", help="Input picture (repeat for several)"),
    prompt: str = typer.Option(..., "--prompt"),
    out: str = typer.Option(..., "--out", help="Output file (with several --num-images: name_N.ext)"),
    mask: str | None = typer.Option(None, "--mask", help="Mask picture: white = edit, black = keep"),
    seed: int = typer.Option(-1, "--seed", help="-1 = random"),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps (full model)"),
    guidance: float | None = typer.Option(None, "--guidance", help="True CFG scale (full model)"),
    no_fast: bool = typer.Option(False, "--no-fast", help="Full model instead of Lightning"),
    lightning_steps: int = typer.Option(8, "--lightning-steps", help="4 or 8"),
    refine: float = typer.Option(0.0, "--refine", help="Z-Image-Turbo refinement strength 0..1"),
    width: int | None = typer.Option(None, "--width"),
    height: int | None = typer.Option(None, "--height"),
    fmt: str | None = typer.Option(None, "--format", help="png|jpeg|webp (default: from --out)"),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt"),
    num_images: int = typer.Option(1, "--num-images"),
) -> None:
    """Edit pictures in-process with a progress bar (no server)."""
    from pipelines.cli import edit_command

    edit_command(
        weights=weights,
        images=image,
        prompt=prompt,
        out=out,
        mask=mask,
        seed=seed,
        steps=steps,
        guidance=guidance,
        lightning_steps=None if no_fast else lightning_steps,
        refine=refine,
        width=width,
        height=height,
        fmt=fmt,
        negative_prompt=negative_prompt,
        num_images=num_images,
    )


@app.command()
def plan(
    weights: str = typer.Option("weights.yaml", "--weights", help="Path to weights.yaml"),
    gpu_memory: float | None = typer.Option(None, "--gpu-memory", help="GiB to plan for [this GPU's]"),
    max_side: int | None = typer.Option(None, "--max-side", help="Largest output side [limits]"),
    host_memory: float | None = typer.Option(None, "--host-memory", help="Host RAM GiB [this machine's]"),
    plan_name: str | None = typer.Option(None, "--plan", help="auto or a named plan [weights.yaml]"),
    models: list[str] = typer.Option(
        [], "--model", help="Edit model to plan for; repeat it for one pod swapping several [the default]"
    ),
) -> None:
    """Where every model component would live on a GPU, the peak and the cost; needs only the configs."""
    from pipelines.cli_plan import plan_command

    plan_command(weights, gpu_memory, max_side, host_memory, plan_name, models)


@app.command()
def serve(
    weights: str | None = typer.Option(None, "--weights", help="Path to weights.yaml [env RETOUCH_WEIGHTS]"),
    host: str | None = typer.Option(None, "--host", help="Bind address [127.0.0.1]"),
    port: int | None = typer.Option(None, "--port", help="Port [8000]"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Jobs database and files [./data]"),
    server_id: str | None = typer.Option(None, "--server-id", help="This server's id [host name]"),
    workers: int | None = typer.Option(None, "--workers", help="GPU worker processes [1]"),
    role: str | None = typer.Option(
        None, "--role", help="all | api (HTTP only) | worker (GPU workers only) [all]; see docs/deploy.md"
    ),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Serve a non-loopback address without API keys (trusted network)"
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG | INFO | WARNING | ERROR [INFO]"),
    demo_if_missing: bool = typer.Option(
        False,
        "--demo-if-missing",
        help="None of the registry's files on disk: build (once) and serve the random-weight demo set",
    ),
    demo_dir: str = typer.Option("tiny-weights", "--demo-dir", help="Folder of the --demo-if-missing set"),
) -> None:
    """Start the HTTP server with its GPU workers (settings also from RETOUCH_* variables)."""
    from server.serve import serve_command

    flags = {"weights": weights, "host": host, "port": port, "data_dir": data_dir}
    flags.update(server_id=server_id, workers=workers, insecure_no_auth=insecure_no_auth or None)
    flags.update(role=role, log_level=log_level)
    serve_command({k: v for k, v in flags.items() if v is not None}, demo_dir if demo_if_missing else None)


keys_app = typer.Typer(no_args_is_help=True, help="API keys: stored hashed in the keys file.")
app.add_typer(keys_app, name="keys")
_DATA_DIR = typer.Option(None, "--data-dir", help="Data dir holding api_keys.json [./data]")
_KEYS_FILE = typer.Option(None, "--keys-file", help="Keys file [<data-dir>/api_keys.json]")


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="Who or what the key is for"),
    scope: list[str] = typer.Option(["edit"], "--scope", help="edit and/or admin (repeat for both)"),
    budget_usd: float | None = typer.Option(None, "--budget-usd", help="Spending limit (402 once spent)"),
    rate: str | None = typer.Option(None, "--rate", help="Job creations per minute, e.g. 60/min (429)"),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Unfinished jobs at a time (429)"),
    data_dir: str | None = _DATA_DIR,
    keys_file: str | None = _KEYS_FILE,
) -> None:
    """Create a key and print it once (only its SHA-256 is stored); takes effect without a restart."""
    from server.keys_cli import create_command

    create_command(
        name=name,
        scopes=scope,
        budget_usd=budget_usd,
        rate=rate,
        concurrency=concurrency,
        data_dir=data_dir,
        keys_path=keys_file,
    )


@keys_app.command("list")
def keys_list(data_dir: str | None = _DATA_DIR, keys_file: str | None = _KEYS_FILE) -> None:
    """List keys: id, name, scopes, limits (never the keys)."""
    from server.keys_cli import list_command

    list_command(data_dir=data_dir, keys_path=keys_file)


if __name__ == "__main__":
    app()
