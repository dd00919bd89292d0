"""A tiny random-weight Qwen-Image 2.1: diffusers' real classes (the single-stream block-causal
transformer with ``causal_condition``, the 16x, RGBA-in/out VAE) and a tiny Qwen3-VL with its
processor, over the same locally trained tokenizer as the Qwen2.5-VL of the edit models."""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import tiny_vl_configs

# Head dim 16 = the rotary axes (frame, height, width); one head, as the edit models' tiny transformer.
QWEN21_TRANSFORMER = dict(
    patch_size=1,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=1,
    context_in_dim=16,
    mlp_ratio=2,
    axes_dims_rope=(4, 6, 6),
    causal_condition=True,
)
QWEN21_VAE_Z = 4

# Qwen3-VL's chat template, reduced to the text turns: the pipeline tokenises its own template and
# asks the processor only how many tokens the system turn takes.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_qwen_image_21(out: Path, tokenizer, *, seed: int = 2) -> None:
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    from .registry import packaged_config

    torch.manual_seed(seed)
    transformer = QwenImage21Transformer2DModel(
        in_channels=QWEN21_VAE_Z, out_channels=QWEN21_VAE_Z, **QWEN21_TRANSFORMER
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage21(
        # the real 16x layout (five stages), 4 channels at full resolution: CPU runs its causal 3D
        # convolutions through a slow fallback
        base_dim=4,
        decoder_base_dim=4,
        z_dim=QWEN21_VAE_Z,
        dim_mult=[1, 1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True, True],
        latents_mean=[0.0] * QWEN21_VAE_Z,
        latents_std=[1.0] * QWEN21_VAE_Z,
    )
    torch.manual_seed(seed)
    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [1, 1, 2]}
    text, vision, tokens = tiny_vl_configs(tokenizer, head_dim=8, rope_parameters=rope)
    config = Qwen3VLConfig(
        text_config=text,
        vision_config={
            **vision,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        **tokens,
    )
    text_encoder = Qwen3VLForConditionalGeneration(config).eval()
    image_kwargs = dict(patch_size=16, temporal_patch_size=2, merge_size=2)
    image_kwargs |= {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    # The pipeline hands the processor pictures already at their condition size (multiples of 32):
    # the processor's own resize must leave them as they are, as Qwen3-VL's does for these sizes.
    size = {"shortest_edge": 32 * 32, "longest_edge": 4096 * 4096}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **image_kwargs),
        video_processor=Qwen3VLVideoProcessor(size=size, **image_kwargs),
        tokenizer=tokenizer,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**packaged_config("qwen_image_edit_scheduler.json"))
    QwenImage21Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, processor=processor, transformer=transformer
    ).save_pretrained(out, safe_serialization=True)
