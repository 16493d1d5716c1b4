"""The runtime over time: recovery after a crash, pipeline versions, snapshots for readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataproduct.errors import NotFoundError
from dataproduct.settings import DataproductSettings
from pipelines.model import Model, Pipeline
from pipelines.planner import PipelineRejectedError
from pipelines.runtime import ProductRuntime
from pipelines.store import list_versions, sync_descriptor_pipeline
from tests.unit.runtime_helpers import output_state, publish, run_to_end, with_models


@pytest.fixture
def published(runtime: ProductRuntime) -> ProductRuntime:
    """The example product with its sources ingested and one successful run."""
    return publish(runtime)


def test_run_left_running_is_marked_failed_on_reopen(
    published: ProductRuntime, example_product: Path, settings: DataproductSettings
) -> None:
    """A process killed mid-run leaves a `running` row; the next start ends it as failed."""
    before = output_state(published)
    finished = published.runs.history()[0]
    with published.storage.transaction() as cursor:
        cursor.execute(
            "INSERT INTO meta.runs VALUES ('killed', 'running', 'api', 'tester', 1, now(), "
            "NULL, '[]', NULL, 3)"
        )
    published.close()
    reopened = ProductRuntime.open(example_product, settings)
    try:
        state = reopened.runs.get("killed")
        assert state["status"] == "failed"
        assert state["error"]["code"] == "interrupted"
        assert state["finished_at"] is not None
        assert reopened.runs.get(finished["id"])["status"] == "succeeded"
        assert output_state(reopened) == before
        assert reopened.runs.active() is None
    finally:
        reopened.close()


def test_pipeline_versions_are_kept(runtime: ProductRuntime) -> None:
    descriptor_version = runtime.pipeline()
    assert descriptor_version is not None
    assert (descriptor_version.version, descriptor_version.origin) == (1, "descriptor")
    first = Pipeline((Model("all_orders", "SELECT * FROM input.orders"),))
    second = Pipeline((Model("all_customers", "SELECT * FROM input.customers"),))
    assert runtime.replace_pipeline(first, principal="ana").version == 2
    assert runtime.replace_pipeline(second, principal="ben").version == 3
    with pytest.raises(PipelineRejectedError):
        runtime.replace_pipeline(
            Pipeline((Model("ghost", "SELECT * FROM input.ghosts"),)), principal="eve"
        )
    assert [v["version"] for v in list_versions(runtime.storage)] == [3, 2, 1]
    kept = {n: runtime.pipeline(n) for n in (1, 2, 3)}
    assert kept[1] == descriptor_version
    assert descriptor_version.pipeline == Pipeline.from_specs(runtime.descriptor.pipeline)
    assert kept[2] is not None and kept[3] is not None
    assert (kept[2].pipeline, kept[2].submitted_by, kept[2].origin) == (first, "ana", "api")
    assert (kept[3].pipeline, kept[3].digest) == (second, second.digest())
    assert runtime.pipeline() == kept[3]
    with pytest.raises(NotFoundError):
        runtime.pipeline(4)


def test_api_pipeline_stays_current_across_reopen(
    runtime: ProductRuntime, example_product: Path, settings: DataproductSettings
) -> None:
    put = Pipeline((Model("all_orders", "SELECT * FROM input.orders"),))
    runtime.replace_pipeline(put, principal="ana")
    runtime.close()
    reopened = ProductRuntime.open(example_product, settings)
    try:
        current = reopened.pipeline()
        assert current is not None
        assert (current.version, current.origin, current.pipeline) == (2, "api", put)
        unchanged = Pipeline.from_specs(reopened.descriptor.pipeline)
        assert sync_descriptor_pipeline(reopened.storage, unchanged) == current
        assert len(list_versions(reopened.storage)) == 2
    finally:
        reopened.close()
    sql_file = example_product / "pipeline" / "daily_sales.sql"
    sql_file.write_text(sql_file.read_text() + "LIMIT 100\n")
    changed = ProductRuntime.open(example_product, settings)
    try:
        current = changed.pipeline()
        assert current is not None
        assert (current.version, current.origin) == (3, "descriptor")
        daily = next(m for m in current.pipeline.models if m.name == "daily_sales")
        assert daily.sql.endswith("LIMIT 100\n")
    finally:
        changed.close()


def test_open_reader_keeps_its_snapshot_while_a_run_publishes(published: ProductRuntime) -> None:
    old_rows = output_state(published)["daily_sales"][1]
    old_run = published.runs.history()[0]["id"]
    with_models(published, daily_sales=lambda sql: sql + "LIMIT 10\n")
    reader = published.storage.cursor()
    streaming = published.storage.cursor()
    try:
        reader.execute("BEGIN TRANSACTION")
        assert reader.execute("SELECT count(*) FROM output.daily_sales").fetchall() == [
            (len(old_rows),)
        ]
        stream = streaming.sql("SELECT * FROM output.daily_sales").to_arrow_reader(batch_size=64)
        first = stream.read_next_batch()
        state = run_to_end(published)
        assert state["status"] == "succeeded", state["error"]
        assert first.num_rows + stream.read_all().num_rows == len(old_rows)
        assert reader.execute("SELECT count(*) FROM output.daily_sales").fetchall() == [
            (len(old_rows),)
        ]
        catalog = "SELECT run_id, row_count FROM meta.datasets WHERE name = 'daily_sales'"
        assert reader.execute(catalog).fetchall() == [(old_run, len(old_rows))]
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM output.daily_sales").fetchall() == [(10,)]
    finally:
        reader.close()
        streaming.close()
