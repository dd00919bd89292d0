"""Full-size Retouch models with random weights, built directly on the device in bf16.

Every module is constructed under ``torch.device(device)`` with bf16 as the default dtype, so
each parameter is allocated once, on the device, in bf16, and initialised there by the module's
own init (no fp32 copy, no host round trip). The default dtype is restored right after, so that
nothing at run time is created in bf16 by accident.

The real tokenizers cannot be fetched here, so the tokenizer (and the Qwen2-VL processor around
it) is the tiny builder's: same special tokens, same templates, a smaller vocabulary. Prompt
token counts therefore differ slightly from the real ones; the vision tokens of each condition
picture, which dominate the text sequence, are exact.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch

from benchmarks.flops import load_config

TEXT_ENCODER_TOKEN_KEYS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "vision_token_id": "<|vision_pad|>",
}


@contextmanager
def on_device_bf16(device: torch.device):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _built(record: dict | None, name: str, started: float, module: torch.nn.Module) -> torch.nn.Module:
    """Note a component's build time (device synchronised) and its bf16 weights in ``record``."""
    module = _finalise(module)
    if record is not None:
        device = next(module.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record[name] = {"seconds": time.perf_counter() - started, "gib": parameter_bytes(module) / 2**30}
    return module


def _finalise(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no grads, and no uninitialised (torch.empty) parameter left holding NaN/Inf."""
    module.eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("pad_token"):
                p.fill_(1.0)  # Z-Image: as the tiny builder, pad tokens of ones keep attention finite
            elif not torch.isfinite(p).all():
                p.nan_to_num_(0.0, 0.0, 0.0)
    return module


def _bf16_sdpa(*configs) -> None:
    # transformers builds each sub-model in its (sub-)config's dtype, whatever the default dtype is.
    for config in configs:
        config.dtype = torch.bfloat16
        config._attn_implementation = "sdpa"


def build_tokenizer_and_processor():
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from pipelines.tiny.tokenizer import train_tiny_qwen_tokenizer

    tokenizer = train_tiny_qwen_tokenizer()
    pp = load_config("qwen_image_edit_processor_preprocessor_config.json")
    kwargs = {
        k: pp[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    }
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=pp["min_pixels"], max_pixels=pp["max_pixels"], **kwargs
        ),
        video_processor=Qwen2VLVideoProcessor(**kwargs),
        tokenizer=tokenizer,
    )
    return tokenizer, processor


def _truncate(config: dict, keys: tuple[str, ...], layers: int | None) -> dict:
    if layers is not None:
        for key in keys:
            if key in config:
                config[key] = min(config[key], layers)
    return config


# The published transformer config of each edit model of weights.yaml (configs/): 2511 adds
# zero_cond_t to 2509's; same parameters, same FLOPs.
TRANSFORMER_CONFIGS = {
    "qwen-image-edit-2509": "qwen_image_edit_transformer.json",
    "qwen-image-edit-2511": "qwen_image_edit_2511_transformer.json",
}


def build_qwen_edit(device: torch.device, tokenizer, processor, layers: int | None = None, record=None,
                    model: str = "qwen-image-edit-2511"):  # fmt: skip
    """The Retouch and the stock Qwen-Image-Edit-Plus pipelines of ``model``, sharing one set of
    components. ``record``, a dict, receives each component's build seconds and weight GiB.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from pipelines.qwen_edit import RetouchQwenEditPipeline

    tcfg = _truncate(load_config(TRANSFORMER_CONFIGS[model]), ("num_layers",), layers)
    te = load_config("qwen_image_edit_text_encoder.json")
    for key, token in TEXT_ENCODER_TOKEN_KEYS.items():
        te[key] = tokenizer.convert_tokens_to_ids(token)
    if layers is not None:
        te["num_hidden_layers"] = te["text_config"]["num_hidden_layers"] = min(
            te["num_hidden_layers"], layers
        )
        te["text_config"]["layer_types"] = te["text_config"]["layer_types"][: te["num_hidden_layers"]]
        te["vision_config"]["depth"] = min(te["vision_config"]["depth"], layers)
        te["vision_config"]["fullatt_block_indexes"] = [te["vision_config"]["depth"] - 1]
    te_config = Qwen2_5_VLConfig(**te)
    _bf16_sdpa(te_config, te_config.text_config, te_config.vision_config)
    with on_device_bf16(device):
        t0 = time.perf_counter()
        transformer = _built(record, "qwen_transformer", t0, QwenImageTransformer2DModel(**tcfg))
        t0 = time.perf_counter()
        vae_config = load_config("qwen_image_edit_vae.json")
        vae = _built(record, "qwen_vae", t0, AutoencoderKLQwenImage(**vae_config))
        t0 = time.perf_counter()
        text_encoder = Qwen2_5_VLForConditionalGeneration(te_config)
        text_encoder = _built(record, "qwen2_5_vl_text_encoder", t0, text_encoder)
    scheduler = FlowMatchEulerDiscreteScheduler(**load_config("qwen_image_edit_scheduler.json"))
    parts = dict(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
    retouch = RetouchQwenEditPipeline(**parts)
    stock = QwenImageEditPlusPipeline(**parts)
    for pipe in (retouch, stock):
        pipe.set_progress_bar_config(disable=True)
    return retouch, stock


def build_z_image(device: torch.device, tokenizer, layers: int | None = None, record=None):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline
    from diffusers import ZImageTransformer2DModel as ZT
    from transformers import Qwen3Config, Qwen3Model

    zcfg = _truncate(load_config("z_image_turbo_transformer.json"), ("n_layers", "n_refiner_layers"), layers)
    qcfg = _truncate(load_config("z_image_turbo_text_encoder.json"), ("num_hidden_layers",), layers)
    qcfg.pop("torch_dtype", None)
    te_config = Qwen3Config(**qcfg)
    _bf16_sdpa(te_config)
    with on_device_bf16(device):
        t0 = time.perf_counter()
        transformer = _built(record, "z_image_transformer", t0, ZT(**zcfg))
        t0 = time.perf_counter()
        vae = _built(record, "z_image_vae", t0, AutoencoderKL(**load_config("z_image_turbo_vae.json")))
        t0 = time.perf_counter()
        text_encoder = _built(record, "qwen3_text_encoder", t0, Qwen3Model(te_config))
    scheduler = FlowMatchEulerDiscreteScheduler(**load_config("z_image_turbo_scheduler.json"))
    pipe = ZImageImg2ImgPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_lora_state_dict(transformer, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA over every linear layer of ``transformer_blocks``, made on the device in bf16.

    Values are small (the update is ~1 % of the layer's output) so that random weights stay finite.
    """
    device = next(transformer.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if not name.startswith("transformer_blocks.") or not isinstance(module, torch.nn.Linear):
            continue
        down = torch.randn(rank, module.in_features, generator=gen, device=device, dtype=torch.bfloat16)
        up = torch.randn(module.out_features, rank, generator=gen, device=device, dtype=torch.bfloat16)
        state[f"{name}.lora_down.weight"] = down / math.sqrt(module.in_features)
        state[f"{name}.lora_up.weight"] = up * (0.01 / math.sqrt(rank))
        state[f"{name}.alpha"] = torch.tensor(float(rank), dtype=torch.bfloat16)
    return state


def parameter_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def build_qwen_image_21(device: torch.device, tokenizer, layers: int | None = None, record=None):
    """The Retouch and the stock Qwen-Image 2.1 pipelines, sharing one set of components.

    No config is published with the weights: the transformer and VAE are diffusers 0.42.1's class
    defaults (7.1 B), the text encoder Qwen3-VL-8B's shape (8.77 B, an assumption); the processor is
    Qwen3-VL's (patch 16, merge 2) over the tiny tokenizer, the scheduler Qwen-Image-Edit's config.
    """
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

    from pipelines.qwen21 import RetouchQwenImage21Pipeline
    from pipelines.tiny.qwen21 import QWEN3_VL_CHAT_TEMPLATE

    tcfg = _truncate(load_config("qwen_image_21_transformer.json"), ("num_layers",), layers)
    te = load_config("qwen_image_21_text_encoder.json")
    for key, token in TEXT_ENCODER_TOKEN_KEYS.items():
        if key in te:
            te[key] = tokenizer.convert_tokens_to_ids(token)
    if layers is not None:
        te["text_config"]["num_hidden_layers"] = min(te["text_config"]["num_hidden_layers"], layers)
        vision = te["vision_config"]
        vision["depth"] = min(vision["depth"], layers)
        vision["deepstack_visual_indexes"] = [
            i for i in vision["deepstack_visual_indexes"] if i < vision["depth"]
        ]
    te_config = Qwen3VLConfig(**te)
    _bf16_sdpa(te_config, te_config.text_config, te_config.vision_config)
    with on_device_bf16(device):
        t0 = time.perf_counter()
        transformer = _built(record, "qwen21_transformer", t0, QwenImage21Transformer2DModel(**tcfg))
        t0 = time.perf_counter()
        vae = _built(
            record, "qwen21_vae", t0, AutoencoderKLQwenImage21(**load_config("qwen_image_21_vae.json"))
        )
        t0 = time.perf_counter()
        text_encoder = _built(record, "qwen3_vl_text_encoder", t0, Qwen3VLForConditionalGeneration(te_config))
    image_kwargs = dict(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    # the pipeline hands the processor pictures already at their condition size: it keeps them
    size = {"shortest_edge": 32 * 32, "longest_edge": 4096 * 4096}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **image_kwargs),
        video_processor=Qwen3VLVideoProcessor(size=size, **image_kwargs),
        tokenizer=tokenizer,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**load_config("qwen_image_edit_scheduler.json"))
    parts = dict(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, processor=processor, transformer=transformer
    )
    retouch = RetouchQwenImage21Pipeline(**parts)
    stock = QwenImage21Pipeline(**parts)
    for pipe in (retouch, stock):
        pipe.set_progress_bar_config(disable=True)
    return retouch, stock
