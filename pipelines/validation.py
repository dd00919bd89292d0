"""``check_spec``: every rule an ``EditSpec`` must meet, checked without touching the GPU:
``check_params`` over the knobs and ``check_counts`` over the pictures.

Pure Python (no torch), so the API process validates a job once, before it is queued, with the
same rules the engine applies. Errors name the field and the bad value.
"""

from __future__ import annotations

from .errors import InvalidInputError, RegistryError, UnsupportedFeatureError
from .postprocess import palette_prompt
from .registry import Registry
from .sizing import parse_aspect_ratio
from .spec import EditParams, EditSpec

MAX_SEED = 2**32 - 1
FORMATS = ("webp", "jpeg", "png")


def _range(name: str, value, lo, hi) -> None:
    if value is not None and not lo <= value <= hi:
        raise InvalidInputError(f"{name} must be within {lo}..{hi}, got {value}", field=name)


def check_spec(spec: EditSpec, registry: Registry) -> list[str]:
    """Raise ``InvalidInputError`` for a job that cannot run; return warnings for one that can."""
    warnings = check_counts(spec, len(spec.images), len(spec.references), registry)
    return check_params(spec, registry, masked=spec.mask is not None) + warnings


def check_counts(params: EditParams, images: int, references: int, registry: Registry) -> list[str]:
    """How many pictures a job may carry (the API counts them before it decodes any), and the
    warnings for knobs the count makes moot."""
    limits = registry.limits
    if not images:
        raise InvalidInputError("at least one input image is required", field="images")
    try:
        model, entry = registry.edit_model(params.model)
    except RegistryError as exc:
        raise InvalidInputError(f"model {exc.message}", field="model") from None
    max_images = registry.max_input_images(model)
    if images > max_images:
        raise InvalidInputError(
            f"{images} input images given, at most {max_images} are allowed for {model}", field="images"
        )
    if entry.max_pictures is not None and images + references > entry.max_pictures:
        raise InvalidInputError(
            f"{images} input and {references} reference images given, {model} reads at most "
            f"{entry.max_pictures} pictures in all",
            field="references",
        )
    if entry.max_pictures is None and references > limits.max_references:
        raise InvalidInputError(
            f"{references} reference images given, at most {limits.max_references} are allowed for {model}",
            field="references",
        )
    if params.product_saturation is not None and params.product_saturation != 1 and images < 2:
        return ["product_saturation ignored: it applies to image 2 and only one image was given"]
    return []


