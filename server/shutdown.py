"""Graceful shutdown under an orchestrator: SIGTERM drains before uvicorn stops listening.

On the first SIGTERM, /readyz answers 503 at once (the load balancer stops sending work), no
worker takes another job, and the running jobs get ``shutdown_grace_s`` to finish; a job still
running then goes back to the queue (server/worker.py). Only then does uvicorn close. A second
SIGTERM, or SIGINT, stops at once as uvicorn always does.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import uvicorn

log = logging.getLogger("retouch.shutdown")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, supervisor, grace_s: float):
        super().__init__(config)
        self.supervisor = supervisor
        self.grace_s = grace_s
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and not self._draining:
            self._draining = True
            log.info("SIGTERM: draining (grace %.0f s)", self.grace_s)
            self.supervisor.drain()
            threading.Thread(target=self._exit_when_drained, daemon=True, name="drain").start()
            return
        super().handle_exit(sig, frame)

    def _exit_when_drained(self) -> None:
        # Workers exit on their own once their job is done or handed back; +5 s for that last write.
        deadline = time.monotonic() + self.grace_s + 5
        while self.supervisor.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        log.info("drained; stopping")
        self.should_exit = True


def run(app, settings, **uvicorn_options) -> None:
    config = uvicorn.Config(app, host=settings.host, port=settings.port, **uvicorn_options)
    DrainingServer(config, app.state.supervisor, settings.shutdown_grace_s).run()
