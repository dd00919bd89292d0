"""The engine on tiny real-architecture weights: reproducibility, Lightning, CFG, progress, records."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import EditSpec, JobCancelledError, NonFiniteOutputError
from pipelines.images import is_ai_marked
from tests.conftest import encode, make_photo


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def spec(photo: bytes, **kw) -> EditSpec:
    kw.setdefault("output_format", "png")
    kw.setdefault("seed", 7)
    return EditSpec(prompt="make it warmer", images=[photo], **kw)


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(engine, photo_bytes):
    a = engine.run(spec(photo_bytes, seed=11)).images[0]
    b = engine.run(spec(photo_bytes, seed=11)).images[0]
    c = engine.run(spec(photo_bytes, seed=12)).images[0]
    assert a.data == b.data and a.sha256 == b.sha256
    assert a.sha256 != c.sha256
    assert (a.seed, c.seed) == (11, 12)


def test_random_seed_is_reported_and_reproduces(engine, photo_bytes):
    first = engine.run(spec(photo_bytes, seed=-1))
    assert 0 <= first.seed < 2**32
    again = engine.run(spec(photo_bytes, seed=first.seed))
    assert again.images[0].data == first.images[0].data


def test_num_images_gives_consecutive_seeds(engine, photo_bytes):
    result = engine.run(spec(photo_bytes, seed=100, num_images=2))
    assert [im.seed for im in result.images] == [100, 101]
    assert result.images[0].sha256 != result.images[1].sha256
    single = engine.run(spec(photo_bytes, seed=101)).images[0]
    assert single.data == result.images[1].data


def test_lightning_on_off_differ_and_switching_reproduces(engine, photo_bytes):
    l8 = engine.run(spec(photo_bytes, lightning_steps=8)).images[0].data
    full = engine.run(spec(photo_bytes, lightning_steps=None, num_inference_steps=4)).images[0].data
    l4 = engine.run(spec(photo_bytes, lightning_steps=4)).images[0].data
    assert len({l8, full, l4}) == 3
    # back and forth without reloading anything
    assert engine.run(spec(photo_bytes, lightning_steps=8)).images[0].data == l8
    assert engine.run(spec(photo_bytes, lightning_steps=None, num_inference_steps=4)).images[0].data == full
    assert engine.run(spec(photo_bytes, lightning_steps=4)).images[0].data == l4


def test_lightning_uses_its_scheduler_and_steps(engine, photo_bytes):
    seen = []
    result = engine.run(spec(photo_bytes, lightning_steps=4), lambda s, i, n: seen.append((s, i, n)))
    assert [(i, n) for s, i, n in seen if s == "denoise"] == [(i, 4) for i in range(1, 5)]
    sched = result.record["scheduler"]
    assert math.isclose(sched["base_shift"], math.log(3)) and math.isclose(sched["max_shift"], math.log(3))
    assert sched["shift_terminal"] is None and sched["time_shift_type"] == "exponential"
    assert result.record["guidance_scale"] == 1.0 and result.record["loras"] == ["lightning-4"]
    full = engine.run(spec(photo_bytes, lightning_steps=None, num_inference_steps=3))
    assert full.record["scheduler"]["shift_terminal"] == pytest.approx(0.02)
    assert full.record["loras"] == []


def test_adapter_path_equals_fused_lora(engine, registry, photo_bytes):
    from pipelines.qwen_edit import RetouchQwenEditPipeline

    entry = registry.models["qwen-image-edit-tiny"]
    adapter_out = pixels(engine.run(spec(photo_bytes, lightning_steps=8)).images[0].data)

    fused = RetouchQwenEditPipeline.from_pretrained(registry.resolve(entry.path), local_files_only=True)
    fused.load_lora_weights(str(registry.resolve(entry.loras["lightning-8"].path)), adapter_name="l8")
    fused.fuse_lora(adapter_names=["l8"])
    fused.unload_lora_weights()
    fused.scheduler = engine.edit.schedulers["lightning"]
    out = fused(
        [make_photo()],
        "make it warmer.",
        height=64,
        width=96,
        num_inference_steps=8,
        generator=torch.Generator("cpu").manual_seed(7),
        true_cfg_scale=1.0,
        vae_condition_pixels=entry.vae_condition_pixels,
        vl_condition_pixels=entry.vl_condition_pixels,
    ).images[0]
    diff = np.abs(np.asarray(out, dtype=np.int16) - adapter_out)
    assert diff.max() <= 2, f"fused and adapter outputs differ by up to {diff.max()}"


@pytest.fixture(scope="module")
def engine_2509(registry):
    """A pod's engine loading the tiny 2509 (``edit_model``); the session's ``engine`` holds the
    default, the tiny 2511 (``zero_cond_t``)."""
    from pipelines import EditEngine

    return EditEngine(registry.holding("qwen-image-edit-2509-tiny"))


@pytest.mark.parametrize("model", ["qwen-image-edit-tiny", "qwen-image-edit-2509-tiny"], ids=["2511", "2509"])
def test_cfg_norm_strength_one_equals_stock_pipeline(model, request, registry, photo_bytes, monkeypatch):
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as stock_module
    from diffusers import QwenImageEditPlusPipeline

    engine = request.getfixturevalue("engine" if model == registry.default_model else "engine_2509")
    assert engine.edit.name == model
    entry = registry.models[model]
    zero_cond_t = model == registry.default_model  # the 2511 layout; 2509 has none
    assert engine.edit.pipe.transformer.config.zero_cond_t is zero_cond_t
    # The stock module hard-codes the condition areas; give it the tiny set's declared ones.
    monkeypatch.setattr(stock_module, "VAE_IMAGE_SIZE", entry.vae_condition_pixels)
    monkeypatch.setattr(stock_module, "CONDITION_IMAGE_SIZE", entry.vl_condition_pixels)
    stock = QwenImageEditPlusPipeline.from_pretrained(registry.resolve(entry.path), local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    expected = stock(
        image=[make_photo()],
        prompt="make it warmer.",
        negative_prompt=" ",
        true_cfg_scale=4.0,
        num_inference_steps=3,
        height=64,
        width=96,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]

    ours = engine.run(spec(photo_bytes, lightning_steps=None, num_inference_steps=3, guidance_scale=4.0))
    assert np.array_equal(pixels(ours.images[0].data), np.asarray(expected, dtype=np.int16))
    plain = engine.run(
        spec(
            photo_bytes, lightning_steps=None, num_inference_steps=3, guidance_scale=4.0, cfg_norm_strength=0
        )
    )
    half = engine.run(
        spec(
            photo_bytes,
            lightning_steps=None,
            num_inference_steps=3,
            guidance_scale=4.0,
            cfg_norm_strength=0.5,
        )
    )
    assert len({ours.images[0].sha256, plain.images[0].sha256, half.images[0].sha256}) == 3


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_outputs_are_marked_ai_generated_in_each_format(engine, photo_bytes, fmt):
    out = engine.run(spec(photo_bytes, output_format=fmt)).images[0]
    assert is_ai_marked(out.data)
    assert Image.open(io.BytesIO(out.data)).format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert out.mime_type == f"image/{fmt}"


def test_progress_reports_every_stage_and_can_cancel(engine, photo_bytes):
    stages = []
    engine.run(spec(photo_bytes, lightning_steps=8, refine_strength=0.5), lambda s, i, n: stages.append(s))
    assert {"encode", "denoise", "refine", "postprocess"} <= set(stages)

    def cancel_at_third_step(stage, step, total):
        if stage == "denoise" and step == 3:
            raise JobCancelledError("cancelled by the user")

    with pytest.raises(JobCancelledError):
        engine.run(spec(photo_bytes), cancel_at_third_step)
    # the engine is still usable afterwards
    assert engine.run(spec(photo_bytes)).images


def test_nan_weights_fail_clearly_instead_of_a_black_picture(engine, photo_bytes):
    weight = engine.edit.pipe.transformer.proj_out.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(NonFiniteOutputError):
            engine.run(spec(photo_bytes))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert engine.run(spec(photo_bytes)).images


def test_result_carries_timings_and_a_reproducibility_record(engine, photo_bytes):
    result = engine.run(spec(photo_bytes))
    assert set(result.timings) >= {"encode", "denoise", "refine", "decode", "postprocess", "total"}
    assert result.timings["denoise"] > 0 and result.timings["refine"] == 0
    rec = result.record
    assert rec["seed"] == 7 and rec["steps"] == 8 and rec["model"] == "qwen-image-edit-tiny"
    assert any(k.endswith("transformer/diffusion_pytorch_model.safetensors") for k in rec["file_sha256"])
    assert len(rec["file_sha256"]["qwen-image-edit-tiny.loras.lightning-8"]) == 64
    assert {"torch", "diffusers", "transformers"} <= set(rec["versions"])


def test_output_size_follows_width_height_and_aspect_ratio(engine, photo_bytes):
    sized = engine.run(spec(photo_bytes, width=100, height=50)).images[0]
    assert (sized.width, sized.height) == (96, 48)  # snapped to the model's multiple of 16
    square = engine.run(spec(photo_bytes, aspect_ratio="1:1")).images[0]
    assert square.width == square.height == 1024  # the 1k area, as in production
    default = engine.run(spec(photo_bytes)).images[0]
    assert (default.width, default.height) == (96, 64)  # like the hosted APIs: the source's size
    big = engine.run(spec(encode(make_photo(1600, 1200)))).images[0]
    # larger than the model's native area: edited at that area, then brought back to the source size
    assert (big.width, big.height) == (1600, 1200)
    tall = engine.run(spec(encode(make_photo(40, 120)), height=240)).images[0]
    assert (tall.width, tall.height) == (80, 240)  # one side given: the other follows the source


def test_each_engine_runs_the_model_its_pod_holds_and_records_it(engine, engine_2509, photo_bytes):
    from pipelines import UnsupportedFeatureError

    older = engine_2509.run(spec(photo_bytes, model="qwen-image-edit-2509-tiny"))
    newer = engine.run(spec(photo_bytes))  # no model named: the registry's default
    assert (
        older.record["model"] == "qwen-image-edit-2509-tiny"
        and newer.record["model"] == "qwen-image-edit-tiny"
    )
    assert any(key.startswith("qwen-image-edit-2509-tiny/") for key in older.record["file_sha256"])
    assert older.images[0].sha256 != newer.images[0].sha256  # two models, two pictures
    with pytest.raises(UnsupportedFeatureError, match="holds qwen-image-edit-tiny"):
        engine.run(spec(photo_bytes, model="qwen-image-edit-2509-tiny"))
