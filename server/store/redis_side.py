"""Workers, pods, uploads, profiles, the webhook outbox and shared secrets of ``RedisStore``."""

from __future__ import annotations

import json
from dataclasses import asdict

from .base import Profile, Upload, WebhookDelivery

# Entries of workers and pods not heard from for this long are dropped from the registry.
_FORGET_AFTER_S = 24 * 3600


class RedisSideTables:
    """Mixed into ``RedisStore``; relies on its ``r``, ``k``, ``_run`` and ``redis_now``."""

    # -- workers (processes) -----------------------------------------------------------------
    def worker_heartbeat(self, worker_id: str, pid: int, state: str) -> None:
        info = {
            "pid": pid,
            "state": state,
            "heartbeat_at": self.redis_now(),
            "server_id": self.server_id,
            "models": self.models,
        }
        self.r.hset(self.k("workers"), worker_id, json.dumps(info))

    def live_workers(self, max_age_s: float) -> list[dict]:
        now = self.redis_now()
        out, stale = [], []
        for worker_id, raw in self.r.hgetall(self.k("workers")).items():
            info = json.loads(raw)
            age = now - info["heartbeat_at"]
            if age > _FORGET_AFTER_S:
                stale.append(worker_id)
            elif info["state"] == "ready" and age <= max_age_s:
                out.append({"id": worker_id, **info})
        if stale:
            self.r.hdel(self.k("workers"), *stale)
        return out

    def ready_workers(self, max_age_s: float) -> list[str]:
        return [w["id"] for w in self.live_workers(max_age_s)]

    # -- pods (scale-out) --------------------------------------------------------------------
    def pod_heartbeat(self, info: dict) -> None:
        """Register or refresh a pod: ``info`` holds its server_id, role, GPUs, models, LoRAs."""
        now = self.redis_now()
        previous = self.r.hget(self.k("pods"), info["server_id"])
        started = json.loads(previous).get("registered_at", now) if previous else now
        body = {**info, "heartbeat_at": now, "registered_at": started}
        self.r.hset(self.k("pods"), info["server_id"], json.dumps(body))

    def pods(self) -> list[dict]:
        """Every pod ever registered (minus long-dead ones), each with ``age_s`` since its heartbeat."""
        now = self.redis_now()
        out, stale = [], []
        for server_id, raw in self.r.hgetall(self.k("pods")).items():
            info = json.loads(raw)
            info["age_s"] = max(now - info["heartbeat_at"], 0.0)
            if info["age_s"] > _FORGET_AFTER_S:
                stale.append(server_id)
            else:
                out.append(info)
        if stale:
            self.r.hdel(self.k("pods"), *stale)
        return sorted(out, key=lambda p: p["server_id"])

    def get_pod(self, server_id: str) -> dict | None:
        raw = self.r.hget(self.k("pods"), server_id)
        if raw is None:
            return None
        info = json.loads(raw)
        info["age_s"] = max(self.redis_now() - info["heartbeat_at"], 0.0)
        return info

    def pod_stopped(self, server_id: str) -> None:
        """A pod that shuts down cleanly says so at once (its pinned jobs still wait for it to return)."""
        raw = self.r.hget(self.k("pods"), server_id)
        if raw:
            info = json.loads(raw)
            info["state"] = "stopped"
            self.r.hset(self.k("pods"), server_id, json.dumps(info))

    # The pinned-job sweep (server/pods.py) reads a pod queue's waiting and running jobs.
    def queued_jobs(self, queue: str) -> list[str]:
        return self.r.zrange(self.k("queued", queue), 0, -1)

    def processing_jobs(self, queue: str) -> list[str]:
        ids = self.r.zrange(self.k("leases"), 0, -1)
        return [i for i in ids if self.r.hget(self.k("job", i), "queue") == queue]

    def queues(self) -> set[str]:
        return set(self.r.smembers(self.k("queues")))

    # -- secrets -----------------------------------------------------------------------------
    def shared_secret(self, name: str, make) -> str:
        """One value for every pod: the first pod to ask stores it (SET NX), the others read it."""
        key = self.k("secret", name)
        self.r.set(key, make(), nx=True)
        return self.r.get(key)

    # -- uploads and profiles ----------------------------------------------------------------
    def add_upload(self, upload: Upload) -> None:
        pipe = self.r.pipeline()
        pipe.set(self.k("upload", upload.id), json.dumps(asdict(upload)))
        pipe.zadd(self.k("uploads_expire"), {upload.id: upload.expires_at})
        pipe.execute()

    def get_upload(self, upload_id: str) -> Upload | None:
        raw = self.r.get(self.k("upload", upload_id))
        return Upload(**json.loads(raw)) if raw else None

    def expire_uploads(self) -> list[str]:
        return [json.loads(raw)["path"] for raw in self._run("expire_uploads")]

    def add_profile(self, profile: Profile) -> None:
        pipe = self.r.pipeline()
        pipe.set(self.k("profile", profile.id), json.dumps(asdict(profile)))
        pipe.zadd(self.k("profiles", profile.owner), {profile.id: profile.created_at})
        pipe.execute()

    def get_profile(self, profile_id: str) -> Profile | None:
        raw = self.r.get(self.k("profile", profile_id))
        return Profile(**json.loads(raw)) if raw else None

    def list_profiles(self, owner: str) -> list[Profile]:
        ids = self.r.zrange(self.k("profiles", owner), 0, -1)
        raws = self.r.mget([self.k("profile", i) for i in ids]) if ids else []
        return [Profile(**json.loads(raw)) for raw in raws if raw]

    def delete_profile(self, profile_id: str) -> bool:
        profile = self.get_profile(profile_id)
        if profile is None:
            return False
        pipe = self.r.pipeline()
        pipe.delete(self.k("profile", profile_id))
        pipe.zrem(self.k("profiles", profile.owner), profile_id)
        deleted, _ = pipe.execute()
        return deleted == 1

    # -- webhook outbox ----------------------------------------------------------------------
    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        h = self.r.hgetall(self.k("delivery", delivery_id))
        if not h:
            return None
        return WebhookDelivery(
            id=h["id"],
            job_id=h["job_id"],
            event=h["event"],
            url=h["url"],
            contract=h["contract"],
            attempts=int(h["attempts"]),
            state=h["state"],
            next_attempt_at=float(h["next_attempt_at"]),
            last_error=h.get("last_error") or None,
        )

    def due_deliveries(self, limit: int) -> list[WebhookDelivery]:
        ids = self._run("due_deliveries", limit, self.delivery_claim_s)
        return [d for d in (self.get_delivery(i) for i in ids) if d is not None and d.state == "pending"]

    def delivery_done(self, delivery_id: str) -> None:
        key = self.k("delivery", delivery_id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={"state": "delivered", "delivered_at": self.redis_now()})
        pipe.hincrby(self.k("deliverycounts"), "pending", -1)
        pipe.hincrby(self.k("deliverycounts"), "delivered", 1)
        pipe.hincrby(key, "attempts", 1)
        pipe.zrem(self.k("deliveries"), delivery_id)
        pipe.expire(key, self.retention_s)
        pipe.execute()

    def delivery_failed(self, delivery_id: str, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; ``next_attempt_at`` None means give up."""
        key = self.k("delivery", delivery_id)
        pipe = self.r.pipeline()
        pipe.hincrby(key, "attempts", 1)
        pipe.hset(
            key, mapping={"last_error": error[:500], "state": "pending" if next_attempt_at else "failed"}
        )
        if next_attempt_at:
            pipe.hset(key, "next_attempt_at", next_attempt_at)
            pipe.zadd(self.k("deliveries"), {delivery_id: next_attempt_at})
        else:
            pipe.zrem(self.k("deliveries"), delivery_id)
            pipe.expire(key, self.retention_s)
            pipe.hincrby(self.k("deliverycounts"), "pending", -1)
            pipe.hincrby(self.k("deliverycounts"), "failed", 1)
        pipe.execute()
