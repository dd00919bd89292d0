"""Mask compositing, tone/saturation adjustments, palette prompts (pipelines/postprocess.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.errors import InvalidInputError
from pipelines.postprocess import (
    adjust_saturation,
    composite,
    feathered_mask,
    palette_prompt,
    tone_correct,
    upscale,
)


def noise(width: int, height: int, seed: int, low: int = 0, high: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, high, (height, width, 3), dtype=np.uint8), "RGB")


def box_mask(width: int = 80, height: int = 60, box=(30, 20, 50, 40)) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def distance_to_box(width: int, height: int, box) -> np.ndarray:
    """Euclidean distance of every pixel to the (inclusive) rectangle ``box``."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[:height, :width]
    dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0)
    dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0)
    return np.sqrt(dx * dx + dy * dy)


# --- feathered_mask -------------------------------------------------------------------------


def test_feather_zero_is_the_mask_binarised_at_128():
    mask = Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8), "L")
    alpha = feathered_mask(mask, 0)
    assert alpha.dtype == np.float32
    assert alpha.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_feather_stays_within_its_width_of_the_white_area():
    box = (30, 20, 50, 40)
    alpha = feathered_mask(box_mask(box=box), 8)
    dist = distance_to_box(80, 60, box)
    assert alpha.shape == (60, 80)
    assert np.all(alpha[dist == 0] == 1.0)  # the edit shows in full where the mask is white
    assert np.all(alpha[dist > 8] == 0.0)  # and not at all beyond the feather
    assert np.all((alpha[(dist > 0) & (dist < 8)] > 0) & (alpha[(dist > 0) & (dist < 8)] < 1))
    row = alpha[30, 51:60]
    assert np.all(np.diff(row) <= 0) and row[0] > row[-1]


def test_feather_zero_and_eight_differ_at_the_boundary():
    hard, soft = feathered_mask(box_mask(), 0), feathered_mask(box_mask(), 8)
    assert hard[30, 52] == 0.0 and 0.0 < soft[30, 52] < 1.0
    assert hard[30, 40] == soft[30, 40] == 1.0


def test_empty_mask_edits_nothing():
    assert not feathered_mask(Image.new("L", (20, 10), 0), 8).any()


# --- composite ------------------------------------------------------------------------------


def test_composite_keeps_pixels_outside_the_feather_bit_exact():
    box = (30, 20, 50, 40)
    original, edited = noise(80, 60, seed=1), noise(80, 60, seed=2)
    result = np.asarray(composite(edited, original, feathered_mask(box_mask(box=box), 8)))
    dist = distance_to_box(80, 60, box)
    outside, inside = dist > 8, dist == 0
    assert np.array_equal(result[outside], np.asarray(original)[outside])
    assert np.array_equal(result[inside], np.asarray(edited)[inside])
    band = (dist > 0) & (dist <= 8)
    assert not np.array_equal(result[band], np.asarray(original)[band])


def test_composite_resizes_a_smaller_edit_to_the_original():
    original = Image.new("RGB", (80, 60), (0, 0, 0))
    edited = Image.new("RGB", (40, 30), (200, 100, 50))
    result = composite(edited, original, feathered_mask(box_mask(), 0))
    assert result.size == (80, 60)
    assert result.getpixel((40, 30)) == (200, 100, 50)
    assert result.getpixel((5, 5)) == (0, 0, 0)


def test_composite_rejects_alpha_of_the_wrong_shape():
    with pytest.raises(ValueError):
        composite(noise(8, 8, 0), noise(8, 8, 1), np.ones((4, 4), dtype=np.float32))


# --- saturation -----------------------------------------------------------------------------


def test_saturation_one_is_identity():
    img = noise(32, 32, seed=3)
    assert np.array_equal(np.asarray(adjust_saturation(img, 1.0)), np.asarray(img))


