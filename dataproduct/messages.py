"""Broker messages landed in the input layer: the sink and the consumer supervisor.

`InputSink` turns a micro-batch of messages into rows of `input.<source>`: ids already
landed are skipped (they are checked and recorded in `meta.message_ids` inside the load's
transaction, see `dataproduct.message_store`, so de-duplication is atomic with the data),
a message that cannot be read or whose
rows do not fit the table goes to `meta.dead_letters` instead of blocking the stream, and
the rest is appended in one load. `MessageSupervisor` runs one consumer thread per message
source and reconnects with capped exponential backoff when a broker is lost.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from dataproduct.connector import Message, MessageConnector, MessageSink
from dataproduct.errors import (
    DataproductError,
    SourceError,
    SourceUnavailableError,
    ValidationError,
)
from dataproduct.ingest import Ingestion, file_reader
from dataproduct.message_status import SourceStatus, mark_connected
from dataproduct.message_store import (
    NO_ID,
    DeadLetter,
    LandedMeanwhile,
    create_message_tables,
    forget_before,
    landed_ids,
    record_landed,
)
from dataproduct.storage import Storage

log = logging.getLogger("dataproduct.messages")

PRINCIPAL = "messages"
RETENTION = timedelta(days=7)
PRUNE_EVERY_S = 600.0
LAND_ATTEMPTS = 3

__all__ = ["InputSink", "MessageSupervisor", "SourceStatus", "mark_connected", "parse_records"]

OpenStream = Callable[[], AbstractContextManager[pa.RecordBatchReader]]
BeforeCommit = Callable[[duckdb.DuckDBPyConnection], None]


class LoadFunction(Protocol):
    """`ProductRuntime.load`: append a stream to `input.<name>` in one transaction."""

    def __call__(
        self,
        name: str,
        open_stream: OpenStream,
        *,
        principal: str,
        size_bytes: int = 0,
        before_commit: BeforeCommit | None = None,
    ) -> Ingestion: ...


def parse_records(body: bytes) -> list[dict[str, Any]]:
    """The records of a body: a JSON object, an array of objects, or NDJSON lines.

    ValueError says why a body cannot be read (JSON nested deeper than Python's recursion
    limit included).
    """
    text = body.decode("utf-8").strip()
    if not text:
        raise ValueError("the body is empty")
    try:
        value = _loads(text)
    except json.JSONDecodeError:
        value = [_ndjson_line(number, line) for number, line in _lines(text)]
    records = value if isinstance(value, list) else [value]
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"record {index + 1} is a {type(record).__name__}, not an object")
    return records


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _loads(text: str) -> Any:
    """json.loads, with a RecursionError (deeply nested JSON) as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def _ndjson_line(number: int, line: str) -> Any:
    try:
        return _loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"line {number}: {error.msg} (column {error.colno})") from None


@dataclass(frozen=True)
class _Parsed:
    message: Message
    records: list[dict[str, Any]]


def _message_at_row(good: list[_Parsed], row: Any) -> int | None:
    """The index of the message holding the 1-based `row` of the batch, if known."""
    if not isinstance(row, int) or row < 1:
        return None
    seen = 0
    for index, parsed in enumerate(good):
        seen += len(parsed.records)
        if row <= seen:
            return index
    return None


