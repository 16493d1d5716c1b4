"""Schedules: the descriptor's cron expression starts runs in the background."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from dataproduct.cron import Cron

log = logging.getLogger("dataproduct.schedule")


class Scheduler:
    """Calls `start_run` at every scheduled minute, in a background thread."""

    def __init__(
        self,
        cron: Cron,
        start_run: Callable[[], object],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cron = cron
        self._now = now
        self._start_run = start_run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self.next_run: datetime | None = None

    def start(self) -> None:
        """Begin waiting for the next scheduled minute."""
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling (a run already started goes on)."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.next_run = self.cron.next_after(self._now())
            delay = (self.next_run - self._now()).total_seconds()
            if self._stop.wait(max(delay, 0)):
                return
            try:
                self._start_run()
            except Exception:  # a failed start must not end the schedule
                log.exception("scheduled run at %s did not start", self.next_run.isoformat())
