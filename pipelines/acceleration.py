"""Speed settings of weights.yaml (``performance:``), applied once when a model is loaded.

Every setting is off by default so the exact bf16 path stays the reference; each one is measured
on and off by ``benchmarks/engine_latency.py`` and the defaults in weights.yaml follow the figures.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import torch

from .errors import RegistryError
from .registry import Performance

log = logging.getLogger("retouch.engine")


class PromptCache:
    """Text-encoder outputs per (prompt, condition pictures, length), least recently used out first.

    The key hashes the resized condition pictures the vision-language model sees, so the same
    instruction on another picture never hits.
    """

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(prompt: str, images, max_sequence_length: int) -> tuple:
        digest = hashlib.sha256()
        for image in images:
            digest.update(f"{image.size}{image.mode}".encode())
            digest.update(image.tobytes())
        return (prompt, max_sequence_length, digest.hexdigest())

    def get(self, key: tuple):
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return found

    def put(self, key: tuple, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def set_attention_backend(module, name: str | None, where: str) -> None:
    if name is None:
        return
    try:
        module.set_attention_backend(name)
    except (ValueError, RuntimeError, ImportError) as exc:
        message = f"{where}.performance.attention_backend {name!r} cannot run here: {exc}"
        raise RegistryError(message) from None


def fuse_and_quantize(pipe, perf: Performance, where: str) -> str | None:
    """FP8 linear layers after fusing the chosen LoRA; returns the fused LoRA's name (adapters are gone)."""
    if perf.quantize == "none":
        return None
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise RegistryError(f"{where}.performance.quantize: fp8 needs a CUDA GPU of compute capability 8.9+")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        raise RegistryError(f"{where}.performance.quantize: fp8 needs the torchao package") from None
    if perf.fuse_lora is not None:
        pipe.enable_lora()
        pipe.set_adapters([perf.fuse_lora], [1.0])
        pipe.fuse_lora(adapter_names=[perf.fuse_lora])
    pipe.unload_lora_weights()

    def blocks_only(module, fqn: str) -> bool:
        # Embedders and the final projection stay bf16: they are small and sensitive.
        return isinstance(module, torch.nn.Linear) and fqn.startswith("transformer_blocks.")

    quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), blocks_only)
    log.info("transformer linear layers in fp8 (fused LoRA: %s)", perf.fuse_lora)
    return perf.fuse_lora


def offload_text_encoder(pipe, perf: Performance) -> None:
    """Park the text encoder in CPU memory behind an accelerate hook that brings it to the
    pipeline's device for each forward; ``release_text_encoder`` sends it back after encoding."""
    if not perf.offload_text_encoder or getattr(pipe, "text_encoder_hook", None) is not None:
        return  # off, or the memory plan already keeps it in CPU memory
    from accelerate import cpu_offload_with_hook

    device = pipe.device
    pipe.text_encoder.to("cpu")
    _, pipe.text_encoder_hook = cpu_offload_with_hook(pipe.text_encoder, execution_device=device)
    log.info("text encoder kept in CPU memory; moved to %s only to encode", device)


def release_text_encoder(pipe) -> None:
    hook = getattr(pipe, "text_encoder_hook", None)
    if hook is not None:
        hook.offload()


def compile_regional(transformer, perf: Performance) -> None:
    if perf.compile == "off":
        return
    # One compiled block serves all 60 identical blocks; dynamic shapes cover the output sizes.
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
    log.info("transformer blocks compiled (regional, dynamic shapes)")


def warm_up(engine) -> list[str]:
    """Run the declared warm-up sizes with Lightning on and off so compiles happen before any job."""
    from PIL import Image

    from .images import encode_image
    from .spec import EditSpec

    perf = engine.edit.entry.performance
    done = []
    if not perf.warmup_sizes:
        return done
    # Every adapter set a job can ask for: each Lightning LoRA, and the full model.
    if engine.edit.fused is not None:
        modes: list[int | None] = [engine.edit.entry.loras[engine.edit.fused].steps]
    else:
        modes = sorted({lora.steps for lora in engine.edit.entry.loras.values() if lora.steps}) + [None]
    for width, height in perf.warmup_sizes:
        picture = encode_image(Image.new("RGB", (width, height), (128, 128, 128)), "png")
        for steps in modes:
            engine.run(
                EditSpec(
                    prompt="warm up",
                    images=[picture],
                    width=width,
                    height=height,
                    seed=0,
                    lightning_steps=steps,
                    num_inference_steps=None if steps else 2,
                )
            )
            done.append(f"{width}x{height} {'lightning-' + str(steps) if steps else 'full'}")
    log.info("warm-up done: %s", ", ".join(done))
    return done
