"""weights.yaml ``performance:`` settings on the tiny set: each keeps the picture, each is checked."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import EditEngine, EditSpec, RegistryError, UnsupportedFeatureError, load_registry
from pipelines.registry import Performance
from pipelines.validation import check_spec
from tests.conftest import encode, make_photo


def with_performance(registry, **settings):
    name, entry = registry.model_for("edit_plus")
    entry = entry.model_copy(update={"performance": Performance(**settings)})
    return registry.model_copy(update={"models": {**registry.models, name: entry}})


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def spec(**kw) -> EditSpec:
    base = dict(prompt="make it warmer.", images=[encode(make_photo())], seed=3, output_format="png")
    return EditSpec(**(base | kw))


def count_calls(module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_prompt_cache_skips_the_text_encoder_and_keeps_the_picture(registry, engine):
    cached = EditEngine(with_performance(registry, prompt_cache_size=8))
    encoder_calls = count_calls(cached.edit.pipe.text_encoder)
    first = cached.run(spec(num_images=2))
    # two pictures from one instruction on one input: the vision-language model runs once
    assert encoder_calls[0] == 1
    again = cached.run(spec(seed=11))
    assert encoder_calls[0] == 1 and cached.edit.pipe.prompt_cache.hits == 2
    other_picture = cached.run(spec(images=[encode(make_photo(seed=4).rotate(180))]))
    assert encoder_calls[0] == 2  # another picture is another key
    exact = engine.run(spec(num_images=2))
    assert [i.sha256 for i in first.images] == [i.sha256 for i in exact.images]
    assert again.images[0].sha256 == engine.run(spec(seed=11)).images[0].sha256
    assert other_picture.images[0].sha256 != first.images[0].sha256


def test_attention_backend_is_applied_and_a_missing_one_is_named(registry, engine):
    math_path = EditEngine(with_performance(registry, attention_backend="_native_math"))
    processor = math_path.edit.pipe.transformer.transformer_blocks[0].attn.processor
    assert processor._attention_backend.value == "_native_math"
    diff = np.abs(pixels(math_path.run(spec()).images[0].data) - pixels(engine.run(spec()).images[0].data))
    assert diff.max() <= 2  # the same attention computed another way
    with pytest.raises(RegistryError, match="attention_backend 'nope'"):
        EditEngine(with_performance(registry, attention_backend="nope"))


def test_hub_kernels_and_a_fused_lora_without_fp8_are_refused_in_weights_yaml(tiny_weights, tmp_path):
    text = tiny_weights.read_text()
    for perf, message in (
        ("{attention_backend: flash_hub}", "downloads kernels from the hub"),
        ("{fuse_lora: lightning-8}", "fuse_lora is only for quantize: fp8"),
        ("{quantize: fp8, fuse_lora: missing}", "'missing' is not one of its loras"),
    ):
        edited = text.replace("    default_steps: 4\n", f"    default_steps: 4\n    performance: {perf}\n", 1)
        assert edited != text
        path = tiny_weights.parent / "perf.yaml"
        path.write_text(edited)
        with pytest.raises(RegistryError, match=message):
            load_registry(path)


def test_fp8_needs_a_gpu_and_a_fused_model_serves_only_its_lora(registry):
    fp8 = with_performance(registry, quantize="fp8", fuse_lora="lightning-8")
    if not torch.cuda.is_available():
        with pytest.raises(RegistryError, match="fp8 needs a CUDA GPU"):
            EditEngine(fp8)
    assert check_spec(spec(lightning_steps=8), fp8) == []
    with pytest.raises(UnsupportedFeatureError, match="runs only lightning-8.*asks for the full model"):
        check_spec(spec(lightning_steps=None), fp8)
    with pytest.raises(UnsupportedFeatureError, match="asks for 4 Lightning steps"):
        check_spec(spec(lightning_steps=4), fp8)


@pytest.mark.slow
def test_regional_compile_warms_up_and_never_recompiles_between_modes_and_sizes(
    registry, engine, monkeypatch
):
    compiled = EditEngine(with_performance(registry, compile="regional", warmup_sizes=[(96, 64)]))
    assert compiled.warmed_up == ["96x64 lightning-4", "96x64 lightning-8", "96x64 full"]
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    for lightning, size in ((8, (128, 128)), (None, (128, 128)), (4, (96, 64)), (8, (96, 64))):
        steps = None if lightning else 2
        job = spec(width=size[0], height=size[1], lightning_steps=lightning, num_inference_steps=steps)
        out = compiled.run(job).images[0]  # a recompile would raise here
        diff = np.abs(pixels(out.data) - pixels(engine.run(job).images[0].data))
        assert diff.max() <= 3, f"compiled output differs by {diff.max()} for {lightning} at {size}"


def test_offloaded_text_encoders_give_the_same_pictures_and_leave_the_device(registry, engine):
    name, entry = registry.model_for("refiner")
    refiner = entry.model_copy(update={"performance": Performance(offload_text_encoder=True)})
    both = with_performance(registry, offload_text_encoder=True)
    both = both.model_copy(update={"models": {**both.models, name: refiner}})
    offloaded = EditEngine(both)
    job = spec(refine_strength=0.5)
    assert offloaded.run(job).images[0].sha256 == engine.run(job).images[0].sha256
    for pipe in (offloaded.edit.pipe, offloaded.refiner.pipe):
        assert pipe.text_encoder_hook is not None
        # after the job the encoder sits in CPU memory (on a GPU box: off the GPU, its memory freed)
        assert next(pipe.text_encoder.parameters()).device.type == "cpu"
