"""``memory:`` in weights.yaml: which memory plan to run (pipelines/memory.py) and its overrides."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Named memory plans (pipelines/memory.py) and where one component may live.
MemoryPlanName = Literal[
    "auto",
    "resident",
    "refiner-streamed",
    "refiner-on-demand",
    "encoder-offload",
    "edit-streamed",
    "low-memory",
    "fp8",
    "fp8-streamed",
]
Placement = Literal["gpu", "gpu-fp8", "cpu-visit", "streamed", "streamed-fp8"]
PLACEMENTS_BY_COMPONENT: dict[str, tuple[str, ...]] = {
    # a transformer runs every step: it streams block by block, or visits whole for one job's
    # denoise loop (one copy each way per job, but room for all its weights while it runs)
    "transformer": ("gpu", "gpu-fp8", "cpu-visit", "streamed", "streamed-fp8"),
    "text_encoder": ("gpu", "cpu-visit"),
    "vae": ("gpu", "cpu-visit"),
}


class MemorySettings(BaseModel):
    """``memory:`` in weights.yaml: a plan name (``auto`` chooses for the GPU at start) or a mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: MemoryPlanName = "auto"
    # plan for less than the card has (a GPU shared with something else); null = what the device has
    gpu_memory_gib: float | None = Field(default=None, gt=0, le=4096)
    # host RAM to plan with; null = this machine's
    host_memory_gib: float | None = Field(default=None, gt=0, le=65536)
    # with swap: true, the edit models a worker keeps loaded at once (least recently used out; on a
    # GPU also no more than leave room for the next one's planned weights)
    resident_edit_models: int = Field(default=1, ge=1, le=8)
    # "<model>.<component>" -> placement, applied on top of whichever plan is chosen
    overrides: dict[str, Placement] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plan_name_alone(cls, value):
        return {"plan": value} if isinstance(value, str) else value

    @field_validator("overrides")
    @classmethod
    def _known_components(cls, value: dict[str, str]) -> dict[str, str]:
        for key, placement in value.items():
            model, _, component = key.rpartition(".")
            allowed = PLACEMENTS_BY_COMPONENT.get(component)
            if not model or allowed is None:
                known = sorted(PLACEMENTS_BY_COMPONENT)
                raise ValueError(f"{key!r}: expected '<model>.<component>', the component one of {known}")
            if placement not in allowed:
                raise ValueError(f"{key!r}: a {component} lives on {', '.join(allowed)}, not {placement!r}")
        return value
