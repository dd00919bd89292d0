"""The GPU check's Qwen-Image 2.1 cases (issue 16): 40 steps without CFG at 1024x1024 and 2048x2048,
Retouch's loop (``RetouchQwenImage21Pipeline``) vs stock diffusers' ``QwenImage21Pipeline`` on the
same components, through the same engine (``engines.with_stock``).

``qwen21-build`` builds the full-size 2.1 in bf16 on the device (random weights, seeded; configs/:
the transformer and VAE are diffusers 0.42.1's class defaults, the text encoder Qwen3-VL-8B's
shape) next to whatever the earlier cases left resident: an H200 holds the edit engine (~58 GB), the
refiner (~20 GB) and 2.1 (~32 GB) together, so the edit engine is freed first only when the free
memory cannot hold 2.1 and its 2048x2048 job, or when the build runs out of memory beside it. The
last 2.1 case frees 2.1 again (the memory cases free it too, if that case did not run), so the
memory cases find the card as they expect.

FLOPs are ``pipelines/flops.py``'s 2.1 count over the token counts of every forward
(``instrument.qwen21_tokens``): the first step over the whole joint sequence, each later one only
the target's queries over all keys, as the prefix KV cache runs them. In the ``--tiny`` dry run the
cases run the tiny 2.1 on the CPU at the check's side and twice it.
"""

from __future__ import annotations

import gc
import time
from functools import cache

import torch

from benchmarks import engine_latency, flops
from benchmarks.engines import full_qwen21_engine, install_probe, pin_tiny_sizes, with_stock
from benchmarks.gpu_context import Case, Context

GIB = 2**30
STEPS = 40
SETTINGS = dict(lightning_steps=None, num_inference_steps=STEPS, guidance_scale=1.0)  # no CFG
WARMUP_STEPS = 2  # a GPU's first 2.1 job per path, untimed: kernels, allocator, both attention paths
TEXT_TOKENS = 64  # the prompt and its template; the pictures' latents are image tokens of their own
# For the decision to free the edit engine first, and the estimates (assumed, not measured):
WEIGHTS_GIB = 30.0  # 7.1 B transformer + 8.77 B Qwen3-VL + VAE, bf16
JOB_GIB = 16.0  # activations of a 2048x2048 job (the VAE decode at 4 MP dominates)
BUILD_SHARE = 0.4  # of the full edit set's build: ~32 GB of weights against ~78 GB


@cache
def _config() -> dict:
    return flops.qwen_image_21_config()


def _job_s(ctx: Context, side: int, steps: int) -> float:
    """One 2.1 job at ``side``: its FLOPs over the achieved rate, plus the overhead by picture size."""
    est = ctx.estimator
    overhead = est.overhead_s * max(1.0, side * side / 1024**2)
    if ctx.tiny or not est.rate:  # the tiny set's FLOPs are negligible on any CPU
        return overhead
    condition = (ctx.side, ctx.side)  # vae_condition_pixels: 1 MP at the check's 1024
    job = flops.qwen_image_21_job_flops(_config(), side, side, [condition], TEXT_TOKENS, steps, False)
    return job / est.rate + overhead


def _gpu_gib(ctx: Context) -> float | None:
    return torch.cuda.memory_allocated(ctx.device) / GIB if ctx.device.type == "cuda" else None


def _free_edit_engine(ctx: Context) -> None:
    ctx.engines = ctx.probe = None
    torch._dynamo.reset()  # compiled blocks (FP8 case) would keep the old transformer alive
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def free_qwen21(ctx: Context) -> None:
    """Drop 2.1's engines and give their memory back (the last 2.1 case, and the memory cases)."""
    if ctx.qwen21 is None:
        return
    ctx.qwen21 = None
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _room(ctx: Context) -> str:
    """Free the edit engine only if the card cannot hold 2.1 and its largest job beside it."""
    if ctx.device.type != "cuda" or ctx.engines is None:
        return "nothing to free" if ctx.engines is None else "kept (no GPU)"
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(ctx.device)
    need = (WEIGHTS_GIB + JOB_GIB) * GIB
    if free >= need:
        return f"kept: {free / GIB:.0f} GiB free, ~{need / GIB:.0f} GiB needed"
    _free_edit_engine(ctx)
    return f"freed: {free / GIB:.0f} GiB free beside it, ~{need / GIB:.0f} GiB needed"


def _tiny_engine(ctx: Context):
    from pipelines import EditEngine, build_tiny_weights, load_registry

    weights = ctx.workdir / "tiny" / "weights.yaml"
    if not weights.is_file():  # the build case writes the tiny set; without it, write it here
        build_tiny_weights(str(ctx.workdir / "tiny"))
        pin_tiny_sizes(weights, ctx.side)
    registry = load_registry(weights)
    name = next(n for n, m in registry.models.items() if m.pipeline == "qwen_image_21")
    return EditEngine(registry.holding(name), str(ctx.device))


