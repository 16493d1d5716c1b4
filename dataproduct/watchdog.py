"""One thread that stops statements past their deadline (a timer thread per query costs
more than the small queries it guards)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol


class Interruptible(Protocol):
    """What can be stopped: a DuckDB cursor."""

    def interrupt(self) -> None: ...


@dataclass
class Ticket:
    """One watched statement: cancel it when it ends; `fired` once it was interrupted."""

    target: Interruptible
    cancelled: bool = False
    fired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """The statement ended: never interrupt it."""
        with self.lock:
            self.cancelled = True


class Watchdog:
    """Deadlines in a heap, served by one daemon thread started on first use."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Ticket]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, target: Interruptible, seconds: float) -> Ticket:
        """Interrupt `target` after `seconds` unless the ticket is cancelled first."""
        ticket = Ticket(target)
        with self._wakeup:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), ticket))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            self._wakeup.notify()
        return ticket

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wakeup.wait()
                    continue
                due = self._heap[0][0] - time.monotonic()
                if due > 0:
                    self._wakeup.wait(due)
                    continue
                _, _, ticket = heapq.heappop(self._heap)
            with ticket.lock:
                if not ticket.cancelled:
                    ticket.fired = True
                    ticket.target.interrupt()


WATCHDOG = Watchdog()
