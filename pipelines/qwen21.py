"""Qwen-Image 2.1 with the controls Retouch gives every edit model.

The subclass reuses diffusers' ``QwenImage21Pipeline`` building blocks (the joint Qwen3-VL
encoding of prompt and pictures, VAE encoding, unpatched packing, timestep shift, the prefix KV
cache) and rewrites only the denoising loop, with the same interface as the edit models' loop
(``pipelines/qwen_edit.py``): masks guided in latent space, progress that can stop the job,
previews, per-stage timings and the NaN/Inf guard, through ``EditLoopMixin``.

Differences from the edit models that a job sees: one condition area feeds both the encoder and
the VAE (``vae_condition_pixels``; the encoder's image slots must line up with the VAE's latent
tokens), true CFG is plain (no norm rescale unless the job asks for one), and the text and
condition-picture keys and values are computed once per job (exact: ``causal_condition`` makes
them independent of the step; ``tests/engine/test_qwen21.py`` checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import numpy as np
import torch
from diffusers import QwenImage21Pipeline
from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache
from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import (
    calculate_dimensions,
    calculate_shift,
    retrieve_timesteps,
)
from PIL import Image

from .edit_loop import EditLoopMixin, EditOutput, LoopEnds, StageClock


class RetouchQwenImage21Pipeline(EditLoopMixin, QwenImage21Pipeline):
    latent_patch = 1
    # the prefix KV cache (weights.yaml performance.kv_cache); exact, so on unless turned off
    use_kv_cache = True

    def _vae_picture(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGBA" else image.convert("RGBA")

    def _denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(latents)
        return latents * std + mean  # the stock 2.1 pipeline's arithmetic

    def _target_slots(self, mask: torch.Tensor, target_tokens: int) -> torch.Tensor:
        """The transformer's image mask spans the joint sequence: one slot per 2x2 target latents."""
        return torch.cat([mask, mask.new_ones(mask.shape[0], target_tokens // 4)], dim=1)

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
        true_cfg_scale: float = 1.0,
        cfg_norm_strength: float = 0.0,
        mask: Image.Image | None = None,
        vae_condition_pixels: int = 1024 * 1024,
        vl_condition_pixels: int | None = None,  # the edit models' knob; 2.1 reads one area
        on_step: Callable[[int, int], None] | None = None,
        preview_steps: Collection[int] = (),
        on_preview: Callable[[int, Image.Image], None] | None = None,
    ) -> EditOutput:
        # 1. Check inputs
        self.check_edit_inputs(images, prompt, height, width, num_inference_steps, true_cfg_scale, mask)
        device = self._execution_device
        clock = StageClock(device)
        started = time.perf_counter()

        # 2. Resize condition pictures: one size feeds both the Qwen3-VL encoder and the VAE
        vl_images, vae_images, sizes = [], [], []
        for img in images:
            picture = self._vae_picture(img)
            cw, ch, _ = calculate_dimensions(vae_condition_pixels, img.size[0] / img.size[1])
            sizes.append((cw, ch))
            vl_images.append(self.image_processor.resize(picture, width=cw, height=ch))
            vae_images.append(self.image_processor.preprocess(picture, width=cw, height=ch).unsqueeze(2))

        # 3. Encode the prompt with the pictures and, for true CFG, the negative prompt
        do_true_cfg = true_cfg_scale > 1 and negative_prompt is not None
        encode = dict(image=vl_images, device=device)
        prompt_embeds, prompt_mask, pad_mask = self._encode_cached(0, prompt=prompt, **encode)
        if do_true_cfg:
            neg_embeds, neg_mask, neg_pad_mask = self._encode_cached(0, prompt=negative_prompt, **encode)

        # 4. Prepare latents: noise for the output after the packed latents of every picture
        latents, image_latents = self.prepare_latents(
            vae_images, 1, self.transformer.config.in_channels, height, width,
            prompt_embeds.dtype, device, generator,
        )  # fmt: skip
        f = self.vae_scale_factor
        img_shapes = [[*[(1, ch // f, cw // f) for cw, ch in sizes], (1, height // f, width // f)]]
        pad_mask = self._target_slots(pad_mask, latents.shape[1])
        if do_true_cfg:
            neg_pad_mask = self._target_slots(neg_pad_mask, latents.shape[1])
        guide = None
        if mask is not None:
            guide = self._prepare_mask_guide(
                images[0], mask, height, width, prompt_embeds.dtype, device, latents
            )
        started = clock.mark("encode", started)

        # 5. Timesteps: the model's own sigma grid when the job runs its length, shifted by token count
        sigmas = self.config.sample_sigmas
        if sigmas is None or len(sigmas) != num_inference_steps:
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
        caching = self.use_kv_cache and self.transformer.config.causal_condition
        blocks = len(self.transformer.transformer_blocks)
        cond_cache = QwenImage21KVCache(blocks) if caching else None
        neg_cache = QwenImage21KVCache(blocks) if caching and do_true_cfg else None
        ends = LoopEnds(timesteps, guide, height, width, on_step, on_preview, preview_steps)

        # 6. Denoising loop: the first step fills the prefix cache, later ones read it
        for i, t in enumerate(timesteps):
            kv_mode = ("extract" if i == 0 else "cached") if caching else None
            model_input = torch.cat([image_latents, latents], dim=1)
            timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
            shared = dict(hidden_states=model_input, timestep=timestep, img_shapes=img_shapes,
                          kv_cache_mode=kv_mode, return_dict=False)  # fmt: skip
            cond = dict(encoder_hidden_states=prompt_embeds, encoder_hidden_states_mask=prompt_mask,
                        img_mask=pad_mask, kv_cache=cond_cache)  # fmt: skip
            with self.transformer.cache_context("cond"):
                noise_pred = self.transformer(**shared, **cond)[0][:, -latents.size(1) :]
            if do_true_cfg:
                uncond = dict(encoder_hidden_states=neg_embeds, encoder_hidden_states_mask=neg_mask,
                              img_mask=neg_pad_mask, kv_cache=neg_cache)  # fmt: skip
                with self.transformer.cache_context("uncond"):
                    neg_pred = self.transformer(**shared, **uncond)[0][:, -latents.size(1) :]
                noise_pred = self._combine_cfg(noise_pred, neg_pred, true_cfg_scale, cfg_norm_strength)
            latents = self._end_step(ends, i, t, latents, noise_pred)
        started = clock.mark("denoise", started)

        # 7. Decode (the NaN/Inf guard on latents and pixels); the VAE paints RGBA, jobs get RGB
        out = [picture.convert("RGB") for picture in self._decode_checked(latents, height, width)]
        clock.mark("decode", started)
        return EditOutput(images=out, timings=clock.timings)
