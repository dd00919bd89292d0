"""The GPU check's cases, in the order of their value (issue 12); ``gpu_check.py`` runs them.

Each case is a ``Case``: a name, what it measures, an estimate of its seconds (``gpu_estimates``)
and a function of the shared ``Context`` that returns its JSON. A later measurement (a memory
plan, another model) is one more ``Case`` in ``CASES`` with its own estimate; nothing else changes.

The speed settings (``gpu_speed_cases``) change the edit transformer in place; FP8 cannot be undone,
so it runs after the last case that needs the exact bf16 path (the server builds its own engine).
"""

from __future__ import annotations

import base64
import gc
import time

import torch

from benchmarks import engine_latency, report, server_overhead
from benchmarks.engines import full_engine, install_probe, tiny_engine, with_stock
from benchmarks.gpu_context import Case, Context, run_engine_case
from benchmarks.gpu_environment import environment_info
from benchmarks.gpu_memory_cases import MEMORY_CASES
from benchmarks.gpu_qwen21_cases import QWEN21_CASES
from benchmarks.gpu_speed_cases import (
    attention_backends,
    compile_estimate,
    fp8_estimate,
    fp8_fused,
    regional_compile,
)


def build(ctx: Context) -> dict:
    t0, record = time.perf_counter(), {}
    if ctx.tiny:
        engine, notes = tiny_engine(ctx.device, str(ctx.workdir / "tiny"), ctx.side)
        stock_pipe = None
        for role, pipe in (("edit", engine.edit.pipe), ("refiner", getattr(engine.refiner, "pipe", None))):
            for part in ("transformer", "vae", "text_encoder") if pipe is not None else ():
                weights = sum(p.numel() * p.element_size() for p in getattr(pipe, part).parameters())
                record[f"{role}_{part}"] = {"seconds": None, "gib": weights / 2**30}
    else:
        engine, notes, stock_pipe = full_engine(
            ctx.device, [4, 8], refiner=True, side=ctx.side, layers=ctx.layers, record=record
        )
    ctx.engines = with_stock(engine, stock_pipe)
    ctx.probe = install_probe(ctx.engines, ctx.device)
    ctx.notes += notes
    seconds = time.perf_counter() - t0
    ctx.estimator.learn_build(seconds)
    ctx.estimator.learn_model(dict(engine.edit.pipe.transformer.config))
    out = {"seconds": seconds, "components": record, "notes": notes, "refiner": engine.refiner is not None}
    if ctx.device.type == "cuda":
        out["resident_gib"] = torch.cuda.memory_allocated(ctx.device) / 2**30
    return out


def lightning(steps: int) -> Case:
    def run(ctx: Context) -> dict:
        return run_engine_case(ctx, f"lightning-{steps}", runs=3, warmup=1, save_pictures=ctx.pictures)

    def estimate(ctx: Context) -> float:
        return 2 * (ctx.runs(3) + ctx.warmups(1)) * ctx.estimator.job_s(steps)

    return Case(f"lightning-{steps}", f"Lightning-{steps}, Retouch vs stock, 3 timed runs after 1 warm-up",
                estimate, run)  # fmt: skip


def cfg_40(ctx: Context) -> dict:
    """40 steps with true CFG, one timed run per path; fewer steps, said so, when 40 do not fit."""
    steps = ctx.estimator.steps_that_fit(ctx.left() / 1.1, jobs=2, forwards_per_step=2, most=40)
    settings = dict(engine_latency.CASES["cfg-40"], num_inference_steps=steps)
    out = run_engine_case(ctx, "cfg-40", runs=1, warmup=0, settings=settings)
    out["steps_run"] = steps
    out["denoise_per_step_s"] = {p: out[p]["stages"]["denoise"]["p50"] / steps for p in ("retouch", "stock")}
    if steps < 40:
        out["note"] = f"{steps} of 40 steps measured (budget): per-step time measured, a 40-step job NOT"
    return out


def refiner(ctx: Context) -> dict:
    if ctx.engine.refiner is None:
        return {"skipped": "no refiner: it did not fit next to the edit model"}
    return run_engine_case(ctx, "lightning-8-refine", {"retouch": ctx.engine}, runs=2, warmup=1)


