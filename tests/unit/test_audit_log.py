"""The audit log: a JSON line at once, a row in `meta.audit` when the writer is free."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from dataproduct import audit as audit_module
from dataproduct.audit import AuditLog, AuditQuery, AuditRecord
from dataproduct.storage import Storage, memory_connection

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)


def _record(**changes: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "at": T0,
        "request_id": uuid.uuid4().hex,
        "principal": "alice",
        "client": "10.0.0.1",
        "method": "GET",
        "path": "/output/datasets/daily_sales",
        "status": 200,
        "port": "output",
        "dataset": "daily_sales",
        "rows": 10,
        "bytes": 1234,
        "duration_ms": 5.5,
    }
    return AuditRecord(**{**values, **changes})


@pytest.fixture
def storage() -> Iterator[Storage]:
    """An in-memory product database."""
    opened = Storage(memory_connection())
    yield opened
    opened.close()


@pytest.fixture
def make_log(storage: Storage) -> Iterator[Callable[..., AuditLog]]:
    """`make_log(max_buffered=...)`: audit logs over `storage`, closed after the test."""
    made: list[AuditLog] = []

    def make(max_buffered: int = 100_000) -> AuditLog:
        log = AuditLog(storage, max_buffered=max_buffered)
        made.append(log)
        return log

    yield make
    for log in made:
        log.close()


@pytest.fixture
def audit_log(make_log: Callable[..., AuditLog]) -> AuditLog:
    """An audit log whose background flush will not run during a short test."""
    return make_log()


def _written(storage: Storage) -> list[str]:
    """Request ids in `meta.audit`, oldest first."""
    with storage.reader() as cursor:
        rows = cursor.execute("SELECT request_id FROM meta.audit ORDER BY requested_at").fetchall()
    return [row[0] for row in rows]


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in records]


@contextmanager
def writer_held(storage: Storage) -> Iterator[None]:
    """The single writer busy in another thread, as during a long pipeline run."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with storage.transaction():
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join(5)


