"""Repeated JSON reads and queries come from memory, and never outlive a publish, a grant
change or a volatile function."""

from __future__ import annotations

from fastapi.testclient import TestClient

from pipelines.runtime import ProductRuntime
from tests.api import assert_error, wait_for_run
from tests.conftest import TokenFactory

COUNT = {"sql": "SELECT count(*) AS n FROM output.returns_log"}
RETURNS_LOG = {"name": "returns_log", "sql": "SELECT order_id, reason FROM input.returns"}
CSV = {"content-type": "text/csv"}


def _publish_returns_log(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    models = client.get("/control/pipeline", headers=admin).json()["models"]
    client.put("/control/pipeline", json={"models": [*models, RETURNS_LOG]}, headers=admin)
    run = client.post("/control/runs", headers=admin).json()
    assert wait_for_run(client, runtime, run["id"], admin)["status"] == "succeeded"


def test_a_repeated_query_is_served_from_memory(
    client: TestClient, runtime: ProductRuntime, token: TokenFactory
) -> None:
    reader = token("output:read")
    sql = {"sql": "SELECT country, sum(orders) AS n FROM output.daily_sales GROUP BY ALL"}
    first = client.post("/output/query", json=sql, headers=reader)
    hits = runtime.results.hits
    again = client.post("/output/query", json=sql, headers=reader)
    assert again.content == first.content
    assert runtime.results.hits == hits + 1


def test_a_publish_is_seen_at_once_by_cached_queries_and_pages(
    client: TestClient, runtime: ProductRuntime, token: TokenFactory
) -> None:
    admin = token("control:admin", "input:write", "output:read")
    client.post("/input/returns", content=b"order_id,reason\n1,late\n", headers={**admin, **CSV})
    _publish_returns_log(client, runtime, admin)
    assert client.post("/output/query", json=COUNT, headers=admin).json()["data"] == [{"n": 1}]
    page = client.get("/output/datasets/returns_log", headers=admin).json()
    assert page["count"] == 1
    client.post("/input/returns", content=b"order_id,reason\n2,lost\n", headers={**admin, **CSV})
    run = client.post("/control/runs", headers=admin).json()
    assert wait_for_run(client, runtime, run["id"], admin)["status"] == "succeeded"
    assert client.post("/output/query", json=COUNT, headers=admin).json()["data"] == [{"n": 2}]
    assert client.get("/output/datasets/returns_log", headers=admin).json()["count"] == 2


def test_a_revoked_grant_is_not_bypassed_by_a_cached_answer(
    client: TestClient, token: TokenFactory
) -> None:
    admin, reader = token("control:admin"), token("output:read", groups=["auditors"])
    grant = {"dataset": "customer_revenue", "group": "auditors"}
    created = client.post("/control/grants", json=grant, headers=admin).json()
    sql = {"sql": "SELECT count(*) AS n FROM output.customer_revenue"}
    assert client.post("/output/query", json=sql, headers=reader).status_code == 200
    assert client.get("/output/datasets/customer_revenue", headers=reader).status_code == 200
    client.delete(f"/control/grants/{created['id']}", headers=admin)
    assert_error(client.post("/output/query", json=sql, headers=reader), 403)
    assert_error(client.get("/output/datasets/customer_revenue", headers=reader), 403)


def test_a_new_mask_applies_to_a_page_read_before(client: TestClient, token: TokenFactory) -> None:
    admin, reader = token("control:admin"), token("output:read", groups=["auditors"])
    open_grant = {"dataset": "customer_revenue", "group": "auditors"}
    client.put("/control/grants", json={"grants": [open_grant]}, headers=admin)
    page = client.get("/output/datasets/customer_revenue?limit=3", headers=reader).json()
    assert all(row["country"] for row in page["data"])
    masked = {**open_grant, "masks": {"country": "null"}}
    client.put("/control/grants", json={"grants": [masked]}, headers=admin)
    page = client.get("/output/datasets/customer_revenue?limit=3", headers=reader).json()
    assert all(row["country"] is None for row in page["data"])


def test_volatile_queries_are_never_cached(client: TestClient, token: TokenFactory) -> None:
    reader = token("output:read")
    sql = {"sql": "SELECT random() AS r"}
    values = {
        client.post("/output/query", json=sql, headers=reader).json()["data"][0]["r"]
        for _ in range(3)
    }
    assert len(values) == 3
