"""Requests waiting for a job wake on its change signal (server/job_events.py), sent from another
process as the worker sends it: over the data folder's socket on one machine, over Redis pub/sub
between pods. A signal nobody hears is harmless."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest

from server.job_events import EventSender, JobEvents, socket_path
from tests.support.redis_server import redis_url, unique_prefix  # noqa: F401 (fixture)
from tests.support.server_harness import make_settings


def _publish(settings_json: str, job_id: str) -> None:
    from server.settings import Settings

    EventSender(Settings.model_validate_json(settings_json)).publish(job_id)


async def _woken_by_another_process(settings) -> tuple[bool, bool]:
    events = JobEvents(settings)
    events.start()
    try:
        async with events.watch("job_a") as watch, events.watch("job_b") as other:
            await asyncio.sleep(0.2)  # the Redis subscription is made on the listener's thread
            ctx = multiprocessing.get_context("spawn")
            sender = ctx.Process(target=_publish, args=(settings.model_dump_json(), "job_a"))
            sender.start()
            woken = await watch.wait(timeout=30)
            await asyncio.to_thread(sender.join, 30)
            return woken, await other.wait(timeout=0.2)
    finally:
        events.stop()


def test_a_worker_process_signal_wakes_the_request_watching_that_job(tmp_path):
    settings = make_settings(tmp_path)
    woken, other = asyncio.run(_woken_by_another_process(settings))
    assert woken and not other  # only the watcher of that job wakes
    assert not socket_path(settings).exists()  # the listener cleans up after itself


def test_between_pods_the_signal_goes_over_redis(tmp_path, redis_url):  # noqa: F811
    settings = make_settings(tmp_path, redis_url=redis_url, redis_prefix=unique_prefix())
    woken, other = asyncio.run(_woken_by_another_process(settings))
    assert woken and not other


def test_a_signal_nobody_listens_to_is_dropped_quietly(tmp_path):
    EventSender(make_settings(tmp_path)).publish("job_x")  # no API process: no error, no wait


@pytest.mark.parametrize("long_name", [False, True])
def test_the_socket_fits_however_deep_the_data_folder_is(tmp_path, long_name):
    data = tmp_path / ("d" * 120 if long_name else "d") / "data"
    path = socket_path(make_settings(tmp_path, data_dir=data))
    assert len(str(path)) <= 100
