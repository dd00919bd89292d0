"""``engine_latency.py --perf KEY=VALUE``: measure a weights.yaml ``performance`` setting on and off.

The settings go through the same functions the loader uses (``pipelines.acceleration``), applied to
the engine the benchmark built. ``--save-pictures`` / ``--compare-with`` give the PSNR of each case
against a run of the exact path, so a speed-up is never reported without what it did to the picture.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image


def parse(pairs: list[str]) -> dict:
    """["compile=regional", "warmup_sizes=[[1024,1024]]"] -> {"compile": "regional", ...} (JSON values)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def apply(engine, overrides: dict) -> list[str]:
    """Apply performance overrides to a built engine; returns notes for the results table."""
    if not overrides:
        return []
    from pipelines import acceleration
    from pipelines.registry import Performance

    edit = engine.edit
    perf = Performance(**(edit.entry.performance.model_dump() | overrides))
    edit.entry = edit.entry.model_copy(update={"performance": perf})
    pipe, where = edit.pipe, f"models.{edit.name}"
    acceleration.set_attention_backend(pipe.transformer, perf.attention_backend, where)
    edit.fused = acceleration.fuse_and_quantize(pipe, perf, where)
    if perf.quantize != "none":
        edit.adapters = []
    acceleration.compile_regional(pipe.transformer, perf)
    acceleration.offload_text_encoder(pipe, perf)
    pipe.prompt_cache = acceleration.PromptCache(perf.prompt_cache_size) if perf.prompt_cache_size else None
    if engine.refiner is not None:
        acceleration.set_attention_backend(engine.refiner.pipe.transformer, perf.attention_backend, where)
    warmed = acceleration.warm_up(engine)
    notes = [f"performance overrides: {json.dumps(overrides)}"]
    if warmed:
        notes.append(f"warm-up before timing: {', '.join(warmed)}")
    return notes


def psnr(a: bytes, b: bytes) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        return float("nan")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def save_picture(folder: str | None, case: str, data: bytes) -> None:
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{case}.png").write_bytes(data)


def compare(folder: str | None, case: str, data: bytes) -> float | None:
    """PSNR (dB) of this run's picture against the saved exact-path one; inf = bit-identical."""
    if not folder or not (Path(folder) / f"{case}.png").is_file():
        return None
    return psnr((Path(folder) / f"{case}.png").read_bytes(), data)
