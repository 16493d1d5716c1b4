"""A product's sources: pulling them, loading what is pushed, and what a load triggers.

Every load goes through `SourceLoader.load`: the source's declared columns are enforced,
an incremental source reads past its last watermark, transient faults are retried with
backoff, secrets are scrubbed from errors, progress is visible while it streams, and a
source with `trigger_run` asks for a pipeline run once the load has committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from dataproduct.connector import Connector, LoadState
from dataproduct.errors import ConflictError, DataproductError, NotFoundError
from dataproduct.ingest import (
    FileFormat,
    Ingestion,
    LoadOptions,
    file_reader,
    last_watermark,
    load_stream,
)
from dataproduct.input_schema import InputRules
from dataproduct.input_write import create_declared
from dataproduct.storage import Storage
from dataproduct.watermark import LoadMeter

log = logging.getLogger("dataproduct")

StreamFactory = Callable[[], AbstractContextManager[pa.RecordBatchReader]]
_LINE_OFFSETS: dict[str, int] = {"csv": 1, "ndjson": 0}


class SourceLoader:
    """Loads the product's sources into its input layer."""

    def __init__(
        self,
        storage: Storage,
        connectors: dict[str, Connector],
        *,
        backoff_s: float,
        request_run: Callable[[str], None],
    ) -> None:
        self.storage = storage
        self.connectors = connectors
        self.backoff_s = backoff_s
        self.request_run = request_run
        self._active: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # one pull of a source at a time: two would read from the same watermark
        self._pulling = {name: threading.Lock() for name in connectors}

    def create_declared_tables(self) -> None:
        """An empty `input.<source>` for each pushed source that declares its columns and
        has none yet, so the pipeline can read it before the first push."""
        with self.storage.transaction() as cursor:
            for name, connector in self.connectors.items():
                if not connector.pulls and connector.spec.columns:
                    create_declared(cursor, name, connector.spec.columns)

    def source(self, name: str) -> Connector:
        """A declared source, or NotFoundError."""
        try:
            return self.connectors[name]
        except KeyError:
            raise NotFoundError(
                f"no source '{name}'; declared: {', '.join(self.connectors) or 'none'}",
                where=f"sources/{name}",
            ) from None

    def pull(
        self, name: str, principal: str, *, full_refresh: bool = False, triggers: bool = True
    ) -> Ingestion:
        """Pull one source; an incremental one reads past its watermark unless `full_refresh`.

        Without `triggers`, a source's `trigger_run` is ignored: the caller runs the pipeline
        itself once every source is in.
        """
        connector = self.source(name)
        if not connector.pulls:
            raise ConflictError(
                f"source '{name}' is not pulled: it receives data through the input port "
                "or a broker",
                where=f"sources/{name}",
            )
        incremental = connector.incremental
        with self._pulling[name]:
            mark = None
            if incremental is not None and not full_refresh:
                mark = last_watermark(self.storage, name)
            append = incremental is not None and mark is not None
            mode = connector.spec.mode if incremental is None else "append" if append else "replace"
            return self.load(
                name,
                partial(connector.open_stream, LoadState(watermark=mark)),
                principal=principal,
                mode=mode,
                unique_key=tuple(incremental.unique_key) if append and incremental else (),
                watermark=mark,
                triggers=triggers,
            )

    def pull_all(self, principal: str, *, triggers: bool = True) -> list[Ingestion]:
        """Pull every pulling source; the first failure is raised after all were tried."""
        done: list[Ingestion] = []
        failures: list[DataproductError] = []
        for name, connector in self.connectors.items():
            if not connector.pulls:
                continue
            try:
                done.append(self.pull(name, principal, triggers=triggers))
            except DataproductError as error:
                log.error("ingest %s: %s", name, error.message)
                failures.append(error)
        if failures:
            raise failures[0]
        return done

    def push(
        self,
        name: str,
        path: Path,
        file_format: FileFormat,
        principal: str,
        *,
        mode: str | None = None,
        idempotency_key: str | None = None,
        run: bool = False,
    ) -> Ingestion:
        """Load a pushed file into `input.<name>` (all rows or none)."""
        connector = self.push_source(name)

        def hide_upload_path(error: DataproductError) -> None:
            shown = f"the body pushed to {name}"
            error.message = error.message.replace(str(path), shown)
            error.where = error.where.replace(str(path), shown) if error.where else None
            error.args = (error.message,)

        return self.load(
            name,
            partial(file_reader, str(path), file_format),
            principal=principal,
            mode=mode or connector.spec.mode,
            size_bytes=path.stat().st_size,
            idempotency_key=idempotency_key,
            line_offset=_LINE_OFFSETS.get(file_format),
            redact=hide_upload_path,
            run=run,
        )

    def push_source(self, name: str) -> Connector:
        """A source that receives pushed data: 404 if undeclared, 409 if it pulls."""
        connector = self.source(name)
        if connector.pulls:
            raise ConflictError(
                f"source '{name}' is pulled by its connector, not pushed to; "
                "declare a source of type 'push' to receive data",
                where=f"sources/{name}",
            )
        return connector

    def load(
        self,
        name: str,
        open_stream: StreamFactory,
        *,
        principal: str,
        mode: str | None = None,
        size_bytes: int = 0,
        unique_key: tuple[str, ...] = (),
        watermark: Any = None,
        idempotency_key: str | None = None,
        line_offset: int | None = None,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
        redact: Callable[[DataproductError], None] | None = None,
        run: bool = False,
        triggers: bool = True,
    ) -> Ingestion:
        """Load a stream into `input.<name>` with the source's rules; see the module doc.

        `run` asks for a pipeline run after the load; so does the source's `trigger_run`
        unless `triggers` is off.
        """
        connector = self.source(name)
        spec = connector.spec
        incremental = connector.incremental
        options = LoadOptions(
            mode=mode or spec.mode,
            rules=InputRules(spec.columns, spec.new_columns, line_offset),
            cursor=incremental.cursor if incremental else None,
            unique_key=unique_key,
            watermark=watermark,
            retries=spec.retries,
            backoff_s=self.backoff_s,
            idempotency_key=idempotency_key,
            before_commit=before_commit,
        )

        def scrub(error: DataproductError) -> None:
            connector.secrets.scrub_error(error)
            if redact is not None:
                redact(error)

        meter = LoadMeter(options.cursor)
        key = f"{name}:{id(meter)}"
        with self._lock:
            self._active[key] = {
                "source": name,
                "principal": principal,
                "started_at": datetime.now(UTC).isoformat(),
                "meter": meter,
            }
        try:
            ingestion = load_stream(
                self.storage, name, open_stream, options,
                principal=principal, size_bytes=size_bytes, redact=scrub, meter=meter,
            )  # fmt: skip
        finally:
            with self._lock:
                del self._active[key]
        if not ingestion.replayed and (run or (triggers and spec.trigger_run)):
            self.request_run(f"load:{name}")
        return ingestion

    def running(self) -> list[dict[str, Any]]:
        """Loads streaming now, with the rows and bytes they have read so far."""
        with self._lock:
            active = list(self._active.values())
        return [
            {
                "source": item["source"],
                "status": "running",
                "principal": item["principal"],
                "started_at": item["started_at"],
                **item["meter"].snapshot(),
            }
            for item in active
        ]
