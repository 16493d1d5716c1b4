"""The audit log: every request, as a JSON log line at once and as a row in `meta.audit`.

Rows are buffered and written in batches by a background thread, and only when the single
writer is free: a long pipeline run never makes requests wait for their audit record. The
buffer is bounded; past the bound the oldest unwritten records are dropped (and counted),
while their log lines are already out.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pyarrow as pa

from dataproduct.storage import Storage, WriterBusy

log = logging.getLogger("dataproduct.audit")

FLUSH_INTERVAL_S = 1.0
_BATCH_NAME = "__dp_audit_batch"

AUDIT_DDL = """CREATE TABLE IF NOT EXISTS meta.audit (
    requested_at TIMESTAMPTZ, request_id VARCHAR, principal VARCHAR, client VARCHAR, method VARCHAR,
    path VARCHAR, status INTEGER, port VARCHAR, dataset VARCHAR, rows BIGINT, bytes BIGINT,
    duration_ms DOUBLE)"""

_SCHEMA = pa.schema(
    [
        ("at", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("principal", pa.string()),
        ("client", pa.string()),
        ("method", pa.string()),
        ("path", pa.string()),
        ("status", pa.int32()),
        ("port", pa.string()),
        ("dataset", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("duration_ms", pa.float64()),
    ]
)


class AuditRecord(NamedTuple):
    """One request as the audit log keeps it (a tuple: cheap on every request)."""

    at: datetime
    request_id: str
    principal: str
    client: str
    method: str
    path: str
    status: int
    port: str
    dataset: str | None
    rows: int | None
    bytes: int
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values."""
        return {**self._asdict(), "at": self.at.isoformat()}


@dataclass(frozen=True)
class AuditQuery:
    """Filters of `GET /control/audit`; None means any."""

    since: datetime | None = None
    until: datetime | None = None
    principal: str | None = None
    dataset: str | None = None
    status: int | None = None
    limit: int = 100

    def matches(self, record: AuditRecord) -> bool:
        """Whether a buffered record passes the filters."""
        return (
            (self.since is None or record.at >= self.since)
            and (self.until is None or record.at < self.until)
            and (self.principal is None or record.principal == self.principal)
            and (self.dataset is None or record.dataset == self.dataset)
            and (self.status is None or record.status == self.status)
        )


class AuditLog:
    """Buffered audit records, flushed into `meta.audit` when the writer is free."""

    def __init__(self, storage: Storage, *, max_buffered: int = 100_000) -> None:
        self._storage = storage
        self._buffer: deque[AuditRecord] = deque()
        self._max = max_buffered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        with storage.transaction() as cursor:
            cursor.execute(AUDIT_DDL)
        self._thread = threading.Thread(target=self._flush_loop, name="audit", daemon=True)
        self._thread.start()

    def record(self, record: AuditRecord) -> None:
        """Log the record now and queue it for `meta.audit`."""
        if log.isEnabledFor(logging.INFO):
            log.info(json.dumps({"audit": record.to_dict()}, separators=(",", ":")))
        with self._lock:
            if len(self._buffer) >= self._max:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(record)

    def flush(self, *, wait: bool = True) -> int:
        """Write the buffered records; returns how many (0 if the writer was busy)."""
        with self._lock:
            batch = list(self._buffer)
            dropped_before = self.dropped
        if not batch:
            return 0
        columns = zip(*batch, strict=True)  # records are tuples of the schema's fields
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, _SCHEMA, strict=True)]
        table = pa.Table.from_arrays(arrays, schema=_SCHEMA)
        try:
            with self._storage.transaction(wait=wait, changes_data=False) as cursor:
                cursor.register(_BATCH_NAME, table)
                try:
                    cursor.execute(f"INSERT INTO meta.audit SELECT * FROM {_BATCH_NAME}")
                finally:
                    cursor.unregister(_BATCH_NAME)
        except WriterBusy:
            return 0
        with self._lock:
            # records dropped meanwhile were among the oldest, the ones just written
            written_left = max(len(batch) - (self.dropped - dropped_before), 0)
            for _ in range(min(written_left, len(self._buffer))):
                self._buffer.popleft()
        return len(batch)

    def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Matching records, newest first: those written and those still buffered."""
        with self._lock:
            pending = [r.to_dict() for r in self._buffer if query.matches(r)]
        clauses, params = _where(query)
        sql = (
            "SELECT * FROM meta.audit"
            + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
            + " ORDER BY requested_at DESC LIMIT ?"
        )
        with self._storage.reader() as cursor:
            cursor.execute(sql, [*params, query.limit])
            names = [d[0] for d in cursor.description or []]
            rows = cursor.fetchall()
        written = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            at = record.pop("requested_at").astimezone(UTC).isoformat()
            written.append({"at": at, **record})
        seen = {r["request_id"] for r in written}
        merged = [r for r in pending if r["request_id"] not in seen] + written
        merged.sort(key=lambda r: str(r["at"]), reverse=True)
        return merged[: query.limit]

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush(wait=False)
            except Exception:  # the loop must outlive one bad flush; the lines are logged
                log.exception("could not write audit records")


def _where(query: AuditQuery) -> tuple[list[str], list[Any]]:
    pairs = (
        ("requested_at >= ?", query.since),
        ("requested_at < ?", query.until),
        ("principal = ?", query.principal),
        ("dataset = ?", query.dataset),
        ("status = ?", query.status),
    )
    clauses = [clause for clause, value in pairs if value is not None]
    return clauses, [value for _, value in pairs if value is not None]
