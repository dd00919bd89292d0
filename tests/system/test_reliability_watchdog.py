"""The watchdog: a worker process that stops beating (SIGSTOP) is killed and replaced and its job
runs again; a long step of a live worker is not a hang; /readyz never contradicts itself."""

from __future__ import annotations

import base64
import os
import re
import signal
import threading
import time

from benchmarks.reliability import record
from tests.support.fakes import FakeEngine
from tests.support.server_harness import AsgiServer, make_settings, png_bytes

IMG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
HANG_S = 1.5


class LongStepEngine(FakeEngine):
    """The fake engine; "step:S" in the prompt spends S seconds in one step, calling nobody back
    (like one denoise step of a 4k refine on a slow GPU)."""

    def run(self, spec, on_progress=None):
        found = re.search(r"step:([\d.]+)", spec.prompt)
        if found:
            time.sleep(float(found.group(1)))
        return super().run(spec, on_progress)


class ReadyzProbe(threading.Thread):
    """Polls /readyz and keeps every answer: (seconds since start, status, workers_alive)."""

    def __init__(self, srv: AsgiServer):
        super().__init__(daemon=True)
        self.srv = srv
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.halt.is_set():
            resp = self.srv.get("/readyz")
            self.samples.append(
                (time.monotonic() - self.started_at, resp.status_code, resp.json()["workers_alive"])
            )
            time.sleep(0.05)

    def contradictions(self) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if (s[1] == 200) != (s[2] > 0)]


def _wait(what, predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _submit(srv: AsgiServer, prompt: str) -> str:
    resp = srv.post("/edit/image/v1", json={"prompt": prompt, "input_image": IMG})
    assert resp.status_code == 200, resp.text
    return resp.json()["job_id"]


def test_stopped_worker_is_killed_and_replaced_long_step_is_not(tmp_path):
    settings = make_settings(
        tmp_path,
        engine_factory="tests.system.test_reliability_watchdog:LongStepEngine",
        worker_hang_s=HANG_S,
        lease_s=30.0,  # far longer than the hang limit: only the watchdog can bring the job back soon
    )
    srv = AsgiServer(settings)
    supervisor = srv.app.state.supervisor
    store = srv.app.state.core.store
    stopped = None
    probe = ReadyzProbe(srv)
    try:
        srv.wait_ready()
        probe.start()
        # A live worker in one step three times the hang limit long is left alone.
        first = supervisor.slots[0].process
        long_step = 3 * HANG_S
        job = _submit(srv, f"step:{long_step}")
        assert srv.wait_status(job)["status"] == "completed"
        assert supervisor.slots[0].process is first and store.get_job(job).attempts == 1

        # A stopped one is killed (SIGKILL) and replaced; its job runs again on the new worker.
        job = _submit(srv, "step:2")
        srv.wait_status(job, ("processing",))
        stopped = first
        os.kill(stopped.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _wait("the stopped worker to be killed", lambda: stopped.exitcode is not None)
        killed_after = time.monotonic() - t0
        assert stopped.exitcode == -signal.SIGKILL
        _wait("a new worker", lambda: supervisor.slots[0].process not in (None, stopped))
        _wait("/readyz 200 again", lambda: srv.get("/readyz").status_code == 200)
        replaced_after = time.monotonic() - t0
        done = srv.wait_status(job)
        assert done["status"] == "completed", done
        attempts = store.get_job(job).attempts
        assert attempts == 2
        probe.halt.set()
        probe.join(timeout=5)
        assert any(s[1] == 503 for s in probe.samples)  # the outage was seen ...
        assert probe.contradictions() == []  # ... and never as "503, yet 1 worker alive"
    finally:
        probe.halt.set()
        if stopped is not None and stopped.exitcode is None:
            os.kill(stopped.pid, signal.SIGCONT)
            stopped.kill()
        srv.close()
    record(
        "watchdog",
        {
            "hang_limit_s": HANG_S,
            "lease_s": 30,
            "long_step_s": long_step,
            "long_step_worker_killed": False,
            "stopped_worker_killed_after_s": round(killed_after, 2),
            "exit_signal": "SIGKILL",
            "replaced_and_ready_after_s": round(replaced_after, 2),
            "job": f"{done['status']} on attempt {attempts}",
            "readyz_samples": len(probe.samples),
            "readyz_contradictions": len(probe.contradictions()),
        },
    )
