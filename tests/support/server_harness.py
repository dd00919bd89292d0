"""Helpers for server tests: a registry file, settings, and a sync client over in-process ASGI."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import requests
from PIL import Image

WEIGHTS_YAML = """
version: 1
root: .
models:
  edit:
    roles: [edit, edit_plus, inpaint]
    pipeline: qwen_image_edit_plus
    license: {id: Apache-2.0}
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
    license: {id: Apache-2.0}
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
# What the test harness opens in the SSRF allowlist: loopback only (RETOUCH_FETCH_ALLOW in subprocesses).
TEST_FETCH_ALLOW = "127.0.0.1/32"


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
        engine_factory="tests.support.fakes:FakeEngine",
        lease_s=2.0,
        worker_poll_s=0.05,
        webhook_backoff_initial_s=0.1,
        webhook_backoff_max_s=0.5,
        cleanup_interval_s=3600,
        # Test servers (pictures, webhook receivers) listen on loopback, which fetches refuse by default.
        fetch_allow=TEST_FETCH_ALLOW,
        # A server closed while a job runs lets it finish or hands it back within this (SIGTERM path).
        shutdown_grace_s=2.0,
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


ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """A real ``retouch serve`` subprocess on tiny weights (official clients talk to it over TCP)."""

    def __init__(self, weights: Path, data_dir: Path, port: int, workers: int = 1, extra_args=()):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--weights",
            str(weights),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--workers",
            str(workers),
            "--server-id",
            "e2e",
            *extra_args,
        ]
        self.log = open(data_dir.parent / f"serve-{port}-{time.time_ns()}.log", "w")  # noqa: SIM115
        env = dict(os.environ, HF_HUB_OFFLINE="1", RETOUCH_FETCH_ALLOW="127.0.0.1/32")  # local receivers
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, path: str = "/readyz", timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {Path(self.log.name).read_text()[-3000:]}"
            try:
                if requests.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not up on {path}: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class PictureHost:
    """Serves one PNG over http on loopback (for URL inputs); ``hits`` counts the fetches."""

    def __init__(self, data: bytes):
        host = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                host.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/photo.png"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


class WebhookReceiver:
    """A loopback webhook endpoint that answers 500 to its first ``fail_first`` POSTs and 204 after.

    ``got`` holds (lower-cased headers, body) of every POST; ``done`` is set on each accepted one."""

    def __init__(self, fail_first: int = 0):
        receiver = self
        self.got: list[tuple[dict, bytes]] = []
        self.done = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                accepted = len(receiver.got) > fail_first
                self.send_response(204 if accepted else 500)
                self.end_headers()
                if accepted:
                    receiver.done.set()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()

    @property
    def calls(self) -> int:
        return len(self.got)
