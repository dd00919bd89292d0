"""Pods of a multi-pod deployment (docs/deploy.md): registration, heartbeats, pinning, /v1/servers.

Every pod registers itself in the shared store (server_id, role, GPUs, the models and LoRAs it
holds, live worker processes) and refreshes that every ``pod_heartbeat_s``. API pods use the
registry to accept or refuse ``server_id`` at submit time, and every pod sweeps jobs pinned to a pod
that has been silent past ``pinned_pod_timeout_s``: they fail with SERVER_LOST (retryable) instead
of waiting forever. On one machine (SQLite) the registry is just this server.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading

from fastapi import APIRouter, Depends

from . import memory_report
from .contracts.common import api_key
from .errors import ServiceError
from .settings import Settings

log = logging.getLogger("retouch.pods")

# How often (in heartbeats) a pod looks for jobs pinned to dead pods; the sweep is idempotent.
_SWEEP_EVERY = 5


def detect_gpus() -> list[dict]:
    """GPUs this pod sees, without importing torch (the server never does): ``nvidia-smi``."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        out = subprocess.run(
            [binary, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    allowed = set(visible.split(",")) if visible else None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and (allowed is None or parts[0] in allowed):
            gpus.append({"index": int(parts[0]), "name": parts[1], "memory_mib": int(float(parts[2]))})
    return gpus


def held_models(registry, edit_model: str | None = None) -> list[str]:
    """The models a worker of this pod serves: its edit model (``edit_model``, else the default)
    and the refiner, or with ``swap`` every edit model it may load; the jobs of the other edit
    models are other pods' (or refused)."""
    return sorted(registry.holding(edit_model).pod_models())


class PodAgent:
    """This pod's entry in the registry, kept fresh by a thread; also runs the pinned-job sweep."""

    def __init__(self, settings: Settings, store, registry, supervisor):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.supervisor = supervisor
        # Only a store other pods share has a pod registry (the Pods role); else this server is alone.
        self.shared = store.shared
        self._gpus: list[dict] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pod-heartbeat")

    def info(self) -> dict:
        if self._gpus is None:
            self._gpus = detect_gpus() if self.settings.role != "api" else []
        models = held_models(self.registry, self.settings.edit_model) if self.settings.role != "api" else []
        loras = {m: sorted(self.registry.models[m].loras) for m in models}
        return {
            "server_id": self.settings.server_id,
            "role": self.settings.role,
            "state": "draining" if getattr(self.supervisor, "draining", False) else "running",
            "base_url": self.settings.base_url,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpus": self._gpus,
            "models": models,
            "loras": loras,
            "workers": len(self.supervisor.slots),
            "workers_alive": self.supervisor.beating(),
            # each worker's memory plan (docs/memory.md), once its engine has loaded
            "memory_plans": memory_report.read_all(self.settings) if self.settings.role != "api" else [],
            # the edit models each worker has loaded now, and what loading each took (swap ETAs)
            "resident": memory_report.read_models(self.settings) if self.settings.role != "api" else [],
        }

    def start(self) -> None:
        if self.shared:
            self.beat()
            self._thread.start()

    def stop(self) -> None:
        if not self.shared:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.pod_stopped(self.settings.server_id)
        except Exception:
            log.warning("could not mark this pod stopped", exc_info=True)

    def beat(self) -> None:
        self.store.pod_heartbeat(self.info())

    def _loop(self) -> None:
        beats = 0
        while not self._stop.wait(self.settings.pod_heartbeat_s):
            try:
                self.beat()
                beats += 1
                if beats % _SWEEP_EVERY == 0:
                    self.sweep_orphaned_pins()
            except Exception:
                log.exception("pod heartbeat failed")

    # -- who is alive ------------------------------------------------------------------------
    def is_live(self, pod: dict) -> bool:
        return pod.get("state") != "stopped" and pod["age_s"] <= self.settings.pod_dead_after_s

    def live_pods(self) -> list[dict]:
        if not self.shared:
            return [{**self.info(), "age_s": 0.0}]
        return [p for p in self.store.pods() if self.is_live(p)]

    def largest_side(self, server_id: str | None = None, model: str | None = None) -> int | None:
        """The largest output side the memory plans of the GPU pods that may run a job fit: the
        pinned pod's, else the smallest over every live pod (any of them may claim it). API pods
        read it from the pod records, so they refuse oversize jobs as worker pods do."""
        pods = [p for p in self.live_pods() if p.get("role") != "api"]
        if server_id is not None:
            pods = [p for p in pods if p["server_id"] == server_id]
        if model is not None:  # only the pods that may run it
            pods = [p for p in pods if not p.get("models") or model in p["models"]]
        plans = [plan for p in pods for plan in p.get("memory_plans") or ()]
        sides = [side for plan in plans if (side := memory_report.side_for(plan, model)) is not None]
        return min(sides) if sides else None

    def holders(self, model: str) -> list[str]:
        """The live GPU pods whose workers hold ``model``."""
        return [
            p["server_id"]
            for p in self.live_pods()
            # loading workers count: the job waits in the queue for them, as any job does at start
            if p.get("role") != "api" and model in (p.get("models") or ())
        ]

    def swap_seconds(self, model: str, server_id: str | None = None) -> float:
        """What a job for ``model`` waits for its model to be loaded: 0 when a worker of a pod that
        may run it has it loaded, else the fastest measured load of it there (weights.yaml swap),
        or, never loaded yet, the slowest load those pods measured of any model."""
        pods = [p for p in self.live_pods() if p.get("role") != "api" and model in (p.get("models") or ())]
        if server_id is not None:
            pods = [p for p in pods if p["server_id"] == server_id]
        reports = [r for p in pods for r in p.get("resident") or ()]
        if not reports or any(model in r.get("resident", ()) for r in reports):
            return 0.0
        measured = [r["load_seconds"][model] for r in reports if model in r.get("load_seconds", {})]
        if measured:
            return float(min(measured))
        return float(max((s for r in reports for s in r.get("load_seconds", {}).values()), default=0.0))

    def check_holder(self, model: str, server_id: str | None) -> None:
        """Refuse now a job for a model no live pod (or not the pinned one) holds, naming what is."""
        holders = self.holders(model)
        if (server_id in holders) if server_id is not None else bool(holders):
            return
        where = f"the pod {server_id!r}" if server_id else "any live pod"
        edit_models = {name for name, _ in self.registry.edit_models()}
        held = sorted({m for p in self.live_pods() for m in p.get("models") or () if m in edit_models})
        raise ServiceError(
            "UNSUPPORTED_PARAMETER",
            f"the model {model!r} is not loaded on {where} now (loaded: {', '.join(held) or 'none'})",
            field="model",
        )

    def check_server_id(self, server_id: str | None) -> None:
        """Refuse at once a job pinned to a pod that does not exist, is dead, or runs no workers."""
        if server_id is None:
            return
        if not self.shared:
            if server_id != self.settings.server_id:
                raise ServiceError(
                    "WRONG_SERVER",
                    f"server_id {server_id!r} is not this server ({self.settings.server_id!r})",
                    field="server_id",
                )
            return
        pod = self.store.get_pod(server_id)
        if pod is None:
            raise ServiceError(
                "WRONG_SERVER", f"server_id {server_id!r} is not a known pod", field="server_id"
            )
        if not self.is_live(pod) or pod.get("role") == "api" or not pod.get("workers_alive"):
            raise ServiceError(
                "WRONG_SERVER",
                f"server_id {server_id!r} is not running GPU workers now"
                f" (last heard from {pod['age_s']:.0f} s ago)",
                field="server_id",
            )

    def sweep_orphaned_pins(self) -> list[str]:
        """Fail jobs pinned to pods silent for ``pinned_pod_timeout_s``; returns their ids."""
        failed = []
        pods = {p["server_id"]: p for p in self.store.pods()}
        for queue in self.store.queues():
            if not queue.startswith("pod:"):
                continue
            server_id = queue.removeprefix("pod:")
            pod = pods.get(server_id)
            if pod is not None and pod["age_s"] < self.settings.pinned_pod_timeout_s:
                continue
            waiting = self.store.queued_jobs(queue) + self.store.processing_jobs(queue)
            for job_id in waiting:
                record = self.store.get_job(job_id)
                if record is None or record.status.is_terminal():
                    continue
                message = (
                    f"the pod {server_id!r} this job is pinned to has been unreachable for over"
                    f" {self.settings.pinned_pod_timeout_s:g} s; submit it again (to another pod or unpinned)"
                )
                if self.store.fail(job_id, "SERVER_LOST", message, True):
                    failed.append(job_id)
                    log.warning("pinned job failed: its pod is gone", extra={"job_id": job_id})
        return failed


def build_servers_router(core, pods: PodAgent) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.get("/v1/servers")
    def list_servers(key: str | None = Depends(api_key(bearer_first=False))) -> dict:
        """Live pods: server_id, role, GPUs, models and LoRAs held, workers, heartbeat age. Scope admin."""
        core.authenticate(key, scope="admin")
        servers = [
            {
                **{k: v for k, v in p.items() if k not in ("heartbeat_at", "pid")},
                "age_s": round(p["age_s"], 3),
            }
            for p in pods.live_pods()
        ]
        return {"servers": servers, "total": len(servers)}

    return router
