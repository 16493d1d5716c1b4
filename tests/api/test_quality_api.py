"""The quality part of the control port, and quality on discovery, on a real product."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dataproduct.catalog import published_dataset
from dataproduct.quality import parse_rules, record_results, results_for_run, rules_for, run_checks
from pipelines.runtime import ProductRuntime
from ports.discovery import router as discovery_router
from ports.errors import install_error_handlers
from ports.quality import router as quality_router
from tests.api import assert_error
from tests.conftest import TokenFactory
from tests.unit.runtime_helpers import publish

EXAMPLE_RULES = [{"not_null": "customer_id"}, {"unique": "customer_id"}]


@pytest.fixture
def client(runtime: ProductRuntime) -> Iterator[TestClient]:
    """The quality and discovery routers on an app of their own, over the example product."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(quality_router)
    app.include_router(discovery_router)
    app.state.runtime = runtime
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def admin(token: TokenFactory) -> dict[str, str]:
    """Headers of an operator."""
    return token("control:admin")


def _entries(client: TestClient, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = client.get("/control/quality", headers=admin)
    assert response.status_code == 200, response.text
    return {entry["dataset"]: entry for entry in response.json()["datasets"]}


def _stored_rule_sets(runtime: ProductRuntime) -> int:
    with runtime.storage.reader() as cursor:
        return int(cursor.execute("SELECT count(*) FROM meta.quality_rules").fetchall()[0][0])


def _published_run(runtime: ProductRuntime, dataset: str) -> str:
    with runtime.storage.reader() as cursor:
        found = published_dataset(cursor, dataset)
    assert found is not None
    return found.run_id


def _check(runtime: ProductRuntime, dataset: str, raw: list[dict[str, Any]], run_id: str) -> None:
    """Check a published dataset and record the results, as a run does."""
    with runtime.storage.transaction() as cursor:
        record_results(
            cursor, run_checks(cursor, "output", dataset, parse_rules(raw), run_id=run_id)
        )


def _check_published(runtime: ProductRuntime, dataset: str) -> str:
    """The run that published `dataset`, with its checks recorded.

    Once the runner checks every output it records them itself; until then, do it here.
    """
    run_id = _published_run(runtime, dataset)
    with runtime.storage.reader() as cursor:
        recorded = [r for r in results_for_run(cursor, run_id) if r.dataset == dataset]
        rules = rules_for(cursor, dataset, runtime.descriptor.datasets[dataset].quality)
    if not recorded:
        _check(runtime, dataset, [rule.to_raw() for rule in rules], run_id)
    return run_id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/control/quality"),
        ("PUT", "/control/quality/daily_sales"),
        ("GET", "/control/quality/results"),
    ],
)
def test_quality_needs_a_control_token(
    client: TestClient, token: TokenFactory, method: str, path: str
) -> None:
    body: dict[str, Any] | None = {"rules": []} if method == "PUT" else None
    assert_error(client.request(method, path, json=body), 401, "unauthenticated")
    reader = token("output:read")
    error = assert_error(client.request(method, path, json=body, headers=reader), 403, "forbidden")
    assert "control:admin" in error["message"]


def test_get_shows_the_descriptor_rules_before_any_check(
    client: TestClient, admin: dict[str, str]
) -> None:
    entries = _entries(client, admin)
    assert set(entries) == {"customer_revenue", "daily_sales"}
    revenue = entries["customer_revenue"]
    assert (revenue["origin"], revenue["submitted_by"], revenue["submitted_at"]) == (
        "descriptor",
        None,
        None,
    )
    assert revenue["rules"] == EXAMPLE_RULES
    assert (revenue["status"], revenue["results"]) == ("unknown", [])
    assert entries["daily_sales"]["rules"] == []


