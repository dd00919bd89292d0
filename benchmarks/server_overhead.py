"""Server overhead: the same edit through HTTP + queue + worker vs the engine called directly.

A real ``retouch serve`` subprocess (uvicorn, SQLite queue, a spawned worker process) receives
each job through the imagepipeline.io contract; the client polls the status endpoint and downloads
the result, as the official client does. Two views of the added latency are printed:

- per job: client end-to-end time minus the engine time the worker measured for that same job
  (``inference_time_seconds``): what HTTP, the queue, polling and file handling add;
- against the engine called directly in this process on the same input (p50 vs p50).

While one long job runs, K concurrent clients hammer ``GET /edit/image/v1/status/{id}`` and the
requests/s they get is reported. The script measures; it asserts nothing about speed.

    python benchmarks/server_overhead.py --tiny --runs 10 --append-results benchmarks/RESULTS.md
    # GPU, full-size random weights built on the device inside the worker (no weights on disk):
    python benchmarks/server_overhead.py --full --no-direct --runs 10 --append-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402

API_KEY = "bench-key"
FULL_FACTORY = "benchmarks.server_overhead:full_size_engine"
RUNNING: set[Server] = set()  # servers started and not yet stopped, for a caller that must exit at once


def full_size_engine(registry):
    """Engine factory for the worker in ``--full`` mode: the full architectures, random bf16 weights."""
    import torch

    from benchmarks.engines import full_engine

    engine, _notes, _stock = full_engine(torch.device("cuda"), [8], refiner=False)
    return engine


def picture(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.radial_gradient("L").resize((side, side)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``retouch serve`` subprocess on a free port; stopped on exit."""

    def __init__(self, weights: Path, data_dir: Path, env: dict[str, str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "server.cli", "serve", "--weights", str(weights)]
        cmd += ["--port", str(self.port), "--data-dir", str(data_dir), "--workers", "1"]
        self.log = open(data_dir.parent / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            cmd, cwd=report.ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        RUNNING.add(self)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited early; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        RUNNING.discard(self)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def job_body(data_url: str, **extra) -> dict:
    body = {"prompt": "make it warmer.", "input_image": data_url, "seed": 7, "output_format": "png"}
    return body | extra


def one_job(client: httpx.Client, body: dict, poll_s: float) -> dict:
    t0 = time.perf_counter()
    created = client.post("/edit/image/v1", json=body)
    created.raise_for_status()
    job_id = created.json()["job_id"]
    while True:
        status = client.get(f"/edit/image/v1/status/{job_id}").json()
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(poll_s)
    if status["status"] != "completed":
        raise SystemExit(f"job {job_id} ended {status['status']}: {status.get('error')}")
    client.get(status["result_url"]).raise_for_status()
    e2e = time.perf_counter() - t0
    return {"e2e": e2e, "engine": status["inference_time_seconds"], "queue": status["queue_wait_seconds"]}


async def status_throughput(base: str, job_id: str, seconds: float, concurrency: int) -> dict:
    count, latencies, running_until = 0, [], None
    deadline = time.perf_counter() + seconds
    headers = {"X-API-Key": API_KEY}

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal count, running_until
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await client.get(f"/edit/image/v1/status/{job_id}")
            latencies.append(time.perf_counter() - t0)
            count += 1
            if r.json()["status"] == "processing":
                running_until = time.perf_counter()

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    covered = 0.0 if running_until is None else min(1.0, (running_until - started) / elapsed)
    return {
        "requests_per_s": count / elapsed,
        "requests": count,
        "latency_p50_ms": report.percentile(latencies, 50) * 1000,
        "latency_p95_ms": report.percentile(latencies, 95) * 1000,
        "job_running_fraction": covered,
    }


def measure_server(weights: Path, env: dict[str, str], workdir: Path, data_url: str, *, runs: int,
                   warmup: int, poll_s: float, status_seconds: float, status_concurrency: int,
                   ready_timeout: float, extra: dict | None = None) -> dict:  # fmt: skip
    """``runs`` jobs through a ``retouch serve`` subprocess after ``warmup`` ones; then, while one long
    job runs, the status endpoint's requests/s (left out when ``status_seconds`` is 0).

    ``env`` is added to this process's environment; PYTHONPATH keeps what it held (carried wheels).
    """
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(report.ROOT), os.environ.get("PYTHONPATH")) if p)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    server = Server(weights, workdir / "data", env)
    status = None
    try:
        server.wait_ready(timeout=ready_timeout)
        with httpx.Client(base_url=server.base, headers={"X-API-Key": API_KEY}, timeout=600) as client:
            for _ in range(warmup):
                one_job(client, job_body(data_url, **(extra or {})), poll_s)
            jobs = [one_job(client, job_body(data_url, **(extra or {})), poll_s) for _ in range(runs)]
            if status_seconds > 0:
                # A long job to watch: the full model with many steps (true CFG doubles each step).
                steps = 40 if "RETOUCH_ENGINE_FACTORY" in env else 100
                long = job_body(data_url, faster_inference=False, num_inference_steps=steps, **(extra or {}))
                job_id = client.post("/edit/image/v1", json=long).json()["job_id"]
                while client.get(f"/edit/image/v1/status/{job_id}").json()["status"] == "queued":
                    time.sleep(0.02)
                status = asyncio.run(
                    status_throughput(server.base, job_id, status_seconds, status_concurrency)
                )
    finally:
        server.stop()
    return {"jobs": jobs, "status": status}


