"""Qwen-Image-Edit-Plus with the controls the stock ``__call__`` does not expose.

The subclass reuses every building block of diffusers' ``QwenImageEditPlusPipeline``
(prompt encoding with the vision-language model, VAE encoding, latent packing, timestep
shift) and only rewrites the denoising loop, to add:

- ``cfg_norm_strength``: 0 = plain true CFG, 1 = the stock norm rescaling (bit-identical to
  the stock pipeline for the same seed), in between a blend;
- a mask that guides the edit in latent space (the unmasked region is re-noised from the
  input's latents every step, as inpainting pipelines do);
- configurable condition-image areas (the stock module fixes 1 MP / 384^2);
- per-step progress that can stop the job, per-stage timings, and a NaN/Inf guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import numpy as np
import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
    calculate_dimensions,
    calculate_shift,
    retrieve_timesteps,
)
from PIL import Image

from .edit_loop import EditLoopMixin, EditOutput, LoopEnds, StageClock


class RetouchQwenEditPipeline(EditLoopMixin, QwenImageEditPlusPipeline):
    @torch.no_grad()
    def __call__(
        self,
        images: list[Image.Image],
        prompt: str,
        *,
        height: int,
        width: int,
        num_inference_steps: int,
        generator: torch.Generator,
        negative_prompt: str | None = None,
        true_cfg_scale: float = 4.0,
        cfg_norm_strength: float = 1.0,
        mask: Image.Image | None = None,
        vae_condition_pixels: int = 1024 * 1024,
        vl_condition_pixels: int = 384 * 384,
        on_step: Callable[[int, int], None] | None = None,
        max_sequence_length: int = 512,
        preview_steps: Collection[int] = (),
        on_preview: Callable[[int, Image.Image], None] | None = None,
    ) -> EditOutput:
        # 1. Check inputs
        self.check_edit_inputs(images, prompt, height, width, num_inference_steps, true_cfg_scale, mask)
        device = self._execution_device
        clock = StageClock(device)
        started = time.perf_counter()

        # 2. Resize condition images: small for the vision-language model, larger for the VAE
        vl_images, vae_images, vae_sizes = [], [], []
        for img in images:
            ratio = img.size[0] / img.size[1]
            cw, ch = calculate_dimensions(vl_condition_pixels, ratio)
            vw, vh = calculate_dimensions(vae_condition_pixels, ratio)
            vl_images.append(self.image_processor.resize(img, ch, cw))
            vae_images.append(self.image_processor.preprocess(img, vh, vw).unsqueeze(2))
            vae_sizes.append((vw, vh))

        # 3. Encode the prompt (with the pictures) and, for true CFG, the negative prompt
        do_true_cfg = true_cfg_scale > 1 and negative_prompt is not None
        encode = dict(image=vl_images, device=device, max_sequence_length=max_sequence_length)
        prompt_embeds, prompt_mask = self._encode_cached(max_sequence_length, prompt=prompt, **encode)
        if do_true_cfg:
            neg_embeds, neg_mask = self._encode_cached(max_sequence_length, prompt=negative_prompt, **encode)

        # 4. Prepare latents: noise for the output, packed VAE latents of every input picture
        num_channels = self.transformer.config.in_channels // 4
        latents, image_latents = self.prepare_latents(
            vae_images, 1, num_channels, height, width, prompt_embeds.dtype, device, generator
        )
        img_shapes = [
            [
                (1, height // self.vae_scale_factor // 2, width // self.vae_scale_factor // 2),
                *[
                    (1, vh // self.vae_scale_factor // 2, vw // self.vae_scale_factor // 2)
                    for vw, vh in vae_sizes
                ],
            ]
        ]
        guide = None
        if mask is not None:
            guide = self._prepare_mask_guide(
                images[0], mask, height, width, prompt_embeds.dtype, device, latents
            )
        started = clock.mark("encode", started)

        # 5. Timesteps, shifted by the output's token count like the stock pipeline
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        cfg = self.scheduler.config
        mu = calculate_shift(
            latents.shape[1],
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu
        )
        self.scheduler.set_begin_index(0)
        ends = LoopEnds(timesteps, guide, height, width, on_step, on_preview, preview_steps)

        # 6. Denoising loop
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents, image_latents], dim=1)
            timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
            with self.transformer.cache_context("cond"):
                noise_pred = self.transformer(
                    hidden_states=model_input,
                    timestep=timestep,
                    guidance=None,
                    encoder_hidden_states_mask=prompt_mask,
                    encoder_hidden_states=prompt_embeds,
                    img_shapes=img_shapes,
                    return_dict=False,
                )[0][:, : latents.size(1)]
            if do_true_cfg:
                with self.transformer.cache_context("uncond"):
                    neg_pred = self.transformer(
                        hidden_states=model_input,
                        timestep=timestep,
                        guidance=None,
                        encoder_hidden_states_mask=neg_mask,
                        encoder_hidden_states=neg_embeds,
                        img_shapes=img_shapes,
                        return_dict=False,
                    )[0][:, : latents.size(1)]
                noise_pred = self._combine_cfg(noise_pred, neg_pred, true_cfg_scale, cfg_norm_strength)
            latents = self._end_step(ends, i, t, latents, noise_pred)
        started = clock.mark("denoise", started)

        # 7. Decode (the NaN/Inf guard on latents and pixels)
        out = self._decode_checked(latents, height, width)
        clock.mark("decode", started)
        return EditOutput(images=out, timings=clock.timings)
