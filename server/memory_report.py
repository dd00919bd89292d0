"""Each worker's memory plan and loaded edit models, shared with the API process: /v1/servers,
/metrics, admission and the ETA of a job that needs a model swapped in.

A worker writes its plan's summary (pipelines/memory.py) once its engine is loaded, as a JSON file
next to the metrics files of this server run (a fresh directory per ``retouch serve``, so a plan
from an earlier run is never read), and sets the plan gauges. The API reads the files: it never
imports torch and never plans itself.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from . import metrics  # settles prometheus-client's multiprocess directory before its import
from .settings import Settings

log = logging.getLogger("retouch.memory")
_GAUGES: dict = {}


def _gauges() -> dict:
    """Made on first use, in a worker, after ``metrics`` settled prometheus-client's mode."""
    if not _GAUGES:
        from prometheus_client import Gauge

        _GAUGES["info"] = Gauge(
            "retouch_memory_plan_info",
            "1 per worker, labelled with the memory plan it runs (pipelines/memory.py)",
            ["worker", "plan"],
            multiprocess_mode="livemax",
        )
        _GAUGES["peak"] = Gauge(
            "retouch_memory_plan_peak_bytes",
            "Estimated peak GPU memory of the worker's memory plan at its largest allowed output",
            ["worker"],
            multiprocess_mode="livemax",
        )
        _GAUGES["side"] = Gauge(
            "retouch_memory_plan_largest_side_pixels",
            "Largest output side the worker's memory plan fits; larger jobs are refused at submission",
            ["worker"],
            multiprocess_mode="livemax",
        )
    return _GAUGES


def plans_dir(settings: Settings) -> Path:
    run_dir = os.environ.get(metrics.MULTIPROC_ENV)
    return Path(run_dir) / "memory-plans" if run_dir else Path(settings.data_dir) / "memory-plans"


def _write(folder: Path, worker_id: str, body: dict) -> None:
    """One worker's report, renamed into place so readers never see half of it."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{worker_id}.json.tmp"
    tmp.write_text(json.dumps({"worker": worker_id, **body}))
    tmp.replace(folder / f"{worker_id}.json")


def _read(folder: Path) -> list[dict]:
    reports = []
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            reports.append(json.loads(file.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now; the next read sees it
    return reports


def publish(settings: Settings, worker_id: str, summary: dict) -> None:
    _write(plans_dir(settings), worker_id, summary)
    gauges = _gauges()
    gauges["info"].labels(worker_id, summary["plan"]).set(1)
    gauges["peak"].labels(worker_id).set(summary["peak_gib"] * 2**30)
    gauges["side"].labels(worker_id).set(summary["largest_side"])
    log.info("memory plan %s: %s", summary["plan"], summary)


def read_all(settings: Settings) -> list[dict]:
    return _read(plans_dir(settings))


def _models_dir(settings: Settings) -> Path:
    return plans_dir(settings).parent / "resident-models"


def publish_models(settings: Settings, worker_id: str, resident: list[str], load_seconds: dict) -> None:
    """The edit models a worker has loaded now and how long each took to load (swap ETAs)."""
    _write(_models_dir(settings), worker_id, {"resident": resident, "load_seconds": load_seconds})


def read_models(settings: Settings) -> list[dict]:
    return _read(_models_dir(settings))


def side_for(plan: dict, model: str | None) -> int | None:
    """The largest output side a worker's plan fits for ``model`` (a swapping worker plans each
    model it may load), else for whatever it runs."""
    return (plan.get("largest_side_by_model") or {}).get(model, plan.get("largest_side"))


def largest_side(settings: Settings, model: str | None = None) -> int | None:
    """The largest output side every worker's plan fits (a job may go to any of them)."""
    sides = [side for p in read_all(settings) if (side := side_for(p, model)) is not None]
    return min(sides) if sides else None
