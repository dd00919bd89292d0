"""What Retouch's denoising loops share, whichever model runs them: stage timings, the checks on
a job's inputs, true CFG with a tunable norm rescale, a mask that guides the edit in latent
space, previews decoded from the predicted clean picture, and the decode with its NaN guard.

The host pipeline supplies diffusers' own ``_pack_latents`` / ``_unpack_latents`` /
``_encode_vae_image`` and declares ``latent_patch``: how many latents one transformer token
covers per side (2 for Qwen-Image-Edit, 1 for Qwen-Image 2.1, which reads latents unpatched).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InvalidInputError, NonFiniteOutputError


@dataclass
class EditOutput:
    images: list[Image.Image]
    timings: dict[str, float] = field(default_factory=dict)


class StageClock:
    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}

    def mark(self, stage: str, started: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - started
        return now


@dataclass
class LoopEnds:
    """What the end of every denoising step needs besides the step's own tensors."""

    timesteps: torch.Tensor
    guide: dict | None
    height: int
    width: int
    on_step: Callable[[int, int], None] | None
    on_preview: Callable[[int, Image.Image], None] | None
    preview_steps: Collection[int]


class EditLoopMixin:
    latent_patch = 2
    # set by the loader from weights.yaml (performance.prompt_cache_size); None = always encode
    prompt_cache = None
    # set by the loader (performance.offload_text_encoder): sends the text encoder back to CPU memory
    text_encoder_hook = None
    # set by the memory plan (pipelines/memory_apply.py) when the transformer visits per job
    transformer_hook = None

    def _encode_cached(self, key_length: int, **encode):
        """``encode_prompt(**encode)`` through the prompt cache (keyed by prompt, pictures and
        ``key_length``); a visiting text encoder goes back to CPU memory before the denoise loop."""
        cache = self.prompt_cache
        key = cache.key(encode["prompt"], encode["image"], key_length) if cache is not None else None
        found = cache.get(key) if cache is not None else None
        if found is not None:
            return found
        encoded = self.encode_prompt(**encode)
        if self.text_encoder_hook is not None:
            self.text_encoder_hook.offload()
        if cache is not None:
            cache.put(key, encoded)
        return encoded

    def _end_step(self, ends: LoopEnds, i: int, t, latents: torch.Tensor, noise_pred: torch.Tensor):
        """After step ``i``'s prediction: its preview, the scheduler step, the mask guide, progress."""
        if ends.on_preview is not None and i + 1 in ends.preview_steps:
            ends.on_preview(i + 1, self._preview(latents, noise_pred, i, ends.guide, ends.height, ends.width))
        latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        if ends.guide is not None:
            latents = self._apply_mask_guide(ends.guide, latents, ends.timesteps, i)
        if ends.on_step is not None:
            ends.on_step(i + 1, len(ends.timesteps))
        return latents

    def check_edit_inputs(self, images, prompt, height, width, num_inference_steps, true_cfg_scale, mask):
        if not images:
            raise InvalidInputError("at least one input image is required", field="images")
        if not prompt or not prompt.strip():
            raise InvalidInputError("prompt must not be empty", field="prompt")
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise InvalidInputError(f"height and width must be multiples of {multiple}, got {width}x{height}")
        if not 1 <= num_inference_steps <= 100:
            raise InvalidInputError(
                f"num_inference_steps must be within 1..100, got {num_inference_steps}",
                field="num_inference_steps",
            )
        if not 0 <= true_cfg_scale <= 20:
            raise InvalidInputError(
                f"guidance_scale must be within 0..20, got {true_cfg_scale}", field="guidance_scale"
            )
        if mask is not None and mask.size != (width, height):
            raise InvalidInputError(
                f"mask is {mask.size[0]}x{mask.size[1]} but the output is {width}x{height}", field="mask"
            )

    @staticmethod
    def _combine_cfg(cond, uncond, scale: float, norm_strength: float) -> torch.Tensor:
        comb = uncond + scale * (cond - uncond)
        if norm_strength == 0:
            return comb  # plain true CFG: exactly Qwen-Image 2.1's arithmetic
        ratio = torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True)
        if norm_strength == 1:
            return comb * ratio  # exactly the stock edit pipeline's arithmetic
        return comb * ((1 - norm_strength) + norm_strength * ratio)

    def _denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the VAE's own scale, with the stock edit pipeline's arithmetic."""
        mean, std = self._latent_stats(latents)
        return latents / (1.0 / std) + mean

    def _latent_stats(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, cfg = self.vae.config.z_dim, self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(cfg.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        return mean, std

    def _vae_picture(self, image: Image.Image) -> Image.Image:
        """The picture as the VAE reads it (RGB; Qwen-Image 2.1's VAE reads RGBA)."""
        return image

    def _decode(self, packed: torch.Tensor, height: int, width: int, pool: int = 1) -> torch.Tensor:
        """Packed latents to pixels in [-1, 1]; ``pool`` > 1 decodes a smaller, cheaper picture."""
        latents = self._unpack_latents(packed, height, width, self.vae_scale_factor).to(self.vae.dtype)
        if pool > 1:
            latents = F.avg_pool3d(latents, kernel_size=(1, pool, pool))
        return self.vae.decode(self._denormalize(latents), return_dict=False)[0][:, :, 0]

    def _decode_checked(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        if not torch.isfinite(latents).all():
            raise NonFiniteOutputError("the model produced NaN/Inf latents; no picture was returned")
        if self.transformer_hook is not None:
            self.transformer_hook.offload()  # the decode needs its room
        decoded = self._decode(latents, height, width)
        if not torch.isfinite(decoded).all():
            raise NonFiniteOutputError("the VAE produced NaN/Inf pixels; no picture was returned")
        return self.image_processor.postprocess(decoded, output_type="pil")

    def _preview(self, latents, noise_pred, i: int, guide, height: int, width: int) -> Image.Image:
        """The clean picture this step predicts, decoded at half size.

        Flow matching predicts velocity v = noise - x0, so x0 = x_t - sigma_t * v costs nothing
        extra; decoding half-size latents costs about a quarter of the final decode. The loop's
        own tensors are left untouched, so asking for previews never changes the result.
        """
        sigma = self.scheduler.sigmas[i].to(latents.device, latents.dtype)
        x0 = latents - sigma * noise_pred
        if guide is not None:
            x0 = guide["mask"] * x0 + (1 - guide["mask"]) * guide["latents"]
        pixels = self._decode(x0, height, width, pool=2).float().nan_to_num().clamp(-1, 1)
        return self.image_processor.postprocess(pixels, output_type="pil")[0]

    def _prepare_mask_guide(self, image, mask, height, width, dtype, device, noise):
        """Latents of the edited picture at output size, and a per-token mask (1 = edit)."""
        picture = self._vae_picture(image)
        pixels = self.image_processor.preprocess(picture, height, width).unsqueeze(2).to(device, dtype)
        lat = self._encode_vae_image(pixels, generator=None)
        lh, lw = lat.shape[3:]
        packed = self._pack_latents(lat, 1, lat.shape[1], lh, lw)
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        # One token covers latent_patch^2 latents; max-pooling keeps edge tokens editable.
        p = self.latent_patch
        m = F.adaptive_max_pool2d(F.interpolate(m, size=(lh, lw), mode="area"), (lh // p, lw // p))
        token_mask = (m > 0.5).to(device, dtype).flatten(2).transpose(1, 2)
        return {"latents": packed, "mask": token_mask, "noise": noise.clone()}

    def _apply_mask_guide(self, guide, latents, timesteps, i):
        if i + 1 < len(timesteps):
            keep = self.scheduler.scale_noise(guide["latents"], timesteps[i + 1 : i + 2], guide["noise"])
        else:
            keep = guide["latents"]
        return guide["mask"] * latents + (1 - guide["mask"]) * keep