def test_put_replaces_a_datasets_rules(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    rules = [
        {"row_count": {"min": 1}},
        {"range": {"column": "revenue", "min": 0}, "severity": "warn", "name": "positive"},
        {"sql": "SELECT * FROM output.daily_sales WHERE orders < 1", "name": "has_orders"},
    ]
    response = client.put("/control/quality/daily_sales", json={"rules": rules}, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["dataset"], body["origin"], body["submitted_by"]) == (
        "daily_sales",
        "control",
        "tester",
    )
    assert body["rules"] == rules
    assert _entries(client, admin)["daily_sales"]["rules"] == rules
    with runtime.storage.reader() as cursor:
        effective = rules_for(cursor, "daily_sales", ())
    assert [rule.rule_name for rule in effective] == ["row_count", "positive", "has_orders"]
    emptied = client.put("/control/quality/customer_revenue", json={"rules": []}, headers=admin)
    assert emptied.json()["rules"] == []
    assert _entries(client, admin)["customer_revenue"]["origin"] == "control"


def test_a_refused_sql_rule_is_422_with_rule_line_and_column_and_nothing_changes(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    rules = [
        {"not_null": "customer_id"},
        {
            "sql": "SELECT *\nFROM output.customer_revenue\nWHERE getenv('HOME') <> ''",
            "name": "env",
        },
    ]
    response = client.put("/control/quality/customer_revenue", json={"rules": rules}, headers=admin)
    error = assert_error(response, 422, "sql_rejected")
    assert error["where"] == "rules.1"
    assert error["message"] == (
        "rules.1: sql: refused by the guard: no_outside_functions: function getenv() is not "
        "allowed at line 3, column 7"
    )
    assert error["details"]["quality_rule"] == "env"
    assert error["details"]["violations"] == [
        {
            "rule": "no_outside_functions",
            "message": "function getenv() is not allowed",
            "line": 3,
            "column": 7,
        }
    ]
    meta = [{"sql": "SELECT * FROM meta.quality_rules"}]
    refused = client.put("/control/quality/customer_revenue", json={"rules": meta}, headers=admin)
    [violation] = assert_error(refused, 422, "sql_rejected")["details"]["violations"]
    assert (violation["rule"], violation["line"], violation["column"]) == (
        "only_layer_tables",
        1,
        15,
    )
    assert _stored_rule_sets(runtime) == 0
    assert _entries(client, admin)["customer_revenue"]["rules"] == EXAMPLE_RULES


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"rules": [{"range": {"column": "revenue"}}]}, 422, "invalid_input",
         "rules.0: range: give min, max or both"),
        ({"rules": [{"not_null": "a"}, {"not_null": "a"}]}, 422, "invalid_input",
         "rules.1: another rule is named 'not_null_a'; give this one a name"),
        ({"rules": [{"uniq": "a"}]}, 422, "invalid_input",
         "rules.0: unknown field 'uniq'; a rule is one of: not_null, unique, accepted_values, "
         "range, row_count, freshness, sql"),
        ({"rules": {"not_null": "a"}}, 422, "invalid_input", None),
        ({"rules": [], "extra": 1}, 422, "invalid_input", None),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_and_nothing_changes(
    client: TestClient,
    runtime: ProductRuntime,
    admin: dict[str, str],
    body: dict[str, Any],
    status: int,
    code: str,
    message: str | None,
) -> None:
    response = client.put("/control/quality/customer_revenue", json=body, headers=admin)
    error = assert_error(response, status, code)
    if message is not None:
        assert error["message"] == message
    assert _stored_rule_sets(runtime) == 0


