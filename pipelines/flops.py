"""Transformer FLOPs from the model configs and the token counts (pure Python: no torch).

The API process prices and schedules jobs with these counts (pipelines/cost_model.py), and the
benchmarks report achieved TFLOP/s with them (benchmarks/flops.py). Counted per forward of one
sample (a multiply-add is 2 FLOPs). Qwen-Image (MMDiT, two streams sharing one joint attention), per
block over L = image + text tokens and d = heads * head_dim:

- joint-attention linear layers, both streams: Q, K, V and out  -> 4 * 2*L*d^2 = 8*L*d^2
- attention itself: Q.K^T and P.V over the joint sequence        -> 4*L^2*d
- MLPs (ratio 4, two linear layers), both streams                  -> 16*L*d^2
- modulation (d -> 6d on the timestep embedding, per stream)       -> 24*d^2
plus the input/output projections (img_in, txt_in, proj_out). Normalisations, RoPE, softmax and
the activation functions are elementwise and left out; so are the LoRA's low-rank products (about
2 % at rank 32), which are overhead, not the model's work.

Image tokens: one per 16x16 pixels (VAE /8, patch 2) for the output and for every condition
picture (the Plus pipeline resizes those to ~1 MP); text tokens: the encoded prompt, which holds
the vision-language tokens of each condition picture (~14x14 = 196 per picture at 384^2).

Qwen-Image 2.1 (single-stream, block-causal, SwiGLU FFN of ratio r = mlp_ratio, latents unpatched at
16 pixels a token, condition pictures' latents inside the joint sequence): per block, for n query
tokens over L key tokens, 8*n*d^2 (Q, K, V, out) + 4*n*L*d (attention, counted dense) + 6*r*n*d^2.
With its prefix KV cache the first step runs the whole sequence and each later one only the
target's tokens (n = target, L = everything).

Z-Image (single-stream DiT, SwiGLU FFN with hidden int(dim/3*8)): per main layer over the unified
image + caption sequence 8*N*D^2 + 4*N^2*D + 6*N*D*H, plus two noise-refiner layers over the
image tokens and two context-refiner layers over the caption tokens; sequences are padded to 32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# The published transformer configs of the production models: the counts a weights folder
# without its own config.json (or a test registry with no files) is priced with.
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"
QWEN_EDIT_CONFIG = "qwen_image_edit_transformer.json"
# no config is published with the weights yet: the class defaults of diffusers 0.42.1 (7.1 B)
QWEN_21_CONFIG = "qwen_image_21_transformer.json"
Z_IMAGE_CONFIG = "z_image_turbo_transformer.json"


def read_config(path: Path) -> dict:
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}


def transformer_config(model_folder: Path | None, bundled: str) -> dict:
    """``model_folder/transformer/config.json`` when it is there, else the bundled production one."""
    if model_folder is not None:
        own = Path(model_folder) / "transformer" / "config.json"
        if own.is_file():
            return read_config(own)
    return read_config(BUNDLED_CONFIGS / bundled)


def image_tokens(width: int, height: int, vae_scale: int = 8, patch: int = 2) -> int:
    return (height // (vae_scale * patch)) * (width // (vae_scale * patch))


def condition_size(width: int, height: int, area: int = 1024 * 1024) -> tuple[int, int]:
    """The VAE size the Plus pipeline gives a condition picture (diffusers' calculate_dimensions)."""
    ratio = width / height
    w = math.sqrt(area * ratio)
    h = w / ratio
    return round(w / 32) * 32, round(h / 32) * 32


def qwen_image_forward_flops(config: dict, img_tokens: int, txt_tokens: int) -> float:
    """FLOPs of one QwenImageTransformer2DModel forward for one sample."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    p = config["patch_size"]
    seq = img_tokens + txt_tokens
    per_block = 8 * seq * d * d + 4 * seq * seq * d + 16 * seq * d * d + 24 * d * d
    io = (
        2 * img_tokens * config["in_channels"] * d  # img_in
        + 2 * txt_tokens * config["joint_attention_dim"] * d  # txt_in
        + 2 * img_tokens * d * p * p * config["out_channels"]  # proj_out
        + 2 * (256 * d + d * d)
        + 2 * d * 2 * d  # timestep embedding, norm_out modulation
    )
    return float(config["num_layers"] * per_block + io)


def _pad32(n: int) -> int:
    return n + (-n) % 32


def z_image_forward_flops(config: dict, img_tokens: int, cap_tokens: int) -> float:
    """FLOPs of one ZImageTransformer2DModel forward for one sample."""
    d = config["dim"]
    hidden = int(d / 3 * 8)
    ni, nc = _pad32(img_tokens), _pad32(cap_tokens)

    def layer(n: int) -> int:
        return 8 * n * d * d + 4 * n * n * d + 6 * n * d * hidden

    p = config["all_patch_size"][0]
    io = 2 * ni * p * p * config["in_channels"] * d * 2 + 2 * nc * config["cap_feat_dim"] * d
    refiners = config["n_refiner_layers"] * (layer(ni) + layer(nc))
    return float(config["n_layers"] * layer(ni + nc) + refiners + io)


def qwen_edit_job_flops(
    config: dict,
    width: int,
    height: int,
    condition_sizes: list[tuple[int, int]],
    txt_tokens: int,
    steps: int,
    true_cfg: bool,
) -> float:
    """Transformer FLOPs of a whole edit: steps x forwards (x2 with true CFG)."""
    img = image_tokens(width, height) + sum(image_tokens(w, h) for w, h in condition_sizes)
    return qwen_image_forward_flops(config, img, txt_tokens) * steps * (2 if true_cfg else 1)


def qwen_image_21_forward_flops(config: dict, query_tokens: int, key_tokens: int) -> float:
    """FLOPs of one QwenImage21Transformer2DModel forward for one sample, ``query_tokens`` of
    ``key_tokens`` recomputed (all of them without the prefix KV cache)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n, length = query_tokens, key_tokens
    per_block = 8 * n * d * d + 4 * n * length * d + 6 * config["mlp_ratio"] * n * d * d
    io = 2 * n * d * (config["in_channels"] + config["out_channels"]) + 2 * (256 * d + d * d + 4 * d * d)
    return float(config["num_layers"] * per_block + io)


def qwen_image_21_job_flops(
    config: dict,
    width: int,
    height: int,
    condition_sizes: list[tuple[int, int]],
    txt_tokens: int,
    steps: int,
    true_cfg: bool,
    kv_cache: bool = True,
) -> float:
    """Transformer FLOPs of a whole Qwen-Image 2.1 job."""
    target = image_tokens(width, height, vae_scale=16, patch=1)
    total = txt_tokens + target + sum(image_tokens(w, h, vae_scale=16, patch=1) for w, h in condition_sizes)
    full = qwen_image_21_forward_flops(config, total, total)
    later = qwen_image_21_forward_flops(config, target, total) if kv_cache else full
    return (full + (steps - 1) * later) * (2 if true_cfg else 1)
