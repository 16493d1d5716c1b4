"""Loading files into a real DuckDB file, and running the example pipeline atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataproduct.catalog import create_meta_tables, published_datasets
from dataproduct.errors import ConflictError, DataproductError
from dataproduct.ingest import FileFormat, Ingestion, file_reader, ingestion_history, load_stream
from dataproduct.storage import Storage, file_connection
from pipelines.model import Model
from pipelines.runtime import ProductRuntime
from tests.unit.runtime_helpers import Rows, output_state, publish, run_to_end, with_models

# Reads both outputs, so it is the last step; a cross join that would take hours.
SLOW_SQL = (
    "SELECT sum(r.range + d.orders + c.orders) AS s "
    "FROM output.daily_sales AS d, output.customer_revenue AS c, range(100000000) AS r"
)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """A product database file in this test's folder, with its meta tables."""
    opened = Storage(file_connection(tmp_path / "db" / "product.duckdb"))
    with opened.transaction() as cursor:
        create_meta_tables(cursor)
    yield opened
    opened.close()


def load(
    storage: Storage, source: str, path: Path, file_format: FileFormat, mode: str = "replace"
) -> Ingestion:
    """Load one file into `input.<source>` the way connectors and the input port do."""
    return load_stream(
        storage, source, lambda: file_reader(str(path), file_format), mode=mode, principal="test"
    )


def table_rows(storage: Storage, name: str, layer: str = "input") -> Rows:
    """Every row of a table, sorted."""
    with storage.reader() as cursor:
        return cursor.execute(f'SELECT * FROM {layer}."{name}" ORDER BY ALL').fetchall()


def column_types(storage: Storage, name: str) -> Rows:
    """Column names and types of an input table."""
    with storage.reader() as cursor:
        return cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'input' AND table_name = ? ORDER BY ordinal_position",
            [name],
        ).fetchall()


def write_files(folder: Path) -> dict[FileFormat, Path]:
    """The same three rows as CSV, JSON, NDJSON and Parquet."""
    records = [{"id": 1, "word": "alpha"}, {"id": 2, "word": "beta"}, {"id": 3, "word": "gamma"}]
    paths: dict[FileFormat, Path] = {
        "csv": folder / "rows.csv",
        "json": folder / "rows.json",
        "ndjson": folder / "rows.ndjson",
        "parquet": folder / "rows.parquet",
    }
    paths["csv"].write_text("id,word\n" + "".join(f"{r['id']},{r['word']}\n" for r in records))
    paths["json"].write_text(json.dumps(records))
    paths["ndjson"].write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), paths["parquet"])
    return paths


@pytest.mark.parametrize("file_format", ["csv", "json", "ndjson", "parquet"])
def test_each_format_loads(storage: Storage, tmp_path: Path, file_format: FileFormat) -> None:
    ingestion = load(storage, "rows", write_files(tmp_path)[file_format], file_format)
    assert (ingestion.status, ingestion.rows) == ("succeeded", 3)
    assert table_rows(storage, "rows") == [(1, "alpha"), (2, "beta"), (3, "gamma")]


def test_append_adds_and_replace_starts_over(storage: Storage, tmp_path: Path) -> None:
    csv = write_files(tmp_path)["csv"]
    load(storage, "rows", csv, "csv")
    assert load(storage, "rows", csv, "csv", mode="append").rows == 3
    assert len(table_rows(storage, "rows")) == 6
    assert load(storage, "rows", csv, "csv", mode="replace").rows == 3
    assert len(table_rows(storage, "rows")) == 3


def test_append_to_a_missing_table_creates_it(storage: Storage, tmp_path: Path) -> None:
    assert load(storage, "fresh", write_files(tmp_path)["ndjson"], "ndjson", "append").rows == 3


def truncated_parquet(folder: Path) -> Path:
    """A Parquet file cut off in the middle: no footer."""
    whole = folder / "whole.parquet"
    pq.write_table(pa.table({"id": range(50_000), "word": ["x" * 20] * 50_000}), whole)
    data = whole.read_bytes()
    cut = folder / "truncated.parquet"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def corrupt_parquet(folder: Path) -> Path:
    """A Parquet file whose later row groups are garbage: it fails after rows were streamed."""
    path = folder / "corrupt.parquet"
    table = pa.table({"id": range(400_000), "word": [f"w{i % 977}" for i in range(400_000)]})
    pq.write_table(table, path, row_group_size=20_000, compression="snappy")
    data = bytearray(path.read_bytes())
    middle = len(data) * 2 // 3
    data[middle : middle + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(data))
    return path