def build(ctx: Context) -> dict:
    t0, record = time.perf_counter(), {}
    out = {"other_models_gib_before": _gpu_gib(ctx)}
    if ctx.tiny:
        engine, stock_pipe = _tiny_engine(ctx), None
        notes = [f"{engine.edit.name}: the tiny 2.1 on the real code path (EditEngine)"]
        for part in ("transformer", "vae", "text_encoder"):
            weights = sum(p.numel() * p.element_size() for p in getattr(engine.edit.pipe, part).parameters())
            record[f"qwen21_{part}"] = {"seconds": None, "gib": weights / GIB}
    else:
        out["edit_engine"] = _room(ctx)
        built = None
        try:
            built = full_qwen21_engine(ctx.device, layers=ctx.layers, side=ctx.side, record=record)
        except torch.cuda.OutOfMemoryError:
            if ctx.engines is None:
                raise
        if built is None:  # out of memory beside the edit engine: free it and build again
            record.clear()
            _free_edit_engine(ctx)
            out["edit_engine"] = "freed: the 2.1 build ran out of memory beside it"
            built = full_qwen21_engine(ctx.device, layers=ctx.layers, side=ctx.side, record=record)
        engine, notes, stock_pipe = built
    engines = with_stock(engine, stock_pipe)
    weights_gib = sum(v["gib"] or 0 for k, v in record.items() if k != "tokenizer_and_processor")
    ctx.qwen21 = {"engines": engines, "probe": install_probe(engines, ctx.device), "warm": False,
                  "weights_gib": weights_gib}  # fmt: skip
    ctx.notes += notes
    out |= {"seconds": time.perf_counter() - t0, "components": record, "weights_gib": weights_gib,
            "notes": notes, "resident_gib": _gpu_gib(ctx)}  # fmt: skip
    return out


def _warm_up(ctx: Context, side: int) -> None:
    state = ctx.qwen21
    if state["warm"] or not ctx.warmups(1):
        return
    settings = dict(SETTINGS, num_inference_steps=WARMUP_STEPS)
    for engine in state["engines"].values():
        engine.run(engine_latency.make_spec("qwen21", engine.registry, side, settings))
    state["warm"] = True


def run_size(ctx: Context, factor: int, last: bool) -> dict:
    """40 steps, no CFG, at ``factor`` times the check's side: one timed run per path."""
    state = ctx.qwen21
    side = ctx.side * factor
    try:
        _warm_up(ctx, side)
        out = engine_latency.run_case(f"qwen21-{side}", state["engines"], state["probe"], ctx.peak_tflops,
                                      runs=ctx.runs(1), warmup=0, side=side, settings=SETTINGS)  # fmt: skip
    finally:
        if last:
            free_qwen21(ctx)
    out["steps"] = STEPS
    out["warmed_up_with"] = f"{WARMUP_STEPS}-step job per path" if ctx.warmups(1) else None
    if out.get("resident_gib") is not None:  # the peaks count every model resident; 2.1's own part:
        other = out["resident_gib"] - state["weights_gib"]
        out["other_models_gib"] = other
        for path in ("retouch", "stock"):
            out[path]["peak_memory_without_other_models_gib"] = out[path]["peak_memory_gib"] - other
    return out


def build_estimate(ctx: Context) -> float:
    return BUILD_SHARE * ctx.estimator.fixed["build_s"]


def size_case(factor: int, last: bool) -> Case:
    name = f"qwen21-40-{1024 * factor}"

    def estimate(ctx: Context) -> float:
        side = ctx.side * factor
        # the first 2.1 case to run warms up (before any is built, the 1024 one is taken to)
        cold = ctx.qwen21 is None and factor == 1 or ctx.qwen21 is not None and not ctx.qwen21["warm"]
        warm = ctx.warmups(1) * _job_s(ctx, side, WARMUP_STEPS) if cold else 0.0
        return 2 * (ctx.runs(1) * _job_s(ctx, side, STEPS) + warm)

    what = (f"Qwen-Image 2.1, 40 steps without CFG at {1024 * factor}x{1024 * factor}, Retouch vs stock: "
            "one timed run per path, TFLOP/s (KV cache counted), peak memory")  # fmt: skip
    return Case(name, what, estimate, lambda ctx: run_size(ctx, factor, last), needs_engine=False,
                missing=_missing)  # fmt: skip


def _missing(ctx: Context) -> str | None:
    return None if ctx.qwen21 else "no 2.1 engine: qwen21-build did not run or failed"


QWEN21_CASES = [
    Case("qwen21-build", "full-size Qwen-Image 2.1 in bf16 on the device, beside the edit engine if it fits",
         build_estimate, build, needs_engine=False),
    size_case(1, last=False),
    size_case(2, last=True),
]  # fmt: skip
