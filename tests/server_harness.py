"""Helpers for server tests: a registry file, settings, and a sync client over in-process ASGI."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

WEIGHTS_YAML = """
version: 1
root: .
models:
  edit:
    roles: [edit, edit_plus, inpaint]
    pipeline: qwen_image_edit_plus
    path: edit
    hub_id: test/edit
    revision: local
    default_steps: 4
    default_guidance: 4.0
    loras:
      lightning-8: {path: l8.safetensors, steps: 8, guidance: 1.0, scheduler: lightning}
  refiner:
    roles: [refiner]
    pipeline: z_image_img2img
    path: refiner
    hub_id: test/refiner
    revision: local
    default_steps: 4
    default_guidance: 0.0
schedulers:
  lightning: {shift: 1.0}
modes:
  anime: {prompt_template: "{prompt}, anime"}
limits:
  max_input_pixels: 1000000
  max_output_side: 512
  job_timeout_s: 5
"""

BASE_URL = "http://retouch.test"


def write_weights(folder: Path) -> Path:
    path = Path(folder) / "weights.yaml"
    path.write_text(WEIGHTS_YAML)
    return path


def make_settings(tmp: Path, **overrides):
    from server.settings import Settings

    values = dict(
        weights=str(write_weights(tmp)),
        data_dir=tmp / "data",
        server_id="test-server",
        workers=1,
        public_base_url=BASE_URL,
        engine_factory="tests.fakes:FakeEngine",
        lease_s=2.0,
        worker_poll_s=0.05,
        webhook_backoff_initial_s=0.1,
        webhook_backoff_max_s=0.5,
        cleanup_interval_s=3600,
    )
    values.update(overrides)
    return Settings(**values)


def png_bytes(width: int = 64, height: int = 48, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


class AsgiServer:
    """Runs the app's lifespan (workers, webhooks) on a background loop; requests go in-process."""

    def __init__(self, settings):
        from server.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._call(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL)

    def _call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        kwargs.setdefault("headers", {"X-API-Key": "test-key"})
        return self._call(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "no worker became ready"
            time.sleep(0.1)

    def wait_status(
        self, job_id: str, statuses=("completed", "failed", "cancelled"), timeout: float = 30
    ) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(f"/edit/image/v1/status/{job_id}").json()
            if body["status"] in statuses:
                return body
            assert time.monotonic() < deadline, f"job stuck in {body['status']}"
            time.sleep(0.05)

    def close(self) -> None:
        self._call(self.client.aclose())
        self._call(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