def check_params(params: EditParams, registry: Registry, *, masked: bool = False) -> list[str]:
    """Every rule on the knobs of a job (weights.yaml's limits, LoRAs, modes, refiner); the
    warnings for knobs that will not apply. ``masked``: the job carries a mask."""
    limits = registry.limits
    warnings: list[str] = []
    if not isinstance(params.prompt, str) or not params.prompt.strip():
        raise InvalidInputError("prompt is required and must not be empty", field="prompt")
    if len(params.prompt) > limits.max_prompt_chars:
        raise InvalidInputError(
            f"prompt is {len(params.prompt)} characters, over the limit of {limits.max_prompt_chars}",
            field="prompt",
        )
    _range("num_images", params.num_images, 1, limits.max_num_images)
    _range("num_inference_steps", params.num_inference_steps, 1, 100)
    _range("guidance_scale", params.guidance_scale, 0, 20)
    _range("cfg_norm_strength", params.cfg_norm_strength, 0, 1)
    _range("refine_strength", params.refine_strength, 0, 1)
    _range("tone_correction", params.tone_correction, 0, 1)
    _range("product_saturation", params.product_saturation, 0, 2)
    _range("mask_feather_px", params.mask_feather_px, 0, 64)
    _range("output_quality", params.output_quality, 1, 100)
    _range("partial_images", params.partial_images, 0, 3)
    if params.seed != -1:
        _range("seed", params.seed, 0, MAX_SEED)
    if params.output_format not in FORMATS:
        raise InvalidInputError(
            f"output_format must be one of {', '.join(FORMATS)}, got {params.output_format!r}",
            field="output_format",
        )
    if params.resolution is not None and params.resolution not in ("1k", "2k", "4k"):
        raise InvalidInputError(
            f"resolution must be 1k, 2k or 4k, got {params.resolution!r}", field="resolution"
        )
    for name in ("width", "height"):
        _range(name, getattr(params, name), 1, limits.max_output_side)
    if params.aspect_ratio is not None:
        parse_aspect_ratio(params.aspect_ratio)
    if params.palette:
        palette_prompt(params.palette)

    try:
        model, entry = registry.edit_model(params.model)
    except RegistryError as exc:
        raise InvalidInputError(f"model {exc.message}", field="model") from None
    refusal = registry.license_refusal(model)
    if refusal is not None:
        raise UnsupportedFeatureError(f"{model} is not served: {refusal}", field="model")
    lightning = lightning_steps_run(params, registry)
    if params.lightning_steps is not None and lightning is None:
        steps = params.num_inference_steps or entry.default_steps
        warnings.append(
            f"lightning_steps={params.lightning_steps} ignored: {model} has no Lightning LoRA, "
            f"the full model runs {steps} steps"
        )
    if lightning is not None:
        if registry.lightning_lora(lightning, model) is None:
            raise UnsupportedFeatureError(
                f"no Lightning LoRA for {lightning} steps is declared for {model}", field="lightning_steps"
            )
        if params.num_inference_steps is not None and params.num_inference_steps != lightning:
            warnings.append(
                f"num_inference_steps={params.num_inference_steps} ignored: Lightning runs "
                f"{lightning} steps (turn fast mode off for the full model)"
            )
        if params.guidance_scale is not None:
            warnings.append("guidance_scale ignored: Lightning is distilled and runs without CFG")
        if params.negative_prompt:
            warnings.append("negative_prompt ignored: Lightning runs without CFG")
        if params.cfg_norm_strength is not None:
            warnings.append("cfg_norm_strength ignored: Lightning runs without CFG")
    else:
        guidance = params.guidance_scale if params.guidance_scale is not None else entry.default_guidance
        for knob in ("negative_prompt", "cfg_norm_strength"):
            if guidance <= 1 and getattr(params, knob) not in (None, ""):
                warnings.append(f"{knob} ignored: {model} runs without CFG at guidance_scale {guidance:g}")
    if params.mode is not None and params.mode not in registry.modes:
        raise UnsupportedFeatureError(
            f"mode {params.mode!r} is not available (have: {', '.join(sorted(registry.modes)) or 'none'})",
            field="mode",
        )
    mode = registry.modes.get(params.mode) if params.mode else None
    if mode is not None and mode.lora is not None and mode.lora not in entry.loras:
        warnings.append(
            f"mode {params.mode!r}: its LoRA {mode.lora!r} is not declared for {model}; "
            "only its prompt applies"
        )
    _check_fused_lora(params, registry)
    needs_refiner = params.refine_strength > 0 or params.resolution in ("2k", "4k")
    if needs_refiner and registry.model_for("refiner") is None:
        raise UnsupportedFeatureError("no refiner model is declared in weights.yaml", field="refine_strength")
    if masked and (params.width or params.height or params.aspect_ratio):
        warnings.append("output size ignored: a masked edit keeps the input's size")
    return warnings


def lightning_steps_run(params: EditParams, registry: Registry) -> int | None:
    """The Lightning steps a job runs; None = the full model (asked for, or the job's model has
    no Lightning LoRA at all, e.g. Qwen-Image 2.1: fast mode then means the model's own steps)."""
    if params.lightning_steps is None:
        return None
    _, entry = registry.edit_model(params.model)
    if not any(lora.steps is not None and lora.scheduler is not None for lora in entry.loras.values()):
        return None
    return params.lightning_steps


def _check_fused_lora(spec: EditParams, registry: Registry) -> None:
    """A model with a LoRA baked into fp8 weights serves exactly that LoRA (weights.yaml decides)."""
    model, entry = registry.edit_model(spec.model)
    fused = entry.performance.fuse_lora
    if fused is None:
        return
    steps = lightning_steps_run(spec, registry)
    wanted = registry.lightning_lora(steps, model) if steps is not None else None
    mode = registry.modes.get(spec.mode) if spec.mode else None
    if wanted != fused or (mode is not None and mode.lora is not None):
        asked = f"{steps} Lightning steps" if steps else "the full model"
        raise UnsupportedFeatureError(
            f"this server runs only {fused} (fused into fp8 weights in weights.yaml); "
            f"the job asks for {asked}"
            + (f" and the {spec.mode} LoRA" if mode is not None and mode.lora else ""),
            field="lightning_steps",
        )