def test_a_record_is_logged_as_one_json_line_at_once(
    audit_log: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Each record is a JSON line on `dataproduct.audit` before anything is written."""
    record = _record()
    with caplog.at_level(logging.INFO, logger="dataproduct.audit"):
        audit_log.record(record)
    lines = [r for r in caplog.records if r.name == "dataproduct.audit"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert json.loads(lines[0].getMessage()) == {"audit": record.to_dict()}


def test_a_buffered_record_is_queryable_before_it_is_written(
    audit_log: AuditLog, storage: Storage
) -> None:
    """Querying sees what is still in the buffer, in the same shape as written rows."""
    record = _record(rows=None, dataset=None)
    audit_log.record(record)
    assert _written(storage) == []
    assert audit_log.query(AuditQuery()) == [record.to_dict()]


def test_flush_writes_the_records_and_empties_the_buffer(
    audit_log: AuditLog, storage: Storage
) -> None:
    """After a flush the rows are in `meta.audit` with every field, and listed once."""
    first, second = _record(), _record(at=T0 + timedelta(seconds=1), rows=None, dataset=None)
    audit_log.record(first)
    audit_log.record(second)
    assert audit_log.flush() == 2
    assert audit_log.flush() == 0
    assert _written(storage) == [first.request_id, second.request_id]
    assert audit_log.query(AuditQuery()) == [second.to_dict(), first.to_dict()]


def test_query_merges_written_and_buffered_newest_first(audit_log: AuditLog) -> None:
    """Written and still-buffered records come back as one list, newest first."""
    older = [_record(at=T0 + timedelta(seconds=s)) for s in (0, 2)]
    newer = [_record(at=T0 + timedelta(seconds=s)) for s in (1, 3)]
    for record in older:
        audit_log.record(record)
    audit_log.flush()
    for record in newer:
        audit_log.record(record)
    expected = sorted([*older, *newer], key=lambda r: r.at, reverse=True)
    assert _ids(audit_log.query(AuditQuery())) == [r.request_id for r in expected]
    assert _ids(audit_log.query(AuditQuery(limit=3))) == [r.request_id for r in expected[:3]]


FILTERS: dict[str, tuple[AuditQuery, set[str]]] = {
    "principal": (AuditQuery(principal="bob"), {"bob-403"}),
    "dataset": (AuditQuery(dataset="customer_revenue"), {"bob-403", "alice-cr"}),
    "status": (AuditQuery(status=200), {"alice-early", "alice-cr", "alice-late"}),
    "since": (AuditQuery(since=T0 + timedelta(seconds=10)), {"alice-cr", "alice-late"}),
    "until": (AuditQuery(until=T0 + timedelta(seconds=10)), {"alice-early", "bob-403"}),
    "since and until": (
        AuditQuery(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=20)),
        {"bob-403", "alice-cr"},
    ),
    "several": (AuditQuery(principal="alice", dataset="customer_revenue"), {"alice-cr"}),
}

FILTERED = [
    _record(request_id="alice-early", at=T0),
    _record(
        request_id="bob-403", principal="bob", status=403, dataset="customer_revenue", rows=None,
        at=T0 + timedelta(seconds=5),
    ),
    _record(request_id="alice-cr", dataset="customer_revenue", at=T0 + timedelta(seconds=10)),
    _record(request_id="alice-late", at=T0 + timedelta(seconds=20)),
]  # fmt: skip


@pytest.mark.parametrize("written", [False, True], ids=["buffered", "written"])
@pytest.mark.parametrize("case", list(FILTERS))
def test_filters_select_the_same_records_buffered_or_written(
    case: str, written: bool, audit_log: AuditLog
) -> None:
    """Each filter (since inclusive, until exclusive) means the same before and after a flush."""
    for record in FILTERED:
        audit_log.record(record)
    if written:
        assert audit_log.flush() == len(FILTERED)
    query, expected = FILTERS[case]
    assert set(_ids(audit_log.query(query))) == expected


def test_flush_does_not_wait_for_a_busy_writer(audit_log: AuditLog, storage: Storage) -> None:
    """A non-waiting flush returns at once while the writer is held, and keeps the records."""
    record = _record()
    audit_log.record(record)
    with writer_held(storage):
        started = time.monotonic()
        assert audit_log.flush(wait=False) == 0
        assert time.monotonic() - started < 0.5
        assert _ids(audit_log.query(AuditQuery())) == [record.request_id]
    assert audit_log.flush(wait=False) == 1
    assert _written(storage) == [record.request_id]


def test_the_background_flush_waits_for_the_writer_to_be_free(
    monkeypatch: pytest.MonkeyPatch, make_log: Callable[..., AuditLog], storage: Storage
) -> None:
    """Records made while the writer is held reach `meta.audit` soon after it is released."""
    monkeypatch.setattr(audit_module, "FLUSH_INTERVAL_S", 0.05)
    audit_log = make_log()
    records = [_record(at=T0 + timedelta(seconds=s)) for s in range(3)]
    with writer_held(storage):
        for record in records:
            audit_log.record(record)
        time.sleep(0.3)  # several flush attempts, all finding the writer busy
        assert _written(storage) == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_written(storage)) < len(records):
        time.sleep(0.02)
    assert _written(storage) == [r.request_id for r in records]


def test_a_full_buffer_drops_the_oldest_and_counts_them(
    make_log: Callable[..., AuditLog],
) -> None:
    """Past the bound the oldest unwritten records go; `dropped` says how many."""
    bounded = make_log(max_buffered=3)
    records = [_record(at=T0 + timedelta(seconds=s)) for s in range(5)]
    for record in records:
        bounded.record(record)
    assert bounded.dropped == 2
    assert _ids(bounded.query(AuditQuery())) == [r.request_id for r in reversed(records[2:])]


def test_dropped_records_were_still_logged(
    make_log: Callable[..., AuditLog], caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped record is missing from `meta.audit` but not from the log."""
    bounded = make_log(max_buffered=1)
    with caplog.at_level(logging.INFO, logger="dataproduct.audit"):
        for seconds in range(3):
            bounded.record(_record(at=T0 + timedelta(seconds=seconds)))
    assert bounded.dropped == 2
    assert len([r for r in caplog.records if r.name == "dataproduct.audit"]) == 3


def test_records_made_during_a_flush_are_not_lost(
    monkeypatch: pytest.MonkeyPatch, make_log: Callable[..., AuditLog], storage: Storage
) -> None:
    """A record that arrives while a full buffer is being written is kept (or counted)."""
    bounded = make_log(max_buffered=3)
    for seconds in range(3):
        bounded.record(_record(at=T0 + timedelta(seconds=seconds)))
    late = _record(request_id="late", at=T0 + timedelta(seconds=9))
    real_transaction = storage.transaction

    @contextmanager
    def request_arrives_meanwhile(
        *, wait: bool = True, changes_data: bool = True
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        monkeypatch.setattr(storage, "transaction", real_transaction)
        bounded.record(late)  # a request ends while the batch is being written
        with real_transaction(wait=wait, changes_data=changes_data) as cursor:
            yield cursor

    monkeypatch.setattr(storage, "transaction", request_arrives_meanwhile)
    assert bounded.flush() == 3
    assert bounded.dropped == 1  # the oldest, already being written
    assert "late" in _ids(bounded.query(AuditQuery()))


def test_close_writes_what_is_left(make_log: Callable[..., AuditLog], storage: Storage) -> None:
    """Closing (the product stopping) writes the buffered records, even if just made."""
    audit_log = make_log()
    record = _record()
    audit_log.record(record)
    audit_log.close()
    assert _written(storage) == [record.request_id]


def test_a_bad_flush_does_not_stop_the_background_flusher(
    monkeypatch: pytest.MonkeyPatch, make_log: Callable[..., AuditLog], storage: Storage
) -> None:
    """One failed write is logged; the next interval writes again."""
    monkeypatch.setattr(audit_module, "FLUSH_INTERVAL_S", 0.05)
    audit_log = make_log()
    real_flush = audit_log.flush
    calls: list[int] = []

    def failing_once(*, wait: bool = True) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        return real_flush(wait=wait)

    monkeypatch.setattr(audit_log, "flush", failing_once)
    record = _record()
    audit_log.record(record)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _written(storage):
        time.sleep(0.02)
    assert len(calls) >= 2
    assert _written(storage) == [record.request_id]
