"""The demo set's weights.yaml: tiny models, production limits (see ``build``)."""

from __future__ import annotations

import json
from importlib import resources

# The Plus pipeline resizes condition images to these areas; the real values (1 MP, 384^2)
# would make the tiny transformer attend over ~16k tokens, so the tiny set declares smaller ones.
TINY_VAE_CONDITION_PIXELS = 128 * 128
TINY_VL_CONDITION_PIXELS = 112 * 112


# The committed weights.yaml's limits, resolutions and qualities, mirrored by the demo set.
PRODUCTION_LIMITS = {
    "max_input_pixels": 40_000_000,
    "max_images_per_job": 3,
    "max_references": 5,
    "max_output_side": 2048,
    "max_num_images": 4,
    "max_prompt_chars": 4000,
    "job_timeout_s": 600,
}
PRODUCTION_RESOLUTIONS = {
    "1k": 1024 * 1024,
    "2k": 2048 * 2048,
    "4k": 4096 * 4096,
    "upscale_refine_strength": 0.3,
}
PRODUCTION_QUALITIES = {
    "low": {"lightning_steps": 4},
    "medium": {"lightning_steps": 8},
    "auto": {"lightning_steps": 8},
    "standard": {"steps": 20},
    "high": {"steps": 40},
    "hd": {"steps": 50},
    "xhigh": {"steps": 50},
    "max": {"steps": 50},
}
# Above this the tiny refiner's VAE decodes in tiles: its mid-block attention is quadratic in the
# latent area. The edit VAE tiles above 1 MP (measured faster from 2048x2048 on 2 CPU cores).
TINY_VAE_TILING_ABOVE_PIXELS = 512 * 512


def packaged_config(name: str) -> dict:
    text = resources.files("pipelines.configs").joinpath(name).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _edit_entry(path: str, loras: str, hub_id: str) -> dict:
    return {
        "roles": ["edit", "edit_plus", "inpaint"],
        "pipeline": "qwen_image_edit_plus",
        "max_input_images": 3,
        # random weights made by `retouch weights tiny`, under the licence of the models they mimic
        "license": {"id": "Apache-2.0"},
        "path": path,
        "hub_id": hub_id,
        "revision": "local",
        "dtype": "float32",
        "device": "cpu",
        "default_steps": 4,
        "default_guidance": 4.0,
        "vae_condition_pixels": TINY_VAE_CONDITION_PIXELS,
        "vl_condition_pixels": TINY_VL_CONDITION_PIXELS,
        "vae_tiling_above_pixels": 1024 * 1024,
        "loras": {
            f"lightning-{n}": {
                "path": f"qwen-image-lightning/{loras}-{n}steps.safetensors",
                "hub_id": "retouch/tiny-random-lightning",
                "revision": "local",
                "steps": n,
                "guidance": 1.0,
                "scheduler": "lightning",
            }
            for n in (8, 4)
        }
        | {
            "anime-style": {
                "path": "qwen-image-lightning/anime-style.safetensors",
                "hub_id": "retouch/tiny-random-style",
                "revision": "local",
            }
        },
    }


# Qwen-Image 2.1 reads one condition area (for its Qwen3-VL and its VAE alike); at 16 pixels a
# token, 128^2 is 64 tokens.
TINY_QWEN21_CONDITION_PIXELS = 128 * 128


def _qwen21_entry() -> dict:
    return {
        "roles": ["edit", "edit_plus", "inpaint"],
        "pipeline": "qwen_image_21",
        # the licence of the model it mimics, accepted for the demo (its weights are random)
        "license": {
            "name": "Qwen Research License",
            "url": "https://huggingface.co/Qwen/Qwen-Image-2.1/blob/main/LICENSE",
        },
        "accept_license": True,
        "path": "qwen-image-2.1",
        "hub_id": "retouch/tiny-random-qwen-image-2.1",
        "revision": "local",
        "dtype": "float32",
        "device": "cpu",
        "default_steps": 4,
        "default_guidance": 1.0,
        "default_cfg_norm_strength": 0.0,
        "vae_condition_pixels": TINY_QWEN21_CONDITION_PIXELS,
        "native_pixels": 2048 * 2048,
        "max_input_images": 10,
        "max_pictures": 10,
        "vae_tiling_above_pixels": 1024 * 1024,
    }


def tiny_registry() -> dict:
    lightning = packaged_config("qwen_image_lightning_scheduler.json")
    return {
        "version": 1,
        "root": ".",
        "models": {
            # Qwen-Image-Edit-2511's layout (zero_cond_t: reference tokens modulated at t = 0), the default
            "qwen-image-edit-tiny": _edit_entry(
                "qwen-image-edit", "lightning", "retouch/tiny-random-qwen-image-edit"
            ),
            # and 2509's, chosen per request (`model: qwen-image-edit-2509`) on a pod that loads it
            "qwen-image-edit-2509-tiny": _edit_entry(
                "qwen-image-edit-2509", "lightning-2509", "retouch/tiny-random-qwen-image-edit-2509"
            ),
            # Qwen-Image 2.1's layout (single-stream, Qwen3-VL, 64-channel VAE in the real one)
            "qwen-image-2.1-tiny": _qwen21_entry(),
            "z-image-turbo-tiny": {
                "roles": ["refiner"],
                "pipeline": "z_image_img2img",
                "license": {"id": "Apache-2.0"},
                "path": "z-image-turbo",
                "hub_id": "retouch/tiny-random-z-image-turbo",
                "revision": "local",
                "dtype": "float32",
                "device": "cpu",
                "default_steps": 8,
                "default_guidance": 0.0,
                "vae_tiling_above_pixels": TINY_VAE_TILING_ABOVE_PIXELS,
            },
        },
        "schedulers": {"lightning": lightning},
        "modes": {
            "anime": {
                "prompt_template": "{prompt}. Redraw the photo as a clean anime illustration.",
                "lora": "anime-style",
            }
        },
        # The production tables (the committed weights.yaml), so every documented request runs on
        # the demo: the tiny models run at any size (tests/engine/test_tiny_and_cli.py keeps them equal).
        "limits": dict(PRODUCTION_LIMITS),
        "resolutions": dict(PRODUCTION_RESOLUTIONS),
        "qualities": {name: dict(q) for name, q in PRODUCTION_QUALITIES.items()},
        "default_model": "qwen-image-edit-tiny",
        "public_models": {
            "qwen-image-edit": {"model": "qwen-image-edit-tiny"},
            "qwen-image-edit-pe": {"model": "qwen-image-edit-tiny", "enhance_prompt": True},
            "qwen-image-edit-2511": {"model": "qwen-image-edit-tiny"},
            "qwen-image-edit-2511-pe": {"model": "qwen-image-edit-tiny", "enhance_prompt": True},
            "qwen-image-edit-2509": {"model": "qwen-image-edit-2509-tiny"},
            "qwen-image-edit-2509-pe": {"model": "qwen-image-edit-2509-tiny", "enhance_prompt": True},
            "qwen-image-2.1": {"model": "qwen-image-2.1-tiny"},
            "qwen-image-2.1-pe": {"model": "qwen-image-2.1-tiny", "enhance_prompt": True},
        },
        "demo": True,
    }
