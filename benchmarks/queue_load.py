"""Queue load over several pods on one Redis: jobs/s and the queue's own overhead, zero lost or doubled.

Starts ``retouch serve --role api`` pods and ``--role worker`` pods (each its own process, all on one
Redis and one shared files directory), submits ``--jobs`` edits spread over the API pods from many
threads, polls every job to its end through a different API pod than the one it was sent to, then
checks that every job completed exactly once (one result file, one attempt). The workers run the fast
fake engine by default (``--engine fake``), so the figures are the queue's, not the model's:

- jobs/s: jobs / (last completion - first submission), all pods together;
- queue overhead: per job, total time from submit to completion minus the engine's own time (the
  queue wait, the claim, the store writes, the polling granularity of the worker).

``Cluster`` and ``PodProcess`` are also the harness of tests/system/test_redis_*.py.

    python benchmarks/queue_load.py --weights tiny-weights/weights.yaml --jobs 200 \\
        --append-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EDIT_KEY = "edit-key"
ADMIN_KEY = "admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_data_url(width: int = 64, height: int = 48) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class PodProcess:
    """One ``retouch serve`` process (a pod) with its own port, data dir and log file."""

    def __init__(
        self, cluster: Cluster, role: str, server_id: str, workers: int = 1, env: dict | None = None
    ):
        self.cluster = cluster
        self.role = role
        self.server_id = server_id
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = cluster.root / "pods" / f"{server_id}-{uuid.uuid4().hex[:6]}"
        self.data_dir.mkdir(parents=True)
        self.log_path = self.data_dir / "serve.log"
        cmd = [sys.executable, "-m", "server.cli", "serve", "--role", role, "--server-id", server_id]
        weights = (env or {}).get("RETOUCH_WEIGHTS", str(cluster.weights))  # a pod's own registry
        cmd += ["--weights", weights, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        cmd += ["--workers", str(workers)]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**cluster.env, **(env or {})},
                start_new_session=True,
            )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"pod {self.server_id} exited:\n{self.log_tail()}"
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"pod {self.server_id} did not come up:\n{self.log_tail()}")

    def kill(self) -> None:
        """kill -9 the pod's main process; its worker processes notice the orphaning and exit."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Cluster:
    """API and worker pods on one Redis (unique key prefix) and one shared files directory."""

    def __init__(self, redis_url: str, prefix: str, weights: Path, root: Path, **settings):
        self.redis_url = redis_url
        self.prefix = prefix
        self.weights = Path(weights)
        self.root = Path(root)
        self.files_dir = self.root / "shared-files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        values = {
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "files_dir": str(self.files_dir),
            "api_keys": f"{EDIT_KEY},{ADMIN_KEY}:edit+admin",
            "lease_s": 3,
            "worker_poll_s": 0.05,
            "pod_heartbeat_s": 0.5,
            "pod_dead_after_s": 3,
            "log_format": "text",
            "fetch_allow": "127.0.0.0/8",  # webhook receivers of the tests listen on loopback
            **settings,
        }
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.env.update({f"RETOUCH_{k.upper()}": str(v) for k, v in values.items()})
        self.pods: list[PodProcess] = []

    def start(self, role: str, server_id: str, workers: int = 1, **settings) -> PodProcess:
        """``settings``: this pod's own (e.g. ``edit_model``), on top of the cluster's."""
        env = {f"RETOUCH_{k.upper()}": str(v) for k, v in settings.items()}
        pod = PodProcess(self, role, server_id, workers, env)
        self.pods.append(pod)
        return pod

    def store(self):
        from server.store.redis_store import RedisStore

        return RedisStore(self.redis_url, prefix=self.prefix)

    def wait_workers(self, server_ids: list[str], timeout: float = 180) -> None:
        """Until a worker process of each pod has loaded its engine and heartbeats as ready."""
        store = self.store()
        deadline = time.monotonic() + timeout
        try:
            while True:
                ready = {w["server_id"] for w in store.live_workers(max_age_s=5)}
                if set(server_ids) <= ready:
                    return
                if time.monotonic() > deadline:
                    logs = "\n".join(p.log_tail(1500) for p in self.pods if p.server_id not in ready)
                    raise AssertionError(f"workers not ready: {set(server_ids) - ready}\n{logs}")
                time.sleep(0.2)
        finally:
            store.close()

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()


