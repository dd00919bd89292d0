"""``GET /metrics`` of a real ``retouch serve`` (API process + a separate worker process) on tiny
weights, read with prometheus-client's own parser, as Prometheus would scrape it."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import encode, make_photo, serving_tiny
from tests.support.server_harness import WebhookReceiver

KEY = "metrics-test-key-0123456789"
HEADERS = {"X-API-Key": KEY}


@contextlib.contextmanager
def worker_paused(data_dir: Path, running: tuple[str, dict, str] | None = None):
    """Freezes the worker processes (SIGSTOP) so queue states can be observed on any machine speed.

    Only while they run a job: an idle worker waits on the API's wake-up event, and a frozen waiter
    would block the API's ``Event.set()`` (multiprocessing's notify waits for the sleeper to wake).
    ``running = (base_url, headers, job_id)``: checked to be still running once frozen.
    """
    with sqlite3.connect(data_dir / "retouch.sqlite3") as db:
        pids = [pid for (pid,) in db.execute("SELECT pid FROM workers")]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        if running is not None:
            base_url, headers, job_id = running
            status = requests.get(f"{base_url}/edit/image/v1/status/{job_id}", headers=headers, timeout=10)
            assert status.json()["status"] == "processing", "the job ended before the worker was frozen"
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def scrape(server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    resp = requests.get(server.base_url + "/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    # A directory inherited from the test process must not leak into the server's metrics.
    foreign = str(tmp_path_factory.mktemp("foreign-metrics"))
    yield from serving_tiny(
        tiny_weights, tmp_path_factory, "metrics", RETOUCH_API_KEYS=KEY, PROMETHEUS_MULTIPROC_DIR=foreign,
        RETOUCH_WEBHOOK_BACKOFF_INITIAL_S="0.2", RETOUCH_WEBHOOK_BACKOFF_MAX_S="0.5",
    )  # fmt: skip


def _submit(server, prompt: str, **extra) -> str:
    files = {"file": ("p.png", encode(make_photo(64, 48)), "image/png")}
    url = requests.post(server.base_url + "/upload/image/v1", headers=HEADERS, files=files).json()["url"]
    resp = requests.post(
        server.base_url + "/edit/image/v1",
        headers=HEADERS,
        json={"prompt": prompt, "input_image": url, **extra},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["job_id"]


def start_long_job(base_url: str, headers: dict) -> str:
    """Submits a job long enough (full model, 60 steps) to be seen running; returns once it runs."""
    files = {"file": ("busy.png", encode(make_photo(64, 48, seed=3)), "image/png")}
    url = requests.post(base_url + "/upload/image/v1", headers=headers, files=files).json()["url"]
    body = {"prompt": "keep the worker busy", "input_image": url, "faster_inference": False}
    answer = requests.post(
        base_url + "/edit/image/v1", headers=headers, json={**body, "num_inference_steps": 60}
    )
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        status = requests.get(f"{base_url}/edit/image/v1/status/{job_id}", headers=headers).json()
        if status["status"] == "processing":
            return job_id
        assert status["status"] == "queued" and time.monotonic() < deadline, status
        time.sleep(0.02)


def _wait(server, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{server.base_url}/edit/image/v1/status/{job_id}", headers=HEADERS).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_metrics_before_any_job(server):
    samples = scrape(server)
    assert value(samples, "retouch_queue_depth", queue="local") == 0
    workers = [dict(labels)["worker"] for name, labels in samples if name == "retouch_worker_up"]
    assert len(workers) == 1
    assert value(samples, "retouch_worker_up", worker=workers[0]) == 1
    age = value(samples, "retouch_worker_heartbeat_age_seconds", worker=workers[0], state="ready")
    assert age is not None and 0 <= age < 10
    # A CPU worker has no GPU: the GPU gauges are declared but carry no samples, and nothing breaks.
    assert not {"retouch_gpu_memory_bytes", "retouch_gpu_memory_peak_bytes"} & names(samples)
    assert value(samples, "retouch_stage_seconds_count", stage="denoise") in (None, 0)


def test_metrics_count_jobs_stages_queue_and_webhooks_across_processes(server):
    receiver = WebhookReceiver(fail_first=1)
    try:
        # The worker is frozen in the middle of a job, so a second one has to wait in the queue.
        slow = start_long_job(server.base_url, HEADERS)
        with worker_paused(server.data_dir, running=(server.base_url, HEADERS, slow)):
            queued = _submit(server, "make it warmer", callback_url=receiver.url, refine_strength=0.3)
            during = scrape(server)
        assert value(during, "retouch_queue_depth", queue="local") == 1
        assert value(during, "retouch_jobs", state="queued", contract="imagepipeline") == 1
        assert value(during, "retouch_jobs", state="processing", contract="imagepipeline") == 1

        assert _wait(server, slow)["status"] == "completed"
        assert _wait(server, queued)["status"] == "completed"
        deadline = time.monotonic() + 30
        while receiver.calls < 2:  # the 500, then the retried delivery
            assert time.monotonic() < deadline, "webhook was not retried"
            time.sleep(0.1)
        time.sleep(0.5)  # the delivery's outcome is written just after the receiver answers
    finally:
        receiver.close()

    after = scrape(server)
    assert value(after, "retouch_queue_depth", queue="local") == 0
    assert value(after, "retouch_jobs", state="completed", contract="imagepipeline") == 2
    # Written by the worker process, aggregated by the API process.
    assert value(after, "retouch_worker_jobs_total", outcome="completed") == 2
    for stage in ("encode", "denoise", "decode", "postprocess"):
        assert value(after, "retouch_stage_seconds_count", stage=stage) == 2, stage
        assert value(after, "retouch_stage_seconds_sum", stage=stage) > 0, stage
    assert value(after, "retouch_stage_seconds_count", stage="refine") == 1  # only the second refined
    denoise_buckets = [
        v
        for (name, labels), v in after.items()
        if name == "retouch_stage_seconds_bucket" and ("stage", "denoise") in labels
    ]
    assert max(denoise_buckets) == 2  # the +Inf bucket holds both observations
    inference = sum(v for (name, _), v in after.items() if name == "retouch_job_inference_seconds_count")
    assert inference == 2
    assert value(after, "retouch_job_queue_wait_seconds_count") == 2
    assert value(after, "retouch_job_queue_wait_seconds_sum") > 0  # the second job waited for the first
    # Webhooks: one failed attempt, then one delivery (counted in the API process).
    assert value(after, "retouch_webhook_attempts_total", result="failed") == 1
    assert value(after, "retouch_webhook_attempts_total", result="delivered") == 1
    assert value(after, "retouch_webhook_outbox", state="delivered") == 1
    assert value(after, "retouch_webhook_outbox", state="pending") == 0


def test_gpu_memory_is_reported_from_the_engines_torch_and_dropped_when_the_worker_dies(tmp_path):
    """Run in a fresh interpreter: multiprocess mode is fixed when prometheus-client is imported."""
    script = textwrap.dedent(
        """
        import os, sys, types
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        from server import metrics

        class FakeCuda:
            @staticmethod
            def is_available(): return True
            @staticmethod
            def is_initialized(): return True
            @staticmethod
            def device_count(): return 1
            @staticmethod
            def memory_allocated(i): return 3_000_000_000
            @staticmethod
            def max_memory_allocated(i): return 5_000_000_000

        def exposition():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry).decode()

        metrics.report_gpu_memory("w0")  # no torch loaded: nothing reported, no error
        assert "retouch_gpu_memory_bytes{" not in exposition()
        sys.modules["torch"] = types.SimpleNamespace(cuda=FakeCuda)
        metrics.report_gpu_memory("w0")
        text = exposition()
        assert 'retouch_gpu_memory_bytes{device="cuda:0",worker="w0"} 3e+09' in text, text
        assert 'retouch_gpu_memory_peak_bytes{device="cuda:0",worker="w0"} 5e+09' in text, text
        metrics.mark_worker_dead(os.getpid())
        assert "retouch_gpu_memory_bytes{" not in exposition()
        print("ok")
        """
    )
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
