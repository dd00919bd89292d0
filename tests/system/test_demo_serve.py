"""A fresh clone's first command: `make serve` serves the demo set, and says so everywhere.

The server is the real `retouch serve` on a copy of the committed weights.yaml whose weight files
are not there, as on a fresh clone; the demo set is built by the server itself, once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server_harness import ServeProcess, free_port, png_bytes

ROOT = Path(__file__).resolve().parents[2]
KEY = "demo-key"


def fresh_clone(tmp_path: Path) -> Path:
    """The committed registry, with its `root` (./weights) empty, as a new clone has it."""
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copyfile(ROOT / "weights.yaml", clone / "weights.yaml")
    return clone / "weights.yaml"


def serve_once(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args], capture_output=True, text=True, timeout=120,
        cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fresh-clone")
    weights = fresh_clone(tmp)
    demo_dir = tmp / "tiny-weights"
    data = tmp / "data"
    data.mkdir()
    srv = ServeProcess(
        weights, data, free_port(), extra_args=("--demo-if-missing", "--demo-dir", str(demo_dir))
    )
    srv.wait(timeout=420)  # builds the demo set first
    yield srv, demo_dir
    srv.stop()


def test_fresh_clone_serves_the_demo_set_and_says_so_in_three_lines(demo_server):
    srv, demo_dir = demo_server
    assert (demo_dir / "weights.yaml").is_file() and (demo_dir / "weights.manifest.json").is_file()
    log = Path(srv.log.name).read_text()
    notices = [line for line in log.splitlines() if line.startswith("notice: ")]
    assert len(notices) == 3, log[-3000:]
    assert "pictures are noise" in notices[0] and "retouch weights pull" in notices[2]
    assert "serving the DEMO weights set" in log
    assert "api keys: none configured, so any key is accepted (loopback only)" in log


def test_readyz_reports_the_demo_set(demo_server):
    srv, demo_dir = demo_server
    body = httpx.get(srv.base_url + "/readyz").json()
    assert body["weights"]["set"] == "demo"
    assert body["weights"]["registry"] == str(demo_dir / "weights.yaml")
    assert body["weights"]["manifest"] is True
    assert set(body["weights"]["revisions"]) == {
        "qwen-image-edit-tiny",
        "qwen-image-edit-2509-tiny",
        "qwen-image-2.1-tiny",
        "z-image-turbo-tiny",
    }


def test_first_edit_on_the_demo_set_completes(demo_server):
    srv, _ = demo_server
    headers = {"X-API-Key": KEY}
    up = httpx.post(
        srv.base_url + "/upload/image/v1", headers=headers, files={"file": ("a.png", png_bytes())}
    )
    assert up.status_code == 200, up.text
    url = up.json()["url"]
    job = httpx.post(
        srv.base_url + "/edit/image/v1",
        headers=headers,
        json={"prompt": "make it warmer", "input_image": url},
    )
    assert job.status_code == 200, job.text
    job_id = job.json()["job_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = httpx.get(f"{srv.base_url}/edit/image/v1/status/{job_id}", headers=headers).json()
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.5)
    assert status["status"] == "completed", status
    assert httpx.get(status["result_url"]).status_code == 200


def test_serve_without_the_flag_stays_strict(tmp_path):
    weights = fresh_clone(tmp_path)
    done = serve_once("--weights", str(weights), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "tiny-weights").exists()


def test_a_partial_install_is_an_error_even_with_the_flag(tmp_path):
    weights = fresh_clone(tmp_path)
    (weights.parent / "weights" / "Z-Image-Turbo").mkdir(parents=True)  # a download that stopped
    done = serve_once(
        "--weights", str(weights), "--demo-if-missing", "--data-dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert done.returncode == 2 and "Qwen-Image-Edit-2511" in done.stderr  # what this pod loads
    assert not (tmp_path / "tiny-weights").exists()


def make_dry_run(*args: str) -> str:
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    return dry.stdout.splitlines()[-1].rstrip()


def test_make_serve_falls_back_to_the_demo_only_for_the_committed_registry():
    assert make_dry_run("serve").endswith("retouch serve --weights weights.yaml --demo-if-missing")
    assert make_dry_run("serve", "WEIGHTS=/srv/weights.yaml").endswith(
        "retouch serve --weights /srv/weights.yaml"
    )
