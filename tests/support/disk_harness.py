"""A small disk for the full-disk tests: a 20 MB tmpfs the test mounts (root only), a ballast file
that fills it, a fake engine with a gate (so the disk can be filled while a job surely runs and
before its result is written) and a client for the ``retouch serve`` process under test."""

from __future__ import annotations

import base64
import errno
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.support.fakes import FakeEngine
from tests.support.server_harness import ServeProcess, free_port, png_bytes

GATE_ENV = "RETOUCH_TEST_GATE_FILE"
IMG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
KEY = {"X-API-Key": "any-key"}  # no keys configured and a loopback bind: any key is accepted
BEARER = {"Authorization": "Bearer any-key"}
MB = 1_000_000


class GatedEngine(FakeEngine):
    """The fake engine; a prompt holding "gated" waits, without a progress call, until the file named
    by RETOUCH_TEST_GATE_FILE exists, then returns its picture (so the next write is the result's)."""

    def run(self, spec, on_progress=None):
        if "gated" in spec.prompt:
            gate = Path(os.environ[GATE_ENV])
            while not gate.exists():
                time.sleep(0.05)
            return super().run(spec, None)
        return super().run(spec, on_progress)


GATED = "tests.support.disk_harness:GatedEngine"


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs of this test's own; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is tested on a tmpfs the test mounts, which needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Grow a ballast file on ``disk`` until at most about ``leave`` bytes are free (0: until ENOSPC)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (MB, 64 * 1024, 4096):
            while shutil.disk_usage(disk).free - size >= leave:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return ballast


def part_files(root: Path) -> list[Path]:
    return list(root.rglob("*.part"))


def result_files(data: Path, job_id: str) -> list[str]:
    folder = data / "results" / job_id
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def wait_for(what, predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Client:
    def __init__(self, server: ServeProcess):
        self.base = server.base_url

    def get(self, path: str, **kw):
        return requests.get(self.base + path, headers=kw.pop("headers", KEY), timeout=30, **kw)

    def post(self, path: str, **kw):
        return requests.post(self.base + path, headers=kw.pop("headers", KEY), timeout=30, **kw)

    def submit(self, prompt: str) -> str:
        resp = self.post("/edit/image/v1", json={"prompt": prompt, "input_image": IMG})
        assert resp.status_code == 200, resp.text
        return resp.json()["job_id"]

    def status(self, job_id: str) -> dict:
        return self.get(f"/edit/image/v1/status/{job_id}").json()

    def wait_status(self, job_id: str, statuses, timeout: float = 60) -> dict:
        return wait_for(
            f"{job_id} to be {statuses}",
            lambda: (s := self.status(job_id))["status"] in statuses and s,
            timeout,
        )

    def storage_full_metric(self) -> float:
        text = self.get("/metrics").text
        return float(re.search(r"^retouch_storage_full (\S+)$", text, re.M).group(1))


def data_dir_on(disk: Path, tmp_path: Path) -> Path:
    """A data dir whose contents live on ``disk``, reached through a link in ``tmp_path``, so the
    server's log (written next to the data dir) stays on a disk that does not fill up."""
    (disk / "data").mkdir()
    link = tmp_path / "data"
    link.symlink_to(disk / "data")
    return link


def serve(tmp_path, tiny_weights, monkeypatch, data: Path, **env) -> ServeProcess:
    gate = tmp_path / "gate"
    settings = {
        "RETOUCH_ENGINE_FACTORY": GATED,
        GATE_ENV: str(gate),
        "RETOUCH_MIN_FREE_BYTES": str(4 * MB),
        "RETOUCH_LEASE_S": "4",
        "RETOUCH_WORKER_POLL_S": "0.1",
        **env,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    server = ServeProcess(tiny_weights, data, free_port())
    server.gate = gate
    return server
