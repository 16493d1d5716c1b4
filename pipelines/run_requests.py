"""Runs asked for by loads: many requests while a run goes become one run after it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dataproduct.errors import DataproductError
from pipelines.runs import Run

log = logging.getLogger("dataproduct")


class RunRequests:
    """Starts a pipeline run for each burst of requests, never two at once."""

    def __init__(self, start: Callable[[str], Run], active: Callable[[], Run | None]) -> None:
        self._start = start
        self._active = active
        self._pending: str | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last: Run | None = None

    def request(self, trigger: str) -> None:
        """Ask for a run (coalesced with other requests not yet served)."""
        with self._lock:
            self._pending = trigger
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="dataproduct-run-requests", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _serve(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while (running := self._active()) is not None and not self._stopping:
                running.done.wait(1)
            with self._lock:
                trigger, self._pending = self._pending, None
            if self._stopping:
                return
            if trigger is None:
                continue
            try:
                self.last = self._start(trigger)
            except DataproductError as error:
                if self._active() is not None:  # another run started meanwhile: wait for it
                    self.request(trigger)
                    continue
                log.warning("run requested by %s not started: %s", trigger, error.message)
            except Exception:  # this thread must keep serving requests
                log.exception("run requested by %s not started", trigger)

    def stop(self) -> None:
        """Serve no more requests."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