def test_saturation_zero_is_grey_and_two_is_more_colourful():
    img = noise(32, 32, seed=4)
    grey = np.asarray(adjust_saturation(img, 0.0)).astype(int)
    assert np.abs(grey.max(axis=2) - grey.min(axis=2)).max() <= 1

    def spread(im: Image.Image) -> float:
        arr = np.asarray(im).astype(int)
        return float((arr.max(axis=2) - arr.min(axis=2)).mean())

    assert spread(adjust_saturation(img, 2.0)) > spread(img) * 1.2


def test_negative_saturation_is_refused():
    with pytest.raises(InvalidInputError):
        adjust_saturation(noise(4, 4, 0), -0.5)


# --- tone correction ------------------------------------------------------------------------


def test_tone_correct_strength_zero_is_identity():
    img = noise(40, 30, seed=5, low=0, high=120)
    out = tone_correct(img, noise(40, 30, seed=6, low=100, high=256), 0.0)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_tone_correct_moves_the_statistics_toward_the_reference():
    dark = noise(64, 48, seed=7, low=20, high=100)
    bright = noise(64, 48, seed=8, low=120, high=250)
    full = np.asarray(tone_correct(dark, bright, 1.0)).astype(float)
    half = np.asarray(tone_correct(dark, bright, 0.5)).astype(float)
    d, b = np.asarray(dark).astype(float), np.asarray(bright).astype(float)
    assert abs(full.mean() - b.mean()) < 2.0
    assert abs(full.std() - b.std()) < 3.0
    assert d.mean() + 20 < half.mean() < b.mean() - 20


def test_tone_correct_removes_a_colour_cast():
    neutral = noise(48, 48, seed=9, low=60, high=200)
    cast = np.asarray(neutral).astype(int)
    cast[..., 2] = np.clip(cast[..., 2] + 40, 0, 255)  # a blue cast
    fixed = np.asarray(tone_correct(Image.fromarray(cast.astype(np.uint8)), neutral, 1.0)).astype(float)
    blue_excess = fixed[..., 2].mean() - fixed[..., 0].mean()
    assert abs(blue_excess) < 5


def test_tone_correct_strength_out_of_range_is_refused():
    with pytest.raises(InvalidInputError):
        tone_correct(noise(4, 4, 0), noise(4, 4, 1), 1.5)


# --- palette --------------------------------------------------------------------------------


def test_palette_prompt_names_each_colour():
    assert palette_prompt(["#FF5733", "#1e90ff"]) == (
        "Use the brand colour palette: #FF5733 (orange-red), #1E90FF (blue)."
    )


@pytest.mark.parametrize(
    "code, name",
    [
        ("#fff", "white"),
        ("#000", "black"),
        ("#808080", "grey"),
        ("#00ff00", "green"),
        ("#ffd700", "yellow"),
        ("#8b4513", "brown"),
        ("#800080", "purple"),
        ("#ffc0cb", "pink"),
        ("#000080", "navy"),
        ("#dc143c", "red"),
        ("#8b0000", "dark red"),
        ("#add8e6", "light blue"),
    ],
)
def test_palette_hue_names(code, name):
    assert palette_prompt([code]).endswith(f"({name}).")


def test_short_hex_is_expanded():
    assert "#FF5533" in palette_prompt(["#f53"])


@pytest.mark.parametrize("bad", ["#12345", "FF5733", "#GG0000", "red", "#1234567", ""])
def test_bad_palette_colour_is_named_in_the_error(bad):
    with pytest.raises(InvalidInputError) as err:
        palette_prompt(["#FFFFFF", bad])
    assert err.value.field == "palette"
    assert repr(bad) in err.value.message


def test_empty_palette_adds_nothing():
    assert palette_prompt([]) == ""


# --- upscale --------------------------------------------------------------------------------


def test_upscale_reaches_the_exact_size():
    img = noise(30, 20, seed=10)
    assert upscale(img, 61, 41).size == (61, 41)
    assert np.array_equal(np.asarray(upscale(img, 30, 20)), np.asarray(img))
