"""Safe decoding of untrusted pictures and AI-marked encoding (pipelines/images.py)."""

from __future__ import annotations

import io
import struct
import time
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from pipelines.errors import EngineError, ImageDecodeError, ImageTooLargeError, InvalidInputError
from pipelines.images import (
    MIME_TYPES,
    decode_image,
    decode_mask,
    encode_image,
    is_ai_marked,
    sha256_hex,
)

CAP = 4_000_000
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but whose pixel data is garbage."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not zlib") + chunk(b"IEND", b"")


def near(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


# --- pixel cap ------------------------------------------------------------------------------


def test_over_cap_header_is_refused_before_decoding_with_size_and_cap():
    data = png_header_only(9000, 9000)
    with pytest.raises(ImageTooLargeError) as err:
        decode_image(data, max_pixels=40_000_000, what="images[1]")
    # The IDAT is garbage, so reaching this error (not a decode error) proves no pixel was read.
    assert err.value.message == "images[1] is 9000x9000 (81.0 MP), over the 40.0 MP limit"
    assert err.value.field == "images[1]"


def test_decompression_bomb_header_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as err:
        decode_image(png_header_only(20000, 20000), max_pixels=40_000_000)
    assert time.perf_counter() - start < 1.0
    assert "400.0 MP" in err.value.message and "40.0 MP limit" in err.value.message


def test_picture_at_the_cap_is_accepted():
    img = decode_image(encoded(Image.new("RGB", (100, 40), RED), "PNG"), max_pixels=4000)
    assert img.size == (100, 40)


# --- unreadable input -----------------------------------------------------------------------


def test_truncated_jpeg_is_a_decode_error():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG", quality=95)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: len(data) // 2], max_pixels=CAP, what="images[0]")
    assert err.value.message == "images[0] could not be read as a picture: the file is truncated"
    assert err.value.field == "images[0]"


def test_random_bytes_are_a_decode_error_without_internals():
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, max_pixels=CAP, what="mask")
    assert err.value.message.startswith("mask could not be read as a picture")
    assert "Traceback" not in err.value.message and "/" not in err.value.message


def test_formats_outside_the_allow_list_are_refused():
    # EPS would be rendered by Ghostscript; PPM is harmless but also not accepted.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    ppm = encoded(Image.new("RGB", (4, 4), RED), "PPM")
    for data in (eps, ppm):
        with pytest.raises(ImageDecodeError, match="not a supported format"):
            decode_image(data, max_pixels=CAP)


# --- mode conversion ------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    img = decode_image(encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), max_pixels=CAP)
    assert img.mode == "RGB"
    assert near(img.getpixel((8, 8)), RED, tol=20)


def test_16bit_png_is_scaled_not_clipped():
    values = np.array([[0, 8192, 32768, 65535]], dtype=np.uint16)
    img = decode_image(encoded(Image.fromarray(values), "PNG"), max_pixels=CAP)
    assert img.mode == "RGB"
    # Clipping (Pillow's plain convert) would turn every value above 255 into white.
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 32, 128, 255]


def test_palette_png_transparency_becomes_white():
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0] + list(BLUE) + [0] * 762)
    pal.paste(0, (0, 0, 4, 8))
    img = decode_image(encoded(pal, "PNG", transparency=0), max_pixels=CAP)
    assert img.getpixel((1, 1)) == WHITE
    assert img.getpixel((6, 6)) == BLUE


def test_rgba_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    img = decode_image(encoded(rgba, "PNG"), max_pixels=CAP)
    assert img.getpixel((0, 0)) == WHITE
    assert near(img.getpixel((2, 1)), (255, 127, 127), tol=1)


@pytest.mark.parametrize("mode", ["1", "L", "LA"])
def test_grey_modes_become_rgb(mode):
    img = decode_image(
        encoded(Image.new(mode, (3, 3), 255 if mode != "LA" else (255, 255)), "PNG"), max_pixels=CAP
    )
    assert img.mode == "RGB" and img.getpixel((1, 1)) == WHITE


def test_embedded_srgb_profile_keeps_colours():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = decode_image(
        encoded(Image.new("RGB", (4, 4), (30, 140, 220)), "PNG", icc_profile=icc), max_pixels=CAP
    )
    assert near(img.getpixel((0, 0)), (30, 140, 220), tol=2)


def test_cielab_tiff_becomes_rgb():
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    stored = ImageCms.profileToProfile(Image.new("RGB", (4, 4), (200, 30, 30)), srgb, lab, outputMode="LAB")
    img = decode_image(encoded(stored, "TIFF"), max_pixels=CAP)
    assert img.mode == "RGB" and near(img.getpixel((1, 1)), (200, 30, 30), tol=4)


