"""Free space on the data disk: a floor checked before anything is written, and what a full disk
looks like when it is met anyway (another process filled it between the check and the write).

A full disk is a state the server waits out, not a crash: below ``RETOUCH_MIN_FREE_BYTES``
submissions and uploads answer ``STORAGE_FULL`` (503 + Retry-After), workers take no job and
``/readyz`` says why; everything resumes by itself once space is freed.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ServiceError
from .settings import Settings

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(exc: BaseException) -> bool:
    """True for the ways a full disk surfaces: ENOSPC/EDQUOT from a file write, SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return False


@dataclass(frozen=True)
class Volume:
    name: str  # what it holds, for logs, metrics and /readyz ("files", "database"): never a path
    path: Path


@dataclass(frozen=True)
class VolumeSpace:
    name: str
    free_bytes: int


class StorageGuard:
    """The free-space floor of the volumes the server writes to (files and, with SQLite, the database)."""

    def __init__(self, settings: Settings):
        self.min_free_bytes = settings.min_free_bytes
        self.retry_after_s = settings.storage_full_retry_after_s
        volumes = [Volume("files", Path(settings.files_root))]
        if not settings.redis_url:
            volumes.append(Volume("database", Path(settings.data_dir)))
        # One entry per filesystem: files and database on the same disk are one floor, not two.
        seen: dict[int, Volume] = {}
        for volume in volumes:
            seen.setdefault(_device(volume.path), volume)
        self.volumes = list(seen.values())

    def space(self) -> list[VolumeSpace]:
        return [VolumeSpace(v.name, _free_bytes(v.path)) for v in self.volumes]

    def shortage(self) -> str | None:
        """Why the disk is too full to write to, or None when every volume is above the floor."""
        if self.min_free_bytes <= 0:
            return None
        for volume in self.space():
            if volume.free_bytes < self.min_free_bytes:
                return (
                    f"the {volume.name} disk has {_mb(volume.free_bytes)} free, under the"
                    f" {_mb(self.min_free_bytes)} floor (RETOUCH_MIN_FREE_BYTES)"
                )
        return None

    def check(self) -> None:
        """Refuse a write-bound request while the disk is below the floor."""
        reason = self.shortage()
        if reason is not None:
            raise self.error(reason)

    def error(self, reason: str = "the data disk is full") -> ServiceError:
        # The code leads the message too: FASHN's and Depicta's error bodies have no field for it.
        message = f"STORAGE_FULL: {reason}; retry later"
        return ServiceError("STORAGE_FULL", message, retry_after_s=self.retry_after_s)

    @contextmanager
    def full_disk_refused(self) -> Iterator[None]:
        """A full disk met by the writes inside answers STORAGE_FULL, like a disk below the floor."""
        try:
            yield
        except Exception as exc:
            if is_disk_full(exc):
                raise self.error() from None
            raise


def _device(path: Path) -> int:
    try:
        return _existing(path).stat().st_dev
    except OSError:
        return -1


def _existing(path: Path) -> Path:
    """The path itself, or its nearest existing parent (a data dir not made yet)."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return 0  # an unreadable volume cannot take writes either


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
