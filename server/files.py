"""Files under the data dir: uploads, job inputs, results. Paths stored elsewhere are relative."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    cleaned = _SAFE_NAME.sub("_", (name or "").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]).strip("._")
    return cleaned[:100] or default


class FileStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        for sub in ("uploads", "inputs", "results"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, relative: str) -> Path:
        """Absolute path of a stored file; refuses anything that would leave the data dir."""
        full = (self.root / relative).resolve()
        if not full.is_relative_to(self.root):
            raise ValueError("path outside the data dir")
        return full

    def write(self, relative: str, data: bytes) -> str:
        full = self.path(relative)
        full.parent.mkdir(parents=True, exist_ok=True)
        tmp = full.with_suffix(full.suffix + ".part")
        try:
            tmp.write_bytes(data)
            tmp.replace(full)  # readers never see half a file
        except BaseException:
            # A full disk (or a kill) mid-write: the half file would hold the space nobody can use.
            tmp.unlink(missing_ok=True)
            raise
        return relative

    def read(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    def delete(self, relative: str) -> None:
        full = self.path(relative)
        full.unlink(missing_ok=True)
        parent = full.parent
        if parent != self.root and parent.parent != self.root and not any(parent.iterdir()):
            parent.rmdir()

    def delete_tree(self, relative: str) -> None:
        shutil.rmtree(self.path(relative), ignore_errors=True)
