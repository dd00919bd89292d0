"""The refinement pass: Z-Image-Turbo img2img over the edited picture (refine_strength, 2k/4k)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import acceleration
from .errors import NonFiniteOutputError
from .loader import LoadedRefiner

# Refining pictures with text or a product in them blurs lettering and fine print first.
MAX_REFINE_WITH_TEXT = 0.15
MAX_REFINE_WITH_PRODUCT = 0.2


def refine_strength_for(spec, upscaled: bool, registry, warnings: list[str]) -> float:
    """The strength a job is refined at: its own, at least the upscale's, capped to protect detail."""
    strength = spec.refine_strength
    if upscaled:
        strength = max(strength, registry.resolutions.upscale_refine_strength)
    for flag, cap, what in (
        (spec.has_text, MAX_REFINE_WITH_TEXT, "has_text"),
        (spec.has_product, MAX_REFINE_WITH_PRODUCT, "has_product"),
    ):
        if flag and strength > cap:
            warnings.append(
                f"refine_strength lowered from {strength:g} to {cap:g} to protect detail ({what})"
            )
            strength = cap
    return strength


def refine(
    refiner: LoadedRefiner, picture: Image.Image, prompt: str, strength: float, seed: int, progress
) -> Image.Image:
    """The Z-Image-Turbo pass over an edited picture (img2img at ``strength``), at its own size."""
    pipe, entry = refiner.pipe, refiner.entry
    w, h = picture.size
    tile_vae_above(pipe.vae, w * h, entry.vae_tiling_above_pixels)

    def on_step(p, i, t, kwargs):
        progress("refine", i + 1, p.num_timesteps)
        visiting = getattr(pipe, "transformer_hook", None)
        if visiting is not None and i + 1 == p.num_timesteps:
            visiting.offload()  # the last step is done: the decode needs its room
        return kwargs

    texts: dict = {"prompt": prompt}
    if getattr(pipe, "text_encoder_hook", None) is not None:
        # Encode first so the offloaded text encoder leaves the GPU before the denoise loop.
        cfg = entry.default_guidance > 1
        embeds, negative = pipe.encode_prompt(prompt, device=pipe.device, do_classifier_free_guidance=cfg)
        acceleration.release_text_encoder(pipe)
        texts = {"prompt_embeds": embeds} | ({"negative_prompt_embeds": negative} if cfg else {})
    out = pipe(
        **texts,
        image=picture,
        strength=strength,
        height=h,
        width=w,
        num_inference_steps=entry.default_steps,
        guidance_scale=entry.default_guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        callback_on_step_end=on_step,
    ).images[0]
    if not np.isfinite(out).all():
        raise NonFiniteOutputError("the refiner produced NaN/Inf pixels; no picture was returned")
    return Image.fromarray((out * 255).round().clip(0, 255).astype(np.uint8))


def tile_vae_above(vae, pixels: int, threshold: int) -> None:
    """Decode in tiles above ``threshold`` pixels: the VAE's mid-block attention grows with the square
    of the latent area, so large pictures are decoded in overlapping tiles instead."""
    if pixels > threshold:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
