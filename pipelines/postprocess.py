"""Picture-level operations after (and just before) the model: mask compositing, tone and
saturation adjustments, palette prompting and final resizing.

Everything works on PIL RGB images with float math in numpy; nothing here needs a GPU.
"""

from __future__ import annotations

import colorsys
import re

import numpy as np
from PIL import Image, ImageEnhance

from .errors import InvalidInputError

_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")

# Full-range BT.601 RGB -> YCbCr (offsets dropped: they cancel in a mean/std transfer).
_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_FROM_YCC = np.linalg.inv(_TO_YCC)
# Statistics are estimated from at most this many pixels; more changes nothing visible.
_STATS_PIXELS = 1_000_000


def _nearest_white_distance(white: np.ndarray, limit: int) -> np.ndarray:
    """Exact Euclidean distance from each pixel to the nearest True pixel, for distances <= limit.

    Pixels farther than ``limit`` get ``limit + 1``. Separable: the distance along each row first,
    then the best row within ``limit`` above or below (only those can be closer than ``limit``).
    """
    h, w = white.shape
    far = limit + 1
    cols = np.arange(w, dtype=np.int32)[None, :]
    # Column of the last white pixel at or left of x (and at or right of x), per row.
    left = np.maximum.accumulate(np.where(white, cols, -(far + w)), axis=1)
    right = np.minimum.accumulate(np.where(white, cols, 2 * w + far)[:, ::-1], axis=1)[:, ::-1]
    row_dist = np.minimum(np.minimum(cols - left, right - cols), far).astype(np.float32)
    row_sq = row_dist * row_dist
    best = row_sq.copy()
    for dy in range(1, limit + 1):
        step = np.float32(dy * dy)
        np.minimum(best[dy:], row_sq[:-dy] + step, out=best[dy:])
        np.minimum(best[:-dy], row_sq[dy:] + step, out=best[:-dy])
    return np.minimum(np.sqrt(best), np.float32(far))


def feathered_mask(mask: Image.Image, feather_px: int) -> np.ndarray:
    """Blend weights (float32 in [0, 1], shape HxW) for compositing the edit over the original.

    The mask is binarised at 128. White (edit) pixels get weight 1 so the model's edit shows in
    full; the weight then falls off smoothly over ``feather_px`` pixels into the black (keep)
    region, and is exactly 0 beyond that, so those pixels come back bit-exact from the original.
    ``feather_px`` 0 gives the hard binary mask.
    """
    if feather_px < 0:
        raise ValueError("feather_px must be >= 0")
    white = np.asarray(mask.convert("L")) >= 128
    alpha = white.astype(np.float32)
    if feather_px == 0 or not white.any():
        return alpha
    # Only the white pixels' bounding box grown by the feather width can change; masks are
    # usually small next to the picture, so this keeps large pictures cheap.
    rows, cols = np.nonzero(white.any(axis=1))[0], np.nonzero(white.any(axis=0))[0]
    top, bottom = max(rows[0] - feather_px, 0), min(rows[-1] + feather_px + 1, white.shape[0])
    lft, rgt = max(cols[0] - feather_px, 0), min(cols[-1] + feather_px + 1, white.shape[1])
    dist = _nearest_white_distance(white[top:bottom, lft:rgt], feather_px)
    t = np.clip(1.0 - dist / np.float32(feather_px + 1), 0.0, 1.0)
    # Smoothstep: no visible kink where the ramp meets the untouched region.
    t = t * t * (3.0 - 2.0 * t)
    t[dist > feather_px] = 0.0
    alpha[top:bottom, lft:rgt] = t
    return alpha.astype(np.float32)


def composite(edited: Image.Image, original: Image.Image, alpha: np.ndarray) -> Image.Image:
    """``edited * alpha + original * (1 - alpha)``, rounded; alpha 0 keeps the original exactly."""
    original = original.convert("RGB")
    edited = edited.convert("RGB")
    if edited.size != original.size:
        edited = edited.resize(original.size, Image.Resampling.LANCZOS)
    if alpha.shape != (original.height, original.width):
        raise ValueError(f"alpha is {alpha.shape}, expected {(original.height, original.width)}")
    orig = np.asarray(original, dtype=np.float32)
    edit = np.asarray(edited, dtype=np.float32)
    a = np.clip(alpha.astype(np.float32), 0.0, 1.0)[..., None]
    # Written as orig + (edit - orig) * a so that a == 0 gives orig and a == 1 gives edit exactly.
    out = orig + (edit - orig) * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    """Scale colourfulness: 0 = greyscale, 1 = unchanged, 2 = twice as saturated."""
    if factor < 0:
        raise InvalidInputError(f"saturation factor must be >= 0, got {factor:g}", field="product_saturation")
    img = img.convert("RGB")
    if factor == 1:
        return img.copy()
    return ImageEnhance.Color(img).enhance(factor)