class InputSink(MessageSink):
    """Lands micro-batches of one source in `input.<source>`, each id once.

    Ids already landed are skipped: the sink looks them up first, and the load's
    transaction checks them again before it records the new ones, so a batch whose ids
    landed meanwhile is undone and looked at again. A message with no id (`NO_ID`) is
    landed every time it arrives. A message that cannot be read (whatever the parser
    raised, a RecursionError included), or whose rows do not fit the table (the refusal's
    row number points at it, or halving the batch finds it), is recorded in
    `meta.dead_letters` with its body and the reason, and counted as settled, so the
    connector acknowledges it. Any other failure is raised: nothing is recorded and the
    broker delivers the batch again.
    """

    def __init__(
        self,
        source: str,
        storage: Storage,
        load: LoadFunction,
        *,
        spool_dir: Path | None = None,
        retention: timedelta = RETENTION,
        principal: str = PRINCIPAL,
    ) -> None:
        self.source = source
        self.storage = storage
        self.load = load
        self.spool_dir = spool_dir
        self.retention = retention
        self.principal = principal
        self.status = SourceStatus()
        self._pruned_at = float("-inf")
        self._misfits = 0  # messages of the current batch whose rows did not fit
        create_message_tables(storage)

    def land(self, messages: Sequence[Message]) -> int:
        """Append the new messages' rows in one transaction; return the rows added."""
        for _ in range(LAND_ATTEMPTS):
            try:
                return self._land_new(messages)
            except LandedMeanwhile:
                continue  # another writer landed some ids: look again
        raise SourceUnavailableError(
            "the batch's ids kept landing from elsewhere", where=f"sources.{self.source}"
        )

    def _land_new(self, messages: Sequence[Message]) -> int:
        fresh = self._unseen(messages)
        good: list[_Parsed] = []
        dead: list[DeadLetter] = []
        empty: list[Message] = []
        for message in fresh:
            try:
                records = parse_records(message.body)
            except Exception as error:  # noqa: BLE001 - any unreadable body is a dead letter
                dead.append(DeadLetter(message, f"cannot read the body: {error}"))
                continue
            if records:
                good.append(_Parsed(message, records))
            else:
                empty.append(message)
        self._misfits = 0
        rows = self._land(good, empty, dead) if fresh else 0
        dead_count = len(dead) + self._misfits
        self.status.landed(len(messages), len(messages) - len(fresh), dead_count, rows)
        self._prune()
        return rows

    def _unseen(self, messages: Sequence[Message]) -> list[Message]:
        """Messages without id, and those whose id is neither landed before nor earlier in
        this batch (the load's transaction checks again)."""
        with self.storage.reader() as cursor:
            seen = landed_ids(cursor, self.source, [message.id for message in messages])
        fresh = []
        for message in messages:
            if message.id == NO_ID or message.id not in seen:
                seen.add(message.id)
                fresh.append(message)
        return fresh

    def _land(self, good: list[_Parsed], settled: list[Message], dead: list[DeadLetter]) -> int:
        """Load `good`, recording their ids, the `settled` ones and the dead letters with it.

        When the rows do not fit, the message the refusal points at (by its row number) is
        tried alone and the others are landed without it; without a row number the batch
        is split in halves. A message that fails alone becomes a dead letter.
        """
        ids = [parsed.message.id for parsed in good] + [message.id for message in settled]
        if not good:
            with self.storage.transaction() as cursor:
                record_landed(cursor, self.source, ids, dead)
            return 0
        try:
            return self._load(good, ids, dead)
        except (ValidationError, SourceError) as error:
            if isinstance(error, SourceUnavailableError):
                raise
            if len(good) == 1:
                self._misfits += 1
                letter = DeadLetter(good[0].message, error.message)
                return self._land([], settled, [*dead, letter])
            suspect = _message_at_row(good, error.details.get("row"))
            if suspect is None:
                half = len(good) // 2
                return self._land(good[:half], settled, dead) + self._land(good[half:], [], [])
            others = good[:suspect] + good[suspect + 1 :]
            return self._land(others, settled, dead) + self._land([good[suspect]], [], [])

    def _load(self, good: list[_Parsed], ids: list[str], dead: list[DeadLetter]) -> int:
        with self._spooled(good) as (path, size):
            ingestion = self.load(
                self.source,
                lambda: file_reader(path, "ndjson", {"sample_size": -1}),
                principal=self.principal,
                size_bytes=size,
                before_commit=lambda cursor: record_landed(cursor, self.source, ids, dead),
            )
        return ingestion.rows

    @contextmanager
    def _spooled(self, good: list[_Parsed]) -> Iterator[tuple[str, int]]:
        """The batch's records as an NDJSON file, removed afterwards."""
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix="messages-", suffix=".ndjson", dir=self.spool_dir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                for parsed in good:
                    for record in parsed.records:
                        out.write(json.dumps(record))
                        out.write("\n")
                size = out.tell()
            yield path, size
        finally:
            Path(path).unlink(missing_ok=True)

    def _prune(self) -> None:
        """Forget ids (and dead letters) older than the retention, now and then."""
        clock = time.monotonic()
        if clock - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = clock
        forget_before(self.storage, self.source, datetime.now(UTC) - self.retention)


class MessageSupervisor:
    """One consumer thread per message source; reconnects with capped exponential backoff.

    A consumer that raises (broker lost, bad credentials, a failing land) is restarted
    after 0.2 s, doubling up to 10 s; the delay starts again after a long healthy run.
    `stop()` sets the event every consumer watches and joins the threads.
    """

    def __init__(
        self,
        connectors: Mapping[str, MessageConnector],
        make_sink: Callable[[str], InputSink],
        *,
        first_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.connectors = dict(connectors)
        self.make_sink = make_sink
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.statuses = {name: SourceStatus() for name in self.connectors}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        """Start a consumer thread for every message source (once)."""
        if self._threads:
            return
        self._stop.clear()
        for name, connector in self.connectors.items():
            thread = threading.Thread(
                target=self._run, args=(name, connector), name=f"messages-{name}", daemon=True
            )
            self._threads[name] = thread
            thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask every consumer to stop and wait for its thread (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for name, thread in self._threads.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("source %s: the consumer did not stop within %.0fs", name, timeout_s)
        self._threads.clear()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per source: running, connected, last error, counts of messages and rows."""
        found = {}
        for name, status in self.statuses.items():
            thread = self._threads.get(name)
            found[name] = {"running": bool(thread and thread.is_alive()), **status.to_dict()}
        return found

    def _run(self, name: str, connector: MessageConnector) -> None:
        status = self.statuses[name]
        sink: InputSink | None = None
        delay = self.first_backoff_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if sink is None:
                    sink = self.make_sink(name)
                    sink.status = status
                connector.consume(sink, self._stop)
            except DataproductError as error:
                connector.secrets.scrub_error(error)
                status.failed(error.to_dict()["error"])
                log.warning("source %s: %s (retry in %.1fs)", name, error.message, delay)
            except Exception as error:  # noqa: BLE001 - a library fault must not end the consumer
                text = connector.secrets.scrub(f"{type(error).__name__}: {error}")
                status.failed({"code": "consumer_error", "message": text})
                log.warning("source %s: %s (retry in %.1fs)", name, text, delay)
            else:
                status.set_connected(False)
            if self._stop.is_set():
                break
            if time.monotonic() - started > self.max_backoff_s:
                delay = self.first_backoff_s
            status.retrying()
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_backoff_s)
