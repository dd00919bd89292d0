"""Faults: kill -9 mid-job, SIGTERM drains, GPU OOM and NaN on the real engine, webhooks, result URLs."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.reliability import record
from tests.support.fakes import FakeEngine
from tests.support.server_harness import AsgiServer, make_settings, png_bytes

ROOT = Path(__file__).resolve().parents[2]
IMG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


class PacedEngine(FakeEngine):
    """The fake engine with a job length chosen by the prompt ("pace:N" = N steps of 50 ms), so a
    test can act while a job is surely running. Loaded by worker processes via engine_factory."""

    def run(self, spec, on_progress=None):
        found = re.search(r"pace:(\d+)", spec.prompt)
        if found and on_progress is not None:
            steps = int(found.group(1))
            for step in range(1, steps + 1):
                on_progress("denoise", step, steps)
                time.sleep(0.05)
        return super().run(spec, on_progress)


PACED = "tests.system.test_reliability_faults:PacedEngine"


class Receiver:
    """A webhook endpoint answering from a script: an int is a status, "hang" outlasts the timeout."""

    def __init__(self, script=(), host: str = "127.0.0.1"):
        self.script = list(script)
        self.calls: list[tuple[dict, bytes, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                action = outer.script.pop(0) if outer.script else 200
                if action == "hang":
                    time.sleep(1.5)
                    action = 200
                self.send_response(action)
                if action == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        return [h["webhook-id"] for h, _, _ in self.calls]

    def close(self):
        self.httpd.shutdown()


def _submit(srv, prompt: str, **extra) -> str:
    r = srv.post("/edit/image/v1", json={"prompt": prompt, "input_image": IMG, **extra})
    assert r.status_code == 200, r.text
    return r.json()["job_id"]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


# -- kill -9 -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_worker_mid_job_repeatedly(tmp_path):
    kills_wanted = 20
    receiver = Receiver()
    settings = make_settings(
        tmp_path, engine_factory=PACED, max_attempts=3, worker_restart_max_delay_s=0, lease_s=2.0
    )
    srv = AsgiServer(settings)
    store = srv.app.state.core.store
    supervisor = srv.app.state.supervisor
    try:
        srv.wait_ready()
        jobs = [_submit(srv, f"job {i} pace:16", callback_url=receiver.url) for i in range(kills_wanted)]
        killed: set[str] = set()
        started = time.monotonic()
        while len(killed) < kills_wanted:

            def running_unkilled():
                for job_id in jobs:
                    rec = store.get_job(job_id)
                    if rec.status.value == "processing" and rec.progress and job_id not in killed:
                        return job_id
                return None

            victim = _wait(running_unkilled, 60, "a running job to kill")
            process = supervisor.slots[0].process
            os.kill(process.pid, signal.SIGKILL)  # mid-job: its progress shows it is inside the engine
            killed.add(victim)
        statuses = {j: srv.wait_status(j, timeout=120)["status"] for j in jobs}
        _wait(lambda: len(set(receiver.ids())) >= len(jobs), 60, "every webhook")
        time.sleep(1.0)  # room for a duplicate to show up, if there were one
        results_on_disk = {
            j: sorted(p.name for p in (settings.data_dir / "results" / j).glob("*")) for j in jobs
        }
        attempts = {j: store.get_job(j).attempts for j in jobs}
    finally:
        srv.close()
        receiver.close()
    lost = [j for j, s in statuses.items() if s != "completed"]
    duplicate_results = [j for j, files in results_on_disk.items() if len(files) != 1]
    ids = receiver.ids()
    duplicate_webhooks = len(ids) - len(set(ids))
    assert lost == [] and duplicate_results == [] and duplicate_webhooks == 0
    assert set(ids) == {f"msg_{j}_completed" for j in jobs}
    assert all(n >= 2 for n in attempts.values())  # every job really was re-run after its kill
    record(
        "kill9",
        {
            "kills": len(killed),
            "jobs": len(jobs),
            "jobs_lost": len(lost),
            "duplicate_results": len(duplicate_results),
            "duplicate_webhooks": duplicate_webhooks,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


# -- GPU out of memory and NaN, on the real engine (tiny weights) ---------------------------------


@pytest.fixture(scope="module")
def refiner_poisoned_weights(tiny_weights, tmp_path_factory) -> Path:
    """A copy of the tiny set whose refiner yields NaN: plain edits work, refined ones hit the guard."""
    import safetensors.torch
    import torch

    copy = tmp_path_factory.mktemp("nan-weights") / "tiny"
    shutil.copytree(tiny_weights.parent, copy)
    for manifest in copy.glob("*manifest*"):
        manifest.unlink()
    path = copy / "z-image-turbo" / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = safetensors.torch.load_file(path)
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            tensors[name] = torch.full_like(tensor, float("nan"))
    safetensors.torch.save_file(tensors, path)
    return copy / "weights.yaml"


def test_gpu_oom_and_nan_on_the_real_engine(tmp_path, refiner_poisoned_weights):
    """OOM: retryable failure, then the same worker runs the next job. NaN: a failed job, no picture."""
    srv = AsgiServer(
        make_settings(
            tmp_path,
            weights=str(refiner_poisoned_weights),
            engine_factory="pipelines:EditEngine",
            fault_injection="oom:inject-oom",
        )
    )
    try:
        srv.wait_ready(timeout=120)
        pid_before = srv.app.state.supervisor.slots[0].process.pid
        oom = srv.wait_status(_submit(srv, "inject-oom: a red square"), timeout=120)
        after = srv.wait_status(_submit(srv, "a blue square"), timeout=120)
        pid_after = srv.app.state.supervisor.slots[0].process.pid
        nan = srv.wait_status(_submit(srv, "a green square", refine_strength=0.5), timeout=120)
        final = srv.wait_status(_submit(srv, "still fine"), timeout=120)
        results_dir = srv.settings.data_dir / "results" / nan["job_id"]
        nan_files = list(results_dir.glob("*")) if results_dir.exists() else []
    finally:
        srv.close()
    assert (
        oom["status"] == "failed" and oom["failure_reason_code"] == "GPU_OUT_OF_MEMORY" and oom["retryable"]
    )
    assert after["status"] == "completed" and pid_after == pid_before  # same worker, no restart
    assert nan["status"] == "failed" and nan["failure_reason_code"] == "NON_FINITE_OUTPUT"
    assert nan["result_url"] is None and nan_files == []  # no black picture was handed out
    assert final["status"] == "completed"
    record(
        "oom",
        {
            "oom_job": f"{oom['status']} {oom['failure_reason_code']} retryable={oom['retryable']}",
            "next_job": after["status"],
            "same_worker_pid": pid_after == pid_before,
        },
    )
    record(
        "nan", {"nan_job": f"{nan['status']} {nan['failure_reason_code']}", "result_files": len(nan_files)}
    )


# -- time limit --------------------------------------------------------------------------------


def test_job_over_its_time_limit_fails_with_timeout_and_worker_goes_on(tmp_path):
    """The soft path (checked between steps; the hard kill of a hung worker is in test_server_workers)."""
    srv = AsgiServer(make_settings(tmp_path, engine_factory=PACED))
    try:
        srv.wait_ready()
        limit = srv.app.state.core.registry.limits.job_timeout_s
        pid = srv.app.state.supervisor.slots[0].process.pid
        started = time.monotonic()
        timed_out = srv.wait_status(_submit(srv, f"too long pace:{int(limit * 40)}"), timeout=limit + 30)
        failed_after = time.monotonic() - started
        after = srv.wait_status(_submit(srv, "short"), timeout=30)
        same_worker = srv.app.state.supervisor.slots[0].process.pid == pid
    finally:
        srv.close()
    assert timed_out["status"] == "failed" and timed_out["failure_reason_code"] == "JOB_TIMEOUT"
    assert timed_out["retryable"] is True and after["status"] == "completed" and same_worker
    assert limit <= failed_after < limit + 5
    record(
        "timeout",
        {
            "limit_s": limit,
            "failed_after_s": round(failed_after, 2),
            "next_job": after["status"],
            "same_worker": same_worker,
        },
    )