def bad_value_csv(folder: Path) -> Path:
    """Rows that do not fit the typed table the CSV of write_files made (id is an integer)."""
    path = folder / "bad.csv"
    path.write_text("id,word\n4,delta\nfour,epsilon\n")
    return path


@pytest.mark.parametrize(
    ("make_bad", "file_format", "mode"),
    [
        pytest.param(truncated_parquet, "parquet", "replace", id="truncated-parquet"),
        pytest.param(corrupt_parquet, "parquet", "replace", id="corrupt-parquet"),
        pytest.param(corrupt_parquet, "parquet", "append", id="corrupt-parquet-append"),
        pytest.param(bad_value_csv, "csv", "append", id="csv-bad-value-append"),
    ],
)
def test_malformed_file_changes_nothing(
    storage: Storage,
    tmp_path: Path,
    make_bad: Callable[[Path], Path],
    file_format: FileFormat,
    mode: str,
) -> None:
    load(storage, "rows", write_files(tmp_path)["csv"], "csv")
    before, types_before = table_rows(storage, "rows"), column_types(storage, "rows")
    with pytest.raises(DataproductError) as caught:
        load(storage, "rows", make_bad(tmp_path), file_format, mode)
    assert 400 <= caught.value.status < 500
    assert table_rows(storage, "rows") == before
    assert column_types(storage, "rows") == types_before
    failed = ingestion_history(storage, "rows")[0]
    assert (failed["status"], failed["rows"], failed["mode"]) == ("failed", 0, mode)
    assert failed["error"]["code"] == caught.value.code


