"""The pipeline engine through the control, output and discovery ports."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from tests.api import assert_error
from tests.conftest import TokenFactory

ORDERS = "staging.orders_clean"


def wait(client: TestClient, admin: dict[str, str], run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state: dict[str, Any] = client.get(f"/control/runs/{run_id}", headers=admin).json()
        if state["status"] not in ("queued", "running"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


def test_plan_predicts_columns_and_column_lineage(client: TestClient, token: TokenFactory) -> None:
    plan = client.post("/control/pipeline/plan", headers=token("control:admin")).json()
    assert plan["valid"] is True
    steps = {s["target"]: s for s in plan["steps"]}
    predicted = steps["output.daily_sales"]["predicted_columns"]
    assert predicted == [
        {"name": "order_date", "type": "DATE"},
        {"name": "country", "type": "VARCHAR"},
        {"name": "orders", "type": "BIGINT"},
        {"name": "revenue", "type": "DECIMAL(38,2)"},
    ]
    pairs = {
        (e["from"]["table"], e["from"]["column"], e["to"]["table"], e["to"]["column"])
        for e in plan["column_lineage"]["column_edges"]
    }
    assert (ORDERS, "amount", "output.daily_sales", "revenue") in pairs
    assert ("input.orders", "amount", ORDERS, "amount") in pairs


def test_plan_of_a_transpiled_model_shows_the_duckdb_sql(
    client: TestClient, token: TokenFactory
) -> None:
    body = {
        "dialect": "tsql",
        "models": [{"name": "top", "sql": "SELECT TOP 5 order_id FROM input.orders"}],
    }
    plan = client.post("/control/pipeline/plan", json=body, headers=token("control:admin")).json()
    assert plan["valid"] is True
    assert "LIMIT 5" in plan["steps"][0]["sql"] and "TOP" not in plan["steps"][0]["sql"]
    assert plan["steps"][0]["predicted_columns"] == [{"name": "order_id", "type": "BIGINT"}]


def test_unknown_dialect_is_refused(client: TestClient, token: TokenFactory) -> None:
    body = {"dialect": "cobol", "models": [{"name": "x", "sql": "SELECT 1"}]}
    response = client.put("/control/pipeline", json=body, headers=token("control:admin"))
    assert_error(response, 422)
    assert "cobol" in response.json()["error"]["message"]


def test_discovery_serves_column_lineage(client: TestClient) -> None:
    lineage = client.get("/discovery/lineage").json()
    nodes = {n["id"]: n for n in lineage["nodes"]}
    assert nodes["input.orders"]["kind"] == "source"
    assert nodes["output.customer_revenue"]["kind"] == "output"
    revenue_sources = {
        (e["from"]["table"], e["from"]["column"])
        for e in lineage["column_edges"]
        if e["to"] == {"table": "output.customer_revenue", "column": "revenue"}
    }
    assert revenue_sources == {(ORDERS, "amount")}
    assert client.get("/discovery").json()["lineage"].endswith("/discovery/lineage")


def test_a_breaking_change_keeps_the_old_version_readable(
    client: TestClient, token: TokenFactory
) -> None:
    admin = token("control:admin")
    current = client.get("/control/pipeline", headers=admin).json()["models"]
    changed = [
        {**m, "sql": m["sql"].replace("count(*) AS orders", "count(*)::VARCHAR AS orders")}
        if m["name"] == "daily_sales"
        else m
        for m in current
    ]
    assert (
        client.put("/control/pipeline", json={"models": changed}, headers=admin).status_code == 200
    )
    run = client.post("/control/runs", headers=admin).json()
    state = wait(client, admin, run["id"])
    assert state["status"] == "failed"  # the descriptor documents orders as BIGINT
    assert "orders" in state["error"]["message"]
    details = client.get("/discovery/datasets/daily_sales").json()
    assert [v["version"] for v in details["versions"]] == [1]


def test_old_versions_are_listed_and_readable(client: TestClient, token: TokenFactory) -> None:
    admin, reader = token("control:admin"), token("output:read", "control:admin")
    models = client.get("/control/pipeline", headers=admin).json()["models"]
    extra = {"name": "extract", "layer": "output", "sql": "SELECT order_id FROM input.orders"}
    client.put("/control/pipeline", json={"models": [*models, extra]}, headers=admin)
    assert (
        wait(client, admin, client.post("/control/runs", headers=admin).json()["id"])["status"]
        == "succeeded"
    )
    extra["sql"] = "SELECT order_id::VARCHAR AS order_ref FROM input.orders"
    client.put("/control/pipeline", json={"models": [*models, extra]}, headers=admin)
    body = {"models": ["extract"]}
    state = wait(client, admin, client.post("/control/runs", json=body, headers=admin).json()["id"])
    assert state["status"] == "succeeded" and [s["model"] for s in state["steps"]] == ["extract"]
    versions = client.get("/discovery/datasets/extract", headers=reader).json()["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    old = client.get("/output/datasets/extract?version=1&limit=1", headers=reader).json()
    new = client.get("/output/datasets/extract?limit=1", headers=reader).json()
    assert (old["version"], list(old["data"][0])) == (1, ["order_id"])
    assert (new["version"], list(new["data"][0])) == (2, ["order_ref"])
    missing = client.get("/output/datasets/extract?version=7", headers=reader)
    assert_error(missing, 404)


def test_selecting_an_unknown_model_is_404(client: TestClient, token: TokenFactory) -> None:
    response = client.post(
        "/control/runs", json={"models": ["nope"]}, headers=token("control:admin")
    )
    assert_error(response, 404)
