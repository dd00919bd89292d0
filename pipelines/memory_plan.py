"""A memory plan as the planner hands it out: one row per component, the peak, the cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from .memory_model import GIB, DeviceProfile, weight_bytes
from .memory_sizes import ComponentSize, LoraSize

LOSSY = {"gpu-fp8", "streamed-fp8"}
WHY = {
    "gpu": "resident on the GPU in {dtype}: nothing moves per job",
    "gpu-fp8": "FP8 (e4m3) weights with per-channel scales, computed in {dtype}: half the bytes, not exact",
    "cpu-visit": "kept in CPU memory; visits the GPU only while it runs",
    "streamed": "block-level group offload with a copy stream: 2 of {blocks} blocks on the GPU at a time",
    "streamed-fp8": "FP8 weights streamed block by block: half the PCIe bytes of bf16, not exact",
}


class NoPlanFits(Exception):
    """No plan fits this GPU; ``needed_gib`` is the smallest GPU memory that would work."""

    def __init__(self, message: str, needed_gib: float | None):
        super().__init__(message)
        self.needed_gib = needed_gib


@dataclass(frozen=True)
class Row:
    size: ComponentSize
    placement: str
    why: str
    role: str  # "edit" or "refiner"

    @property
    def placed_bytes(self) -> int:
        return weight_bytes(self.size, self.placement)


@dataclass
class MemoryPlan:
    name: str
    gpu_bytes: int
    host_bytes_available: int
    rows: list[Row]
    loras: list[LoraSize]
    peak_bytes: int
    peak_stage: str
    host_bytes_needed: int
    max_side: int
    largest_side: int
    reference_transfer_bytes: int
    reference_seconds: float
    refined_transfer_bytes: int
    refined_seconds: float
    streamed_bytes_per_step: int
    device: DeviceProfile
    pinned_streams: bool = True  # False: diffusers' low_cpu_mem_usage (pinned as copied)
    notes: list[str] = field(default_factory=list)

    @property
    def lossy(self) -> bool:
        return any(r.placement in LOSSY for r in self.rows)

    def placement(self, model: str, component: str) -> str | None:
        for row in self.rows:
            if row.size.model == model and row.size.component == component:
                return row.placement
        return None

    def placements(self) -> dict[str, str]:
        return {row.size.key: row.placement for row in self.rows}

    def cost_lines(self) -> list[str]:
        gbs = self.device.pcie_gb_per_s
        lines = []
        if self.streamed_bytes_per_step:
            lines.append(
                f"transformer streamed from CPU: about {self.streamed_bytes_per_step / 1e9:.1f} GB over PCIe "
                f"per denoising step (hidden behind the step's compute when that is longer)"
            )
        ref, refined = self.reference_transfer_bytes, self.refined_transfer_bytes
        lines.append(
            f"per Lightning-8 1024x1024 job: {ref / 1e9:.1f} GB over PCIe, about "
            f"{self.reference_seconds:.1f} s added at {gbs:.0f} GB/s; refining adds {refined / 1e9:.1f} GB "
            f"({self.refined_seconds:.1f} s)"
        )
        if self.lossy:
            lines.append("FP8 weights: pictures differ from the bf16 path (PSNR in docs/memory.md)")
        return lines

    def summary(self) -> dict:
        """What a worker reports (logs, /v1/servers)."""
        return {
            "plan": self.name,
            "gpu_memory_gib": round(self.gpu_bytes / GIB, 2),
            "peak_gib": round(self.peak_bytes / GIB, 2),
            "largest_side": self.largest_side,
            "placements": self.placements(),
            "lossy": self.lossy,
            "pinned_streams": self.pinned_streams,
        }


def resident_together(plans: list[MemoryPlan]) -> tuple[int, int]:
    """(bytes needed, bytes usable) for keeping the edit models of ``plans`` (one plan each, the
    same card and refiner) loaded at once: every plan's GPU-resident edit weights, the refiner's
    once, and the largest activation headroom any of them needs."""
    from .memory_model import HEADROOM

    def resident(plan: MemoryPlan, role: str) -> int:
        return sum(r.placed_bytes for r in plan.rows if r.role == role and r.placement in ("gpu", "gpu-fp8"))

    weights = sum(resident(p, "edit") for p in plans) + resident(plans[0], "refiner")
    activations = max(p.peak_bytes - resident(p, "edit") - resident(p, "refiner") for p in plans)
    return weights + max(activations, 0), int(plans[0].gpu_bytes * (1 - HEADROOM))