def test_rules_for_an_unknown_dataset_are_404(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    response = client.put("/control/quality/nope", json={"rules": []}, headers=admin)
    error = assert_error(response, 404, "not_found")
    assert error["message"] == "no dataset 'nope'; known: customer_revenue, daily_sales"
    assert _stored_rule_sets(runtime) == 0


def test_results_of_a_run_and_the_latest_per_rule(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    publish(runtime)
    failing: list[dict[str, Any]] = [
        {"row_count": {"max": 1}, "name": "tiny"},
        {"not_null": "customer_id"},
    ]
    _check(runtime, "customer_revenue", failing, "check-1")
    _check(runtime, "customer_revenue", [{"row_count": {"min": 1}, "name": "tiny"}], "check-2")
    _check(runtime, "daily_sales", [{"unique": ["order_date", "country"]}], "check-2")

    first = client.get("/control/quality/results?run_id=check-1", headers=admin).json()["results"]
    assert [(r["rule"], r["status"]) for r in first] == [
        ("tiny", "fail"),
        ("not_null_customer_id", "pass"),
    ]
    assert first[0]["message"].endswith("expected at most 1")
    assert first[0]["sql"] == 'SELECT COUNT(*) FROM "output"."customer_revenue"'
    assert {"samples", "seconds", "checked_at", "severity", "kind"} <= set(first[0])

    second = client.get(
        "/control/quality/results",
        params={"run_id": "check-2", "dataset": "daily_sales"},
        headers=admin,
    ).json()["results"]
    assert [(r["dataset"], r["rule"], r["status"]) for r in second] == [
        ("daily_sales", "unique_order_date_country", "pass")
    ]

    latest = client.get("/control/quality/results?dataset=customer_revenue", headers=admin).json()
    by_rule = {r["rule"]: (r["run_id"], r["status"]) for r in latest["results"]}
    assert by_rule["tiny"] == ("check-2", "pass")  # the newer of two
    assert by_rule["not_null_customer_id"] == ("check-1", "pass")
    assert {r["dataset"] for r in latest["results"]} == {"customer_revenue"}
    everything = client.get("/control/quality/results", headers=admin).json()["results"]
    assert {r["dataset"] for r in everything} == {"customer_revenue", "daily_sales"}
    none = client.get("/control/quality/results?run_id=unknown", headers=admin).json()
    assert none == {"results": []}


def test_get_shows_the_latest_results_of_the_rules_in_effect(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    publish(runtime)
    rules = [{"unique": "country", "severity": "warn"}, {"not_null": "customer_id"}]
    assert (
        client.put(
            "/control/quality/customer_revenue", json={"rules": rules}, headers=admin
        ).status_code
        == 200
    )
    _check(runtime, "customer_revenue", rules, "check-1")
    revenue = _entries(client, admin)["customer_revenue"]
    assert revenue["status"] == "warn"
    duplicates = revenue["results"][0]
    assert (duplicates["rule"], duplicates["status"]) == ("unique_country", "fail")
    assert duplicates["failing_rows"] > 0
    assert 0 < len(duplicates["samples"]) <= 5
    assert set(duplicates["samples"][0]) == {"country", "duplicate_rows"}


def test_discovery_shows_the_quality_of_the_published_data(
    client: TestClient, runtime: ProductRuntime, admin: dict[str, str]
) -> None:
    publish(runtime)
    run_id = _check_published(runtime, "customer_revenue")
    document = client.get("/discovery/datasets/customer_revenue", headers=admin).json()
    assert document["quality"] == EXAMPLE_RULES
    assert document["quality_status"] == "pass"
    assert [(r["rule"], r["status"], r["run_id"]) for r in document["quality_results"]] == [
        ("not_null_customer_id", "pass", run_id),
        ("unique_customer_id", "pass", run_id),
    ]
    assert not {"samples", "sql", "message"} & set(document["quality_results"][0])
    listed = client.get("/discovery/datasets", headers=admin).json()["datasets"]
    assert next(d for d in listed if d["name"] == "customer_revenue") == document

    # a later check that failed (say a refused run) does not change what consumers read...
    _check(runtime, "customer_revenue", [{"unique": "country"}], "refused-run")
    again = client.get("/discovery/datasets/customer_revenue", headers=admin).json()
    assert again["quality_status"] == "pass"
    # ... while operators see it among the latest results
    latest = client.get("/control/quality/results?run_id=refused-run", headers=admin).json()
    assert [r["status"] for r in latest["results"]] == ["fail"]


def test_discovery_quality_is_unknown_until_checked(
    client: TestClient, runtime: ProductRuntime
) -> None:
    publish(runtime)
    document = client.get("/discovery/datasets/daily_sales").json()
    assert (document["quality"], document["quality_status"], document["quality_results"]) == (
        [],
        "unknown",
        [],
    )
