"""Body of ``retouch plan``: where every component would live on a GPU, before anything is loaded.

Runs on a folder holding only the configs (nothing downloaded yet). No plan fits: exit 2 with the
smallest GPU memory that would work.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from .errors import RegistryError
from .memory_model import GIB


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _local_gpu_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GIB


def render_plan(plan, weights: str) -> str:
    dev = plan.device
    out = [
        f"{weights}: {plan.gpu_bytes / GIB:g} GiB of GPU memory (priced as a {dev.name} card: "
        f"{dev.peak_bf16_tflops:g} bf16 TFLOP/s, {dev.pcie_gb_per_s:g} GB/s host link), outputs up to "
        f"{plan.max_side}px",
        f"plan: {plan.name} "
        + ("(lossy: FP8 weights)" if plan.lossy else "(lossless: the same pictures as resident bf16)"),
        "",
        f"{'component':<36} {'parameters':>12} {'bytes':>10}  {'placement':<13} {'sized from':<22} why",
    ]
    for row in plan.rows:
        out.append(
            f"{row.size.key:<36} {row.size.parameters / 1e9:>10.3f} B {row.placed_bytes / 1e9:>7.2f} GB  "
            f"{row.placement:<13} {row.size.counts.source:<22} {row.why}"
        )
    for lora in plan.loras:
        where = "adapter beside the transformer"
        sized = "estimate" if lora.estimate else lora.why
        out.append(
            f"{lora.model + '.loras.' + lora.name:<36} {lora.parameters / 1e9:>10.3f} B "
            f"{lora.bytes / 1e9:>7.2f} GB  {'lora':<13} {sized:<22} {where}"
            + (f"; {lora.why}" if lora.estimate else "")
        )
    out += [
        "",
        f"estimated peak GPU memory: {plan.peak_bytes / GIB:.1f} GiB of {plan.gpu_bytes / GIB:g} GiB "
        f"(while the {plan.peak_stage} runs; 8% kept free)",
        f"host memory: {plan.host_bytes_needed / GIB:.1f} GiB needed of "
        f"{plan.host_bytes_available / GIB:.0f} GiB "
        "(the loading pipeline, CPU-held weights, streamed weights pinned at ~2x)",
    ]
    out += [f"cost: {line}" for line in plan.cost_lines()]
    out.append(f"largest output side that fits: {plan.largest_side}px")
    out += [f"note: {note}" for note in plan.notes]
    return "\n".join(out)


def plan_command(
    weights: str,
    gpu_memory: float | None,
    max_side: int | None,
    host_memory: float | None,
    plan: str | None,
    models: list[str] = (),
) -> None:
    """``models``: the edit models to plan for (a pod that holds each; several: one pod swapping
    them, and whether they fit loaded together); none = the default one."""
    from .memory import NoPlanFits, plan_memory
    from .memory_named import NAMED_PLANS
    from .memory_plan import resident_together
    from .registry import load_registry

    try:
        registry = load_registry(weights)
        pods = [registry.holding(name) for name in models] or [registry]
    except RegistryError as e:
        _fail(str(e).replace("\n", " "))
    if plan is not None and plan != "auto" and plan not in NAMED_PLANS:
        _fail(f"--plan must be auto or one of {', '.join(NAMED_PLANS)}, got {plan!r}")
    if max_side is not None and not 64 <= max_side <= 16384:
        _fail(f"--max-side must be within 64..16384, got {max_side}")
    gib = gpu_memory or registry.memory.gpu_memory_gib or _local_gpu_gib()
    if gib is None:
        _fail("no GPU here and no gpu_memory_gib in weights.yaml: pass --gpu-memory GIB to plan for a card")
    if gib <= 0:
        _fail(f"--gpu-memory must be positive, got {gib:g}")
    results = []
    for pod in pods:
        name = pod.edit_model(None)[0]
        try:
            results.append(plan_memory(pod, gib, max_side=max_side, host_memory_gib=host_memory, plan=plan))
        except NoPlanFits as e:
            _fail(f"{name}: {e}")
        except RegistryError as e:
            _fail(str(e).replace("\n", " "))
        if len(pods) > 1:
            print(f"== {name} ==")
        print(render_plan(results[-1], weights))
        if len(pods) > 1:
            print()
    if len(pods) > 1:
        needed, usable = resident_together(results)
        names = ", ".join(p.edit_model(None)[0] for p in pods)
        verdict = (
            f"fit loaded together: swap: true with memory.resident_edit_models: {len(pods)} never swaps them"
            if needed <= usable
            else "do not fit loaded together: with swap: true a worker loads one at a time, "
            "least recently used out (each swap loads its weights again)"
        )
        held = f"{needed / GIB:.1f} GiB to keep all loaded, {usable / GIB:.1f} GiB usable"
        print(f"{names}: {held}; they {verdict}")
