"""Shared by the benchmark scripts: run metadata, percentiles, JSON output, RESULTS.md appends."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "peft", "accelerate", "retouch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def run_meta(device) -> dict:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": versions(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "git": git_commit(),
        "host": platform.node(),
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "runs": values}


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def header_lines(title: str, meta: dict, notes: list[str]) -> list[str]:
    v = meta["versions"]
    lines = [
        f"{title} - {meta['date']}",
        f"device: {meta['device']}",
        f"torch {v['torch']}, diffusers {v['diffusers']}, transformers {v['transformers']}, peft {v['peft']}",
        f"command: {meta['command']}  (git {meta['git']})",
    ]
    return lines + [f"note: {n}" for n in notes]


def append_results(path: str | Path, title: str, meta: dict, notes: list[str], table: str) -> None:
    """Append one dated section to RESULTS.md. The numbers come only from here, never by hand."""
    v = meta["versions"]
    section = [
        "",
        f"### {title} - {meta['date']} - {meta['device']}",
        "",
        f"- versions: torch {v['torch']}, diffusers {v['diffusers']}, transformers {v['transformers']}, "
        f"peft {v['peft']}, python {v['python']}",
        f"- command: `{meta['command']}` (git {meta['git']})",
        *[f"- {n}" for n in notes],
        "",
        "```",
        table.rstrip(),
        "```",
        "",
    ]
    with Path(path).open("a") as f:
        f.write("\n".join(section))
