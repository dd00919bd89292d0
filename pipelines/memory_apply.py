"""Applying a memory plan to loaded pipelines through the libraries' own hooks.

- ``gpu``: the component moves to the device, as without a plan.
- ``streamed``: diffusers block-level group offloading, one block per group; on CUDA the next
  block's copy runs on its own stream. ``record_stream`` stays off (diffusers #12673).
- ``gpu-fp8`` / ``streamed-fp8``: torchao float8 weight-only (e4m3, one scale per output channel,
  computed in the model's dtype) on the blocks' linear layers, LoRA layers excluded, so the adapters
  stay bf16 and switchable over the scaled FP8 base.
- ``cpu-visit``: text encoders and transformers behind an accelerate hook, brought in whole when
  they first run in a job and sent back after encoding / after the denoise loop (the pipelines call
  the hook); a VAE through diffusers' leaf-level group offloading (encode and decode each bring its
  layers in and send them back).
On a CPU both devices are the CPU: the same hooks run, which is how the tests exercise them.
"""

from __future__ import annotations

import logging

import torch

from .errors import RegistryError
from .memory import NoPlanFits, plan_memory
from .memory_model import GIB, typical_device
from .memory_plan import MemoryPlan
from .memory_sizes import BLOCK_LISTS
from .registry import Registry

log = logging.getLogger("retouch.engine")
# CPU runs plan a named plan without a budget: every mechanism is applied, nothing is refused.
UNBOUNDED_GIB = 1 << 20
FALLBACK_SIDES = (1536, 1024, 768, 512, 256)


def choose_plan(registry: Registry, device: torch.device) -> MemoryPlan | None:
    """The plan this worker runs; None keeps every model resident (``auto`` on a CPU)."""
    settings = registry.memory
    plan = None if settings.plan == "auto" else settings.plan
    if device.type != "cuda":
        if plan is None and not settings.overrides and settings.gpu_memory_gib is None:
            return None
        # gpu_memory_gib on a CPU emulates a card of that size (plan, limits); nothing else is bounded
        gib = settings.gpu_memory_gib or UNBOUNDED_GIB
        return _largest_fitting(registry, gib, plan=plan, host_memory_gib=UNBOUNDED_GIB)
    free, total = torch.cuda.mem_get_info(device)
    # Whatever else already holds memory on this card is not ours to plan with.
    gib = settings.gpu_memory_gib or free / GIB
    profile = typical_device(total / GIB)
    chosen = _largest_fitting(registry, gib, plan=plan, device=profile)
    log.info("memory plan %s for %.1f GiB: %s", chosen.name, gib, chosen.summary())
    return chosen


def _largest_fitting(registry: Registry, gib: float, **kwargs) -> MemoryPlan:
    """The plan for the limits' largest output, or for the largest smaller side that fits: a worker
    serves what its card can, and the API refuses larger jobs up front (pipelines/memory_limits.py)."""
    top = registry.limits.max_output_side
    sides = [top, *(side for side in FALLBACK_SIDES if side < top)]
    first = None
    for side in sides:
        try:
            return plan_memory(registry, gib, max_side=side, **kwargs)
        except NoPlanFits as e:
            first = first or e
    raise RegistryError(f"{registry.source}: memory: {first}") from None


# One plan per registry object, so the refiner is placed by the plan the edit model was (the free
# memory a second look would see already counts the edit model's weights).
_PLANS: dict[int, tuple[Registry, MemoryPlan | None]] = {}


def plan_for(registry: Registry, device: torch.device) -> MemoryPlan | None:
    cached = _PLANS.get(id(registry))
    if cached is None or cached[0] is not registry:
        cached = _PLANS[id(registry)] = (registry, choose_plan(registry, device))
    return cached[1]


def placements_of(plan: MemoryPlan | None, model: str) -> dict[str, str]:
    if plan is None:
        return {}
    return {row.size.component: row.placement for row in plan.rows if row.size.model == model}


def move_resident(pipe, placements: dict[str, str], target: torch.device) -> None:
    """Send resident components to the device; the others stay in CPU memory for their hooks."""
    if not placements:
        pipe.to(target)
        return
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and placements.get(name, "gpu") in ("gpu", "gpu-fp8"):
            component.to(target)


def _quantize_fp8(transformer, where: str) -> None:
    try:
        from torchao.quantization import Float8WeightOnlyConfig, quantize_
    except ImportError:
        raise RegistryError(f"{where}: FP8 placements need the torchao package") from None
    prefixes = tuple(f"{b}." for b in BLOCK_LISTS.get(type(transformer).__name__, ("transformer_blocks",)))

    def block_linear(module, fqn: str) -> bool:
        # LoRA layers stay in the model's dtype; only the base weights are stored in FP8.
        return isinstance(module, torch.nn.Linear) and fqn.startswith(prefixes) and ".lora_" not in fqn

    quantize_(transformer, Float8WeightOnlyConfig(), block_linear)


def _stream_blocks(transformer, target: torch.device, pinned: bool) -> None:
    transformer.enable_group_offload(
        onload_device=target,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=target.type == "cuda",
        low_cpu_mem_usage=not pinned,
    )


def _visiting(module, target: torch.device):
    """The accelerate hook that brings ``module`` to ``target`` on its first forward; the caller's
    ``hook.offload()`` sends it back to CPU memory."""
    from accelerate import cpu_offload_with_hook

    module.to("cpu")
    _, hook = cpu_offload_with_hook(module, execution_device=target)
    return hook


def apply_offloads(
    pipe, placements: dict[str, str], target: torch.device, where: str, plan: MemoryPlan | None = None
) -> None:
    """After the LoRAs are loaded: FP8 storage, streaming and visits, as the plan says."""
    transformer = placements.get("transformer", "gpu")
    if transformer in ("gpu-fp8", "streamed-fp8"):
        _quantize_fp8(pipe.transformer, where)
    if transformer in ("streamed", "streamed-fp8"):
        _stream_blocks(pipe.transformer, target, pinned=plan is None or plan.pinned_streams)
    if transformer == "cpu-visit":
        pipe.transformer_hook = _visiting(pipe.transformer, target)
    if placements.get("text_encoder") == "cpu-visit" and getattr(pipe, "text_encoder_hook", None) is None:
        pipe.text_encoder_hook = _visiting(pipe.text_encoder, target)
    if placements.get("vae") == "cpu-visit":
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(
            pipe.vae, onload_device=target, offload_type="leaf_level", use_stream=target.type == "cuda"
        )
    if placements:
        log.info("%s placed: %s", where, placements)
