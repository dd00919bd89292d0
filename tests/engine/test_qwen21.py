"""Qwen-Image 2.1 through the same engine as the edit models, on its tiny real-architecture weights:
Retouch's path against stock diffusers, the prefix KV cache, masks, references, previews, the
NaN guard, its record, its picture limits and the warnings for knobs that do not apply to it."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import EditSpec, InvalidInputError, NonFiniteOutputError, ReferenceImage
from tests.conftest import encode, make_photo

MODEL = "qwen-image-2.1-tiny"


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def spec(photo: bytes, **kw) -> EditSpec:
    kw.setdefault("output_format", "png")
    kw.setdefault("seed", 7)
    kw.setdefault("lightning_steps", None)
    return EditSpec(prompt=kw.pop("prompt", "make it warmer"), images=[photo], **kw)


@pytest.fixture(scope="module")
def engine_21(registry):
    """A pod's engine loading the tiny Qwen-Image 2.1 (``RETOUCH_EDIT_MODEL``)."""
    from pipelines import EditEngine

    return EditEngine(registry.holding(MODEL))


@pytest.fixture(scope="module")
def stock(registry):
    from diffusers import QwenImage21Pipeline

    pipe = QwenImage21Pipeline.from_pretrained(
        registry.resolve(registry.models[MODEL].path), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance", [1.0, 4.0], ids=["no-cfg", "true-cfg"])
def test_retouch_path_equals_stock_qwen_image_21(engine_21, stock, registry, photo_bytes, guidance):
    side = math.isqrt(registry.models[MODEL].vae_condition_pixels)
    expected = stock(
        image=[make_photo()],
        prompt="make it warmer.",
        negative_prompt=" " if guidance > 1 else None,
        true_cfg_scale=guidance,
        num_inference_steps=3,
        height=64,
        width=96,
        output_resolution=side,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]
    ours = engine_21.run(spec(photo_bytes, num_inference_steps=3, guidance_scale=guidance))
    assert ours.record["model"] == MODEL and ours.record["cfg_norm_strength"] == 0
    assert np.array_equal(pixels(ours.images[0].data), np.asarray(expected.convert("RGB"), dtype=np.int16))


def test_prefix_kv_cache_is_exact_and_recomputes_only_the_target(engine_21, photo_bytes):
    pipe = engine_21.edit.pipe
    assert pipe.use_kv_cache  # on by default (weights.yaml performance.kv_cache)
    seen = []
    hook = pipe.transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
    )
    refs = [ReferenceImage(encode(make_photo(seed=1)), "a blue hat")]
    try:
        cached = engine_21.run(spec(photo_bytes, references=refs, num_inference_steps=4))
        prefill, *decodes = seen
        pipe.use_kv_cache = False
        seen.clear()
        full = engine_21.run(spec(photo_bytes, references=refs, num_inference_steps=4))
    finally:
        pipe.use_kv_cache = True
        hook.remove()
    assert cached.images[0].data == full.images[0].data  # float32: the cache changes nothing
    target = (64 // 16) * (96 // 16)
    assert decodes == [target] * 3 and prefill > target  # later steps read the prefix from the cache
    assert seen == [prefill] * 4  # without the cache every step runs the whole sequence


def test_masked_edit_keeps_every_pixel_outside_the_mask(engine_21, photo_bytes):
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    out = engine_21.run(spec(photo_bytes, mask=encode(mask), mask_feather_px=0)).images[0]
    original = np.asarray(make_photo(), dtype=np.int16)
    result = pixels(out.data)
    assert np.array_equal(result[:, 49:], original[:, 49:])
    assert np.abs(result[:, :40] - original[:, :40]).mean() > 1


def test_six_references_run_on_21_and_are_refused_by_the_plus_models(engine_21, engine, photo_bytes):
    refs = [ReferenceImage(encode(make_photo(seed=i)), f"reference {i}") for i in range(6)]
    many = engine_21.run(spec(photo_bytes, references=refs))
    few = engine_21.run(spec(photo_bytes, references=refs[:1]))
    assert many.images[0].sha256 != few.images[0].sha256  # every reference reaches the model
    with pytest.raises(InvalidInputError) as err:
        engine.run(spec(photo_bytes, references=refs))
    assert err.value.field == "references" and "at most 5" in err.value.message
    with pytest.raises(InvalidInputError) as err:
        engine_21.run(spec(photo_bytes, references=refs + refs[:4]))
    assert "at most 10 pictures" in err.value.message


def test_progress_previews_record_and_nan_guard(engine_21, photo_bytes):
    steps, previews = [], []
    result = engine_21.run(
        spec(photo_bytes, num_inference_steps=4, partial_images=1),
        on_progress=lambda stage, i, n: steps.append((stage, i, n)),
        on_preview=lambda image, partial, shown: previews.append(shown),
    )
    assert [(i, n) for s, i, n in steps if s == "denoise"] == [(i, 4) for i in range(1, 5)]
    assert [(p.width, p.height) for p in previews] == [(48, 32)]
    rec = result.record
    assert rec["model"] == MODEL and rec["loras"] == [] and rec["steps"] == 4
    assert any(k.startswith(f"{MODEL}/transformer/") for k in rec["file_sha256"])
    weight = engine_21.edit.pipe.transformer.proj_out.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(NonFiniteOutputError):
            engine_21.run(spec(photo_bytes))
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_knobs_that_do_not_apply_to_21_are_named_in_the_warnings(engine_21, photo_bytes):
    fast = engine_21.run(spec(photo_bytes, lightning_steps=8))
    assert fast.record["loras"] == [] and fast.record["steps"] == 4  # its own steps: it has no Lightning
    assert any("lightning_steps=8 ignored" in w and MODEL in w for w in fast.warnings)
    no_cfg = engine_21.run(spec(photo_bytes, cfg_norm_strength=0.5, negative_prompt="blurry"))
    assert any(w.startswith("cfg_norm_strength ignored") for w in no_cfg.warnings)
    assert any(w.startswith("negative_prompt ignored") for w in no_cfg.warnings)
    anime = engine_21.run(spec(photo_bytes, mode="anime"))
    assert any("'anime-style' is not declared" in w for w in anime.warnings)
    with_cfg = engine_21.run(spec(photo_bytes, guidance_scale=4.0, cfg_norm_strength=0.5))
    assert not with_cfg.warnings and with_cfg.record["cfg_norm_strength"] == 0.5


def test_prompt_enhancement_writes_with_21s_own_qwen3_vl(engine_21, photo_bytes):
    enhanced = engine_21.run(spec(photo_bytes, enhance_prompt=True))
    assert enhanced.revised_prompt and enhanced.revised_prompt != "make it warmer"
    assert enhanced.timings["enhance"] > 0 and enhanced.record["revised_prompt"] == enhanced.revised_prompt
    as_revised = engine_21.run(spec(photo_bytes, prompt=enhanced.revised_prompt))
    assert as_revised.images[0].sha256 == enhanced.images[0].sha256
