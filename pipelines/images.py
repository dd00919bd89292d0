"""Safe decoding of input pictures and AI-marked encoding of output pictures.

Input bytes come from whoever sent the job, so decoding is defensive: the pixel cap is checked
from the header before any pixel is decoded, only a fixed set of raster formats is accepted
(never EPS, which would run Ghostscript), and every Pillow failure becomes an ``EngineError``
whose message names the field, never a path or a traceback.

Outputs carry an XMP packet with the IPTC digital source type "trainedAlgorithmicMedia", the
marker that C2PA-aware tools and the EU AI Act transparency guidance look for.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from typing import Literal
from xml.sax.saxutils import escape

import numpy as np
import PIL.TiffImagePlugin  # noqa: F401  (registers TIFF for Image.open(formats=...))
import PIL.WebPImagePlugin  # noqa: F401  (registers WebP likewise)
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from .errors import EngineError, ImageDecodeError, ImageTooLargeError, InvalidInputError
from .mime import MIME_TYPES  # re-exported: the engine and its tests read it from here
from .spec import OutputImage

# TIFF is common for print/CMYK assets. Phone MPO files open through the JPEG entry.
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

AI_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
RETOUCH_XMP_NS = "urn:retouch:xmp:1.0#"
_XMP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# Accepts the attribute form, the element form and the rdf:resource form of the property, and
# also the "compositeWith..." value that other editors write for partly generated pictures.
_AI_MARK = re.compile(
    rb"DigitalSourceType(?:\s*=\s*[\"']|[^<>]*>\s*|[^<>]*?resource\s*=\s*[\"'])"
    rb"http://cv\.iptc\.org/newscodes/digitalsourcetype/(?:compositeWith)?[Tt]rainedAlgorithmicMedia"
)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def _open(data: bytes, *, max_pixels: int, what: str) -> Image.Image:
    """Open ``data`` and load its first frame, refusing it by header size first."""
    try:
        # Our cap is the authority; Pillow's own (global, ~89 MP) warning would be noise here.
        # catch_warnings is process-wide, so a concurrent decode can at worst log that warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow refuses pictures over twice its global limit before we see the size; its
        # message still carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" {_megapixels(int(found.group(1)))}," if found else ""
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ImageTooLargeError(f"{what} is{size} over the {_megapixels(limit)} limit", field=what) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _decode_error(what, exc) from None

    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} ({_megapixels(width * height)}), "
            f"over the {_megapixels(max_pixels)} limit",
            field=what,
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{what} could not be read as a picture: it has no pixels", field=what)
    try:
        # Animated GIF/WebP/APNG: Image.open is positioned on frame 0, so load() decodes only it.
        img.load()
        # EXIF orientation is applied here so that the mask, the model and the composite all see
        # the picture the way the sender's viewer showed it.
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as exc:
        raise _decode_error(what, exc) from None


def _decode_error(what: str, exc: Exception) -> EngineError:
    if isinstance(exc, Image.UnidentifiedImageError):
        reason = "not a supported format (PNG, JPEG, WebP, GIF, BMP or TIFF)"
    elif isinstance(exc, Image.DecompressionBombError):
        return ImageTooLargeError(f"{what} is too large to decode safely", field=what)
    elif "truncated" in str(exc).lower():
        reason = "the file is truncated"
    else:
        # Pillow messages can contain internals; the exception class is enough to triage.
        reason = f"the data is corrupt ({type(exc).__name__})"
    return ImageDecodeError(f"{what} could not be read as a picture: {reason}", field=what)


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grey (I;16, I, F) to L. Pillow's own convert clips instead of scaling."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32) / 257.0
    else:
        arr = np.asarray(img.convert("F") if img.mode != "F" else img, dtype=np.float32)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        # The bit depth is not recorded for I/F images; infer the range the values were written in.
        if img.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255.0:
            arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _icc_to_srgb(img: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile (Display P3 phone photos, CMYK print files) if it is usable."""
    icc = img.info.get("icc_profile")
    if img.mode == "LAB":
        # Pillow has no plain LAB -> RGB conversion; CIELab TIFFs need the colour engine.
        return ImageCms.profileToProfile(
            img, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except Exception:
        # A broken or mismatched profile is common in the wild; plain conversion is still useful.
        return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _to_rgb(img: Image.Image, what: str) -> Image.Image:
    mode = img.mode
    try:
        img = _icc_to_srgb(img)
        if img.mode.startswith("I") or img.mode == "F":
            img = _to_8bit(img)
        if _has_alpha(img):
            rgba = img.convert("RGBA")
            # Transparent areas become white, the background most product shots are shown on.
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img if img.mode == "RGB" else img.convert("RGB")
    except MemoryError:
        raise
    except Exception:
        raise ImageDecodeError(
            f"{what} could not be read as a picture: unsupported colour mode {mode}", field=what
        ) from None


def decode_image(data: bytes, *, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode untrusted bytes into an upright RGB image (first frame, alpha over white)."""
    return _to_rgb(_open(data, max_pixels=max_pixels, what=what), what)


def decode_mask(data: bytes, size: tuple[int, int], *, max_pixels: int) -> Image.Image:
    """Decode an edit mask to mode "L" (white = edit, black = keep) of exactly ``size``.

    A mask with an alpha channel that is fully opaque is read by its luminance. A mask with any
    transparency follows the OpenAI images/edits convention: transparent pixels are the area to
    edit, so the result is ``255 - alpha`` whatever the colours are.
    """
    what = "mask"
    img = _open(data, max_pixels=max_pixels, what=what)
    if img.size != tuple(size):
        raise InvalidInputError(
            f"mask is {img.width}x{img.height} but the image is {size[0]}x{size[1]}", field=what
        )
    if _has_alpha(img) and not (img.mode.startswith("I") or img.mode == "F"):
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return ImageOps.invert(alpha)
    return _to_rgb(img, what).convert("L")


def _xmp_packet(extra: dict[str, str] | None) -> bytes:
    fields = ""
    for key, value in (extra or {}).items():
        if not _XMP_NAME.match(key):
            raise ValueError(f"extra_xmp key {key!r} is not a valid XML name")
        fields += f"\n   <retouch:{key}>{escape(str(value))}</retouch:{key}>"
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{_IPTC_EXT_NS}"\n'
        f'    xmlns:retouch="{RETOUCH_XMP_NS}"\n'
        f'    Iptc4xmpExt:DigitalSourceType="{AI_SOURCE_TYPE}">{fields}\n'
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return packet.encode("utf-8")


def encode_image(
    img: Image.Image,
    fmt: Literal["webp", "jpeg", "png"],
    quality: int = 90,
    *,
    extra_xmp: dict[str, str] | None = None,
) -> bytes:
    """Encode ``img`` as ``fmt`` with an XMP packet marking it as AI-generated.

    ``extra_xmp`` adds simple string properties in the Retouch XMP namespace (seed, model, ...).
    Nothing else from the source pictures (EXIF, GPS, ICC) is carried over.
    """
    if fmt not in MIME_TYPES:
        raise ValueError(f"unknown output format {fmt!r}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    xmp = _xmp_packet(extra_xmp)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"), lang="", tkey="", zip=False)
        img.save(buf, "PNG", pnginfo=info)
    elif fmt == "jpeg":
        # Full-resolution chroma at high quality keeps small coloured text and logos crisp.
        subsampling = "4:4:4" if quality >= 90 else "4:2:0"
        img.save(buf, "JPEG", quality=quality, subsampling=subsampling, xmp=xmp)
    else:
        img.save(buf, "WEBP", quality=quality, xmp=xmp)
    return buf.getvalue()


def _xmp_of(data: bytes) -> bytes | None:
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as img:
            xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    except MemoryError:
        raise
    except Exception:
        return None
    if isinstance(xmp, str):
        return xmp.encode("utf-8")
    return xmp or None


def is_ai_marked(data: bytes) -> bool:
    """Whether an encoded PNG/JPEG/WebP carries the IPTC AI digital-source-type in its XMP.

    Reads only the header chunks (no pixel decoding); in PNG the XMP must come before the image
    data, which is where ``encode_image`` and most tools put it.
    """
    xmp = _xmp_of(data)
    return bool(xmp and _AI_MARK.search(xmp))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_output(picture: Image.Image, fmt: str, quality: int, seed: int) -> OutputImage:
    """An engine result: the picture encoded, with its type, size, hash and the seed it came from."""
    data = encode_image(picture, fmt, quality)
    return OutputImage(
        data=data,
        mime_type=MIME_TYPES[fmt],
        format=fmt,
        width=picture.size[0],
        height=picture.size[1],
        sha256=sha256_hex(data),
        seed=seed,
    )
