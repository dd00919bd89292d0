"""A Redis for tests: the one on 127.0.0.1:6379 when it answers, else a private ``redis-server``.

Every test run gets its own key prefix, and its keys are deleted afterwards, so runs can share one
Redis with each other and with a developer's data. CI machines without a Redis get a throwaway
server on a unix socket in a temporary folder (no port to collide with).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    pytest.importorskip("redis")
    # RETOUCH_TEST_PRIVATE_REDIS=1 takes the CI path even where a Redis is listening.
    if _answers(DEFAULT_URL) and not os.environ.get("RETOUCH_TEST_PRIVATE_REDIS"):
        yield DEFAULT_URL
        return
    if shutil.which("redis-server") is None:
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary to start one")
    proc, url = start_private_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def start_private_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server on a unix socket in ``folder`` (no TCP port), answering PING; and its URL."""
    socket_path = folder / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(socket_path), "--dir", str(folder), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}"
    deadline = time.monotonic() + 20
    while not (socket_path.exists() and _answers(url)):
        assert proc.poll() is None, "redis-server exited at start"
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return proc, url


def unique_prefix() -> str:
    return f"retouch-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture
def redis_prefix(redis_url):
    prefix = unique_prefix()
    yield prefix
    delete_prefix(redis_url, prefix)
