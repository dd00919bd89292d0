"""Prompt enhancement (``qwen-image-edit-pe``) and streamed previews, on the real tiny pipeline.

The tiny Qwen2.5-VL has random weights, so what it writes is gibberish; these tests check what
holds for any weights: the real ``generate`` runs, greedily (repeatable), within its bounds, its
text is cleaned or replaced by the user's prompt, and the edit really runs with the rewrite.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines import EditSpec, InvalidInputError
from pipelines.engine import preview_steps
from pipelines.enhance import MAX_CHARS, MIN_CHARS, clean_generated, enhance_prompt
from tests.conftest import encode, make_photo

PROMPT = "make the sky purple"


def _enhance(engine, **kwargs):
    return enhance_prompt(
        engine.edit.pipe,
        PROMPT,
        [make_photo()],
        vl_condition_pixels=engine.edit.entry.vl_condition_pixels,
        **kwargs,
    )


def test_enhance_generates_with_the_pipelines_own_vlm_greedily(engine):
    first = _enhance(engine, max_new_tokens=24)
    assert first == _enhance(engine, max_new_tokens=24)  # greedy: the same rewrite every time
    assert 0 < first.generated_tokens <= 24
    assert not first.used_fallback and first.text != PROMPT and len(first.text) >= MIN_CHARS
    assert "<|" not in first.text and "\ufffd" not in first.text and "\n" not in first.text


def test_enhance_falls_back_to_the_prompt_when_nothing_usable_is_written(engine):
    short = _enhance(engine, max_new_tokens=1)
    assert short.generated_tokens == 1
    assert short.used_fallback and short.text == PROMPT


def test_enhance_output_is_cleaned_and_bounded():
    assert clean_generated('<|im_start|>\n  Instruction: "Paint\x07 the\tsky <|im_end|>"') == (
        "Paint the sky"
    )
    assert clean_generated("ab\ufffdcd") == "ab cd"
    long = clean_generated("word " * 1000)
    assert len(long) <= MAX_CHARS and long.endswith("word")
    assert clean_generated("<|endoftext|> \n\t") == ""


def test_engine_edit_runs_with_the_revised_prompt(engine):
    photo = encode(make_photo())
    base = dict(images=[photo], seed=5, lightning_steps=4, output_format="png")
    enhanced = engine.run(EditSpec(prompt=PROMPT, enhance_prompt=True, **base))
    revised = enhanced.revised_prompt
    assert revised and revised != PROMPT and enhanced.record["revised_prompt"] == revised
    assert revised == _enhance(engine).text  # what enhance_prompt writes with the default bounds
    assert enhanced.timings["enhance"] > 0
    # The picture is the one the rewritten instruction gives, not the original's.
    as_revised = engine.run(EditSpec(prompt=revised, **base))
    as_sent = engine.run(EditSpec(prompt=PROMPT, **base))
    assert as_revised.revised_prompt is None
    assert enhanced.images[0].sha256 == as_revised.images[0].sha256 != as_sent.images[0].sha256


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [(4, 3, [1, 2, 3]), (8, 3, [2, 4, 6]), (8, 1, [4]), (8, 0, []), (2, 3, [1]), (1, 2, [])],
)
def test_preview_steps_are_evenly_spaced_and_never_the_last(total, count, expected):
    assert preview_steps(total, count) == expected


def test_engine_previews_are_decoded_part_way_and_leave_the_result_unchanged(engine):
    photo = encode(make_photo(96, 64))
    base = dict(images=[photo], seed=9, lightning_steps=4, output_format="png", num_images=2)
    seen = []
    with_previews = engine.run(
        EditSpec(prompt=PROMPT, partial_images=3, **base),
        on_preview=lambda image, partial, shown: seen.append((image, partial, shown)),
    )
    assert [(i, p) for i, p, _ in seen] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for _, _, shown in seen:
        picture = Image.open(io.BytesIO(shown.data))
        assert picture.format == "PNG" and shown.mime_type == "image/png"
        # half the output's size: a quarter of the final decode's work
        assert picture.size == (shown.width, shown.height) == (48, 32)
    assert len({shown.sha256 for _, _, shown in seen}) == len(seen)  # each step's estimate differs
    without = engine.run(EditSpec(prompt=PROMPT, **base))
    assert [o.sha256 for o in with_previews.images] == [o.sha256 for o in without.images]


def test_engine_previews_follow_the_mask(engine):
    """Outside the mask a preview shows the input, whatever the seed; inside it shows the edit."""
    photo = make_photo(256, 64)  # wide, so the kept side is several latent pixels from the mask
    mask = Image.new("L", (256, 64), 0)
    mask.paste(255, (0, 0, 128, 64))  # edit the left half only

    def preview(seed: int) -> np.ndarray:
        seen = []
        spec = EditSpec(
            prompt=PROMPT,
            images=[encode(photo)],
            mask=encode(mask),
            seed=seed,
            lightning_steps=4,
            partial_images=1,
        )
        engine.run(spec, on_preview=lambda image, partial, shown: seen.append(shown))
        assert len(seen) == 1
        return np.asarray(Image.open(io.BytesIO(seen[0].data)).convert("RGB"), dtype=np.int16)

    a, b = preview(1), preview(2)
    assert a.shape == (32, 128, 3)
    # Far from the mask's edge (the tiny VAE decoder's attention still lets a little through).
    kept = np.abs(a[:, 96:] - b[:, 96:]).mean()
    edited = np.abs(a[:, :32] - b[:, :32]).mean()
    # measured on the tiny models: 3.2x (the 2509 layout), 2.7x (2511's zero_cond_t, the default)
    assert edited > 2 * kept


def test_engine_refuses_more_than_three_partial_images(engine):
    spec = EditSpec(prompt=PROMPT, images=[encode(make_photo())], partial_images=4)
    with pytest.raises(InvalidInputError, match="partial_images"):
        engine.run(spec, on_preview=lambda *a: None)
