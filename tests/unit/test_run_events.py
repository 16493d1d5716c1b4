"""Runs emit OpenLineage events: START, then COMPLETE, FAIL or ABORT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataproduct.settings import DataproductSettings
from pipelines.model import Model, Pipeline
from pipelines.openlineage import run_uuid
from pipelines.runtime import ProductRuntime


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_runs_write_their_events_to_the_configured_file(
    example_product: Path, settings: DataproductSettings, tmp_path: Path
) -> None:
    log = tmp_path / "lineage.ndjson"
    runtime = ProductRuntime.open(
        example_product, settings.model_copy(update={"openlineage_file": log})
    )
    try:
        runtime.ingest(None, "tester")
        good = runtime.runs.wait(runtime.start_run("tester").id, 60)
        runtime.replace_pipeline(
            Pipeline((Model("bad", "SELECT error('no') AS x FROM input.orders"),)), "tester"
        )
        bad = runtime.runs.wait(runtime.start_run("tester").id, 60)
        assert runtime.emitter.flush(10)
    finally:
        runtime.close()
    assert (good["status"], bad["status"]) == ("succeeded", "failed")
    sent = events(log)
    assert [e["eventType"] for e in sent] == ["START", "COMPLETE", "START", "FAIL"]
    assert sent[1]["run"]["runId"] == str(run_uuid("sales-eu", good["id"]))
    assert sent[3]["run"]["runId"] == str(run_uuid("sales-eu", bad["id"]))
    outputs = {o["name"]: o for o in sent[1]["outputs"]}
    assert {"output.customer_revenue", "output.daily_sales"} <= set(outputs)
    fields = [f["name"] for f in outputs["output.daily_sales"]["facets"]["schema"]["fields"]]
    assert fields == ["order_date", "country", "orders", "revenue"]
    inputs = {i["name"] for i in sent[1]["inputs"]}
    assert {"input.orders", "input.customers"} <= inputs
