"""What a message source is doing, as the control port shows it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dataproduct.connector import MessageSink


@dataclass
class SourceStatus:
    """What a message source is doing: shown on the control port."""

    connected: bool = False
    last_error: dict[str, Any] | None = None
    last_error_at: datetime | None = None
    reconnects: int = 0
    messages_received: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    rows_landed: int = 0
    batches_landed: int = 0
    last_landed_at: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, error: dict[str, Any]) -> None:
        """Remember an error and that the source is no longer connected."""
        with self._lock:
            self.connected = False
            self.last_error = error
            self.last_error_at = datetime.now(UTC)

    def set_connected(self, connected: bool) -> None:
        """The consumer reached (or lost) its broker."""
        with self._lock:
            self.connected = connected

    def retrying(self) -> None:
        """Count a reconnection attempt."""
        with self._lock:
            self.reconnects += 1

    def landed(self, received: int, duplicates: int, dead: int, rows: int) -> None:
        """Count one micro-batch."""
        with self._lock:
            self.messages_received += received
            self.duplicates += duplicates
            self.dead_letters += dead
            self.rows_landed += rows
            self.batches_landed += 1
            self.last_landed_at = datetime.now(UTC)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        with self._lock:
            return {
                "connected": self.connected,
                "last_error": self.last_error,
                "last_error_at": _iso(self.last_error_at),
                "reconnects": self.reconnects,
                "messages_received": self.messages_received,
                "duplicates": self.duplicates,
                "dead_letters": self.dead_letters,
                "rows_landed": self.rows_landed,
                "batches_landed": self.batches_landed,
                "last_landed_at": _iso(self.last_landed_at),
            }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def mark_connected(sink: MessageSink, connected: bool) -> None:
    """Tell a sink's status that its consumer reached or lost the broker (if it keeps one)."""
    status = getattr(sink, "status", None)
    if isinstance(status, SourceStatus):
        status.set_connected(connected)
