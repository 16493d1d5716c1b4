"""The connector layer's core: a third-party connector installed through its entry point,
incremental loads past a kept watermark, merges, retries, progress and secret scrubbing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from dataproduct.connector import connector_class, connector_types
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.ingest import LoadOptions, ingestion_history, load_stream
from dataproduct.secrets import SecretResolver, mask_url
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime


def _product(root: Path, sources: dict[str, Any]) -> Path:
    folder = root / "numbers"
    folder.mkdir(exist_ok=True)
    descriptor = {
        "name": "numbers",
        "domain": "test",
        "version": "1.0.0",
        "owner": {"name": "Test", "email": "test@example.com"},
        "sources": sources,
    }
    (folder / "dataproduct.yaml").write_text(yaml.safe_dump(descriptor), encoding="utf-8")
    return folder


@pytest.fixture
def numbers(tmp_path: Path, settings: DataproductSettings) -> Iterator[ProductRuntime]:
    """A product pulling the example `sequence` connector incrementally on `n`."""
    folder = _product(
        tmp_path,
        {"seq": {"type": "sequence", "stop": 2500, "incremental": {"cursor": "n"}}},
    )
    runtime = ProductRuntime.open(folder, settings)
    yield runtime
    runtime.close()


def _rows(runtime: ProductRuntime, table: str = "seq") -> list[tuple[Any, ...]]:
    with runtime.storage.reader() as cursor:
        return cursor.execute(f'SELECT * FROM input."{table}" ORDER BY 1').fetchall()


def test_a_connector_installed_as_a_package_is_found_by_its_entry_point() -> None:
    """`tests/fixtures/example_connector` is pip-installed; its type is registered."""
    assert "sequence" in connector_types()
    cls = connector_class("sequence")
    assert cls.__module__ == "dataproduct_sequence"


def test_an_incremental_source_loads_only_rows_past_its_watermark(
    numbers: ProductRuntime, tmp_path: Path
) -> None:
    """The first pull loads all; the next one (with a higher stop) only the new numbers; the
    watermark is kept typed in meta.ingestions."""
    first = numbers.ingest("seq", principal="test")[0]
    assert (first.rows, first.mode) == (2500, "replace")
    assert ingestion_history(numbers.storage, "seq")[0]["watermark"] == 2500
    numbers.close()
    _product(tmp_path, {"seq": {"type": "sequence", "stop": 2600, "incremental": {"cursor": "n"}}})
    runtime = ProductRuntime.open(tmp_path / "numbers", numbers.settings)
    try:
        second = runtime.ingest("seq", principal="test")[0]
        assert (second.rows, second.mode) == (100, "append")
        rows = _rows(runtime)
        assert len(rows) == 2600 and rows[-1] == (2600, 2600 * 2600)
        assert len({n for n, _ in rows}) == 2600
        nothing_new = runtime.ingest("seq", principal="test")[0]
        assert nothing_new.rows == 0
        assert ingestion_history(runtime.storage, "seq")[0]["watermark"] == 2600
        full = runtime.ingest("seq", principal="test", full_refresh=True)[0]
        assert (full.rows, full.mode) == (2600, "replace")
    finally:
        runtime.close()


def _stream(table: pa.Table) -> Any:
    @contextmanager
    def opened() -> Iterator[pa.RecordBatchReader]:
        yield pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    return opened


def test_an_incremental_merge_replaces_rows_with_the_same_key(
    runtime: ProductRuntime,
) -> None:
    """With a unique key, a changed row replaces the stored one instead of doubling it."""
    first = pa.table({"id": [1, 2], "status": ["new", "new"], "v": [1, 1]})
    load_stream(runtime.storage, "orders", _stream(first), principal="t")
    changed = pa.table({"id": [2, 3], "status": ["paid", "new"], "v": [2, 2]})
    options = LoadOptions(mode="append", unique_key=("id",), cursor="v")
    record = load_stream(runtime.storage, "orders", _stream(changed), options, principal="t")
    assert record.rows == 2
    assert _rows(runtime, "orders") == [(1, "new", 1), (2, "paid", 2), (3, "new", 2)]


def test_a_transient_fault_is_retried_with_backoff_then_loads(runtime: ProductRuntime) -> None:
    """Two failed opens, then success: one record, three attempts, rows loaded once."""
    calls = []

    @contextmanager
    def flaky() -> Iterator[pa.RecordBatchReader]:
        calls.append(1)
        if len(calls) < 3:
            raise SourceUnavailableError("the server went away", where="sources.x")
        table = pa.table({"a": [1, 2, 3]})
        yield pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    options = LoadOptions(retries=3, backoff_s=0.01)
    record = load_stream(runtime.storage, "flaky", flaky, options, principal="t")
    assert (record.status, record.rows, record.attempts) == ("succeeded", 3, 3)
    assert _rows(runtime, "flaky") == [(1,), (2,), (3,)]


def test_a_fault_that_outlasts_the_retries_fails_and_keeps_the_previous_data(
    runtime: ProductRuntime,
) -> None:
    """After the last retry the load fails; what was loaded before is untouched."""
    load_stream(runtime.storage, "kept", _stream(pa.table({"a": [7]})), principal="t")

    @contextmanager
    def down() -> Iterator[pa.RecordBatchReader]:
        raise SourceUnavailableError("connection refused", where="sources.kept")
        yield  # pragma: no cover

    with pytest.raises(SourceUnavailableError):
        load_stream(
            runtime.storage, "kept", down, LoadOptions(retries=2, backoff_s=0.01), principal="t"
        )
    failed = ingestion_history(runtime.storage, "kept")[0]
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["error"]["code"] == "source_unavailable"
    assert _rows(runtime, "kept") == [(7,)]


def test_an_error_in_the_middle_of_a_stream_loads_nothing(runtime: ProductRuntime) -> None:
    """A source failing after some batches leaves no partial rows and reports its own error."""
    schema = pa.schema([("a", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array([1, 2])], schema=schema)
        raise SourceError("truncated object part-2.parquet", where="sources.half")

    @contextmanager
    def half() -> Iterator[pa.RecordBatchReader]:
        yield pa.RecordBatchReader.from_batches(schema, batches())

    with pytest.raises(SourceError, match=r"truncated object part-2\.parquet"):
        load_stream(runtime.storage, "half", half, principal="t")
    with runtime.storage.reader() as cursor:
        found = cursor.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'"
        ).fetchall()
    assert found == [(0,)]


def test_a_load_shows_its_progress_while_it_streams(runtime: ProductRuntime) -> None:
    """While batches stream, the running load reports the rows read so far."""
    release = threading.Event()
    first_batch_read = threading.Event()
    schema = pa.schema([("a", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array(range(1000))], schema=schema)
        first_batch_read.set()
        release.wait(10)
        yield pa.record_batch([pa.array(range(500))], schema=schema)

    @contextmanager
    def slow() -> Iterator[pa.RecordBatchReader]:
        yield pa.RecordBatchReader.from_batches(schema, batches())

    runtime.connectors["returns"]  # the example's push source
    done: list[Any] = []
    worker = threading.Thread(
        target=lambda: done.append(runtime.load("returns", slow, principal="t"))
    )
    worker.start()
    assert first_batch_read.wait(10)
    running = runtime.sources.running()
    release.set()
    worker.join(10)
    assert [(r["source"], r["status"]) for r in running] == [("returns", "running")]
    assert running[0]["rows"] >= 1000
    assert done[0].rows == 1500
    assert runtime.sources.running() == []


def test_secret_references_are_read_and_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${env:...}` and `${file:...}` are read at use; their values never show in errors."""
    monkeypatch.setenv("DP_TEST_PASSWORD", "s3cr3t-value")
    secret_file = tmp_path / "token"
    secret_file.write_text("file-secret\n", encoding="utf-8")
    resolver = SecretResolver(where="sources.db")
    url = resolver.resolve(
        f"postgresql://u:${{env:DP_TEST_PASSWORD}}@h/db?t=${{file:{secret_file}}}"
    )
    assert url == "postgresql://u:s3cr3t-value@h/db?t=file-secret"
    error = SourceError(f"cannot connect to {url}", where=url)
    resolver.scrub_error(error)
    assert "s3cr3t-value" not in error.message and "file-secret" not in str(error.where)
    assert error.message == "cannot connect to postgresql://u:***@h/db?t=***"
    with pytest.raises(SourceError, match="DP_TEST_MISSING is not set"):
        resolver.resolve("${env:DP_TEST_MISSING}")
    assert mask_url("postgresql://u:literal@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u:${env:X}@h/db") == "postgresql://u:${env:X}@h/db"


