"""Polled sources: a source with `poll_s` is pulled on a timer, in the background.

When its connector can tell the source's state cheaply (`Connector.probe`, e.g. another
product's last run), a poll pulls only after that state changed, so an unchanged upstream
costs one small request and starts no run. A failed poll is logged and recorded like any
pull; the next one tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dataproduct.connector import Connector
from dataproduct.errors import DataproductError

log = logging.getLogger("dataproduct.polling")

Pull = Callable[[str], object]


class SourcePoller:
    """One background thread per polled source."""

    def __init__(self, connectors: dict[str, Connector], pull: Pull) -> None:
        self._polled = {
            name: connector
            for name, connector in connectors.items()
            if connector.pulls and connector.spec.poll_s is not None
        }
        self._pull = pull
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(name,), name=f"poll-{name}", daemon=True)
            for name in self._polled
        ]
        self.markers: dict[str, str | None] = {}

    def start(self) -> None:
        """Begin polling; each source's state as it is now counts as already pulled."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop polling (a pull in progress goes on to its end)."""
        self._stop.set()

    def _loop(self, name: str) -> None:
        connector = self._polled[name]
        interval = float(connector.spec.poll_s or 0)
        self.markers[name] = connector.probe()
        while not self._stop.wait(interval):
            self.poll(name)

    def poll(self, name: str) -> bool:
        """Pull `name` if its state changed (or cannot be told); True when it pulled."""
        connector = self._polled[name]
        marker = connector.probe()
        if marker is not None and marker == self.markers.get(name):
            return False
        try:
            self._pull(name)
        except DataproductError as error:
            log.warning("poll of source %s: %s", name, error.message)
            return True
        except Exception:  # a poll must never end the loop
            log.exception("poll of source %s failed", name)
            return True
        self.markers[name] = marker
        return True
