"""A job's units of work, from the registry, its parameters and its pictures' sizes (no torch).

GPU time grows with these; the server estimates a job's seconds as a sum of them, each times a
rate calibrated from the jobs it has completed (server/eta.py), for ETAs and budget reservations.

- ``pictures``: one per picture made (prompt and condition encoding, scheduler set-up)
- ``forwards``: transformer calls (steps, x2 with true CFG): the per-step overhead
- ``edit_tflops``: the edit transformer's FLOPs (pipelines/flops.py) over all steps
- ``refine_tflops``: the Z-Image refiner's FLOPs over its img2img steps
- ``megapixels``: pixels through the VAE and post-processing (conditions in, edit and output out)
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from . import flops
from .errors import RegistryError
from .registry import Registry
from .sizing import job_sizes
from .spec import EditParams
from .validation import lightning_steps_run

WORK_FEATURES = ("pictures", "forwards", "edit_tflops", "refine_tflops", "megapixels")
# The edit models edit at multiples of their VAE factor (8) times the transformer patch (2);
# Qwen-Image 2.1 at 32 (VAE 16, its picture slots 2x2 tokens): close enough for a price.
SIZE_MULTIPLE = 16
# Text tokens besides the prompt's (the edit prompt template) and per character of the prompt.
TEMPLATE_TOKENS = 64
CHARS_PER_TOKEN = 4
# The vision-language encoder makes one token per 28x28 pixels (14 px patches merged 2x2).
VL_PIXELS_PER_TOKEN = 28 * 28


@lru_cache(maxsize=8)
def _config(folder: str | None, bundled: str) -> dict:
    return flops.transformer_config(Path(folder) if folder else None, bundled)


def _model_folder(registry: Registry, role: str) -> tuple[str | None, object | None]:
    found = registry.model_for(role)
    if found is None:
        return None, None
    return str(registry.resolve(found[1].path)), found[1]


def job_work(
    spec: EditParams,
    registry: Registry,
    image_sizes: list[tuple[int, int]],
    reference_sizes: list[tuple[int, int]] = (),
    *,
    masked: bool = False,
) -> dict[str, float]:
    """The units of work of a job (WORK_FEATURES), given the sizes of its decoded pictures."""
    try:
        _, entry = registry.edit_model(spec.model)
    except RegistryError:
        return {}
    folder = str(registry.resolve(entry.path))
    edit, final, upscaled = job_sizes(
        image_sizes[0], width=spec.width, height=spec.height, aspect_ratio=spec.aspect_ratio,
        resolution=spec.resolution, masked=masked, limits=registry.limits,
        resolutions=registry.resolutions, multiple=SIZE_MULTIPLE,
    )  # fmt: skip
    steps, guidance = _steps_and_guidance(spec, registry, entry)
    conditions = [
        flops.condition_size(w, h, entry.vae_condition_pixels) for w, h in [*image_sizes, *reference_sizes]
    ]
    true_cfg = guidance > 1
    prompt_tokens = TEMPLATE_TOKENS + math.ceil(len(spec.prompt) / CHARS_PER_TOKEN)
    if entry.pipeline == "qwen_image_21":
        # its encoder's picture slots become the pictures' latent tokens, counted as image tokens
        text_tokens = prompt_tokens
        edit_flops = flops.qwen_image_21_job_flops(
            _config(folder, flops.QWEN_21_CONFIG), *edit, conditions, text_tokens, steps, true_cfg,
            entry.performance.kv_cache,
        )  # fmt: skip
    else:
        text_tokens = prompt_tokens + len(conditions) * entry.vl_condition_pixels // VL_PIXELS_PER_TOKEN
        edit_flops = flops.qwen_edit_job_flops(
            _config(folder, flops.QWEN_EDIT_CONFIG), *edit, conditions, text_tokens, steps, true_cfg
        )
    n = spec.num_images
    pixels = edit[0] * edit[1] + final[0] * final[1] + sum(w * h for w, h in conditions)
    return {
        "pictures": float(n),
        "forwards": float(n * steps * (2 if true_cfg else 1)),
        "edit_tflops": n * edit_flops / 1e12,
        "refine_tflops": n * _refine_flops(spec, registry, final, upscaled, text_tokens) / 1e12,
        "megapixels": n * pixels / 1e6,
    }


def _steps_and_guidance(spec: EditParams, registry: Registry, entry) -> tuple[int, float]:
    """What the engine's plan runs (pipelines/engine.py ``_plan``)."""
    lightning = lightning_steps_run(spec, registry)
    if lightning is not None:
        lora = entry.loras.get(registry.lightning_lora(lightning, spec.model) or "")
        if lora is not None:
            return lora.steps or lightning, lora.guidance if lora.guidance is not None else 1.0
        return lightning, 1.0
    steps = spec.num_inference_steps or entry.default_steps
    guidance = spec.guidance_scale if spec.guidance_scale is not None else entry.default_guidance
    return steps, guidance


def _refine_flops(
    spec: EditParams, registry: Registry, final: tuple[int, int], upscaled: bool, text_tokens: int
) -> float:
    strength = spec.refine_strength
    if upscaled:
        strength = max(strength, registry.resolutions.upscale_refine_strength)
    folder, entry = _model_folder(registry, "refiner")
    if strength <= 0 or entry is None:
        return 0.0
    # img2img runs the tail of the schedule: about strength x the full steps
    steps = max(1, int(entry.default_steps * strength))
    config = _config(folder, flops.Z_IMAGE_CONFIG)
    forward = flops.z_image_forward_flops(config, flops.image_tokens(*final), text_tokens)
    return forward * steps * (2 if entry.default_guidance > 1 else 1)
