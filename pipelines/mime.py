"""The one table of picture formats and MIME types, for the engine and the server alike.

It lives in ``pipelines`` because the engine names the files it writes; the server imports it
(``pipelines`` never imports ``server``).
"""

from __future__ import annotations

# The output formats: what ``encode_image`` writes, by the format name that is also the extension.
MIME_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}

# Leading bytes of the pictures clients send, for a content type when the sender's is wrong or absent.
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))


def sniff_mime(data: bytes) -> str | None:
    """The MIME type the first bytes of ``data`` show, or None when they show none we know."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def mime_for_name(name: str) -> str | None:
    """The MIME type of a written file by its extension (an output format's), else None."""
    return MIME_TYPES.get(name.rsplit(".", 1)[-1])
