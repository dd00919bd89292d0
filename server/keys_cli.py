"""``retouch keys ...``: create and list API keys in the keys file (hashes only, key shown once)."""

from __future__ import annotations

import re

import typer

from .auth import SCOPES, KeysFile
from .settings import Settings

_RATE = re.compile(r"^\s*(\d+)\s*(?:/\s*(?:min|m|minute))?\s*$")


def parse_rate(text: str | None) -> int | None:
    """``"60/min"`` or ``"60"`` -> 60 jobs per minute."""
    if text is None:
        return None
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise typer.BadParameter(f"{text!r}: expected jobs per minute, e.g. 60/min")
    return int(match.group(1))


def keys_file(settings_flags: dict) -> KeysFile:
    settings = Settings(**{k: v for k, v in settings_flags.items() if v is not None})
    return KeysFile(settings.keys_path)


def create_command(
    *,
    name: str,
    scopes: list[str],
    budget_usd: float | None,
    rate: str | None,
    concurrency: int | None,
    data_dir: str | None,
    keys_path: str | None,
) -> None:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise typer.BadParameter(f"unknown scope(s) {unknown}; choose from {list(SCOPES)}")
    if budget_usd is not None and budget_usd < 0:
        raise typer.BadParameter("--budget-usd must be >= 0")
    if concurrency is not None and concurrency < 1:
        raise typer.BadParameter("--concurrency must be >= 1")
    store = keys_file({"data_dir": data_dir, "keys_file": keys_path})
    secret, record = store.add(
        name, scopes, budget_usd=budget_usd, rate_per_min=parse_rate(rate), concurrency=concurrency
    )
    typer.echo(secret)
    typer.echo(
        f"created key {record.id} ({record.name}, scopes {','.join(record.scopes)}) in {store.path}; "
        "the key is shown only now, only its SHA-256 is stored",
        err=True,
    )


def list_command(*, data_dir: str | None, keys_path: str | None) -> None:
    store = keys_file({"data_dir": data_dir, "keys_file": keys_path})
    for k in store.records():
        limits = f"budget={k.budget_usd} rate={k.rate_per_min}/min concurrency={k.concurrency}"
        typer.echo(f"{k.id}\t{k.name}\t{','.join(k.scopes)}\t{limits}")
