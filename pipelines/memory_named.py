"""The named memory plans of ``memory:`` in weights.yaml, and every assignment a plan allows."""

from __future__ import annotations

import itertools

from .memory_plan import LOSSY
from .memory_settings import PLACEMENTS_BY_COMPONENT

# Named plans: (edit transformer, text encoder, vae), (refiner transformer, text encoder, vae).
NAMED_PLANS: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {
    "resident": (("gpu", "gpu", "gpu"), ("gpu", "gpu", "gpu")),
    "refiner-streamed": (("gpu", "gpu", "gpu"), ("streamed", "gpu", "gpu")),
    "refiner-on-demand": (("gpu", "gpu", "gpu"), ("cpu-visit", "cpu-visit", "cpu-visit")),
    "encoder-offload": (("gpu", "cpu-visit", "gpu"), ("streamed", "cpu-visit", "cpu-visit")),
    "edit-streamed": (("streamed", "gpu", "gpu"), ("gpu", "gpu", "gpu")),
    "low-memory": (("streamed", "cpu-visit", "gpu"), ("streamed", "cpu-visit", "gpu")),
    "fp8": (("gpu-fp8", "cpu-visit", "gpu"), ("streamed", "cpu-visit", "gpu")),
    "fp8-streamed": (("streamed-fp8", "cpu-visit", "gpu"), ("streamed", "cpu-visit", "gpu")),
}
COMPONENTS = ("transformer", "text_encoder", "vae")


def assignments(inputs, plan: str, overrides: dict[str, str]):
    """Every placement assignment the plan allows: one for a named plan, all lossless ones for auto."""
    keys = [(role, s) for role, sizes in inputs.sizes.items() for s in sizes]
    if plan != "auto":
        chosen = named_placements(plan)
        yield {s.key: overrides.get(s.key, chosen[role][s.component]) for role, s in keys}
        return
    options = [
        [overrides[s.key]]
        if s.key in overrides
        else [p for p in PLACEMENTS_BY_COMPONENT[s.component] if p not in LOSSY]
        for _, s in keys
    ]
    for combo in itertools.product(*options):
        yield {s.key: p for (_, s), p in zip(keys, combo, strict=True)}


def named_placements(plan: str) -> dict[str, dict[str, str]]:
    edit, refiner = NAMED_PLANS[plan]
    return {
        "edit": dict(zip(COMPONENTS, edit, strict=True)),
        "refiner": dict(zip(COMPONENTS, refiner, strict=True)),
    }


def name_of(inputs, placements: dict[str, str], requested: str) -> str:
    if requested != "auto":
        return requested
    for name, (edit, refiner) in NAMED_PLANS.items():
        wanted = {
            "edit": dict(zip(COMPONENTS, edit, strict=True)),
            "refiner": dict(zip(COMPONENTS, refiner, strict=True)),
        }
        if all(
            placements[s.key] == wanted[role][s.component] for role, ss in inputs.sizes.items() for s in ss
        ):
            return name
    return "custom"
