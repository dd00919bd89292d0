"""The GPU check's speed-settings cases: attention backends, regional compile, FP8 with the LoRA fused.

Each runs Lightning-8 on the Retouch path with one weights.yaml ``performance`` setting applied the
way the loader applies it (``perf_options.apply``) and gives its PSNR against the exact path's
picture from the Lightning-8 case. They change the edit transformer in place: attention backends
and the regional compile are undone after their case; FP8 (fused LoRA, quantised weights) cannot
be, so ``CASES`` puts it after the last case that needs the exact bf16 path.
"""

from __future__ import annotations

import importlib.util
import time

import torch

from benchmarks import perf_options
from benchmarks.gpu_context import Context, run_engine_case


def _restore(ctx: Context, entry, transformers) -> None:
    ctx.engine.edit.entry = entry
    for transformer in transformers:
        transformer.reset_attention_backend()


def _transformers(ctx: Context) -> list:
    engine = ctx.engine
    return [engine.edit.pipe.transformer] + ([engine.refiner.pipe.transformer] if engine.refiner else [])


def attention_candidates(ctx: Context) -> list[str]:
    """SDPA's own kernels always; the kernel packages' backends only where the package is installed."""
    if ctx.device.type != "cuda":
        return ["_native_math"]
    packages = {"_flash_3": "flash_attn_interface", "flash": "flash_attn", "sage": "sageattention"}
    found = [name for name, module in packages.items() if importlib.util.find_spec(module) is not None]
    return ["_native_cudnn", "_native_flash", *found]


def attention_backends(ctx: Context) -> dict:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    out = {}
    entry = ctx.engine.edit.entry
    # set_attention_backend also sets diffusers' process-wide active backend, which the model's
    # reset does not undo: without this, every engine built later (the memory cases) runs on the
    # last backend tried here.
    active = _AttentionBackendRegistry._active_backend
    for backend in attention_candidates(ctx):
        if ctx.left() < (ctx.runs(2) + ctx.warmups(1)) * ctx.estimator.job_s(8):
            out[backend] = {"skipped": "budget"}
            continue
        try:
            perf_options.apply(ctx.engine, {"attention_backend": backend})
            out[backend] = run_engine_case(ctx, "lightning-8", {"retouch": ctx.engine}, runs=2, warmup=1,
                                 compare_with=ctx.pictures)  # fmt: skip
        except Exception as e:  # a backend this machine cannot run is a finding, not a failure
            out[backend] = {"unavailable": f"{type(e).__name__}: {e}"[:500]}
        finally:
            _restore(ctx, entry, _transformers(ctx))
            _AttentionBackendRegistry.set_active_backend(active)
    return {"backends": out}


def _undo_compile(transformer) -> None:
    # nn.Module.compile() only sets this; clearing it puts each block back on eager forward.
    for module in transformer.modules():
        if module.__class__.__name__ in (transformer._repeated_blocks or ()):
            module._compiled_call_impl = None
    torch._dynamo.reset()


def _eager_on_the_tiny_set(ctx: Context, transformer) -> None:
    # Dynamo still traces every block whole (fullgraph) but runs it eagerly: inductor's C++ build
    # would take most of a CPU dry run's budget and says nothing about the GPU's kernels.
    if ctx.tiny:
        compile_blocks = transformer.compile_repeated_blocks
        transformer.compile_repeated_blocks = lambda *a, **kw: compile_blocks(*a, backend="eager", **kw)
        ctx.notes.append("tiny set: regional compile with dynamo's eager backend (no inductor build), "
                         "compiled in the timed run (no warm-up sizes)")  # fmt: skip


def regional_compile(ctx: Context) -> dict:
    entry = ctx.engine.edit.entry
    _eager_on_the_tiny_set(ctx, ctx.engine.edit.pipe.transformer)
    try:
        t0 = time.perf_counter()
        # A server compiles every mode a job can ask for at start (warmup_sizes); on the tiny set the
        # timed run compiles its one mode instead, to stay inside a CPU dry run's budget.
        sizes = [] if ctx.tiny else [[ctx.side, ctx.side]]
        notes = perf_options.apply(ctx.engine, {"compile": "regional", "warmup_sizes": sizes})
        compile_s = time.perf_counter() - t0
        out = run_engine_case(
            ctx,
            "lightning-8",
            {"retouch": ctx.engine},
            runs=2,
            warmup=0,
            learn=False,
            compare_with=ctx.pictures,
        )
    finally:
        transformer = ctx.engine.edit.pipe.transformer
        transformer.__dict__.pop("compile_repeated_blocks", None)
        _undo_compile(transformer)
        _restore(ctx, entry, [])
    out["compile_and_warmup_s"] = compile_s
    out["notes"] = notes
    return out


def fp8_fused(ctx: Context) -> dict:
    from pipelines.errors import RegistryError

    overrides = {"quantize": "fp8", "fuse_lora": "lightning-8", "compile": "regional",
                 "warmup_sizes": [[ctx.side, ctx.side]]}  # fmt: skip
    t0 = time.perf_counter()
    try:
        notes = perf_options.apply(ctx.engine, overrides)
    except RegistryError as e:
        return {"unavailable": str(e)}
    setup_s = time.perf_counter() - t0
    out = run_engine_case(
        ctx, "lightning-8", {"retouch": ctx.engine}, runs=2, warmup=0, learn=False, compare_with=ctx.pictures
    )
    out |= {"fuse_quantize_compile_warmup_s": setup_s, "notes": notes, "overrides": overrides}
    return out


def fp8_estimate(ctx: Context) -> float:
    f, est = ctx.estimator.fixed, ctx.estimator
    return f["fp8_s"] + (f["compile_s"] + (1 + ctx.runs(2)) * est.job_s(8) if est.cuda else 0.0)


def compile_estimate(ctx: Context) -> float:
    est = ctx.estimator
    # warm-up runs every mode once (Lightning-4, Lightning-8, full model 2 steps with CFG), then 2 runs
    return est.fixed["compile_s"] + 2 * est.job_s(4) + (1 + ctx.runs(2)) * est.job_s(8)
