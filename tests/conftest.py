"""Shared fixtures: one tiny weights set and one engine per test session (built offline, CPU)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Path of the weights.yaml of a freshly built tiny set."""
    from pipelines import build_tiny_weights

    return build_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="session")
def registry(tiny_weights):
    from pipelines import load_registry

    return load_registry(tiny_weights)


@pytest.fixture(scope="session")
def engine(registry):
    from pipelines import EditEngine

    return EditEngine(registry)


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The one shared in-process server (default test settings, any key accepted, the fake engine
    in a real worker process) for the modules whose behaviour needs nothing special of it."""
    from tests.support.server_harness import AsgiServer, make_settings

    srv = AsgiServer(make_settings(tmp_path_factory.mktemp("served")))
    srv.wait_ready()
    yield srv
    srv.close()


def serving_tiny(tiny_weights, tmp_path_factory, name: str, **env):
    """A real ``retouch serve`` subprocess on the tiny weights, ``env`` on top of the test
    process's; ``data_dir`` is its data folder (results, previews, secrets, the SQLite store)."""
    from tests.support.server_harness import ServeProcess, free_port

    data = tmp_path_factory.mktemp(name) / "data"
    data.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        srv = ServeProcess(tiny_weights, data, free_port())
    srv.data_dir = data
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def tiny_serve(tiny_weights, tmp_path_factory):
    """The one shared real ``retouch serve`` on the tiny weights (default settings: one worker, any
    key accepted), for the contract modules that drive an official client over TCP."""
    yield from serving_tiny(tiny_weights, tmp_path_factory, "tiny-serve")


# The one key the playground's server accepts (tests/system/test_playground_browser*.py).
PLAYGROUND_KEY = "playground-test-key-0123456789"


@pytest.fixture(scope="session")
def playground_serve(tiny_weights, tmp_path_factory):
    """A real ``retouch serve`` on the tiny weights that accepts ``PLAYGROUND_KEY`` only, behind the
    playground's browser tests. Session-scoped: both playground modules use it, and a module-scoped
    fixture imported into a second module would start a second server there."""
    yield from serving_tiny(tiny_weights, tmp_path_factory, "playground", RETOUCH_API_KEYS=PLAYGROUND_KEY)


def make_photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A picture with gradients and shapes, so edits and composites have something to change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 / max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 / max(height - 1, 1)).astype(np.uint8)
    b = ((x + y) % 64 * 4).astype(np.uint8)
    arr = np.stack([r, g, b], axis=-1)
    arr[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def photo_bytes() -> bytes:
    return encode(make_photo())
