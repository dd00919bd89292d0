"""Job-change signals: whoever changes a job says so, and a request waiting for that job wakes now.

The synchronous contracts (OpenAI, Depicta) hold a request open until its job ends, and OpenAI's
stream sends each preview as it is written. Instead of every such request reading the store ten
times a second, they wait on a signal: on one machine (SQLite) a Unix datagram socket the API
process listens on, which the worker processes write job ids to; with Redis a pub/sub channel
that every API pod subscribes to. A signal is only a hint to read the store again: a lost one
costs a waiter its re-check interval (``RECHECK_S``), never a result.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from .settings import Settings

log = logging.getLogger("retouch.events")

# A waiter reads the store at least this often even without a signal (one lost, a pod gone).
RECHECK_S = 1.0
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


def socket_path(settings: Settings) -> Path:
    """Where the API process listens; in /tmp when the data folder's path is too long for a socket."""
    path = Path(settings.data_dir).resolve() / "job-events.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"retouch-events-{digest}.sock"


def channel(settings: Settings) -> str:
    return f"{settings.redis_prefix}:job-events"


class EventSender:
    """Says "this job changed"; never blocks and never raises (nobody listening is fine)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._redis = None
        self._socket: socket.socket | None = None

    def publish(self, job_id: str) -> None:
        try:
            if self.settings.redis_url:
                if self._redis is None:
                    import redis

                    self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=2)
                self._redis.publish(channel(self.settings), job_id)
                return
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(job_id.encode(), str(socket_path(self.settings)))
        except Exception:  # a hint only: the waiter re-reads the store within RECHECK_S anyway
            log.debug("job event for %s not sent", job_id, exc_info=True)


class _Watch:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def wait(self, timeout: float = RECHECK_S) -> bool:
        """Until the job changed (True) or ``timeout`` passed (False); either way the caller reads
        the store."""
        woken = True
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            woken = False
        self.event.clear()
        return woken


class JobEvents:
    """The API process's listener, and the watches of the requests waiting for jobs."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sender = EventSender(settings)
        self._watches: dict[str, set[_Watch]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- the listener ------------------------------------------------------------------------
    def start(self) -> None:
        target = self._listen_redis if self.settings.redis_url else self._listen_socket
        if not self.settings.redis_url:
            path = socket_path(self.settings)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # left by a server that was killed
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.bind(str(path))
            self._socket.settimeout(0.5)
        self._thread = threading.Thread(target=target, daemon=True, name="job-events")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._socket is not None:
            self._socket.close()
            socket_path(self.settings).unlink(missing_ok=True)

    def _listen_socket(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(256)
            except TimeoutError:
                continue
            except OSError:
                return
            self.fire(data.decode(errors="replace"))

    def _listen_redis(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel(self.settings))
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self.fire(str(message["data"]))
                pubsub.close()
            except redis.RedisError:
                log.warning("job events: Redis subscription lost; retrying in 1 s", exc_info=True)
                self._stop.wait(1.0)

    # -- watching ----------------------------------------------------------------------------
    def fire(self, job_id: str) -> None:
        """Wake every request watching ``job_id`` (from any thread)."""
        with self._lock:
            watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            watch.loop.call_soon_threadsafe(watch.event.set)

    def publish(self, job_id: str) -> None:
        """A change made in this process (a cancel): its own waiters at once, other pods by signal."""
        self.fire(job_id)
        if self.settings.redis_url:
            self.sender.publish(job_id)

    @asynccontextmanager
    async def watch(self, job_id: str):
        """Watch before reading the store, so a change between the read and the wait is not missed."""
        watch = _Watch()
        with self._lock:
            self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(job_id)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[job_id]
