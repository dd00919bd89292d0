"""The memory planner: where every model component lives for a given GPU memory.

It reads parameter counts (``memory_sizes``, never loading a weight), prices each placement
(``memory_model``) and walks every combination of placements: resident bf16; kept in CPU memory
and visiting the GPU only while it runs (text encoders between encodes, VAEs); block-level group
offloading with streams (only two blocks of a transformer on the GPU); and FP8 weight storage
with per-channel scales computed in bf16 (lossy, so ``auto`` never picks it; name ``fp8``).
``auto`` takes the lossless plan with the least PCIe traffic per reference job (Lightning-8 at
1024x1024, unrefined, prompt-cache miss) that fits the largest allowed output with headroom.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from .memory_model import (
    CONTEXT_BYTES,
    GIB,
    HEADROOM,
    HOST_OVERHEAD_BYTES,
    DeviceProfile,
    Workload,
    activation_bytes,
    host_bytes,
    lora_bytes,
    resident_bytes,
    transfer_per_job,
    typical_device,
    visiting_bytes,
    weight_bytes,
)
from .memory_named import assignments, name_of
from .memory_plan import WHY, MemoryPlan, NoPlanFits, Row
from .memory_sizes import ComponentSize, LoraSize, component_sizes, lora_size
from .registry import Registry

REFERENCE_SIDE = 1024


@dataclass(frozen=True)
class _Inputs:
    sizes: dict[str, list[ComponentSize]]  # role -> components
    loras: list[LoraSize]
    workload: Workload
    dtype: dict[str, str]
    device: DeviceProfile
    pinned: bool = (
        True  # streamed weights pinned up front (False: block by block, diffusers' low_cpu_mem_usage)
    )


def _inputs(registry: Registry, max_side: int | None, device: DeviceProfile) -> _Inputs:
    sizes, loras, dtype = {}, [], {}
    limits = registry.limits
    edit_area, edit_tiling = 1024 * 1024, 2048 * 2048
    for role in ("edit", "refiner"):
        found = registry.model_for("edit_plus" if role == "edit" else role) or (
            registry.model_for("edit") if role == "edit" else None
        )
        if found is None:
            continue
        name, entry = found
        sizes[role] = component_sizes(registry, name, entry)
        dtype[role] = entry.dtype
        if role == "edit":
            edit_area, edit_tiling = entry.vae_condition_pixels, entry.vae_tiling_above_pixels
            transformer = next(s for s in sizes[role] if s.component == "transformer")
            loras = [lora_size(registry, name, n, lora, transformer) for n, lora in entry.loras.items()]
    refiner = registry.model_for("refiner")
    work = Workload(
        max_side=max_side or limits.max_output_side,
        condition_pictures=(
            registry.max_pictures(None) if registry.edit_models() else limits.max_images_per_job
        ),
        vae_condition_pixels=edit_area,
        refiner_tiling_above_pixels=refiner[1].vae_tiling_above_pixels if refiner else 2048 * 2048,
        edit_tiling_above_pixels=edit_tiling,
    )
    return _Inputs(sizes, loras, work, dtype, device)


@dataclass(frozen=True)
class _Evaluation:
    peak: int
    stage: str
    host: int
    reference_bytes: int
    reference_seconds: float
    refined_bytes: int
    refined_seconds: float

    def rank(self) -> tuple:
        # fastest first; at equal time, fewer bytes moved, then the lower peak (more headroom)
        return (
            round(self.reference_seconds, 2),
            round(self.refined_seconds, 2),
            self.reference_bytes + self.refined_bytes,
            self.peak,
        )


def _evaluate(inputs: _Inputs, placements: dict[str, str], side: int) -> _Evaluation:
    resident, host = 0, HOST_OVERHEAD_BYTES
    moved = {"edit": [0, 0.0], "refiner": [0, 0.0]}
    stages: list[tuple[str, int]] = []
    largest_pipeline = 0
    work = inputs.workload
    for role, sizes in inputs.sizes.items():
        # loading passes a pipeline's resident parts through host memory before they move over
        largest_pipeline = max(
            largest_pipeline, sum(s.bytes for s in sizes if resident_bytes(s, placements[s.key], 0))
        )
        refiner = role == "refiner"
        steps = work.refine_steps if refiner else work.reference_steps
        for size in sizes:
            placement = placements[size.key]
            adapters = 0
            if size.component == "transformer" and not refiner:
                adapters = lora_bytes(inputs.loras)
            resident += resident_bytes(size, placement, adapters)
            host += host_bytes(size, placement, adapters, inputs.pinned)
            nbytes, seconds = transfer_per_job(
                size, placement, adapters, steps, REFERENCE_SIDE, work, refiner, inputs.device, inputs.pinned
            )
            moved[role][0] += nbytes
            moved[role][1] += seconds
            extra = visiting_bytes(size, placement, adapters) + activation_bytes(size, side, work, refiner)
            stages.append((f"{role} {size.component}", extra))
    stage, extra = max(stages, key=lambda s: s[1])
    return _Evaluation(
        peak=resident + extra + CONTEXT_BYTES,
        stage=stage,
        host=host + largest_pipeline,
        reference_bytes=moved["edit"][0],
        reference_seconds=moved["edit"][1],
        refined_bytes=moved["refiner"][0],
        refined_seconds=moved["refiner"][1],
    )


def _fits(peak: int, budget: int) -> bool:
    return peak <= budget * (1 - HEADROOM)


def _largest_side(inputs: _Inputs, placements: dict[str, str], budget: int) -> int:
    lo, hi = 0, 16384 // 16
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(_evaluate(inputs, placements, mid * 16).peak, budget):
            lo = mid
        else:
            hi = mid - 1
    return lo * 16


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class _Search:
    best: tuple[dict[str, str], _Evaluation] | None = None
    needed: float | None = None  # the least GPU memory any host-fitting plan needs
    host_short: int | None = None  # the least host memory of the plans refused on host memory
    host_for_this_gpu: int | None = None  # ... of those among them that fit the GPU


def _search(inputs: _Inputs, requested: str, overrides: dict, budget: int, host_budget: int) -> _Search:
    found = _Search()
    for placements in assignments(inputs, requested, overrides):
        ev = _evaluate(inputs, placements, inputs.workload.max_side)
        if ev.host > host_budget:
            found.host_short = min(found.host_short or ev.host, ev.host)
            if _fits(ev.peak, budget):
                found.host_for_this_gpu = min(found.host_for_this_gpu or ev.host, ev.host)
            continue
        required = ev.peak / (1 - HEADROOM)
        found.needed = required if found.needed is None else min(found.needed, required)
        if _fits(ev.peak, budget) and (found.best is None or ev.rank() < found.best[1].rank()):
            found.best = (placements, ev)
    return found


def plan_memory(
    registry: Registry,
    gpu_memory_gib: float,
    *,
    max_side: int | None = None,
    host_memory_gib: float | None = None,
    plan: str | None = None,
    device: DeviceProfile | None = None,
) -> MemoryPlan:
    """The fastest plan that fits ``gpu_memory_gib`` at the largest output side; NoPlanFits if none."""
    settings = registry.memory
    requested = plan or settings.plan
    device = device or typical_device(gpu_memory_gib)
    inputs = _inputs(registry, max_side, device)
    budget = int(gpu_memory_gib * GIB)
    host_gib = host_memory_gib or settings.host_memory_gib
    host_budget = int(host_gib * GIB) if host_gib else host_memory_bytes()
    side = inputs.workload.max_side
    found = _search(inputs, requested, settings.overrides, budget, host_budget)
    if found.best is None and found.host_for_this_gpu is not None:
        # Too little host memory to pin the streamed weights up front: pin them as they are copied.
        unpinned = dataclasses.replace(inputs, pinned=False)
        retry = _search(unpinned, requested, settings.overrides, budget, host_budget)
        if retry.best is not None or retry.host_for_this_gpu is not None:
            inputs, found = unpinned, retry
    best = found.best
    if best is None:
        what = f"plan {requested!r}" if requested != "auto" else "no lossless plan"
        if found.needed is None:
            raise NoPlanFits(
                f"{what} fits in {host_budget / GIB:.0f} GiB of host memory: it needs at least "
                f"{found.host_short / GIB:.1f} GiB (streamed weights keep ~2x their bytes pinned)",
                None,
            )
        needed_gib = math.ceil(found.needed / GIB * 2) / 2
        host_note = ""
        if found.host_for_this_gpu is not None:
            host_note = (
                f"; plans that fit {gpu_memory_gib:g} GiB need {found.host_for_this_gpu / GIB:.0f} GiB of "
                f"host memory even pinned block by block, this machine has {host_budget / GIB:.0f} GiB"
            )
        raise NoPlanFits(
            f"{what} fits in {gpu_memory_gib:g} GiB of GPU memory for outputs up to {side}px; the smallest "
            f"GPU memory that would work is {needed_gib:g} GiB (or lower --max-side){host_note}",
            needed_gib,
        )
    placements, ev = best
    rows = []
    for role, sizes in inputs.sizes.items():
        for s in sizes:
            p = placements[s.key]
            why = WHY[p].format(dtype=inputs.dtype[role], blocks=s.counts.blocks)
            rows.append(Row(s, p, why, role))
    streamed = sum(
        weight_bytes(r.size, r.placement)
        for r in rows
        if r.role == "edit" and r.placement in ("streamed", "streamed-fp8")
    )
    result = MemoryPlan(
        name=name_of(inputs, placements, requested),
        gpu_bytes=budget,
        host_bytes_available=host_budget,
        rows=rows,
        loras=inputs.loras,
        peak_bytes=ev.peak,
        peak_stage=ev.stage,
        host_bytes_needed=ev.host,
        max_side=side,
        largest_side=_largest_side(inputs, placements, budget),
        reference_transfer_bytes=ev.reference_bytes,
        reference_seconds=ev.reference_seconds,
        refined_transfer_bytes=ev.refined_bytes,
        refined_seconds=ev.refined_seconds,
        streamed_bytes_per_step=streamed,
        device=device,
        pinned_streams=inputs.pinned,
    )
    if not inputs.pinned:
        result.notes.append(
            f"{host_budget / GIB:.0f} GiB of host memory is too little to pin the streamed weights up front: "
            "they are pinned block by block as they are copied (slower copies, priced at half the rate)"
        )
    if requested == "auto" and set(placements.values()) != {"gpu"}:
        everything = {s.key: "gpu" for ss in inputs.sizes.values() for s in ss}
        resident_peak = _evaluate(inputs, everything, side).peak
        result.notes.append(
            f"why not all resident: that would peak at {resident_peak / GIB:.1f} GiB, over 92% of "
            f"{gpu_memory_gib:g} GiB; this is the lossless plan that adds the least time per job"
        )
    if any(s.counts.source != "safetensors headers" for ss in inputs.sizes.values() for s in ss):
        result.notes.append("parameter counts from the configs (meta-device construction): exact")
    if any(lora.estimate for lora in inputs.loras):
        result.notes.append("LoRA sizes marked 'estimate' come from a declared or default rank")
    result.notes.append("activations and peak are estimates (docs/memory.md), weights are exact")
    return result
