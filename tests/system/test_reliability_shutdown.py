"""SIGTERM on a real `retouch serve`: drain, finish or hand back, lose nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from benchmarks.reliability import record
from tests.system.test_reliability_faults import IMG, PACED, ROOT, _wait

# -- SIGTERM -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """A real `retouch serve` (uvicorn, signals) with the paced fake engine."""

    def __init__(self, weights: Path, data_dir: Path, grace_s: float):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETOUCH_")}
        env.update(
            HF_HUB_OFFLINE="1",
            RETOUCH_ENGINE_FACTORY=PACED,
            RETOUCH_SHUTDOWN_GRACE_S=str(grace_s),
            RETOUCH_WORKER_POLL_S="0.05",
            RETOUCH_LOG_FORMAT="text",
        )
        cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--weights",
            str(weights),
            "--port",
            str(self.port),
        ]
        cmd += ["--data-dir", str(data_dir), "--workers", "1", "--server-id", "drain"]
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "server never became ready"
            try:
                if requests.get(self.base + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)

    def submit(self, prompt: str) -> str:
        r = requests.post(
            self.base + "/edit/image/v1",
            json={"prompt": prompt, "input_image": IMG},
            headers={"X-API-Key": "k"},
        )
        assert r.status_code == 200, r.text
        return r.json()["job_id"]

    def status(self, job_id: str) -> dict:
        return requests.get(self.base + f"/edit/image/v1/status/{job_id}", headers={"X-API-Key": "k"}).json()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _stored_status(data_dir: Path, job_id: str):
    from server.store import SQLiteStore

    store = SQLiteStore(data_dir / "retouch.sqlite3")
    try:
        return store.get_job(job_id)
    finally:
        store.close()


def test_sigterm_drains_finishes_running_job_and_takes_no_new_one(tmp_path, tiny_weights):
    srv = Serve(tiny_weights, tmp_path / "data", grace_s=30)
    try:
        running = srv.submit("long one pace:60")  # about 3 s
        _wait(lambda: srv.status(running)["status"] == "processing", 30, "the job to start")
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        ready = requests.get(srv.base + "/readyz", timeout=5)
        to_503 = time.monotonic() - sent
        assert ready.status_code == 503
        waiting = srv.submit("arrives during the drain")  # accepted and kept, never started here
        srv.proc.wait(timeout=60)
        exit_code = srv.proc.returncode
    finally:
        srv.close()
    finished, left = _stored_status(tmp_path / "data", running), _stored_status(tmp_path / "data", waiting)
    assert finished.status.value == "completed" and len(finished.results) == 1
    assert left.status.value == "queued" and left.attempts == 0
    assert exit_code == 0
    record(
        "sigterm",
        {
            "readyz_503_after_ms": round(to_503 * 1000, 1),
            "running_job": finished.status.value,
            "job_sent_during_drain": f"{left.status.value} (untouched)",
            "jobs_lost": 0,
        },
    )


def test_sigterm_hands_a_long_job_back_to_the_queue(tmp_path, tiny_weights):
    srv = Serve(tiny_weights, tmp_path / "data", grace_s=1)
    try:
        long_job = srv.submit("very long pace:200")  # about 10 s, far past the 1 s grace
        _wait(lambda: srv.status(long_job)["status"] == "processing", 30, "the job to start")
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        srv.close()
    handed_back = _stored_status(tmp_path / "data", long_job)
    assert handed_back.status.value == "queued" and not handed_back.results
    assert stopped_after < 10
    # The next server runs it to the end: nothing was lost.
    srv = Serve(tiny_weights, tmp_path / "data", grace_s=30)
    try:
        _wait(lambda: srv.status(long_job)["status"] == "completed", 60, "the handed-back job to finish")
    finally:
        srv.close()
    path = ROOT / "benchmarks" / "out" / "reliability" / "sigterm.json"
    if path.exists():
        import json

        data = json.loads(path.read_text())["figures"]
        data.update(grace_s=1, handed_back_then_completed=1, stopped_after_s=round(stopped_after, 2))
        record("sigterm", data)
