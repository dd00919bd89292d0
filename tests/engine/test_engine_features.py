"""Masks, refinement, resolutions, references, colour controls, modes and every bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines import EditSpec, ImageDecodeError, InvalidInputError, ReferenceImage, UnsupportedFeatureError
from pipelines.registry import Resolutions
from tests.conftest import encode, make_photo


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def spec(photo: bytes, **kw) -> EditSpec:
    kw.setdefault("output_format", "png")
    kw.setdefault("seed", 3)
    return EditSpec(prompt=kw.pop("prompt", "make it warmer"), images=[photo], **kw)


def left_half_mask(width=96, height=64) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    return encode(mask)


@pytest.mark.parametrize("feather", [0, 8])
def test_pixels_outside_the_feathered_mask_are_exactly_the_input(engine, photo_bytes, feather):
    out = engine.run(spec(photo_bytes, mask=left_half_mask(), mask_feather_px=feather)).images[0]
    original = np.asarray(make_photo(), dtype=np.int16)
    result = pixels(out.data)
    assert result.shape == original.shape  # a masked edit keeps the input's size
    keep = slice(48 + feather + 1, None)  # right half, beyond the feather ramp
    assert np.array_equal(result[:, keep], original[:, keep])
    assert np.abs(result[:, :40] - original[:, :40]).mean() > 1  # the white half was edited


def test_mask_of_the_wrong_size_names_both_sizes(engine, photo_bytes):
    with pytest.raises(InvalidInputError) as err:
        engine.run(spec(photo_bytes, mask=left_half_mask(50, 40)))
    assert "50x40" in str(err.value) and "96x64" in str(err.value)


def test_refine_zero_is_skipped_and_positive_changes_the_picture(engine, photo_bytes):
    plain = engine.run(spec(photo_bytes, refine_strength=0))
    refined = engine.run(spec(photo_bytes, refine_strength=0.5))
    assert plain.record["refiner"] is None and plain.timings["refine"] == 0
    assert refined.record["refiner"] == "z-image-turbo-tiny" and refined.timings["refine"] > 0
    assert np.abs(pixels(plain.images[0].data) - pixels(refined.images[0].data)).mean() > 1


def test_text_and_product_hints_protect_detail_from_refinement(engine, photo_bytes):
    result = engine.run(spec(photo_bytes, refine_strength=0.8, has_text=True))
    assert result.record["refine_strength"] == pytest.approx(0.15)
    assert any("has_text" in w for w in result.warnings)
    product = engine.run(spec(photo_bytes, refine_strength=0.8, has_product=True))
    assert product.record["refine_strength"] == pytest.approx(0.2)


@pytest.mark.parametrize(("preset", "side"), [("2k", 256), ("4k", 512)])
def test_large_resolutions_upscale_and_refine(engine, preset, side, monkeypatch):
    # The production areas scaled down 8x a side: the mechanism, not a 16 MP refine on a CPU.
    small = Resolutions.model_validate({"1k": 128 * 128, "2k": 256 * 256, "4k": 512 * 512})
    monkeypatch.setattr(engine, "registry", engine.registry.model_copy(update={"resolutions": small}))
    square = encode(make_photo(64, 64))
    result = engine.run(spec(square, resolution=preset))
    image = result.images[0]
    assert (image.width, image.height) == (side, side)
    assert result.record["edit_size"] == [128, 128]
    assert result.record["refine_strength"] == pytest.approx(0.3)
    assert result.timings["refine"] > 0


def test_reference_images_change_the_edit(engine, photo_bytes):
    ref = encode(make_photo(64, 64, seed=5).rotate(90))
    without = engine.run(spec(photo_bytes)).images[0]
    with_ref = engine.run(
        spec(photo_bytes, references=[ReferenceImage(ref, "a beach at sunset for the background")])
    ).images[0]
    assert without.sha256 != with_ref.sha256


def test_product_saturation_changes_the_edit_only_with_a_second_image(engine, photo_bytes):
    two = [photo_bytes, encode(make_photo(64, 64, seed=9))]
    base = engine.run(EditSpec(prompt="put the product in her hand", images=two, seed=1, output_format="png"))
    grey = engine.run(
        EditSpec(
            prompt="put the product in her hand",
            images=two,
            seed=1,
            output_format="png",
            product_saturation=0.0,
        )
    )
    assert base.images[0].sha256 != grey.images[0].sha256
    single = engine.run(spec(photo_bytes, product_saturation=0.0))
    assert any("product_saturation" in w for w in single.warnings)


def test_tone_correction_pulls_colours_toward_the_input(engine, photo_bytes):
    original = np.asarray(make_photo(), dtype=np.float64)
    plain = pixels(engine.run(spec(photo_bytes)).images[0].data)
    toned = pixels(engine.run(spec(photo_bytes, tone_correction=1.0)).images[0].data)
    gap_plain = np.abs(plain.reshape(-1, 3).mean(0) - original.reshape(-1, 3).mean(0)).sum()
    gap_toned = np.abs(toned.reshape(-1, 3).mean(0) - original.reshape(-1, 3).mean(0)).sum()
    assert gap_toned < gap_plain


def test_palette_and_mode_steer_the_edit(engine, photo_bytes):
    base = engine.run(spec(photo_bytes)).images[0]
    branded = engine.run(spec(photo_bytes, palette=["#FF5733", "#1e90ff"])).images[0]
    anime = engine.run(spec(photo_bytes, mode="anime"))
    assert len({base.sha256, branded.sha256, anime.images[0].sha256}) == 3
    assert anime.record["loras"] == ["lightning-8", "anime-style"]


BAD_INPUTS = [
    ({"num_inference_steps": 0, "lightning_steps": None}, "num_inference_steps", InvalidInputError),
    ({"num_inference_steps": 101, "lightning_steps": None}, "num_inference_steps", InvalidInputError),
    ({"guidance_scale": 20.5, "lightning_steps": None}, "guidance_scale", InvalidInputError),
    ({"cfg_norm_strength": 1.5}, "cfg_norm_strength", InvalidInputError),
    ({"refine_strength": -0.1}, "refine_strength", InvalidInputError),
    ({"num_images": 5}, "num_images", InvalidInputError),
    ({"seed": 2**32}, "seed", InvalidInputError),
    ({"width": 4096}, "width", InvalidInputError),
    ({"aspect_ratio": "wide"}, "aspect_ratio", InvalidInputError),
    ({"lightning_steps": 6}, "lightning_steps", UnsupportedFeatureError),
    ({"mode": "watercolour"}, "mode", UnsupportedFeatureError),
    ({"palette": ["#12345G"]}, "palette", InvalidInputError),
    ({"output_format": "gif"}, "output_format", InvalidInputError),
    ({"prompt": "x" * 4001}, "prompt", InvalidInputError),
    ({"prompt": "   "}, "prompt", InvalidInputError),
]


@pytest.mark.parametrize(("changes", "field", "error"), BAD_INPUTS)
def test_bad_inputs_give_a_clear_error_naming_the_field(engine, photo_bytes, changes, field, error):
    with pytest.raises(error) as err:
        engine.run(spec(photo_bytes, **changes))
    assert err.value.field == field
    assert err.value.message and "Traceback" not in err.value.message


def test_unreadable_and_too_many_images_are_refused(engine, photo_bytes):
    with pytest.raises(ImageDecodeError) as err:
        engine.run(EditSpec(prompt="x", images=[photo_bytes, b"not a picture"]))
    assert "images[1]" in err.value.message
    with pytest.raises(InvalidInputError, match="at most 3"):
        engine.run(EditSpec(prompt="x", images=[photo_bytes] * 4))
    with pytest.raises(InvalidInputError, match="at least one"):
        engine.run(EditSpec(prompt="x", images=[]))
