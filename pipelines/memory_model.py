"""What each placement costs in GPU memory, host memory and PCIe traffic, and what a job's
activations take per output size. Pure arithmetic over ``memory_sizes``; ``memory`` searches it.

Every activation figure here is an estimate (see docs/memory.md for the reasoning) until the GPU
check of issue 10 measures it; the weight figures are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory_sizes import ComponentSize, LoraSize

GIB = 2**30
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack that no tensor accounts for.
CONTEXT_BYTES = int(0.75 * GIB)
# Fraction of the budget a plan leaves free: fragmentation, a second process, a driver update.
HEADROOM = 0.08
# The server process itself (Python, torch, the HTTP side) in host memory.
HOST_OVERHEAD_BYTES = 4 * GIB
# Live hidden-state-sized bf16 tensors per token at a transformer block's peak (norm output, Q/K/V,
# attention output, the MLP's 4x-wide hidden and its activation) with memory-efficient attention.
TRANSFORMER_LIVE_TENSORS = 12
# Bytes per output pixel at the VAE's peak (full-resolution feature maps and conv caches, bf16).
VAE_BYTES_PER_PIXEL = {"AutoencoderKLQwenImage": 2560, "AutoencoderKL": 2048}
TEXT_ENCODER_ACTIVATION = {"text_encoder": GIB}
TEXT_TOKENS = 1024  # prompt template plus the vision tokens of the condition pictures
CAPTION_TOKENS = 512
FP8_BYTES = 1
# Share of a card's peak bf16 rate the transformer's GEMMs sustain (whether a streamed block's copy
# hides behind the previous block's compute depends on it).
SUSTAINED_SHARE = 0.6
# Host-to-device copies from pageable (not pinned) memory, as a share of the pinned rate.
PAGEABLE_SHARE = 0.5


@dataclass(frozen=True)
class DeviceProfile:
    """How fast a card computes and how fast its host link copies, for pricing copies against compute."""

    name: str
    memory_gib: float
    peak_bf16_tflops: float
    pcie_gb_per_s: float  # pinned host-to-device: ~25 for PCIe 4.0 x16, ~50 for PCIe 5.0 x16

    @property
    def sustained_flops(self) -> float:
        return self.peak_bf16_tflops * 1e12 * SUSTAINED_SHARE

    @property
    def pcie_bytes_per_s(self) -> float:
        return self.pcie_gb_per_s * 1e9


# The card a studio most likely has at each memory size (data-sheet dense bf16 peaks).
TYPICAL_CARDS = (
    DeviceProfile("RTX 4090 / L4 class", 24, 165, 25),
    DeviceProfile("RTX 5090 class", 32, 209, 50),
    DeviceProfile("L40S / RTX 6000 Ada class", 48, 362, 25),
    DeviceProfile("H100 / A100 80 GB class", 80, 800, 50),
    DeviceProfile("H200 class", 141, 800, 50),
)


def typical_device(memory_gib: float) -> DeviceProfile:
    """The smallest typical card with at least this memory (the largest one past the table)."""
    for card in TYPICAL_CARDS:
        if memory_gib <= card.memory_gib:
            return card
    return TYPICAL_CARDS[-1]


@dataclass(frozen=True)
class Workload:
    """The largest job a plan must hold, and the reference job its cost is quoted for."""

    max_side: int
    condition_pictures: int  # pictures plus references the Plus pipeline encodes, worst case
    vae_condition_pixels: int
    refiner_tiling_above_pixels: int
    # the engine decodes in tiles above this area, which bounds the VAE's peak (refine.tile_vae_above)
    edit_tiling_above_pixels: int = 2048 * 2048
    reference_steps: int = 8  # Lightning-8, the default fast path
    refine_steps: int = 3  # Z-Image-Turbo's 9 steps at the 2k/4k upscale strength 0.3


def hidden_size(size: ComponentSize) -> int:
    c = size.config
    if "num_attention_heads" in c and "attention_head_dim" in c:
        return c["num_attention_heads"] * c["attention_head_dim"]
    return c.get("dim", c.get("hidden_size", 1024))


def tokens(size: ComponentSize, side: int, conditions: int, work: Workload, refiner: bool) -> int:
    """Sequence length of one transformer forward for an output whose long side is ``side``."""
    if refiner:
        return side * side // 256 + CAPTION_TOKENS
    return (side * side + conditions * work.vae_condition_pixels) // 256 + TEXT_TOKENS


def activation_bytes(size: ComponentSize, side: int, work: Workload, refiner: bool) -> int:
    """Transient bytes while this component runs the largest job (``side``, every condition picture)."""
    pixels = side * side
    if size.component == "transformer":
        length = tokens(size, side, work.condition_pictures, work, refiner)
        return length * hidden_size(size) * 2 * TRANSFORMER_LIVE_TENSORS
    if size.component == "vae":
        per_pixel = VAE_BYTES_PER_PIXEL.get(size.class_name, 2560)
        if refiner:
            return per_pixel * min(pixels, work.refiner_tiling_above_pixels)
        return per_pixel * max(min(pixels, work.edit_tiling_above_pixels), work.vae_condition_pixels)
    return TEXT_ENCODER_ACTIVATION.get(size.component, GIB)


def lora_bytes(loras: list[LoraSize]) -> int:
    """Adapter weights held beside the edit transformer (they stay bf16 over FP8 weights too)."""
    return sum(lora.bytes for lora in loras)


def weight_bytes(size: ComponentSize, placement: str) -> int:
    """Bytes of the component's weights in this placement (FP8 stores the blocks' linear layers)."""
    if placement in ("gpu-fp8", "streamed-fp8"):
        block = size.counts.blocks * size.counts.block_parameters
        return size.bytes - block * size.bytes_per_parameter + block * FP8_BYTES
    return size.bytes


def resident_bytes(size: ComponentSize, placement: str, adapters: int) -> int:
    """Held on the GPU for the whole life of the worker."""
    if placement in ("gpu", "gpu-fp8"):
        return weight_bytes(size, placement) + adapters
    return 0


def visiting_bytes(size: ComponentSize, placement: str, adapters: int) -> int:
    """Brought onto the GPU only while the component runs."""
    if placement == "cpu-visit":
        return size.bytes + adapters
    if placement in ("streamed", "streamed-fp8"):
        per_block = weight_bytes(size, placement) - size.non_block_bytes
        blocks = max(size.counts.blocks, 1)
        # the running block plus the one being prefetched on the copy stream
        return size.non_block_bytes + 2 * (per_block + adapters) // blocks
    return 0


def host_bytes(size: ComponentSize, placement: str, adapters: int, pinned: bool = True) -> int:
    """Host memory held for the component: streamed weights need a pinned copy and staging (~2x);
    pinned block by block as they are copied (``pinned=False``), about their own bytes."""
    if placement == "cpu-visit":
        return size.bytes + adapters
    if placement in ("streamed", "streamed-fp8"):
        return (2 if pinned else 1) * (weight_bytes(size, placement) + adapters)
    return 0


def transfer_per_job(
    size: ComponentSize,
    placement: str,
    adapters: int,
    steps: int,
    side: int,
    work: Workload,
    refiner: bool,
    device: DeviceProfile,
    pinned: bool = True,
) -> tuple[int, float]:
    """(PCIe bytes, seconds added) of one job at ``side`` with one condition picture.

    A visit copies in and back out and nothing overlaps it; a streamed block's copy runs on its own
    stream while the previous block computes, so only the part longer than the compute is paid.
    """
    if placement == "cpu-visit":
        visits = 2 if size.component == "vae" else 1  # encode the conditions, decode the result
        moved = 2 * visits * (size.bytes + adapters)
        return moved, moved / device.pcie_bytes_per_s
    if placement in ("streamed", "streamed-fp8"):
        per_step = weight_bytes(size, placement) + adapters
        compute = 2 * size.parameters * tokens(size, side, 1, work, refiner) / device.sustained_flops
        # copies from pageable memory run at about half the pinned rate
        rate = device.pcie_bytes_per_s * (1.0 if pinned else PAGEABLE_SHARE)
        return steps * per_step, steps * max(0.0, per_step / rate - compute)
    return 0, 0.0
