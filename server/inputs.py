"""The files side of the core: pictures in (uploads, input URLs) and out (results, previews).

Every path a contract hands out is a signed URL of this server; every input URL is either one of
those (read from disk, its signature and expiry checked) or fetched under the fetch policy
(server/fetch.py). Contracts reach files only through here.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pipelines.errors import EngineError
from pipelines.images import decode_image
from pipelines.mime import sniff_mime
from pipelines.registry import Registry

from . import signing
from .errors import ServiceError
from .fetch import FetchPolicy, fetch_url
from .files import FileStore, safe_filename
from .jobs import JobRecord
from .settings import Settings
from .storage import StorageGuard
from .store import Upload
from .store.base import Uploads

UPLOAD_PREFIX = "/files/uploads/"
RESULT_PREFIX = "/files/results/"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class Inputs:
    def __init__(self, settings: Settings, registry: Registry, store: Uploads, files: FileStore,
                 storage: StorageGuard):  # fmt: skip
        self.settings = settings
        self.registry = registry
        self.store = store
        self.files = files
        self.storage = storage
        self.fetch_policy = FetchPolicy.from_settings(settings)

    def read_input(self, url: str, what: str) -> bytes:
        """Bytes of an input named by URL; this server's own upload/result URLs are read from disk."""
        if not isinstance(url, str) or not url:
            raise ServiceError("INVALID_PARAMETERS", f"{what} must be a non-empty URL string", field=what)
        own = self._own_file(url, what)
        if own is not None:
            return self.files.read(own)
        return fetch_url(url, what=what, policy=self.fetch_policy)

    def _own_file(self, url: str, what: str) -> str | None:
        base = self.settings.base_url
        if not url.startswith(base + "/files/"):
            return None
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            signing.verify(
                self.settings.signing_secret,
                parts.path,
                query.get("expires", [None])[0],
                query.get("sig", [None])[0],
            )
        except ServiceError as exc:
            code = "INPUT_EXPIRED" if exc.code == "URL_EXPIRED" else "INVALID_PARAMETERS"
            raise ServiceError(code, f"{what}: {exc.message}", field=what) from None
        relative = parts.path.removeprefix("/files/")
        if parts.path.startswith(UPLOAD_PREFIX):
            upload = self.store.get_upload(parts.path.removeprefix(UPLOAD_PREFIX).split("/")[0])
            if upload is None or not self.files.exists(upload.path):
                raise ServiceError(
                    "INPUT_EXPIRED", f"{what}: this upload has expired or was removed", field=what
                )
            return upload.path
        if not parts.path.startswith(RESULT_PREFIX) or not self.files.exists(relative):
            raise ServiceError("INPUT_EXPIRED", f"{what}: this file has expired or was removed", field=what)
        return relative

    def result_bytes(self, record: JobRecord) -> list[bytes] | None:
        """The result pictures' bytes; None once any of them has expired or was handed out."""
        paths = [r.path for r in record.results]
        if not paths or not all(self.files.exists(p) for p in paths):
            return None
        return [self.files.read(p) for p in paths]

    def drop_results(self, record: JobRecord) -> None:
        """Delete a job's result files now (results handed out inline are not kept)."""
        for result in record.results:
            self.files.delete(result.path)

    def save_upload(self, data: bytes, filename: str | None, owner: str) -> tuple[Upload, str]:
        self.storage.check()
        if len(data) > self.settings.upload_max_bytes:
            raise ServiceError(
                "FILE_TOO_LARGE",
                f"file is over the {self.settings.upload_max_bytes} byte limit",
                field="file",
            )
        try:
            picture = decode_image(data, max_pixels=self.registry.limits.max_input_pixels, what="file")
        except EngineError as exc:
            raise ServiceError.from_engine(exc) from None
        del picture
        content_type = sniff_mime(data) or "application/octet-stream"
        upload_id = new_id("up")
        name = safe_filename(filename)
        now = time.time()
        upload = Upload(
            id=upload_id,
            owner=owner,
            filename=name,
            content_type=content_type,
            size_bytes=len(data),
            path=f"uploads/{upload_id}/{name}",
            created_at=now,
            expires_at=now + self.settings.upload_ttl_s,
        )
        try:
            with self.storage.full_disk_refused():
                self.files.write(upload.path, data)
                self.store.add_upload(upload)
        except Exception:
            self.files.delete_tree(f"uploads/{upload_id}")
            raise
        return upload, self.signed_url(f"{UPLOAD_PREFIX}{upload_id}/{name}", self.settings.upload_ttl_s)

    def signed_url(self, path: str, ttl_s: float | None = None) -> str:
        ttl = ttl_s if ttl_s is not None else self.settings.signed_url_ttl_s
        return signing.sign(self.settings.signing_secret, self.settings.base_url, path, ttl)

    def result_urls(self, record: JobRecord) -> list[str]:
        return [self.signed_url("/files/" + r.path) for r in record.results]

    def previews(self, job_id: str) -> Path:
        """The folder the worker writes a job's previews to (previews/{job_id}/{image}-{partial}.{fmt})."""
        return self.files.path(f"previews/{job_id}")

    def drop_previews(self, job_id: str) -> None:
        self.files.delete_tree(f"previews/{job_id}")