def test_phone_mpo_gives_its_main_picture():
    extra = Image.new("RGB", (20, 10), BLUE)
    data = encoded(Image.new("RGB", (20, 10), RED), "MPO", save_all=True, append_images=[extra])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert near(decode_image(data, max_pixels=CAP).getpixel((5, 5)), RED)


def test_exif_rotated_jpeg_comes_out_upright():
    # Stored landscape with a red top-left corner; orientation 6 = the viewer rotates 90° clockwise.
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    img = decode_image(encoded(stored, "JPEG", quality=95, exif=exif.tobytes()), max_pixels=CAP)
    assert img.size == (20, 40)
    assert near(img.getpixel((15, 4)), RED)  # the red corner is now top-right
    assert near(img.getpixel((4, 4)), BLUE)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_picture_gives_its_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, (0, 255, 0), BLUE)]
    data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = decode_image(data, max_pixels=CAP)
    assert img.mode == "RGB" and near(img.getpixel((8, 8)), RED)


# --- masks ----------------------------------------------------------------------------------


def test_mask_size_mismatch_names_both_sizes():
    with pytest.raises(InvalidInputError) as err:
        decode_mask(encoded(Image.new("L", (64, 48)), "PNG"), (64, 64), max_pixels=CAP)
    assert err.value.message == "mask is 64x48 but the image is 64x64"
    assert err.value.field == "mask"


def test_opaque_mask_is_read_by_luminance():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.paste((255, 255, 255, 255), (0, 0, 4, 8))
    mask = decode_mask(encoded(rgba, "PNG"), (8, 8), max_pixels=CAP)
    assert mask.mode == "L"
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((6, 6)) == 0


def test_transparent_mask_areas_are_edited_openai_style():
    # Opaque white on the left would be "edit" by luminance; with transparency only alpha counts.
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    rgba.paste((0, 0, 0, 0), (4, 0, 8, 8))
    mask = decode_mask(encoded(rgba, "PNG"), (8, 8), max_pixels=CAP)
    assert mask.getpixel((1, 1)) == 0 and mask.getpixel((6, 6)) == 255


def test_mask_over_cap_is_refused():
    with pytest.raises(ImageTooLargeError) as err:
        decode_mask(png_header_only(3000, 3000), (3000, 3000), max_pixels=CAP)
    assert err.value.field == "mask"


# --- encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_outputs_are_marked_as_ai_generated(fmt):
    picture = Image.new("RGB", (32, 24), (10, 200, 30))
    data = encode_image(picture, fmt, 85, extra_xmp={"seed": "42", "note": "a < b & c"})
    assert is_ai_marked(data)
    back = Image.open(io.BytesIO(data))
    assert back.format == MIME_TYPES[fmt].split("/")[1].upper()
    assert back.size == (32, 24)
    xmp = back.info.get("xmp") or back.info["XML:com.adobe.xmp"]
    root = ET.fromstring(xmp)  # well-formed even with characters that need escaping
    assert [e.text for e in root.iter("{urn:retouch:xmp:1.0#}note")] == ["a < b & c"]
    assert near(decode_image(data, max_pixels=CAP).getpixel((16, 12)), (10, 200, 30), tol=6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_plain_pictures_are_not_marked(fmt):
    assert not is_ai_marked(encoded(Image.new("RGB", (8, 8)), fmt))


def test_is_ai_marked_on_garbage_is_false():
    assert not is_ai_marked(b"\x89PNG\r\n\x1a\n garbage")


def test_png_output_is_lossless():
    noise = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(noise), "png")
    assert np.array_equal(np.asarray(decode_image(data, max_pixels=CAP)), noise)


def test_sha256_hex():
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- fuzz -----------------------------------------------------------------------------------

_SEEDS = [
    encoded(Image.new("RGB", (12, 8), (200, 30, 30)), "PNG"),
    encoded(Image.new("RGB", (12, 8), (200, 30, 30)), "JPEG"),
    encoded(Image.new("P", (12, 8), 3), "GIF"),
    encoded(Image.new("RGBA", (12, 8), (1, 2, 3, 4)), "WEBP"),
]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=512), mutated()))
def test_decode_never_raises_anything_but_engine_errors(data):
    try:
        img = decode_image(data, max_pixels=CAP)
    except EngineError:
        return
    assert img.mode == "RGB" and img.width * img.height <= CAP
