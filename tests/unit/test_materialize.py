"""Materialisations, dataset versions, dialects and model selection, on a real product."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataproduct.catalog import published_dataset
from dataproduct.descriptor import ModelSpec, load_descriptor
from dataproduct.errors import NotFoundError
from dataproduct.reading import dataset_versions, find_dataset
from dataproduct.settings import DataproductSettings
from pipelines.model import Model, Pipeline
from pipelines.runtime import ProductRuntime

DESCRIPTOR = """
name: events
domain: tests
version: 1.0.0
owner: {name: Test, email: test@example.com}
sources:
  events: {type: push, format: ndjson}
"""


@pytest.fixture
def product(tmp_path: Path, settings: DataproductSettings) -> Iterator[ProductRuntime]:
    """A product with one push source and no pipeline yet."""
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "dataproduct.yaml").write_text(DESCRIPTOR)
    settings = settings.model_copy(update={"dataset_versions_kept": 2})
    runtime = ProductRuntime.open(folder, settings)
    yield runtime
    runtime.close()


def push(runtime: ProductRuntime, tmp_path: Path, lines: list[str]) -> None:
    body = tmp_path / "body.ndjson"
    body.write_text("\n".join(lines) + "\n")
    runtime.push("events", body, "ndjson", "tester", None)


def pipeline(runtime: ProductRuntime, *models: Model) -> None:
    runtime.replace_pipeline(Pipeline(models), principal="tester")


def run(runtime: ProductRuntime, **options: Any) -> dict[str, Any]:
    state = runtime.runs.wait(runtime.start_run("tester", **options).id, 60)
    assert state["status"] == "succeeded", state["error"]
    return state


def rows(runtime: ProductRuntime, sql: str) -> list[tuple[Any, ...]]:
    with runtime.storage.reader() as cursor:
        return cursor.execute(sql).fetchall()


def test_incremental_appends_rows_past_the_high_water_mark(
    product: ProductRuntime, tmp_path: Path
) -> None:
    push(product, tmp_path, ['{"id": 1, "ts": 10}', '{"id": 2, "ts": 20}'])
    model = Model("log", "SELECT id, ts FROM input.events", materialized="incremental", cursor="ts")
    pipeline(product, model)
    run(product)
    push(product, tmp_path, ['{"id": 3, "ts": 30}'])
    run(product)
    assert rows(product, "SELECT id FROM output.log ORDER BY id") == [(1,), (2,), (3,)]
    with product.storage.reader() as cursor:
        assert published_dataset(cursor, "log").row_count == 3  # type: ignore[union-attr]


def test_incremental_merges_on_the_unique_key(product: ProductRuntime, tmp_path: Path) -> None:
    push(product, tmp_path, ['{"id": 1, "v": "a"}', '{"id": 2, "v": "b"}'])
    model = Model(
        "latest",
        "SELECT id, last(v ORDER BY rowid) AS v FROM input.events GROUP BY id",
        materialized="incremental",
        unique_key=("id",),
    )
    pipeline(product, model)
    run(product)
    push(product, tmp_path, ['{"id": 2, "v": "B"}', '{"id": 3, "v": "c"}'])
    run(product)
    assert rows(product, "SELECT id, v FROM output.latest ORDER BY id") == [
        (1, "a"),
        (2, "B"),
        (3, "c"),
    ]


def test_full_refresh_rebuilds_an_incremental_model(
    product: ProductRuntime, tmp_path: Path
) -> None:
    push(product, tmp_path, ['{"id": 1, "ts": 10}'])
    pipeline(product, Model("log", "SELECT id FROM input.events", materialized="incremental"))
    run(product)
    run(product)  # no cursor: every run appends what the query returns
    assert rows(product, "SELECT count(*) FROM output.log") == [(2,)]
    run(product, full_refresh=True)
    assert rows(product, "SELECT count(*) FROM output.log") == [(1,)]


def test_a_staging_view_follows_its_input(product: ProductRuntime, tmp_path: Path) -> None:
    push(product, tmp_path, ['{"id": 1}'])
    view = Model("recent", "SELECT id FROM input.events", layer="staging", materialized="view")
    pipeline(product, view, Model("counted", "SELECT count(*) AS n FROM staging.recent"))
    run(product)
    kinds = rows(
        product,
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_schema = 'staging' AND table_name = 'recent'",
    )
    assert kinds == [("VIEW",)]
    assert rows(product, "SELECT n FROM output.counted") == [(1,)]


def test_a_breaking_change_makes_a_new_major_version(
    product: ProductRuntime, tmp_path: Path
) -> None:
    push(product, tmp_path, ['{"id": 1, "amount": 5}'])
    pipeline(product, Model("sales", "SELECT id, amount FROM input.events"))
    run(product)
    pipeline(product, Model("sales", "SELECT id, amount, 'x' AS note FROM input.events"))
    run(product)  # an added column is not breaking
    assert find_dataset(product.storage, "sales").version == 1
    pipeline(product, Model("sales", "SELECT id, amount::VARCHAR AS amount FROM input.events"))
    run(product)  # a retyped column is
    current = find_dataset(product.storage, "sales")
    assert current.version == 2
    old = find_dataset(product.storage, "sales", version=1)
    assert [c["name"] for c in old.columns] == ["id", "amount", "note"]
    assert rows(product, f'SELECT amount FROM output."{old.table_name}"') == [(5,)]
    assert rows(product, "SELECT amount FROM output.sales") == [("5",)]


def test_versions_beyond_the_kept_count_are_dropped(
    product: ProductRuntime, tmp_path: Path
) -> None:
    push(product, tmp_path, ['{"id": 1}'])
    for index in range(4):  # four breaking changes: each renames the only column
        pipeline(product, Model("s", f"SELECT id AS c{index} FROM input.events"))
        run(product)
    assert find_dataset(product.storage, "s").version == 4
    assert [v.version for v in dataset_versions(product.storage, "s")] == [3]
    with pytest.raises(NotFoundError, match="readable versions: 4, 3"):
        find_dataset(product.storage, "s", version=1)
    tables = rows(
        product,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'output' ORDER BY table_name",
    )
    assert tables == [("s",), ("s__v3",)]


def test_a_failed_run_keeps_the_version_and_its_data(
    product: ProductRuntime, tmp_path: Path
) -> None:
    push(product, tmp_path, ['{"id": 1}'])
    pipeline(product, Model("s", "SELECT id FROM input.events"))
    run(product)
    pipeline(
        product,
        Model("s", "SELECT id::VARCHAR AS id FROM input.events"),
        Model("boom", "SELECT 1 / 0 AS x, error('boom') AS y FROM output.s"),
    )
    state = product.runs.wait(product.start_run("tester").id, 60)
    assert state["status"] == "failed"
    assert find_dataset(product.storage, "s").version == 1
    assert dataset_versions(product.storage, "s") == []
    assert rows(product, "SELECT id FROM output.s") == [(1,)]


def test_models_in_another_dialect_are_transpiled(product: ProductRuntime, tmp_path: Path) -> None:
    push(product, tmp_path, ['{"id": 1, "v": null}', '{"id": 2, "v": "b"}'])
    pipeline(
        product,
        Model("t", "SELECT TOP 1 id, ISNULL(v, 'none') AS v FROM input.events ORDER BY id",
              dialect="tsql"),
        Model("b", "SELECT SAFE_CAST(id AS STRING) AS id FROM output.t", dialect="bigquery"),
    )  # fmt: skip
    plan = product.plan()
    assert "LIMIT 1" in plan.steps[0].sql and "COALESCE" in plan.steps[0].sql
    run(product)
    assert rows(product, "SELECT id, v FROM output.t") == [(1, "none")]
    assert rows(product, "SELECT id FROM output.b") == [("1",)]


def test_running_selected_models_and_their_downstream(
    product: ProductRuntime, tmp_path: Path
) -> None:
    push(product, tmp_path, ['{"id": 1}'])
    pipeline(
        product,
        Model("a", "SELECT id FROM input.events", layer="staging"),
        Model("b", "SELECT id FROM staging.a"),
        Model("c", "SELECT id FROM input.events"),
    )
    first = run(product)
    second = run(product, models=["a"], downstream=True)
    assert [s["model"] for s in second["steps"]] == ["a", "b"]
    with product.storage.reader() as cursor:
        c = published_dataset(cursor, "c")
    assert c is not None and c.run_id == first["id"]  # not rebuilt, not dropped
    with pytest.raises(NotFoundError, match="no model nope"):
        product.start_run("tester", models=["nope"])


def test_removing_a_model_drops_its_dataset(product: ProductRuntime, tmp_path: Path) -> None:
    push(product, tmp_path, ['{"id": 1}'])
    pipeline(
        product,
        Model("v", "SELECT id FROM input.events", layer="staging", materialized="view"),
        Model("a", "SELECT id FROM staging.v"),
        Model("b", "SELECT id FROM input.events"),
    )
    run(product)
    pipeline(product, Model("b", "SELECT id FROM input.events"))
    run(product)
    remaining = rows(
        product,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('staging', 'output') ORDER BY ALL",
    )
    assert remaining == [("output", "b")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"materialized": "view"}, "a view belongs in the staging layer"),
        ({"unique_key": ["id"]}, "incremental models only"),
        ({"dialect": "cobol"}, "unknown SQL dialect 'cobol'"),
        ({"materialized": "snapshot"}, "Input should be 'table', 'view' or 'incremental'"),
    ],
)
def test_model_settings_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(name="m", sql="SELECT 1", **fields)


def test_sql_file_headers_set_model_settings(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    (folder / "pipeline").mkdir(parents=True)
    (folder / "dataproduct.yaml").write_text(DESCRIPTOR)
    (folder / "pipeline" / "log.sql").write_text(
        "-- materialized: incremental\n-- unique_key: id, day\n-- cursor: ts\n"
        "-- dialect: postgres\nSELECT id, day, ts FROM input.events\n"
    )
    (model,) = load_descriptor(folder).pipeline
    assert (model.materialized, model.unique_key, model.cursor, model.dialect) == (
        "incremental",
        ["id", "day"],
        "ts",
        "postgres",
    )


def test_a_run_past_its_timeout_is_cancelled_and_publishes_nothing(
    tmp_path: Path, settings: DataproductSettings
) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "dataproduct.yaml").write_text(DESCRIPTOR)
    limited = settings.model_copy(update={"run_timeout_s": 0.5, "threads": 1})
    runtime = ProductRuntime.open(folder, limited)
    try:
        push(runtime, tmp_path, ['{"id": 1}'])
        pipeline(runtime, Model("fast", "SELECT id FROM input.events"))
        first = run(runtime)
        slow = "SELECT sum(a.r * b.s) AS n FROM range(100000000) AS a(r), range(1000) AS b(s)"
        pipeline(
            runtime, Model("fast", "SELECT id + 1 AS id FROM input.events"), Model("slow", slow)
        )
        state = runtime.runs.wait(runtime.start_run("tester").id, 30)
        assert state["status"] == "cancelled"
        assert state["error"]["code"] == "run_timeout"
        with runtime.storage.reader() as cursor:
            fast = published_dataset(cursor, "fast")
        assert fast is not None and fast.run_id == first["id"]
        assert rows(runtime, "SELECT id FROM output.fast") == [(1,)]
    finally:
        runtime.close()