def test_missing_file_is_a_source_error(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(DataproductError) as caught:
        load(storage, "rows", tmp_path / "nothing.csv", "csv")
    assert (caught.value.status, caught.value.code) == (422, "source_error")


def test_ingestions_are_recorded(storage: Storage, tmp_path: Path) -> None:
    good = load(storage, "rows", write_files(tmp_path)["json"], "json")
    with pytest.raises(DataproductError):
        load(storage, "rows", bad_value_csv(tmp_path), "csv", mode="append")
    history = ingestion_history(storage)
    assert [(h["source"], h["status"], h["rows"]) for h in history] == [
        ("rows", "failed", 0),
        ("rows", "succeeded", 3),
    ]
    assert history[1]["id"] == good.id
    assert history[1]["error"] is None
    assert history[0]["error"]["where"] == "input.rows"
    assert "four" in history[0]["error"]["message"]


# the pipeline runner, through the example product's runtime


@pytest.fixture
def published(runtime: ProductRuntime) -> ProductRuntime:
    """The example product with its sources ingested and one successful run."""
    return publish(runtime)


def test_run_publishes_the_catalog(published: ProductRuntime) -> None:
    run = published.runs.history()[0]
    assert run["status"] == "succeeded"
    assert run["progress"] == {"step": 3, "of": 3, "rows_written": run["progress"]["rows_written"]}
    with published.storage.reader() as cursor:
        catalog = published_datasets(cursor, layer=None)
        counts = {
            d.name: cursor.execute(f'SELECT count(*) FROM {d.layer}."{d.name}"').fetchall()[0][0]
            for d in catalog
        }
    assert sorted((d.name, d.layer) for d in catalog) == [
        ("customer_revenue", "output"),
        ("daily_sales", "output"),
        ("orders_clean", "staging"),
    ]
    for dataset in catalog:
        assert dataset.run_id == run["id"]
        assert dataset.pipeline_version == 1
        assert dataset.row_count == counts[dataset.name] > 0
    revenue = next(d for d in catalog if d.name == "customer_revenue")
    assert [c["name"] for c in revenue.columns] == [
        "customer_id",
        "name",
        "country",
        "orders",
        "revenue",
    ]
    assert "FROM staging.orders_clean AS o" in revenue.sql


def test_failing_last_model_leaves_every_output_as_it_was(published: ProductRuntime) -> None:
    before = output_state(published)
    staging_before = table_rows(published.storage, "orders_clean", "staging")
    failing = Model("zz_last", "SELECT CAST(country AS INTEGER) AS n FROM output.daily_sales")
    with_models(
        published,
        failing,
        daily_sales=lambda sql: sql.replace("count(*) AS orders", "count(*) + 1 AS orders"),
    )
    assert [s.model.name for s in published.plan().steps][-1] == "zz_last"
    state = run_to_end(published)
    assert state["status"] == "failed"
    assert state["error"]["where"] == "model zz_last"
    assert state["error"]["message"].startswith("model zz_last failed: Conversion Error")
    assert [s["model"] for s in state["steps"]] == [
        "orders_clean",
        "customer_revenue",
        "daily_sales",
    ]
    assert output_state(published) == before
    assert table_rows(published.storage, "orders_clean", "staging") == staging_before
    with published.storage.reader() as cursor:
        assert [d.name for d in published_datasets(cursor)] == ["customer_revenue", "daily_sales"]
    assert published.runs.get(state["id"])["status"] == "failed"


CONTRACT_BREAKS = [
    pytest.param(
        ("c.country,", ""),
        "does not produce documented column 'country'",
        "datasets.customer_revenue.columns.country",
        id="missing-column",
    ),
    pytest.param(
        ("sum(o.amount) AS revenue", "CAST(sum(o.amount) AS VARCHAR) AS revenue"),
        "column 'revenue' of customer_revenue is VARCHAR, documented as DECIMAL(38, 2)",
        "datasets.customer_revenue.columns.revenue.type",
        id="wrong-type",
    ),
    pytest.param(
        ("o.customer_id,", "if(c.country = 'DE', NULL, o.customer_id) AS customer_id,"),
        "required column 'customer_id' of customer_revenue has",
        "datasets.customer_revenue.columns.customer_id.required",
        id="nulls-in-required",
    ),
]


@pytest.mark.parametrize(("rewrite", "message", "where"), CONTRACT_BREAKS)
def test_contract_violation_fails_the_run_and_publishes_nothing(
    published: ProductRuntime, rewrite: tuple[str, str], message: str, where: str
) -> None:
    before = output_state(published)
    with_models(published, customer_revenue=lambda sql: sql.replace(*rewrite))
    state = run_to_end(published)
    assert state["status"] == "failed"
    assert message in state["error"]["message"]
    assert state["error"]["where"] == where
    assert output_state(published) == before


def test_second_run_conflicts_and_cancel_publishes_nothing(published: ProductRuntime) -> None:
    before = output_state(published)
    original = published.pipeline()
    assert original is not None
    with_models(published, Model("slow", SLOW_SQL, "staging"))
    slow_run = published.start_run("tester")
    with pytest.raises(ConflictError) as caught:
        published.start_run("tester")
    assert caught.value.status == 409
    assert slow_run.id in caught.value.message
    deadline = time.monotonic() + 30
    while len(slow_run.steps) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the three quick steps are built: let the slow statement start
    assert published.runs.get(slow_run.id)["status"] == "running"
    published.runs.cancel(slow_run.id)
    state = published.runs.wait(slow_run.id, timeout_s=30)
    assert state["status"] == "cancelled"
    assert state["error"]["code"] == "run_cancelled"
    assert published.runs.get(slow_run.id)["status"] == "cancelled"
    assert output_state(published) == before
    with published.storage.reader() as cursor:
        assert "slow" not in {d.name for d in published_datasets(cursor, layer=None)}
    # the writer is usable again: the original pipeline runs to the end
    published.replace_pipeline(original.pipeline, principal="tester")
    assert run_to_end(published)["status"] == "succeeded"


def test_cancel_at_a_step_boundary_is_not_lost(published: ProductRuntime) -> None:
    """A cancel that comes between two statements still stops the next one (seconds long)."""
    before = output_state(published)
    bounded = (
        "SELECT sum(a.r * b.s + d.n) AS total FROM range(1000000) AS a(r), range(1000) AS b(s), "
        "(SELECT max(orders) AS n FROM output.daily_sales) AS d"
    )
    with_models(published, Model("slow", bounded, "staging"))
    for _ in range(8):
        run = published.start_run("tester")
        deadline = time.monotonic() + 30
        while len(run.steps) < 3 and time.monotonic() < deadline:
            pass  # spin: cancel the moment the third step is done, before the slow one runs
        published.runs.cancel(run.id)
        started = time.monotonic()
        state = published.runs.wait(run.id, timeout_s=60)
        assert state["status"] == "cancelled"
        assert time.monotonic() - started < 2
        assert output_state(published) == before


def test_cancelling_a_finished_or_unknown_run(published: ProductRuntime) -> None:
    """Only a running run can be cancelled: the latest or an older finished one conflicts."""
    older = published.runs.history()[0]["id"]
    latest = run_to_end(published)["id"]
    for run_id in (latest, older):
        with pytest.raises(ConflictError, match="is not running: it succeeded"):
            published.runs.cancel(run_id)
    assert [published.runs.get(i)["status"] for i in (older, latest)] == ["succeeded"] * 2
    with pytest.raises(DataproductError) as caught:
        published.runs.cancel("nope")
    assert caught.value.status == 404