def submit(client: httpx.Client, api: PodProcess, body: dict) -> httpx.Response:
    return client.post(f"{api.url}/edit/image/v1", json=body, headers={"X-API-Key": EDIT_KEY})


def status(client: httpx.Client, api: PodProcess, job_id: str) -> dict:
    resp = client.get(f"{api.url}/edit/image/v1/status/{job_id}", headers={"X-API-Key": EDIT_KEY})
    resp.raise_for_status()
    return resp.json()


def wait_all(client, apis: list[PodProcess], job_ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll every job (round-robin over the API pods) until all are terminal or time runs out."""
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    turn = 0
    while len(done) < len(job_ids) and time.monotonic() < deadline:
        for job_id in [j for j in job_ids if j not in done]:
            turn += 1
            body = status(client, apis[turn % len(apis)], job_id)
            if body["status"] in ("completed", "failed", "cancelled"):
                done[job_id] = body
        time.sleep(0.1)
    return done


def result_files(cluster: Cluster, job_id: str) -> list[Path]:
    folder = cluster.files_dir / "results" / job_id
    return sorted(p for p in folder.iterdir() if not p.name.endswith(".part")) if folder.is_dir() else []


def _figures(cluster: Cluster, job_ids: list[str], bodies: dict[str, dict], started: float) -> dict:
    """Checks and figures from the store's own timestamps (no polling granularity in them)."""
    from benchmarks.report import percentile

    store = cluster.store()
    records = {j: store.get_job(j) for j in job_ids}
    store.close()
    completed = [j for j in job_ids if bodies.get(j, {}).get("status") == "completed"]
    finished_at = max((records[j].finished_at for j in completed), default=time.time())
    overhead = [
        records[j].finished_at - records[j].created_at - (records[j].inference_seconds or 0.0)
        for j in completed
    ]
    by_pod: dict[str, int] = {}
    for j in completed:
        by_pod[bodies[j]["server_id"]] = by_pod.get(bodies[j]["server_id"], 0) + 1
    return {
        "jobs": len(job_ids),
        "completed": len(completed),
        "lost": len(job_ids) - len(bodies),
        "duplicated": sum(1 for j in completed if len(result_files(cluster, j)) != 1),
        "rerun": sum(1 for j in completed if records[j].attempts != 1),
        "wall_s": finished_at - started,
        "jobs_per_s": len(completed) / max(finished_at - started, 1e-9),
        "overhead_p50_s": percentile(overhead, 50),
        "overhead_p95_s": percentile(overhead, 95),
        "engine_p50_s": percentile([records[j].inference_seconds or 0.0 for j in completed], 50),
        "by_pod": dict(sorted(by_pod.items())),
    }


def load_run(cluster: Cluster, apis: list[PodProcess], jobs: int, timeout: float = 300) -> dict:
    """Burst: ``jobs`` edits sent at once from 16 threads over ``apis``; overhead includes queue wait."""
    image = png_data_url()
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64))

    def one(i: int) -> str:
        body = {"prompt": f"load {i}", "input_image": image, "seed": i}
        resp = submit(client, apis[i % len(apis)], body)
        assert resp.status_code == 200, resp.text
        return resp.json()["job_id"]

    started = time.time()
    with ThreadPoolExecutor(16) as pool:
        job_ids = list(pool.map(one, range(jobs)))
    # Each job is read back through another API pod than the one it went to.
    bodies = wait_all(client, apis[1:] + apis[:1], job_ids, timeout)
    client.close()
    return _figures(cluster, job_ids, bodies, started)


def idle_run(cluster: Cluster, apis: list[PodProcess], jobs: int, timeout: float = 60) -> dict:
    """One job at a time on idle workers: the overhead is the queue's latency alone (submit to claim,
    the store writes, the worker's poll interval), with no waiting behind other jobs."""
    image = png_data_url()
    client = httpx.Client(timeout=30)
    started = time.time()
    job_ids, bodies = [], {}
    for i in range(jobs):
        resp = submit(client, apis[i % len(apis)], {"prompt": f"idle {i}", "input_image": image})
        assert resp.status_code == 200, resp.text
        job_ids.append(resp.json()["job_id"])
        bodies.update(wait_all(client, apis, job_ids[-1:], timeout))
    client.close()
    return _figures(cluster, job_ids, bodies, started)


