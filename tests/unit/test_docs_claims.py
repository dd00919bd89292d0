"""What the contract guides claim about behaviour is what the code does (issue 13's two wrong claims)."""

from __future__ import annotations

from pathlib import Path

from pipelines import EditSpec
from tests.conftest import encode, make_photo

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_depicta_guide_says_money_is_converted_with_the_configured_rate():
    guide = (DOCS / "contracts-fashn-depicta.md").read_text()
    assert "no currency conversion" not in guide
    assert "RETOUCH_EUR_PER_USD" in guide  # the rate tests/contracts/depicta/test_depicta.py checks (0.5)


def _preview_size(engine, side: int) -> tuple[int, int]:
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
    assert (result.images[0].width, result.images[0].height) == (side, side)
    return seen[0].width, seen[0].height


def test_openai_guide_states_the_preview_sizes_the_engine_makes(engine, registry):
    """Previews are half the size the model edits at: half the output up to the `1k` area, half of
    that area above it. The guide's two examples are measured here, on the demo set."""
    assert registry.resolutions.area("1k") == 1024 * 1024  # the guide's examples assume it
    guide = " ".join((DOCS / "contracts-openai.md").read_text().split())
    assert "half size" not in guide
    small, large = _preview_size(engine, 512), _preview_size(engine, 1536)
    assert f"a 512x512 output has {small[0]}x{small[1]} previews" in guide, small
    assert f"a 1536x1536 one is edited at 1024x1024 and has {large[0]}x{large[1]} previews" in guide, large