def _ycc_stats(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    px = np.asarray(img.convert("RGB")).reshape(-1, 3)
    ycc = px[:: max(1, px.shape[0] // _STATS_PIXELS)].astype(np.float64) @ _TO_YCC.T
    return ycc.mean(axis=0), ycc.std(axis=0)


def tone_correct(output: Image.Image, reference: Image.Image, strength: float) -> Image.Image:
    """Pull the output's per-channel mean and contrast toward the reference's.

    Statistics are matched in YCbCr rather than RGB so that brightness and colour cast are
    corrected separately and a brightness fix does not tint the picture. ``strength`` 0 returns
    the output unchanged, 1 transfers the statistics fully.
    """
    if not 0.0 <= strength <= 1.0:
        raise InvalidInputError(
            f"tone_correction must be in [0, 1], got {strength:g}", field="tone_correction"
        )
    output = output.convert("RGB")
    if strength == 0:
        return output.copy()
    mu_o, sd_o = _ycc_stats(output)
    mu_r, sd_r = _ycc_stats(reference)
    # A channel flat to within one grey level has no contrast to scale; only its mean is moved.
    ratio = np.where(sd_o >= 1.0, sd_r / np.maximum(sd_o, 1.0), 1.0)
    # Per channel: ycc + strength * (matched - ycc), with matched = (ycc - mu_o) * ratio + mu_r.
    scale = 1.0 + strength * (ratio - 1.0)
    offset = strength * (mu_r - mu_o * ratio)
    # The whole correction is one affine map of RGB, which Pillow applies in C with rounding.
    matrix = _FROM_YCC @ np.diag(scale) @ _TO_YCC
    shift = _FROM_YCC @ offset
    return output.convert("RGB", tuple(float(v) for v in np.column_stack([matrix, shift]).ravel()))


def _hue_name(rgb: tuple[int, int, int]) -> str:
    """A coarse English colour name, enough for the model to know which colour is meant."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    deg = h * 360.0
    if v < 0.12:
        return "black"
    if s < 0.15:
        if v > 0.9:
            return "white"
        return "light grey" if v > 0.65 else "dark grey" if v < 0.35 else "grey"
    if deg < 10 or deg >= 345:
        name = "pink" if s < 0.45 and v > 0.8 else "red"
    elif deg < 20:
        name = "orange-red"
    elif deg < 45:
        name = "brown" if v < 0.6 else "orange"
    elif deg < 70:
        name = "olive" if v < 0.6 else "yellow"
    elif deg < 95:
        name = "yellow-green"
    elif deg < 150:
        name = "green"
    elif deg < 190:
        name = "cyan" if v >= 0.7 else "teal"
    elif deg < 250:
        name = "navy" if v < 0.55 else "blue"
    elif deg < 290:
        name = "purple"
    elif deg < 320:
        name = "purple" if v < 0.6 else "magenta"
    else:
        name = "pink"
    # navy, brown, olive, teal and pink already say how dark or light they are.
    if v < 0.55 and name in ("red", "orange-red", "yellow-green", "green", "magenta"):
        return f"dark {name}"
    if s < 0.45 and v > 0.8 and name not in ("pink", "navy", "brown", "olive", "teal"):
        return f"light {name}"
    return name


def _parse_hex(value: str) -> tuple[str, tuple[int, int, int]]:
    text = value.strip() if isinstance(value, str) else ""
    if not _HEX.match(text):
        raise InvalidInputError(
            f"palette colour {value!r} is not a hex colour like #1E90FF or #F53", field="palette"
        )
    digits = text[1:].upper()
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return f"#{digits}", (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def palette_prompt(palette: list[str]) -> str:
    """Validate hex colours and phrase them as a sentence to append to the edit prompt."""
    if not palette:
        return ""
    parts = []
    for value in palette:
        code, rgb = _parse_hex(value)
        parts.append(f"{code} ({_hue_name(rgb)})")
    return f"Use the brand colour palette: {', '.join(parts)}."


def upscale(img: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to exactly ``width`` x ``height`` with Lanczos (used to reach the requested size)."""
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if img.size == (width, height):
        return img.copy()
    return img.resize((width, height), Image.Resampling.LANCZOS)