def format_table(rows: list[tuple[str, dict]], api_pods: int, worker_pods: int, engine: str) -> str:
    pods = f"{api_pods} api + {worker_pods} worker"
    lines = [
        f"{'run':<15}{'pods':<20}{'engine':<7}{'jobs':>6}{'done':>6}{'lost':>6}{'dup':>5}{'rerun':>7}"
        f"{'jobs/s':>9}{'ovh p50 s':>11}{'ovh p95 s':>11}{'eng p50 s':>11}",
        "-" * 114,
    ]
    for name, f in rows:
        lines.append(
            f"{name:<15}{pods:<20}{engine:<7}{f['jobs']:>6}{f['completed']:>6}{f['lost']:>6}{f['duplicated']:>5}"
            f"{f['rerun']:>7}{f['jobs_per_s']:>9.2f}{f['overhead_p50_s']:>11.3f}{f['overhead_p95_s']:>11.3f}"
            f"{f['engine_p50_s']:>11.3f}"
        )
    for name, f in rows:
        lines.append(f"{name} jobs per worker pod: " + ", ".join(f"{k}={v}" for k, v in f["by_pod"].items()))
    return "\n".join(lines)


def append_results(path: Path, table: str, notes: list[str]) -> None:
    """One dated section appended to RESULTS.md; the numbers come only from this script."""
    from benchmarks.report import git_commit

    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    device = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (this machine)"
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    section = [
        "",
        f"### queue_load (Redis, several pods) - {date} - {device}",
        "",
        f"- command: `{command}` (git {git_commit()})",
        *[f"- {n}" for n in notes],
        "",
        "```",
        table,
        "```",
        "",
    ]
    with path.open("a") as f:
        f.write("\n".join(section))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="weights.yaml (the tiny set is enough)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--idle-jobs", type=int, default=20, help="then this many, one at a time")
    parser.add_argument("--api-pods", type=int, default=2)
    parser.add_argument("--worker-pods", type=int, default=3)
    parser.add_argument("--engine", choices=["fake", "real"], default="fake")
    parser.add_argument("--work-dir", default=None, help="pods' data and shared files [a temp dir]")
    parser.add_argument("--append-results", default=None, help="RESULTS.md to append a section to")
    args = parser.parse_args(argv)

    import tempfile

    from tests.support.redis_server import delete_prefix

    load_before = os.getloadavg()[0]
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="queue-load-"))
    prefix = f"retouch-bench-{uuid.uuid4().hex[:8]}"
    settings = {"engine_factory": "tests.support.fakes:FakeEngine"} if args.engine == "fake" else {}
    cluster = Cluster(args.redis_url, prefix, Path(args.weights).resolve(), root, **settings)
    try:
        workers = [cluster.start("worker", f"gpu-{i + 1}") for i in range(args.worker_pods)]
        apis = [cluster.start("api", f"api-{chr(97 + i)}") for i in range(args.api_pods)]
        for pod in workers + apis:
            pod.wait_up()
        cluster.wait_workers([w.server_id for w in workers])
        rows = [("burst", load_run(cluster, apis, args.jobs))]
        if args.idle_jobs:
            rows.append(("one-at-a-time", idle_run(cluster, apis, args.idle_jobs)))
    finally:
        cluster.stop()
        delete_prefix(args.redis_url, prefix)
    table = format_table(rows, args.api_pods, args.worker_pods, args.engine)
    print(table)
    if args.append_results:
        notes = [
            f"burst: {args.jobs} jobs sent at once from 16 threads round-robin to the API pods, each polled"
            " through another API pod; one-at-a-time: the next job is sent when the last one completed",
            "one worker process per worker pod; one Redis; one shared files directory; all on this machine",
            "engine: fake = tests/support/fakes.py FakeEngine (4 steps of 5 ms plus encoding a 64x48 picture;"
            " its time per job is the eng p50 column): the queue's figures, not the model's"
            if args.engine == "fake"
            else "engine: the real engine on the given weights",
            f"1-minute load average before the run: {load_before:.2f} (machine shared with other work)",
            "overhead = per job, (finished_at - created_at) - inference seconds, store timestamps (queue"
            " wait included);"
            " lost = never reached a terminal state; dup = completed jobs without exactly one result file;"
            " rerun = completed jobs that took more than one attempt",
        ]
        append_results(Path(args.append_results), table, notes)
    return dict(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