def direct_engine_times(weights: Path, image: bytes, runs: int, warmup: int) -> list[float]:
    from pipelines import EditEngine, EditSpec, load_registry

    engine = EditEngine(load_registry(weights))
    spec = EditSpec(prompt="make it warmer.", images=[image], seed=7, output_format="png", lightning_steps=8)
    for _ in range(warmup):
        engine.run(spec)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.run(spec)
        times.append(time.perf_counter() - t0)
    del engine
    return times


def table(direct: list[float], jobs: list[dict], status: dict) -> str:
    e2e = [j["e2e"] for j in jobs]
    added = [j["e2e"] - j["engine"] for j in jobs]
    engine = [j["engine"] for j in jobs]
    rows = [
        ("engine in the worker (s)", engine),
        ("HTTP end to end (s)", e2e),
        ("added per job: e2e - worker engine (s)", added),
        ("queue wait reported (s)", [j["queue"] for j in jobs]),
    ]
    if direct:
        rows.insert(0, ("engine called directly (s)", direct))
    lines = [f"{'':44}{'p50':>10}{'p95':>10}", "-" * 64]
    for name, values in rows:
        lines.append(f"{name:44}{report.percentile(values, 50):>10.4f}{report.percentile(values, 95):>10.4f}")
    ratio = report.percentile(added, 50) / report.percentile(engine, 50)
    lines.append(f"{'added / engine (p50)':44}{ratio:>10.2%}")
    if direct:
        vs_direct = report.percentile(e2e, 50) - report.percentile(direct, 50)
        lines.append(f"{'e2e p50 - direct p50 (s)':44}{vs_direct:>10.4f}")
    if status is None:
        return "\n".join(lines)
    lines.append(
        f"status endpoint while a job runs: {status['requests_per_s']:.0f} req/s "
        f"({status['requests']} requests, p50 {status['latency_p50_ms']:.1f} ms, "
        f"p95 {status['latency_p95_ms']:.1f} ms, "
        f"job running for {status['job_running_fraction']:.0%} of the window)"
    )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="tiny random weights on CPU (default)")
    mode.add_argument("--full", action="store_true", help="full-size random weights in the worker (GPU)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--side", type=int, help="input picture side (default 128 tiny, 1024 full)")
    p.add_argument("--poll-s", type=float, default=0.01, help="client status polling interval")
    p.add_argument("--status-seconds", type=float, default=3.0)
    p.add_argument("--status-concurrency", type=int, default=8)
    p.add_argument("--no-direct", action="store_true", help="skip the in-process engine comparison")
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--append-results", metavar="MD")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    side = args.side or (1024 if args.full else 128)
    image = picture(side)
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    notes = [f"one {side}x{side} input, Lightning-8, png; client polls every {args.poll_s * 1000:.0f} ms"]
    with tempfile.TemporaryDirectory(prefix="retouch-overhead-") as tmp:
        tmp = Path(tmp)
        env = {"RETOUCH_API_KEYS": API_KEY}
        if args.full:
            weights = report.ROOT / "weights.yaml"
            env["RETOUCH_ENGINE_FACTORY"] = FULL_FACTORY
            notes.append("full-size architectures, random bf16 weights built on the GPU inside the worker")
        else:
            from pipelines import build_tiny_weights

            weights = build_tiny_weights(tmp / "weights")
            notes.append("tiny random-weight set (`retouch weights tiny`) on the real code path")
        direct = [] if args.no_direct else direct_engine_times(weights, image, args.runs, args.warmup)
        measured = measure_server(weights, env, tmp, data_url, runs=args.runs, warmup=args.warmup,
                                  poll_s=args.poll_s, status_seconds=args.status_seconds,
                                  status_concurrency=args.status_concurrency,
                                  ready_timeout=1800 if args.full else 300)  # fmt: skip
        jobs, status = measured["jobs"], measured["status"]
    device = torch.device("cuda" if args.full else "cpu")
    meta = report.run_meta(device)
    text = table(direct, jobs, status)
    print("\n".join(report.header_lines("server overhead", meta, notes)))
    print(text)
    if args.json:
        report.write_json(args.json, {"meta": meta, "direct": direct, "jobs": jobs, "status": status})
    if args.append_results:
        report.append_results(args.append_results, "server overhead", meta, notes, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
