"""``retouch weights tiny DIR``: tiny random-weight versions of every model in the real layout.

Every component is the real class (Qwen-Image transformer and VAE, Qwen2.5-VL encoder and
processor, Qwen-Image 2.1's transformer and VAE with a Qwen3-VL, Z-Image transformer,
AutoencoderKL, Qwen3), saved as a diffusers folder that loads
offline exactly like the production weights. The Lightning LoRAs are written in the kohya
format the real files use, so they go through diffusers' own key conversion on load.
Deterministic: the same call writes the same tensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from ..registry import load_registry
from ..weights_manifest import write_manifest
from .qwen21 import build_qwen_image_21
from .registry import (
    packaged_config,
    tiny_registry,
)
from .tokenizer import tiny_vl_configs, train_tiny_qwen_tokenizer

# Small enough that a whole edit runs in well under a second on 2 CPU cores.
QWEN_TRANSFORMER = dict(
    patch_size=2,
    in_channels=16,
    out_channels=4,
    num_layers=2,
    attention_head_dim=16,
    # One head: a 2048x2048 output is 16k image tokens, and attention is most of a step's time.
    num_attention_heads=1,
    joint_attention_dim=16,
    guidance_embeds=False,
    axes_dims_rope=(8, 4, 4),
)
QWEN_VAE_Z = 4
LORA_RANK = 4


def _build_qwen_edit(out: Path, tokenizer, *, zero_cond_t: bool, seed: int) -> None:
    """``zero_cond_t``: Qwen-Image-Edit-2511's transformer (the reference tokens' modulation at t = 0);
    ``seed`` makes each tiny edit model a different random model."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**QWEN_TRANSFORMER, zero_cond_t=zero_cond_t)
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        # The real layout (8x down, 16-pixel output multiple), 4 channels at full resolution: CPU torch runs
        # its causal 3D convolutions through a slow fallback, and the full-resolution stages dominate.
        base_dim=4,
        z_dim=QWEN_VAE_Z,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * QWEN_VAE_Z,
        latents_std=[1.0] * QWEN_VAE_Z,
    )
    torch.manual_seed(0)
    rope = {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}
    text, vision, tokens = tiny_vl_configs(tokenizer, rope_scaling=rope, rope_theta=1000000.0)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config={**vision, "fullatt_block_indexes": [1]},
        vocab_size=len(tokenizer),
        vision_token_id=tokenizer.convert_tokens_to_ids("<|vision_pad|>"),
        **tokens,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()

    pp = packaged_config("qwen_image_edit_processor_preprocessor_config.json")
    image_kwargs = {k: pp[k] for k in ("patch_size", "temporal_patch_size", "merge_size")}
    image_kwargs |= {"image_mean": pp["image_mean"], "image_std": pp["image_std"]}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=pp["min_pixels"], max_pixels=pp["max_pixels"], **image_kwargs
        ),
        video_processor=Qwen2VLVideoProcessor(**image_kwargs),
        tokenizer=tokenizer,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**packaged_config("qwen_image_edit_scheduler.json"))
    pipe = QwenImageEditPlusPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_z_image(out: Path, tokenizer) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from diffusers import ZImageTransformer2DModel as ZT
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(1)
    transformer = ZT(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 128, 128],
    )
    # Random init of the pad embeddings can leave them at values that turn attention NaN on
    # padded sequences; ones are what makes the tiny refiner numerically safe.
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 32, 32],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    torch.manual_seed(1)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**packaged_config("z_image_turbo_scheduler.json"))
    ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    ).save_pretrained(out, safe_serialization=True)


def lightning_lora_state_dict(steps: int, *, rank: int = LORA_RANK, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA over every linear layer of the tiny transformer's blocks, kohya key format (the
    format of lightx2v's Qwen-Image-Lightning files for 2509 and 2511 alike)."""
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        skeleton = QwenImageTransformer2DModel(**QWEN_TRANSFORMER)
    gen = torch.Generator().manual_seed(100 + steps + 1000 * seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in skeleton.named_modules():
        if not name.startswith("transformer_blocks.") or not isinstance(module, torch.nn.Linear):
            continue
        down = torch.randn(rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, rank, generator=gen) * 0.5
        state[f"{name}.lora_down.weight"] = down.to(torch.bfloat16)
        state[f"{name}.lora_up.weight"] = up.to(torch.bfloat16)
        state[f"{name}.alpha"] = torch.tensor(float(rank), dtype=torch.bfloat16)
    return state


def build_tiny_weights(directory: str | Path) -> Path:
    """Write the tiny set into ``directory`` and return the path of its weights.yaml."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_qwen_tokenizer()
    _build_qwen_edit(out / "qwen-image-edit", tokenizer, zero_cond_t=True, seed=0)
    _build_qwen_edit(out / "qwen-image-edit-2509", tokenizer, zero_cond_t=False, seed=1)
    build_qwen_image_21(out / "qwen-image-2.1", tokenizer)
    _build_z_image(out / "z-image-turbo", tokenizer)
    lora_dir = out / "qwen-image-lightning"
    lora_dir.mkdir(exist_ok=True)
    for steps in (8, 4):
        save_file(lightning_lora_state_dict(steps), lora_dir / f"lightning-{steps}steps.safetensors")
        save_file(
            lightning_lora_state_dict(steps, seed=1), lora_dir / f"lightning-2509-{steps}steps.safetensors"
        )
    save_file(lightning_lora_state_dict(99), lora_dir / "anime-style.safetensors")
    registry_path = out / "weights.yaml"
    header = (
        "# Tiny random-weight set written by `retouch weights tiny`: real architectures, noise pictures.\n"
    )
    registry_path.write_text(header + yaml.safe_dump(tiny_registry(), sort_keys=False))
    # A manifest like `retouch weights pull` writes, so verify/bundle/import work on the demo too.
    write_manifest(load_registry(registry_path))
    return registry_path
