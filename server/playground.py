"""The web playground at ``/``: one static page (server/static) that drives the public API.

It has no build step and no back door: the page calls the same imagepipeline.io endpoints an
API client does (upload, edit, status, cancel), with the API key the person typed, so what works
in the browser works from code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/playground"


def mount(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def playground_page() -> FileResponse:
        # no-cache: after an upgrade the browser must not keep an old page that calls old fields.
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    # Browsers and tools ask for /favicon.ico whatever the page links; a 404 there is noise in logs.
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
        )

    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="playground")
