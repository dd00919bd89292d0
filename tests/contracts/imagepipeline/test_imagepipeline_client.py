"""End to end: a real ``retouch serve`` on tiny weights, driven by the official imagepipeline client."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from imagepipeline import ImagePipeline
from imagepipeline.exceptions import APIError
from PIL import Image
from standardwebhooks import Webhook

from tests.support.server_harness import ServeProcess, WebhookReceiver, png_bytes
from tests.support.server_harness import free_port as _free_port

ROOT = Path(__file__).resolve().parents[3]
EDIT = "edit/image/v1"


@pytest.fixture(scope="module")
def client(tiny_serve):
    return ImagePipeline("any-key", base_url=tiny_serve.base_url)


def _download(url: str) -> Image.Image:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def test_server_e2e_upload_and_edit_one_image(client, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(96, 64))
    up = client.upload.image(str(photo))
    assert (
        up.filename == "photo.png"
        and up.content_type == "image/png"
        and up.size_bytes == photo.stat().st_size
    )
    # The client's own polling loop (every 3 s).
    job = client.edit.image(
        prompt="make the red square blue", input_image=up.url, width=64, height=48, seed=11
    )
    assert job.status.value == "completed" and job.result_mime_type == "image/webp"
    assert job.progress == 100 and job.inference_time_seconds > 0 and len(job.prompt_hash) == 64
    picture = _download(job.result_url)
    assert picture.format == "WEBP" and picture.size == (64, 48)


def test_server_e2e_edit_two_images(client):
    first = client.upload.image(io.BytesIO(png_bytes(96, 64)), filename="person.png")
    second = client.upload.image(io.BytesIO(png_bytes(48, 48, (20, 200, 20))), filename="product.png")
    queued = client.edit.image(
        prompt="dress the person in the product from image 2",
        input_image=[first.url, second.url],
        output_format="png",
        product_saturation=0.8,
        wait=False,
    )
    assert queued.status.value == "queued"
    # Same loop as wait=True, with a shorter interval (the public method does not expose it).
    job = client._transport.poll(EDIT, queued.job_id, poll_interval=0.3, timeout=120)
    picture = _download(job.result_url)
    assert picture.format == "PNG" and job.result_mime_type == "image/png"
    assert picture.size[0] > 0 and picture.size[1] > 0


def test_server_e2e_errors_reach_the_client(client):
    up = client.upload.image(io.BytesIO(png_bytes()), filename="a.png")
    with pytest.raises(APIError) as err:
        client.edit.image(prompt="x", input_image=up.url, mask_segment="upper-clothes", wait=False)
    assert err.value.status_code == 422 and err.value.error_code == "UNSUPPORTED_PARAMETER"
    with pytest.raises(APIError) as err:
        client.edit.image(prompt="x", input_image=up.url, mode="watercolor", wait=False)
    assert "mode" in str(err.value)


def test_server_e2e_profiles(client):
    made = client.identity.create_profile(
        name="Brand Model",
        prompt_template="{{ user_prompt }}, soft light",
        seed_strategy="fixed",
        fixed_seed=42,
    )
    pid = made["profile_id"]
    assert client.identity.get_profile(pid)["name"] == "Brand Model"
    assert pid in [p["profile_id"] for p in client.identity.list_profiles()["profiles"]]
    client.identity.delete_profile(pid)
    with pytest.raises(APIError) as err:
        client.identity.get_profile(pid)
    assert err.value.status_code == 404 and err.value.error_code == "NOT_FOUND"


def test_server_e2e_webhook(client, tiny_serve):
    receiver = WebhookReceiver()
    got, done = receiver.got, receiver.done
    try:
        up = client.upload.image(io.BytesIO(png_bytes()), filename="a.png")
        hook = receiver.url
        queued = client.edit.image(prompt="hook me", input_image=up.url, callback_url=hook, wait=False)
        assert done.wait(120), "no webhook"
        headers, body = got[0]
        secret = (tiny_serve.data_dir / "webhook_secret").read_text().strip()
        payload = Webhook(secret).verify(body, headers)
        assert (
            payload["job_id"] == queued.job_id and payload["status"] == "completed" and payload["result_url"]
        )
    finally:
        receiver.close()


@pytest.mark.slow
def test_server_e2e_restart_with_queued_jobs(tiny_weights, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    port = _free_port()
    first = ServeProcess(tiny_weights, data, port, workers=0)  # accepts jobs, runs none
    first.wait("/healthz")
    client = ImagePipeline("k", base_url=first.base_url)
    ids = [
        client.edit.image(prompt=f"edit {i}", input_image=_data_url(), wait=False).job_id for i in range(2)
    ]
    first.stop()
    second = ServeProcess(tiny_weights, data, port, workers=1)
    try:
        second.wait()
        for job_id in ids:
            job = client._transport.poll(EDIT, job_id, poll_interval=0.3, timeout=120)
            assert _download(job.result_url).format == "WEBP"
    finally:
        second.stop()


def _data_url() -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def test_server_serve_without_weights_explains(tmp_path):
    missing = tmp_path / "weights.yaml"
    missing.write_text(
        (ROOT / "weights.yaml").read_text().replace("root: ./weights", f"root: {tmp_path / 'none'}")
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--weights",
            str(missing),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "retouch weights tiny" in run.stderr and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_server_api_process_never_imports_the_model_stack():
    code = (
        "import sys, server.app, server.cli; print({'torch', 'diffusers', 'transformers'} & set(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "set()", out.stderr


def test_serve_with_its_own_engine_factory_needs_no_weight_files(tmp_path):
    """`benchmarks/server_overhead.py --full` builds full-size random models inside the worker; the
    committed weights.yaml (whose files are not on disk here) still drives validation."""
    import os
    import time

    port = _free_port()
    env = dict(os.environ, RETOUCH_ENGINE_FACTORY="tests.support.fakes:FakeEngine", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "server.cli", "serve", "--weights", str(ROOT / "weights.yaml"),
           "--port", str(port), "--data-dir", str(tmp_path / "data")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("not ready")
    finally:
        proc.terminate()
        proc.wait(30)