def test_a_connector_whose_library_is_missing_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ImportError while loading the connector becomes a descriptor error naming the
    missing module and the extra that brings it."""
    from dataproduct import connector as registry
    from dataproduct.connector import SourceContext, build_connector
    from dataproduct.descriptor import SourceConfig
    from dataproduct.errors import DescriptorError

    def missing(type_name: str) -> type:
        raise ModuleNotFoundError("No module named 'deltalake'", name="deltalake")

    monkeypatch.setattr(registry, "connector_class", missing)
    config = SourceConfig.model_validate({"type": "delta", "path": "t"})
    with pytest.raises(DescriptorError) as raised:
        build_connector("lake", config, SourceContext(tmp_path, tmp_path))
    assert "needs deltalake" in raised.value.message
    assert "pip install 'dataproduct[lake]'" in raised.value.message
    assert raised.value.where is not None and raised.value.where.endswith("sources.lake.type")


def test_two_pulls_of_one_incremental_source_at_once_load_each_row_once(
    numbers: ProductRuntime,
) -> None:
    """Concurrent pulls (a schedule and an operator) are serialised: no row twice."""
    numbers.ingest("seq", principal="first")
    with numbers.storage.transaction() as cursor:  # new rows: forget the last 500
        cursor.execute('DELETE FROM input."seq" WHERE n > 2000')
        cursor.execute(
            "UPDATE meta.ingestions SET watermark = ? WHERE source = 'seq'",
            ['{"type": "int", "value": 2000}'],
        )
    with numbers.storage.transaction():  # hold the writer so both pulls queue behind it
        threads = [
            threading.Thread(target=numbers.ingest, args=("seq",), kwargs={"principal": p})
            for p in ("schedule", "operator")
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join(10)
    rows = _rows(numbers)
    assert len(rows) == len({n for n, _ in rows}) == 2500


def test_a_merge_keeps_the_latest_of_several_new_rows_with_one_key(
    runtime: ProductRuntime,
) -> None:
    """Two versions of one key in a pull: only the one with the greatest cursor stays."""
    load_stream(runtime.storage, "orders", _stream(pa.table({"id": [1], "s": ["new"], "v": [1]})),
                principal="t")  # fmt: skip
    changed = pa.table({"id": [1, 1, 2], "s": ["shipped", "paid", "new"], "v": [3, 2, 2]})
    options = LoadOptions(mode="append", unique_key=("id",), cursor="v")
    load_stream(runtime.storage, "orders", _stream(changed), options, principal="t")
    assert _rows(runtime, "orders") == [(1, "shipped", 3), (2, "new", 2)]


def test_an_unexpected_exception_from_a_connector_is_recorded_as_a_source_error(
    runtime: ProductRuntime,
) -> None:
    """A bug or an OSError in a connector becomes a SourceError and a failure record."""

    @contextmanager
    def broken() -> Iterator[pa.RecordBatchReader]:
        raise OSError(28, "No space left on device")
        yield  # pragma: no cover

    with pytest.raises(SourceError, match="No space left on device"):
        load_stream(runtime.storage, "disk", broken, principal="t")
    failed = ingestion_history(runtime.storage, "disk")[0]
    assert (failed["status"], failed["error"]["code"]) == ("failed", "source_error")


def test_a_nanosecond_cursor_keeps_a_watermark(runtime: ProductRuntime) -> None:
    """A TIMESTAMP_NS cursor gives a microsecond watermark instead of failing the load."""
    stamps = pa.array([1_700_000_000_123_456_789, 1_700_000_001_000_000_001], pa.timestamp("ns"))
    table = pa.table({"id": [1, 2], "at": stamps})
    record = load_stream(
        runtime.storage, "ns", _stream(table), LoadOptions(cursor="at"), principal="t"
    )
    assert record.status == "succeeded"
    assert ingestion_history(runtime.storage, "ns")[0]["watermark"] == "2023-11-14T22:13:21"


def test_the_run_requests_thread_survives_an_unexpected_error() -> None:
    """A start that raises something unexpected is logged; later requests still run."""
    from pipelines.run_requests import RunRequests

    started: list[str] = []
    served = threading.Event()

    def start(trigger: str) -> Any:
        if trigger == "bad":
            raise RuntimeError("boom")
        started.append(trigger)
        served.set()

    requests = RunRequests(start, lambda: None)
    try:
        requests.request("bad")
        time.sleep(0.2)
        requests.request("good")
        assert served.wait(5)
    finally:
        requests.stop()
    assert started == ["good"]


def test_a_secret_in_a_url_user_part_is_percent_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password holding `@` and `/` stays a password: encoded, and scrubbed either way."""
    monkeypatch.setenv("DP_PW", "hunter2@evil.example/x")
    monkeypatch.setenv("DP_URL", "postgresql://a:b@h/db")
    resolver = SecretResolver(where="sources.db")
    url = resolver.resolve("postgresql://u:${env:DP_PW}@db:5432/crm")
    assert url == "postgresql://u:hunter2%40evil.example%2Fx@db:5432/crm"
    assert resolver.resolve("${env:DP_URL}") == "postgresql://a:b@h/db"  # a whole URL: as is
    assert resolver.resolve("Bearer ${env:DP_PW}") == "Bearer hunter2@evil.example/x"
    shown = resolver.scrub(f"cannot reach {url} (password hunter2@evil.example/x)")
    assert "hunter2" not in shown and "evil" not in shown
