"""The control port: ingestion, pipeline SQL and its versions, dry-run plans, and runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.api import assert_error, wait_for_run
from tests.conftest import TokenFactory

MODELS = ["orders_clean", "customer_revenue", "daily_sales"]
# About 1e10 rows through a sum: minutes on one thread, so it is surely still running
# when the test looks, yet bounded if cancelling were ever broken.
SLOW_SQL = "SELECT sum(a.r * b.s) AS n FROM range(10000000) AS a(r), range(1000) AS b(s)"


@pytest.fixture
def settings(settings: DataproductSettings) -> DataproductSettings:
    """One DuckDB thread, so the slow model is slow everywhere."""
    return settings.model_copy(update={"threads": 1})


@pytest.fixture
def admin(token: TokenFactory) -> dict[str, str]:
    """Headers of an operator."""
    return token("control:admin")


def _count(runtime: ProductRuntime, table: str) -> int:
    with runtime.storage.reader() as cursor:
        return int(cursor.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def _published(runtime: ProductRuntime) -> dict[str, str]:
    """Published output datasets and the run that made each."""
    with runtime.storage.reader() as cursor:
        rows = cursor.execute(
            "SELECT name, run_id FROM meta.datasets WHERE layer = 'output' ORDER BY name"
        ).fetchall()
    return dict(rows)


def _current_models(client: TestClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = client.get("/control/pipeline", headers=admin).json()["models"]
    return models


def test_ingest_all_pulls_every_pulling_source(
    client: TestClient, runtime: ProductRuntime, example_product: Path, admin: dict[str, str]
) -> None:
    """Every file source is reloaded (push sources are not pulled)."""
    with (example_product / "data" / "orders.csv").open("a", encoding="utf-8") as file:
        file.write("999999,C0001,2026-12-31,10.00,EUR,paid\n")
    response = client.post("/control/ingest", headers=admin)
    assert response.status_code == 200
    ingestions = {i["source"]: i for i in response.json()["ingestions"]}
    assert sorted(ingestions) == ["customers", "orders"]
    assert ingestions["orders"]["rows"] == 5001 == _count(runtime, "input.orders")
    assert ingestions["customers"]["rows"] == 300
    assert all(
        i["status"] == "succeeded" and i["principal"] == "tester" for i in ingestions.values()
    )
    assert "run" not in response.json()


def test_ingest_one_with_run_republishes(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """`run=true` starts a run after the load; it publishes new output."""
    before = _published(runtime)
    response = client.post("/control/ingest/orders?run=true", headers=admin)
    body = response.json()
    assert [i["source"] for i in body["ingestions"]] == ["orders"]
    assert body["run"]["trigger"] == "ingest"
    assert wait_for_run(client, runtime, body["run"]["id"], admin)["status"] == "succeeded"
    after = _published(runtime)
    assert sorted(after) == sorted(before)
    assert set(after.values()) == {body["run"]["id"]}


def test_ingest_push_or_unknown_source_is_refused(
    client: TestClient, admin: dict[str, str]
) -> None:
    """A push source has nothing to pull (409); an unknown one is 404."""
    assert_error(client.post("/control/ingest/returns", headers=admin), 409, "conflict")
    assert_error(client.post("/control/ingest/nope", headers=admin), 404, "not_found")


def test_ingestion_history_is_newest_first(client: TestClient, admin: dict[str, str]) -> None:
    """Start-up loads and later ones are recorded, filterable by source."""
    client.post("/control/ingest/orders", headers=admin)
    history = client.get("/control/ingestions?source=orders", headers=admin).json()["ingestions"]
    assert [h["principal"] for h in history] == ["tester", "startup"]
    assert {h["source"] for h in history} == {"orders"}
    assert history[0]["started_at"] > history[1]["started_at"]
    everything = client.get("/control/ingestions?limit=2", headers=admin).json()["ingestions"]
    assert len(everything) == 2


def test_pipeline_is_the_descriptor_s_at_first(client: TestClient, admin: dict[str, str]) -> None:
    """Version 1 comes from the folder: YAML models and pipeline/*.sql."""
    pipeline = client.get("/control/pipeline", headers=admin).json()
    assert (pipeline["version"], pipeline["origin"]) == (1, "descriptor")
    assert [m["name"] for m in pipeline["models"]] == MODELS
    assert pipeline["models"][0]["layer"] == "staging"


REJECTED = [
    {"name": "bad_source", "sql": "SELECT 1 AS a,\n       b FROM input.nowhere"},
    {"name": "bad_statement", "sql": "DROP TABLE output.daily_sales"},
]


def test_rejected_pipeline_is_422_and_changes_nothing(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """Every problem names its model, rule, line and column; the old pipeline stays."""
    response = client.put("/control/pipeline", json={"models": REJECTED}, headers=admin)
    error = assert_error(response, 422, "pipeline_rejected")
    problems = {p["model"]: p for p in error["details"]["problems"]}
    assert problems["bad_source"]["rule"] == "unknown_table"
    assert (problems["bad_source"]["line"], problems["bad_source"]["column"]) == (2, 15)
    assert problems["bad_statement"]["rule"] == "only_queries"
    assert problems["bad_statement"]["line"] == 1
    assert error["where"] == "model bad_source, line 2, column 15"
    assert client.get("/control/pipeline", headers=admin).json()["version"] == 1
    assert len(client.get("/control/pipeline/versions", headers=admin).json()["versions"]) == 1


def test_invalid_pipeline_body_is_422(client: TestClient, admin: dict[str, str]) -> None:
    """A model name that is not an identifier is refused before planning."""
    body = {"models": [{"name": "Bad-Name", "sql": "SELECT 1 AS x"}]}
    error = assert_error(client.put("/control/pipeline", json=body, headers=admin), 422)
    assert error["where"].startswith("body.models.0.name")


def test_accepted_pipeline_makes_a_new_version(client: TestClient, admin: dict[str, str]) -> None:
    """A PUT stores version 2; older versions stay readable with `?version=`."""
    models = [
        *_current_models(client, admin),
        {"name": "countries", "sql": "SELECT DISTINCT country FROM output.daily_sales"},
    ]
    stored = client.put("/control/pipeline", json={"models": models}, headers=admin).json()
    assert (stored["version"], stored["origin"], stored["submitted_by"]) == (2, "api", "tester")
    assert client.get("/control/pipeline", headers=admin).json()["digest"] == stored["digest"]
    versions = client.get("/control/pipeline/versions", headers=admin).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    first = client.get("/control/pipeline?version=1", headers=admin).json()
    assert [m["name"] for m in first["models"]] == MODELS
    assert_error(client.get("/control/pipeline?version=3", headers=admin), 404, "not_found")


def test_plan_of_the_current_pipeline(client: TestClient, admin: dict[str, str]) -> None:
    """A dry run orders the steps and derives lineage."""
    plan = client.post("/control/pipeline/plan", headers=admin).json()
    assert plan["valid"] is True
    order = [s["model"] for s in plan["steps"]]
    assert sorted(order) == sorted(MODELS)
    assert order[0] == "orders_clean"
    daily = next(s for s in plan["steps"] if s["model"] == "daily_sales")
    assert daily["target"] == "output.daily_sales"
    assert daily["depends_on"] == ["orders_clean"]
    assert {"from": "input.orders", "to": "staging.orders_clean"} in plan["lineage"]
    assert {"from": "staging.orders_clean", "to": "output.daily_sales"} in plan["lineage"]
    assert {"from": "input.customers", "to": "output.daily_sales"} in plan["lineage"]


def test_plan_of_a_proposal_changes_nothing(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """Valid or not, a proposed pipeline is only planned: no version, no run, no output."""
    published = _published(runtime)
    good = [{"name": "only_paid", "sql": "SELECT * FROM input.orders WHERE status = 'paid'"}]
    planned = client.post("/control/pipeline/plan", json={"models": good}, headers=admin).json()
    assert planned["valid"] is True
    assert [s["target"] for s in planned["steps"]] == ["output.only_paid"]
    cycle = [
        {"name": "a", "sql": "SELECT * FROM output.b"},
        {"name": "b", "sql": "SELECT * FROM output.a"},
    ]
    refused = client.post("/control/pipeline/plan", json={"models": cycle}, headers=admin).json()
    assert refused["valid"] is False
    assert refused["problems"][0]["rule"] == "cycle"
    bad = client.post("/control/pipeline/plan", json={"models": REJECTED}, headers=admin).json()
    assert bad["valid"] is False
    assert {(p["model"], p["rule"]) for p in bad["problems"]} >= {
        ("bad_source", "unknown_table"),
        ("bad_statement", "only_queries"),
    }
    assert all({"model", "rule", "message", "line", "column"} <= set(p) for p in bad["problems"])
    assert (
        client.get("/control/pipeline/versions", headers=admin).json()["versions"][0]["version"]
        == 1
    )
    assert len(client.get("/control/runs", headers=admin).json()["runs"]) == 1
    assert _published(runtime) == published


def test_run_is_accepted_and_can_be_followed(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """202 with a Location to poll; the run ends with progress and per-model timings."""
    response = client.post("/control/runs", headers=admin)
    assert response.status_code == 202
    run = response.json()
    location = response.headers["location"]
    assert location.endswith(f"/control/runs/{run['id']}")
    assert run["status"] in ("running", "succeeded")
    path = location.removeprefix(runtime.settings.base_url())
    state = wait_for_run(client, runtime, run["id"], admin)
    assert client.get(path, headers=admin).json() == state
    assert state["status"] == "succeeded"
    assert state["finished_at"] is not None and state["error"] is None
    assert state["progress"]["step"] == state["progress"]["of"] == 3
    steps = {s["model"]: s for s in state["steps"]}
    assert sorted(steps) == sorted(MODELS)
    assert all(isinstance(s["seconds"], float | int) and s["seconds"] >= 0 for s in steps.values())
    assert steps["daily_sales"]["rows"] == _count(runtime, "output.daily_sales")
    assert state["progress"]["rows_written"] == sum(s["rows"] for s in steps.values())
    assert set(_published(runtime).values()) == {run["id"]}
    history = client.get("/control/runs", headers=admin).json()["runs"]
    assert [r["id"] for r in history][:1] == [run["id"]]
    assert history[1]["trigger"] == "startup"


def test_run_with_ingest_reloads_first(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """`{"ingest": true}` pulls the sources before running."""
    response = client.post("/control/runs", json={"ingest": True}, headers=admin)
    assert wait_for_run(client, runtime, response.json()["id"], admin)["status"] == "succeeded"
    history = client.get("/control/ingestions?source=customers", headers=admin).json()
    assert history["ingestions"][0]["principal"] == "tester"


def test_cancelling_a_finished_run_is_409(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """Only a running run can be cancelled; a finished one keeps its status."""
    run = client.post("/control/runs", headers=admin).json()
    assert runtime.runs.wait(run["id"])["status"] == "succeeded"
    assert_error(client.delete(f"/control/runs/{run['id']}", headers=admin), 409, "conflict")
    assert client.get(f"/control/runs/{run['id']}", headers=admin).json()["status"] == "succeeded"


def test_a_run_reads_succeeded_only_once_published(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    """When GET says succeeded, reads already see what the run published."""
    for _ in range(20):
        run_id = client.post("/control/runs", headers=admin).json()["id"]
        status = "running"
        while status in ("queued", "running"):
            status = client.get(f"/control/runs/{run_id}", headers=admin).json()["status"]
        published = _published(runtime)
        runtime.runs.wait(run_id)
        assert status == "succeeded"
        assert set(published.values()) == {run_id}


def test_unknown_run_is_404(client: TestClient, admin: dict[str, str]) -> None:
    """Status and cancel of a run that never was."""
    assert_error(client.get("/control/runs/nope", headers=admin), 404, "not_found")
    assert_error(client.delete("/control/runs/nope", headers=admin), 404, "not_found")


def test_slow_run_blocks_a_second_one_and_can_be_cancelled(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str], token: TokenFactory
) -> None:
    """409 while a run is going; DELETE cancels it and the output stays as it was."""
    models = [*_current_models(client, admin), {"name": "slow", "sql": SLOW_SQL}]
    assert (
        client.put("/control/pipeline", json={"models": models}, headers=admin).status_code == 200
    )
    published = _published(runtime)
    rows = client.get("/output/datasets/daily_sales?format=csv", headers=token("output:read")).text

    run = client.post("/control/runs", headers=admin).json()
    second = client.post("/control/runs", headers=admin)
    assert assert_error(second, 409, "conflict")["where"] == f"runs/{run['id']}"
    assert client.get(f"/control/runs/{run['id']}", headers=admin).json()["status"] == "running"

    started = time.monotonic()
    assert client.delete(f"/control/runs/{run['id']}", headers=admin).status_code == 200
    state = wait_for_run(client, runtime, run["id"], admin, timeout_s=30)
    assert state["status"] == "cancelled"
    assert time.monotonic() - started < 30

    assert _published(runtime) == published
    reader = token("output:read")
    assert client.get("/output/datasets/daily_sales?format=csv", headers=reader).text == rows
    assert_error(client.get("/output/datasets/slow", headers=reader), 404)
    with runtime.storage.reader() as cursor:
        tables = cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'output'"
        ).fetchall()
    assert ("slow",) not in tables


def test_sources_show_settings_freshness_and_no_credentials(
    client: TestClient, admin: dict[str, str]
) -> None:
    """GET /control/sources: each source's type and options, last load, loads running."""
    sources = client.get("/control/sources", headers=admin).json()["sources"]
    assert set(sources) == {"orders", "customers", "returns"}
    orders = sources["orders"]
    assert (orders["type"], orders["pulls"], orders["path"]) == ("file", True, "data/orders.csv")
    assert orders["freshness"]["last_status"] == "succeeded"
    assert orders["running"] == []
    assert (sources["returns"]["pulls"], sources["returns"]["freshness"]) == (False, None)
    assert "consumer" not in sources["returns"]


def test_sources_need_an_administrator(client: TestClient, token: TokenFactory) -> None:
    """A reader gets 403 from the control port."""
    response = client.get("/control/sources", headers=token("output:read"))
    assert response.status_code == 403
