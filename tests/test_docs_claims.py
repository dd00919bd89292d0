"""What the contract guides claim about behaviour is what the code does (issue 13's two wrong claims)."""

from __future__ import annotations

from pathlib import Path

from pipelines import EditSpec
from tests.conftest import encode, make_photo

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_depicta_guide_says_money_is_converted_with_the_configured_rate():
    guide = (DOCS / "contracts-fashn-depicta.md").read_text()
    assert "no currency conversion" not in guide
    assert "RETOUCH_EUR_PER_USD" in guide  # the rate tests/test_contract_depicta.py checks (0.5)


def test_openai_guide_states_the_preview_size_the_engine_makes(engine, registry):
    """A source larger than the `1k` area is edited at that area: previews are half of that, not
    half of the output. The guide's tiny-set example is measured here."""
    side = 512
    assert side * side > registry.resolutions.area("1k")
    seen = []
    result = engine.run(
        EditSpec(
            prompt="make it night",
            images=[encode(make_photo(side, side))],
            seed=3,
            lightning_steps=4,
            output_format="png",
            partial_images=1,
        ),
        on_preview=lambda image, partial, shown: seen.append(shown),
    )
    preview = seen[0]
    assert (result.images[0].width, result.images[0].height) == (side, side)
    guide = " ".join((DOCS / "contracts-openai.md").read_text().split())
    assert "half size" not in guide
    assert "the same output on the tiny set" in guide
    assert f"has {preview.width}x{preview.height} ones" in guide, (preview.width, preview.height)
