"""The GPU check's memory-plan cases (issue 14): smaller cards emulated on the H200.

For each card size the planner chooses a plan (``pipelines.memory.plan_memory``, the one a worker on
such a card would run), the engine is built again and placed by that plan through the same hooks
the loader uses (``pipelines.memory_apply``), the process is held to the card's memory with
``torch.cuda.set_per_process_memory_fraction``, and Lightning-8 runs at the check's size: latency
against the resident Lightning-8 case, peak memory, and PSNR against the resident picture.

The full-size build is seeded, so the rebuilt random weights equal the resident case's and the PSNR
compares the same model. On the tiny set (CPU dry run) nothing bounds memory: each size runs a named
plan that exercises the mechanisms that card would need, so the dry run covers the code path.
"""

from __future__ import annotations

import gc

import torch

from benchmarks import report
from benchmarks.engines import full_engine, install_probe
from benchmarks.gpu_context import Case, Context, run_engine_case
from benchmarks.gpu_qwen21_cases import free_qwen21

GIB = 2**30
# The targets: end-to-end latency against the resident path, and the least PSNR.
TARGETS = {80: 1.05, 48: 1.3, 24: 3.0}
MIN_PSNR_DB = 35.0
# Tiny dry run: what each card's plan would have to do, named (auto keeps the tiny set resident).
TINY_PLANS = {80: "refiner-on-demand", 48: "encoder-offload", 24: "low-memory"}


def _registry(ctx: Context):
    from pipelines import load_registry

    return load_registry(ctx.workdir / "tiny" / "weights.yaml" if ctx.tiny else report.ROOT / "weights.yaml")


def _plan(ctx: Context, registry, gib: int):
    from pipelines.memory import plan_memory
    from pipelines.memory_apply import UNBOUNDED_GIB
    from pipelines.memory_model import typical_device

    if ctx.tiny:
        return plan_memory(registry, UNBOUNDED_GIB, plan=TINY_PLANS[gib], host_memory_gib=UNBOUNDED_GIB)
    return plan_memory(registry, gib, device=typical_device(gib))


def _place(pipe, model: str, plan, device: torch.device) -> None:
    """Move what the plan keeps off the GPU to CPU memory, then the plan's hooks, as the loader does."""
    from pipelines.memory_apply import apply_offloads, placements_of

    placements = placements_of(plan, model)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and placements.get(name, "gpu") not in ("gpu", "gpu-fp8"):
            component.to("cpu")
    apply_offloads(pipe, placements, device, f"models.{model}", plan)


def _build(ctx: Context, refiner: bool):
    if ctx.tiny:
        from pipelines import EditEngine

        return EditEngine(_registry(ctx), str(ctx.device))
    engine, _notes, _stock = full_engine(ctx.device, [8], refiner=refiner, side=ctx.side, layers=ctx.layers)
    return engine


def _free(ctx: Context) -> None:
    free_qwen21(ctx)  # Qwen-Image 2.1, if its last case did not run to free it
    ctx.engines = ctx.probe = None
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def emulated_card(ctx: Context, gib: int) -> dict:
    from pipelines.memory_plan import NoPlanFits

    registry = _registry(ctx)
    try:
        plan = _plan(ctx, registry, gib)
    except NoPlanFits as e:
        return {"card_gib": gib, "unavailable": f"no plan fits: {e}"}
    out = {"card_gib": gib, "plan": plan.summary(), "planner_peak_gib": plan.peak_bytes / GIB,
           "planner_notes": plan.notes, "cost": plan.cost_lines()}  # fmt: skip
    _free(ctx)  # the resident engine of the earlier cases (or the last card's) goes first
    engine = _build(ctx, refiner=any(r.role == "refiner" for r in plan.rows))
    try:
        _place(engine.edit.pipe, engine.edit.name, plan, ctx.device)
        if engine.refiner is not None:
            _place(engine.refiner.pipe, engine.refiner.name, plan, ctx.device)
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(ctx.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GIB / total), ctx.device)
            out["held_after_placing_gib"] = torch.cuda.memory_allocated(ctx.device) / GIB
        ctx.engines = {"retouch": engine}
        ctx.probe = install_probe(ctx.engines, ctx.device)
        run = run_engine_case(ctx, "lightning-8", runs=3, warmup=1, learn=False, compare_with=ctx.pictures)
    finally:
        if ctx.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
        _free(ctx)
    out["lightning-8"] = run
    resident = ctx.results.get("lightning-8", {}).get("retouch")
    e2e = run["retouch"]["stages"]["end_to_end"]["p50"]
    if resident:
        ratio = e2e / resident["stages"]["end_to_end"]["p50"]
        psnr = run.get("psnr_vs_exact_db")
        out["vs_resident"] = ratio
        out["target_vs_resident"] = TARGETS[gib]
        out["meets_target"] = ratio <= TARGETS[gib] and (psnr is None or psnr >= MIN_PSNR_DB)
    return out


def memory_case(gib: int) -> Case:
    def estimate(ctx: Context) -> float:
        est = ctx.estimator
        jobs = ctx.runs(3) + ctx.warmups(1)
        return est.fixed["build_s"] + jobs * est.job_s(8) * TARGETS[gib]

    what = (f"{gib} GB card emulated (memory fraction): the plan chosen, Lightning-8 3 runs, peak memory, "
            "latency and PSNR vs resident")  # fmt: skip
    return Case(f"memory-{gib}", what, estimate, lambda ctx: emulated_card(ctx, gib), needs_engine=False)


MEMORY_CASES = [memory_case(gib) for gib in TARGETS]


def memory_table(cases: dict) -> str:
    """One row per emulated card that ran: the plan, planned vs measured peak, latency, PSNR."""
    rows = [f"{'card':6}{'plan':20}{'planned GiB':>12}{'peak GiB':>10}{'e2e p50 s':>11}{'x resident':>12}"
            f"{'target':>8}{'PSNR dB':>9}  meets", "-" * 96]  # fmt: skip
    for gib in TARGETS:
        rec = cases.get(f"memory-{gib}", {})
        if "lightning-8" not in rec:
            continue
        run = rec["lightning-8"]["retouch"]
        peak = run.get("peak_memory_gib")
        ratio, psnr = rec.get("vs_resident"), rec["lightning-8"].get("psnr_vs_exact_db")
        rows.append(
            f"{gib:<6}{rec['plan']['plan']:20}{rec['planner_peak_gib']:>12.1f}"
            f"{'n/a' if peak is None else f'{peak:.1f}':>10}{run['stages']['end_to_end']['p50']:>11.3f}"
            f"{'n/a' if ratio is None else f'{ratio:.2f}':>12}{TARGETS[gib]:>8.2f}"
            f"{'n/a' if psnr is None else f'{psnr:.1f}':>9}  {rec.get('meets_target', 'n/a')}"
        )
    return "\n".join(rows) if len(rows) > 2 else ""
