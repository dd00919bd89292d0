"""``check_spec``: every rule an ``EditSpec`` must meet, checked without touching the GPU.

Pure Python (no torch), so the API process validates a job once, before it is queued, with the
same rules the engine applies. Errors name the field and the bad value.
"""

from __future__ import annotations

from .errors import InvalidInputError, UnsupportedFeatureError
from .postprocess import palette_prompt
from .registry import Registry
from .sizing import parse_aspect_ratio
from .spec import EditSpec

MAX_SEED = 2**32 - 1
FORMATS = ("webp", "jpeg", "png")


def _range(name: str, value, lo, hi) -> None:
    if value is not None and not lo <= value <= hi:
        raise InvalidInputError(f"{name} must be within {lo}..{hi}, got {value}", field=name)


def check_spec(spec: EditSpec, registry: Registry) -> list[str]:
    """Raise ``InvalidInputError`` for a job that cannot run; return warnings for one that can."""
    limits = registry.limits
    warnings: list[str] = []
    if not isinstance(spec.prompt, str) or not spec.prompt.strip():
        raise InvalidInputError("prompt is required and must not be empty", field="prompt")
    if len(spec.prompt) > limits.max_prompt_chars:
        raise InvalidInputError(
            f"prompt is {len(spec.prompt)} characters, over the limit of {limits.max_prompt_chars}",
            field="prompt",
        )
    if not spec.images:
        raise InvalidInputError("at least one input image is required", field="images")
    if len(spec.images) > limits.max_images_per_job:
        raise InvalidInputError(
            f"{len(spec.images)} input images given, at most {limits.max_images_per_job} are allowed",
            field="images",
        )
    if len(spec.references) > limits.max_references:
        raise InvalidInputError(
            f"{len(spec.references)} reference images given, at most {limits.max_references} are allowed",
            field="references",
        )
    if len(spec.images) + len(spec.references) > limits.max_images_per_job + limits.max_references:
        raise InvalidInputError("too many pictures in one job", field="images")
    _range("num_images", spec.num_images, 1, limits.max_num_images)
    _range("num_inference_steps", spec.num_inference_steps, 1, 100)
    _range("guidance_scale", spec.guidance_scale, 0, 20)
    _range("cfg_norm_strength", spec.cfg_norm_strength, 0, 1)
    _range("refine_strength", spec.refine_strength, 0, 1)
    _range("tone_correction", spec.tone_correction, 0, 1)
    _range("product_saturation", spec.product_saturation, 0, 2)
    _range("mask_feather_px", spec.mask_feather_px, 0, 64)
    _range("output_quality", spec.output_quality, 1, 100)
    if spec.seed != -1:
        _range("seed", spec.seed, 0, MAX_SEED)
    if spec.output_format not in FORMATS:
        raise InvalidInputError(
            f"output_format must be one of {', '.join(FORMATS)}, got {spec.output_format!r}",
            field="output_format",
        )
    if spec.resolution is not None and spec.resolution not in ("1k", "2k", "4k"):
        raise InvalidInputError(
            f"resolution must be 1k, 2k or 4k, got {spec.resolution!r}", field="resolution"
        )
    for name in ("width", "height"):
        _range(name, getattr(spec, name), 1, limits.max_output_side)
    if spec.aspect_ratio is not None:
        parse_aspect_ratio(spec.aspect_ratio)
    if spec.palette:
        palette_prompt(spec.palette)

    if spec.lightning_steps is not None:
        if registry.lightning_lora(spec.lightning_steps) is None:
            raise UnsupportedFeatureError(
                f"no Lightning LoRA for {spec.lightning_steps} steps is declared in weights.yaml",
                field="lightning_steps",
            )
        if spec.num_inference_steps is not None and spec.num_inference_steps != spec.lightning_steps:
            warnings.append(
                f"num_inference_steps={spec.num_inference_steps} ignored: Lightning runs "
                f"{spec.lightning_steps} steps (turn fast mode off for the full model)"
            )
        if spec.guidance_scale is not None:
            warnings.append("guidance_scale ignored: Lightning is distilled and runs without CFG")
        if spec.negative_prompt:
            warnings.append("negative_prompt ignored: Lightning runs without CFG")
    if spec.mode is not None and spec.mode not in registry.modes:
        raise UnsupportedFeatureError(
            f"mode {spec.mode!r} is not available (have: {', '.join(sorted(registry.modes)) or 'none'})",
            field="mode",
        )
    _check_fused_lora(spec, registry)
    needs_refiner = spec.refine_strength > 0 or spec.resolution in ("2k", "4k")
    if needs_refiner and registry.model_for("refiner") is None:
        raise UnsupportedFeatureError("no refiner model is declared in weights.yaml", field="refine_strength")
    if spec.product_saturation is not None and spec.product_saturation != 1 and len(spec.images) < 2:
        warnings.append("product_saturation ignored: it applies to image 2 and only one image was given")
    if spec.mask is not None and (spec.width or spec.height or spec.aspect_ratio):
        warnings.append("output size ignored: a masked edit keeps the input's size")
    return warnings


def _check_fused_lora(spec: EditSpec, registry: Registry) -> None:
    """A model with a LoRA baked into fp8 weights serves exactly that LoRA (weights.yaml decides)."""
    found = registry.model_for("edit_plus") or registry.model_for("edit")
    fused = found[1].performance.fuse_lora if found else None
    if fused is None:
        return
    wanted = registry.lightning_lora(spec.lightning_steps) if spec.lightning_steps is not None else None
    mode = registry.modes.get(spec.mode) if spec.mode else None
    if wanted != fused or (mode is not None and mode.lora is not None):
        asked = f"{spec.lightning_steps} Lightning steps" if spec.lightning_steps else "the full model"
        raise UnsupportedFeatureError(
            f"this server runs only {fused} (fused into fp8 weights in weights.yaml); "
            f"the job asks for {asked}"
            + (f" and the {spec.mode} LoRA" if mode is not None and mode.lora else ""),
            field="lightning_steps",
        )
