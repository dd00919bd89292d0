"""``EditEngine``: the one entry point from a validated ``EditSpec`` to encoded pictures."""

from __future__ import annotations

import secrets
import time
from importlib import metadata

import torch
from PIL import Image

from . import acceleration, postprocess
from . import images as imageio
from .enhance import enhance_prompt
from .errors import EngineError, GPUOutOfMemoryError, InvalidInputError
from .loader import load_refiner
from .model_swap import ResidentEditModels
from .prompting import build_prompt
from .refine import refine, refine_strength_for, tile_vae_above
from .registry import Registry, require_files
from .sizing import job_sizes
from .spec import EditResult, EditSpec, OutputImage, PreviewCallback, ProgressCallback
from .validation import MAX_SEED, check_spec, lightning_steps_run

DEFAULT_NEGATIVE_PROMPT = " "
MAX_PARTIAL_IMAGES = 3


def preview_steps(total_steps: int, count: int) -> list[int]:
    """``count`` denoise steps spread evenly over the loop, never the last (the result follows it)."""
    steps = {round(total_steps * k / (count + 1)) for k in range(1, count + 1)}
    return sorted(s for s in steps if 1 <= s < total_steps)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("retouch", "torch", "diffusers", "transformers", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


class EditEngine:
    """Loads every declared model once; ``run`` switches LoRAs and schedulers per job."""

    def __init__(self, registry: Registry, device: str | None = None):
        require_files(registry)
        self.registry = registry
        self.models = ResidentEditModels(registry, device)
        self.edit = self.models.get(self.models.names[0])[0]  # the model of the job running now
        self.refiner = load_refiner(registry, device)
        self.versions = _versions()
        self.warmed_up = acceleration.warm_up(self)

    @property
    def multiple(self) -> int:
        return self.edit.pipe.vae_scale_factor * 2

    # -- the job -----------------------------------------------------------------------------
    def run(
        self,
        spec: EditSpec,
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> EditResult:
        progress = on_progress or (lambda stage, step, total: None)
        started = time.perf_counter()
        try:
            return self._run(spec, progress, started, on_preview)
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            raise GPUOutOfMemoryError("the GPU ran out of memory for this job; try a smaller size") from e

    def _run(
        self, spec: EditSpec, progress: ProgressCallback, started: float, on_preview: PreviewCallback | None
    ) -> EditResult:
        # 1. Check the job against the registry and decode every picture safely
        warnings = check_spec(spec, self.registry)
        model = self.registry.edit_model(spec.model)[0]
        if self.models.will_swap(model):
            self.edit = None  # the model swapped out must not stay referenced while the next loads
        self.edit, swap = self.models.get(model)
        if swap is not None:
            out = f", unloading {', '.join(swap['unloaded'])}" if swap["unloaded"] else ""
            warnings.append(f"{swap['loaded']} was loaded for this job in {swap['seconds']:g} s{out}")
        if not 0 <= spec.partial_images <= MAX_PARTIAL_IMAGES:
            raise InvalidInputError(
                f"partial_images must be within 0..{MAX_PARTIAL_IMAGES}, got {spec.partial_images}",
                field="partial_images",
            )
        progress("encode", 0, 1)
        cap = self.registry.limits.max_input_pixels
        pictures = [
            imageio.decode_image(b, max_pixels=cap, what=f"images[{i}]") for i, b in enumerate(spec.images)
        ]
        references = [
            imageio.decode_image(r.image, max_pixels=cap, what=f"references[{i}]")
            for i, r in enumerate(spec.references)
        ]
        mask = None
        if spec.mask is not None:
            mask = imageio.decode_mask(spec.mask, pictures[0].size, max_pixels=cap)
        original = pictures[0]
        if spec.product_saturation is not None and len(pictures) > 1:
            pictures[1] = postprocess.adjust_saturation(pictures[1], spec.product_saturation)

        # 2. Settings: adapters, scheduler, steps, guidance, prompt, sizes
        plan = self._plan(spec, warnings)
        mode = self.registry.modes.get(spec.mode) if spec.mode else None
        user_prompt, revised_prompt, enhance_seconds = spec.prompt, None, 0.0
        if spec.enhance_prompt:
            t0 = time.perf_counter()
            enhanced = enhance_prompt(
                self.edit.pipe,
                spec.prompt,
                pictures + references,
                vl_condition_pixels=self.edit.entry.vl_condition_pixels,
            )
            enhance_seconds = time.perf_counter() - t0
            revised_prompt = user_prompt = enhanced.text
            if enhanced.used_fallback:
                warnings.append("prompt enhancement produced no usable text; the prompt was used as sent")
        prompt = build_prompt(
            user_prompt,
            num_images=len(pictures),
            reference_descriptions=[r.description for r in spec.references],
            mode=mode,
            palette=spec.palette,
            has_text=spec.has_text,
            has_product=spec.has_product,
        )
        edit_size, final_size, upscaled = self._sizes(spec, original.size, mask is not None)
        refine_strength = refine_strength_for(spec, upscaled, self.registry, warnings)
        self._activate(plan)

        # 3. Edit (and refine) once per requested picture, each with its own seed
        base_seed = secrets.randbelow(MAX_SEED + 1) if spec.seed == -1 else spec.seed
        timings = {"encode": 0.0, "denoise": 0.0, "refine": 0.0, "decode": 0.0, "postprocess": 0.0}
        if spec.enhance_prompt:
            timings["enhance"] = enhance_seconds
        if swap is not None:
            timings["swap"] = swap["seconds"]
        at_steps = preview_steps(plan["steps"], spec.partial_images) if on_preview is not None else []
        outputs: list[OutputImage] = []
        tile_vae_above(
            self.edit.pipe.vae, edit_size[0] * edit_size[1], self.edit.entry.vae_tiling_above_pixels
        )
        for k in range(spec.num_images):
            seed = (base_seed + k) % (MAX_SEED + 1)

            def preview(step: int, picture: Image.Image, k=k, seed=seed) -> None:
                encoded = imageio.encode_output(picture, spec.output_format, spec.output_quality, seed)
                on_preview(k, at_steps.index(step), encoded)

            result = self.edit.pipe(
                pictures + references,
                prompt,
                height=edit_size[1],
                width=edit_size[0],
                num_inference_steps=plan["steps"],
                generator=torch.Generator("cpu").manual_seed(seed),
                negative_prompt=plan["negative_prompt"],
                true_cfg_scale=plan["guidance"],
                cfg_norm_strength=plan["cfg_norm_strength"],
                mask=mask.resize(edit_size, Image.Resampling.BILINEAR) if mask is not None else None,
                vae_condition_pixels=self.edit.entry.vae_condition_pixels,
                vl_condition_pixels=self.edit.entry.vl_condition_pixels,
                on_step=lambda step, total: progress("denoise", step, total),
                preview_steps=at_steps,
                on_preview=preview if at_steps else None,
            )
            for stage, seconds in result.timings.items():
                timings[stage] += seconds
            picture = result.images[0]
            if picture.size != final_size:
                picture = postprocess.upscale(picture, *final_size)
            if refine_strength > 0:
                t0 = time.perf_counter()
                picture = refine(self.refiner, picture, user_prompt, refine_strength, seed, progress)
                timings["refine"] += time.perf_counter() - t0

            # 4. Post-process and encode
            t0 = time.perf_counter()
            progress("postprocess", k, spec.num_images)
            if spec.tone_correction > 0:
                picture = postprocess.tone_correct(picture, original, spec.tone_correction)
            if mask is not None:
                alpha = postprocess.feathered_mask(mask, spec.mask_feather_px)
                picture = postprocess.composite(picture, original, alpha)
            outputs.append(imageio.encode_output(picture, spec.output_format, spec.output_quality, seed))
            timings["postprocess"] += time.perf_counter() - t0
        progress("postprocess", spec.num_images, spec.num_images)
        timings["total"] = time.perf_counter() - started
        record = self._record(plan, base_seed, edit_size, final_size, refine_strength, spec)
        record["revised_prompt"] = revised_prompt
        record["swap"] = swap
        return EditResult(
            images=outputs,
            seed=base_seed,
            timings=timings,
            record=record,
            warnings=warnings,
            revised_prompt=revised_prompt,
        )

    # -- pieces --------------------------------------------------------------------------------
    def _plan(self, spec: EditSpec, warnings: list[str]) -> dict:
        entry = self.edit.entry
        adapters: list[tuple[str, float]] = []
        lightning = lightning_steps_run(spec, self.registry)
        if lightning is not None:
            name = self.registry.lightning_lora(lightning, self.edit.name)
            lora = entry.loras[name]
            adapters.append((name, lora.weight))
            steps, guidance = lora.steps, lora.guidance if lora.guidance is not None else 1.0
            scheduler = lora.scheduler or "default"
            negative = None
        else:
            steps = spec.num_inference_steps or entry.default_steps
            guidance = spec.guidance_scale if spec.guidance_scale is not None else entry.default_guidance
            scheduler = "default"
            mode = self.registry.modes.get(spec.mode) if spec.mode else None
            negative = (
                spec.negative_prompt or (mode.negative_prompt if mode else None) or DEFAULT_NEGATIVE_PROMPT
            )
        mode_lora = self.registry.modes[spec.mode].lora if spec.mode else None
        if mode_lora in entry.loras:  # a mode's LoRA is the edit model's own (check_params warns)
            adapters.append((mode_lora, entry.loras[mode_lora].weight))
        return {
            "adapters": adapters,
            "steps": steps,
            "guidance": guidance,
            "scheduler": scheduler,
            "negative_prompt": negative,
            "cfg_norm_strength": (
                spec.cfg_norm_strength
                if spec.cfg_norm_strength is not None
                else entry.default_cfg_norm_strength
            ),
        }

    def _activate(self, plan: dict) -> None:
        """Switch adapters and scheduler for this job; nothing is reloaded."""
        pipe = self.edit.pipe
        if self.edit.adapters:
            if plan["adapters"]:
                pipe.enable_lora()
                pipe.set_adapters([a for a, _ in plan["adapters"]], [w for _, w in plan["adapters"]])
                if self.edit.entry.performance.compile != "off":
                    # peft marks active adapters trainable; compiled blocks guard on requires_grad and
                    # would recompile on every switch
                    pipe.transformer.requires_grad_(False)
            else:
                pipe.disable_lora()
        pipe.scheduler = self.edit.schedulers[plan["scheduler"]]

    def _sizes(self, spec: EditSpec, source: tuple[int, int], masked: bool):
        return job_sizes(
            source, width=spec.width, height=spec.height, aspect_ratio=spec.aspect_ratio,
            resolution=spec.resolution, masked=masked, limits=self.registry.limits,
            resolutions=self.registry.resolutions, multiple=self.multiple,
        )  # fmt: skip

    def _record(self, plan, seed, edit_size, final_size, refine_strength, spec) -> dict:
        scheduler = self.edit.schedulers[plan["scheduler"]]
        hashes = dict(self.edit.hashes)
        if self.refiner is not None and refine_strength > 0:
            hashes |= self.refiner.hashes
        return {
            "model": self.edit.name,
            "hub_id": self.edit.entry.hub_id,
            "revision": self.edit.entry.revision,
            "loras": [name for name, _ in plan["adapters"]],
            "file_sha256": hashes,
            "scheduler": {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")},
            "seed": seed,
            "steps": plan["steps"],
            "guidance_scale": plan["guidance"],
            "cfg_norm_strength": plan["cfg_norm_strength"],
            "edit_size": list(edit_size),
            "output_size": list(final_size),
            "refiner": self.refiner.name if self.refiner is not None and refine_strength > 0 else None,
            "refine_strength": refine_strength,
            "versions": self.versions,
        }


__all__ = ["EditEngine", "EngineError"]