def server(ctx: Context) -> dict:
    """3 jobs through HTTP + queue + worker; the worker builds its own engine, so this one goes first."""
    ctx.engines = ctx.probe = None
    torch._dynamo.reset()  # compiled blocks (FP8 case) would keep the old transformer alive
    gc.collect()
    left_allocated = None
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
        left_allocated = torch.cuda.memory_allocated(ctx.device) / 2**30
    image = engine_latency.picture(ctx.side, seed=0)
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    env = {"RETOUCH_API_KEYS": server_overhead.API_KEY}
    workdir = ctx.workdir / "server"
    if ctx.tiny:  # the set the build case wrote, already pinned to the check's size
        weights = ctx.workdir / "tiny" / "weights.yaml"
    else:
        weights = report.ROOT / "weights.yaml"
        env["RETOUCH_ENGINE_FACTORY"] = server_overhead.FULL_FACTORY
    try:
        measured = server_overhead.measure_server(
            weights, env, workdir, data_url, runs=3, warmup=ctx.warmups(1), poll_s=0.01, status_seconds=0,
            status_concurrency=1, ready_timeout=max(30.0, ctx.left()),
            extra={"width": ctx.side, "height": ctx.side},
        )  # fmt: skip
    except BaseException as e:  # SystemExit from a server that did not start: keep its log's tail
        log = workdir / "server.log"
        tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
        raise RuntimeError(f"{type(e).__name__}: {e}\nserver log tail:\n{tail}") from None
    jobs = measured["jobs"]
    added = [j["e2e"] - j["engine"] for j in jobs]
    engine_p50 = report.percentile([j["engine"] for j in jobs], 50)
    return {"jobs": jobs, "added_per_job_s": added, "added_p50_s": report.percentile(added, 50),
            "added_over_engine_p50": report.percentile(added, 50) / engine_p50,
            "this_process_gib_after_freeing": left_allocated,
            "table": server_overhead.table([], jobs, None)}  # fmt: skip


def _server_estimate(ctx: Context) -> float:
    f = ctx.estimator.fixed
    # the worker builds the edit model alone (~3/4 of the full set's build) and runs 1 + 3 jobs
    jobs = 3 + ctx.warmups(1)
    return f["server_start_s"] + 0.75 * f["build_s"] + jobs * ctx.estimator.job_s(8)


def _cfg_estimate(ctx: Context) -> float:
    # 40 steps on both paths if they fit; else the time left, the case then running fewer steps
    # (at least 4, the least worth a per-step figure)
    est = ctx.estimator
    return min(2 * est.job_s(2 * 40), max(2 * est.job_s(2 * 4), ctx.left() / 1.1))


CASES: list[Case] = [
    Case("environment", "device, memory, driver, versions, the bf16 peak used for the bound",
         lambda ctx: ctx.estimator.fixed["environment_s"],
         lambda ctx: environment_info(ctx.device, ctx.peak_tflops),
         needs_engine=False),
    Case("build", "full-size build in bf16 on the device: time and memory per component",
         lambda ctx: ctx.estimator.fixed["build_s"], build, needs_engine=False),
    lightning(8),
    lightning(4),
    Case("cfg-40", "40 steps, true CFG: one timed run per path (fewer steps, said so, if 40 do not fit)",
         _cfg_estimate, cfg_40),
    Case("attention-backends", "Lightning-8 per attention backend available here, PSNR vs the exact path",
         lambda ctx: (ctx.runs(2) + ctx.warmups(1)) * ctx.estimator.job_s(8), attention_backends),
    Case("regional-compile", "Lightning-8 with the blocks compiled: compile time, speed, PSNR",
         compile_estimate, regional_compile),
    Case("refiner", "edit + refiner resident: peak memory; Lightning-8 then refine 0.3",
         lambda ctx: (ctx.runs(2) + ctx.warmups(1)) * (ctx.estimator.job_s(8) + ctx.estimator.job_s(3)),
         refiner),
    Case("fp8-fused", "Lightning-8 fused into FP8 weights (torchao) and compiled: speed, PSNR",
         fp8_estimate, fp8_fused),
    Case("server", "3 jobs via HTTP + queue + worker with the full-size engine: added latency per job",
         _server_estimate, server, needs_engine=False),
    # Qwen-Image 2.1 (issue 16): its own build, beside the edit engine when the card holds both
    *QWEN21_CASES,
    # each builds its own engine placed by a smaller card's plan (issue 14), so they come last
    *MEMORY_CASES,
]  # fmt: skip
