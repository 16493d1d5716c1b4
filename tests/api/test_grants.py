"""Who sees what: grants, tag policies, column masks and row filters on every port.

The example grants `customer_revenue` to `sales-analysts` (with its pii and confidential
columns), to `eu-partners` (customer ids hashed, DE and FR rows only), tags `daily_sales`
public, and lets `returns-writers` push to `returns`.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from dataproduct.security import issue_token
from dataproduct.settings import DataproductSettings
from tests.api import assert_error, edit_descriptor, serve, serve_example
from tests.conftest import SECRET, TokenFactory

CUSTOMERS = "/output/datasets/customer_revenue"
HASHED = re.compile(r"^[0-9a-f]{64}$")
PARTNER_COUNTRIES = {"DE", "FR"}


def bearer(
    *scopes: str, groups: list[str] | None = None, roles: list[str] | None = None
) -> dict[str, str]:
    """Headers of a caller with these scopes, groups and roles."""
    signed = issue_token(SECRET, "grant-test", list(scopes), groups=groups, roles=roles)
    return {"Authorization": f"Bearer {signed}"}


ANALYST = bearer("output:read", groups=["sales-analysts"])
PARTNER = bearer("output:read", groups=["eu-partners"])
STRANGER = bearer("output:read")
ADMIN = bearer("control:admin")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started example for the read-only checks of this module."""
    with serve_example(tmp_path_factory.mktemp("grants")) as client:
        yield client


def _rows(client: TestClient, headers: dict[str, str], fmt: str) -> list[dict[str, Any]]:
    """Every row of customer_revenue in one format, as dicts."""
    response = client.get(f"{CUSTOMERS}?format={fmt}&limit=10000", headers=headers)
    assert response.status_code == 200, response.text
    if fmt == "json":
        rows: list[dict[str, Any]] = response.json()["data"]
        return rows
    if fmt == "ndjson":
        return [json.loads(line) for line in response.text.splitlines()]
    if fmt == "csv":
        table = pa.csv.read_csv(io.BytesIO(response.content))
    elif fmt == "parquet":
        table = pq.read_table(io.BytesIO(response.content))
    else:
        table = pa.ipc.open_stream(response.content).read_all()
    return table.to_pylist()


# who may read what ---------------------------------------------------------------------


def test_output_lists_only_readable_datasets(shared: TestClient) -> None:
    """A reader without grants sees the public dataset only; an analyst sees both."""

    def names(headers: dict[str, str]) -> list[str]:
        listed = shared.get("/output/datasets", headers=headers).json()["datasets"]
        return [d["name"] for d in listed]

    assert names(STRANGER) == ["daily_sales"]
    assert names(ANALYST) == ["customer_revenue", "daily_sales"]


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv", "parquet", "arrow"])
def test_rows_without_a_grant_are_403_in_every_format(shared: TestClient, fmt: str) -> None:
    error = assert_error(shared.get(f"{CUSTOMERS}?format={fmt}", headers=STRANGER), 403)
    assert error["where"] == "datasets/customer_revenue"
    assert "no read grant" in error["message"]


def test_public_dataset_is_readable_by_any_reader(shared: TestClient) -> None:
    page = shared.get("/output/datasets/daily_sales?limit=5", headers=STRANGER)
    assert page.status_code == 200 and page.json()["count"] == 5


def test_an_unknown_dataset_is_404_not_403(shared: TestClient) -> None:
    """Discovery names every dataset anyway: a typo is told apart from a missing grant."""
    assert_error(shared.get("/output/datasets/ghost", headers=STRANGER), 404, "not_found")


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv", "parquet", "arrow"])
def test_analyst_sees_every_column_in_clear(shared: TestClient, fmt: str) -> None:
    rows = _rows(shared, ANALYST, fmt)
    assert len(rows) > 50
    assert all(r["name"] and r["revenue"] is not None for r in rows)
    assert all(re.match(r"^C\d{4}$", r["customer_id"]) for r in rows)


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv", "parquet", "arrow"])
def test_partner_sees_masked_columns_and_only_its_rows(shared: TestClient, fmt: str) -> None:
    """pii and confidential columns null (no tag grant), ids hashed, rows filtered."""
    everything = _rows(shared, ANALYST, "json")
    rows = _rows(shared, PARTNER, fmt)
    expected = [r for r in everything if r["country"] in PARTNER_COUNTRIES]
    assert len(rows) == len(expected) > 0
    assert {r["country"] for r in rows} == PARTNER_COUNTRIES
    assert all(r["name"] is None and r["revenue"] is None for r in rows)
    assert all(HASHED.match(r["customer_id"]) for r in rows)
    assert [r["orders"] for r in rows] == [r["orders"] for r in expected]


def test_hashed_ids_are_stable_and_distinct(shared: TestClient) -> None:
    """The same id hashes the same on every read (joinable), different ids differently."""
    first, again = _rows(shared, PARTNER, "json"), _rows(shared, PARTNER, "csv")
    ids = [r["customer_id"] for r in first]
    assert ids == [r["customer_id"] for r in again]
    assert len(set(ids)) == len(ids)


def test_column_projection_cannot_unmask(shared: TestClient) -> None:
    page = shared.get(f"{CUSTOMERS}?columns=name,country", headers=PARTNER).json()
    assert page["data"] and all(r["name"] is None for r in page["data"])


def test_paging_under_a_row_filter_reaches_every_allowed_row(shared: TestClient) -> None:
    """Keyset pages skip the filtered rows and never show them."""
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = shared.get(f"{CUSTOMERS}?limit=7{cursor}", headers=PARTNER).json()
        seen += page["data"]
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert {r["country"] for r in seen} == PARTNER_COUNTRIES
    assert len(seen) == len(_rows(shared, PARTNER, "json"))


# queries -------------------------------------------------------------------------------


def _query(client: TestClient, sql: str, headers: dict[str, str], fmt: str = "json") -> Any:
    return client.post("/output/query", json={"sql": sql, "format": fmt}, headers=headers)


def test_query_naming_a_forbidden_table_is_refused(shared: TestClient) -> None:
    sql = (
        "SELECT d.country FROM output.daily_sales d "
        "JOIN output.customer_revenue c ON c.country = d.country"
    )
    error = assert_error(_query(shared, sql, STRANGER), 403)
    assert "customer_revenue" in error["message"]


def test_query_naming_a_masked_column_is_refused_with_its_position(shared: TestClient) -> None:
    sql = "SELECT country,\n  name FROM output.customer_revenue"
    error = assert_error(_query(shared, sql, PARTNER), 403)
    assert "'name'" in error["message"]
    assert error["where"] == "sql, line 2, column 3"


def test_query_through_a_cte_still_sees_the_masked_view(shared: TestClient) -> None:
    sql = (
        "WITH c AS (SELECT * FROM output.customer_revenue) "
        "SELECT country, count(*) AS n FROM c GROUP BY country ORDER BY country"
    )
    rows = _query(shared, sql, PARTNER).json()["data"]
    assert {r["country"] for r in rows} == PARTNER_COUNTRIES


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_star_query_returns_masked_values_and_allowed_rows(shared: TestClient, fmt: str) -> None:
    response = _query(shared, "SELECT * FROM output.customer_revenue", PARTNER, fmt)
    assert response.status_code == 200, response.text
    rows = (
        response.json()["data"]
        if fmt == "json"
        else pa.ipc.open_stream(response.content).read_all().to_pylist()
    )
    assert rows and {r["country"] for r in rows} == PARTNER_COUNTRIES
    assert all(r["name"] is None and HASHED.match(r["customer_id"]) for r in rows)


def test_aggregates_only_count_allowed_rows(shared: TestClient) -> None:
    total = "SELECT count(*) AS n FROM output.customer_revenue"
    everything = _query(shared, total, ANALYST).json()["data"][0]["n"]
    partner = _query(shared, total, PARTNER).json()["data"][0]["n"]
    assert 0 < partner < everything


def test_a_query_cannot_reach_tables_that_are_not_datasets(shared: TestClient) -> None:
    """Only published datasets: not a run's candidate tables or anything else in `output`."""
    error = assert_error(_query(shared, "SELECT * FROM output.__dp_next_x", ANALYST), 422)
    assert "no dataset '__dp_next_x'" in error["message"]


# discovery -------------------------------------------------------------------------------


def test_anonymous_discovery_shows_a_summary_of_restricted_datasets(shared: TestClient) -> None:
    document = shared.get("/discovery/datasets/customer_revenue").json()
    assert document["name"] == "customer_revenue" and document["description"]
    assert not {"columns", "sql", "quality_results", "versions"} & set(document)
    assert document["access"] == {
        "public": False,
        "readable": False,
        "masked_columns": [],
        "row_filter": False,
    }


def test_anonymous_discovery_shows_public_datasets_in_full(shared: TestClient) -> None:
    document = shared.get("/discovery/datasets/daily_sales").json()
    assert [c["name"] for c in document["columns"]][:2] == ["order_date", "country"]
    assert document["access"]["public"] is True


def test_discovery_tells_a_caller_what_it_sees(shared: TestClient) -> None:
    document = shared.get("/discovery/datasets/customer_revenue", headers=PARTNER).json()
    assert document["columns"]
    assert document["access"]["masked_columns"] == ["customer_id", "name", "revenue"]
    assert document["access"]["row_filter"] is True


def test_discovery_page_hides_restricted_schemas(shared: TestClient) -> None:
    page = shared.get("/discovery", headers={"Accept": "text/html"}).text
    assert "restricted: ask the owner for access" in page
    assert "Customer name" not in page  # the pii column's description


def test_discovery_refuses_a_bad_credential(shared: TestClient) -> None:
    """Open, but a credential that is sent must be valid."""
    assert_error(shared.get("/discovery", headers={"Authorization": "Bearer nope"}), 401)


# managing grants -------------------------------------------------------------------------


def _put(client: TestClient, grants: list[dict[str, Any]]) -> Any:
    return client.put("/control/grants", json={"grants": grants}, headers=ADMIN)


def test_grants_list_shows_the_descriptor_grants(client: TestClient) -> None:
    grants = client.get("/control/grants", headers=ADMIN).json()["grants"]
    assert {g["origin"] for g in grants} == {"descriptor"}
    assert {"dataset": "customer_revenue", "group": "sales-analysts"}.items() <= grants[0].items()


def test_put_grants_takes_effect_at_once_and_is_recorded(client: TestClient) -> None:
    auditor = bearer("output:read", groups=["auditors"])
    assert_error(client.get(CUSTOMERS, headers=auditor), 403)
    assert _put(client, [{"dataset": "customer_revenue", "group": "auditors"}]).status_code == 200
    page = client.get(f"{CUSTOMERS}?limit=3", headers=auditor).json()
    assert page["count"] == 3 and page["data"][0]["name"] is None  # pii: no tag grant
    assert _put(client, []).status_code == 200
    assert_error(client.get(CUSTOMERS, headers=auditor), 403)
    changes = client.get("/control/grants/changes", headers=ADMIN).json()["changes"]
    assert [(c["action"], c.get("group")) for c in changes[:2]] == [
        ("revoke", "auditors"),
        ("grant", "auditors"),
    ]
    assert changes[0]["principal"] == "grant-test"
    grants = client.get("/control/grants", headers=ADMIN).json()["grants"]
    assert len(grants) == 5  # the descriptor's are untouched


def test_post_and_delete_one_grant(client: TestClient) -> None:
    user = {"Authorization": "Bearer " + issue_token(SECRET, "ana", ["output:read"])}
    created = client.post(
        "/control/grants", json={"dataset": "customer_revenue", "user": "ana"}, headers=ADMIN
    )
    assert created.status_code == 201
    assert client.get(CUSTOMERS, headers=user).status_code == 200
    revoked = client.delete(f"/control/grants/{created.json()['id']}", headers=ADMIN)
    assert revoked.status_code == 200
    assert_error(client.get(CUSTOMERS, headers=user), 403)


def test_descriptor_grants_cannot_be_revoked_through_the_api(client: TestClient) -> None:
    grant_id = client.get("/control/grants", headers=ADMIN).json()["grants"][0]["id"]
    error = assert_error(client.delete(f"/control/grants/{grant_id}", headers=ADMIN), 404)
    assert "descriptor" in error["message"]


@pytest.mark.parametrize(
    ("grant", "where", "reason"),
    [
        ({"dataset": "customer_revenue"}, "body.grants.0", "exactly one of 'user'"),
        (
            {"dataset": "customer_revenue", "tag": "x", "group": "g"},
            "body.grants.0",
            "exactly one of 'dataset'",
        ),
        (
            {"dataset": "customer_revenue", "group": "g", "row_filter": "country IN (SELECT 1)"},
            "body.grants.0",
            "not allowed in a row filter",
        ),
        (
            {"dataset": "customer_revenue", "group": "g", "row_filter": "getenv('HOME') = 'x'"},
            "body.grants.0",
            "getenv",
        ),
        (
            {"dataset": "customer_revenue", "group": "g", "row_filter": "1=1) OR (1=1"},
            "body.grants.0",
            "not a SQL expression",
        ),
        (
            {"dataset": "customer_revenue", "group": "g", "masks": {"salary": "null"}},
            "grants[0].masks",
            "no column(s) salary",
        ),
        (
            {"dataset": "customer_revenue", "group": "g", "row_filter": "region = 'x'"},
            "grants[0]",
            "no column(s) region",
        ),
        ({"source": "nowhere", "group": "g"}, "grants[0].source", "unknown source"),
        (
            {"dataset": "customer_revenue", "group": "g", "masks": {"name": "scramble"}},
            "body.grants.0.masks.name",
            "",
        ),
    ],
)
def test_bad_grants_are_refused_and_nothing_changes(
    client: TestClient, grant: dict[str, Any], where: str, reason: str
) -> None:
    before = client.get("/control/grants", headers=ADMIN).json()
    error = assert_error(_put(client, [grant]), 422)
    assert error["where"].startswith(where), error
    assert reason in error["message"], error
    assert client.get("/control/grants", headers=ADMIN).json() == before


def test_grants_need_an_administrator(client: TestClient) -> None:
    assert_error(client.get("/control/grants", headers=ANALYST), 403)
    assert_error(_put_as(client, ANALYST), 403)


def _put_as(client: TestClient, headers: dict[str, str]) -> Any:
    return client.put("/control/grants", json={"grants": []}, headers=headers)


def test_an_expired_grant_gives_nothing(client: TestClient) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _put(
        client,
        [
            {"dataset": "customer_revenue", "group": "lapsed", "expires": past},
            {"dataset": "customer_revenue", "group": "current", "expires": future},
        ],
    )
    assert_error(client.get(CUSTOMERS, headers=bearer("output:read", groups=["lapsed"])), 403)
    assert client.get(CUSTOMERS, headers=bearer("output:read", groups=["current"])).is_success


def test_a_role_grant_matches_the_roles_claim(client: TestClient) -> None:
    _put(client, [{"dataset": "customer_revenue", "role": "finance"}])
    assert client.get(CUSTOMERS, headers=bearer("output:read", roles=["finance"])).is_success
    assert_error(client.get(CUSTOMERS, headers=bearer("output:read", groups=["finance"])), 403)


def test_several_grants_combine_to_the_widest_view(client: TestClient) -> None:
    """Rows of any grant's filter; a column masked only when every grant masks it."""
    _put(
        client,
        [
            {"dataset": "customer_revenue", "group": "g1", "row_filter": "country = 'DE'",
             "masks": {"country": "null", "orders": "null"}},
            {"dataset": "customer_revenue", "group": "g2", "row_filter": "country = 'SE'",
             "masks": {"orders": "hash"}},
        ],
    )  # fmt: skip
    both = bearer("output:read", groups=["g1", "g2"])
    rows = _rows(client, both, "json")
    assert {r["country"] for r in rows} == {"DE", "SE"}
    assert all(HASHED.match(r["orders"]) for r in rows)


# tag policies ----------------------------------------------------------------------------


def test_a_tag_grant_reads_every_dataset_with_the_tag(client: TestClient) -> None:
    _put(client, [{"tag": "sales", "group": "sales-ops"}])
    ops = bearer("output:read", groups=["sales-ops"])
    rows = _rows(client, ops, "json")
    assert rows and all(r["name"] is None for r in rows)  # pii: still masked


def test_a_tag_grant_unmasks_classified_columns(client: TestClient) -> None:
    _put(
        client,
        [{"dataset": "customer_revenue", "group": "crm"}, {"tag": "pii", "group": "crm"}],
    )
    rows = _rows(client, bearer("output:read", groups=["crm"]), "json")
    assert all(r["name"] for r in rows)
    assert all(r["revenue"] is None for r in rows)  # confidential needs its own grant


def test_administrators_read_everything_but_classified_columns(client: TestClient) -> None:
    rows = _rows(client, bearer("output:read", "control:admin"), "json")
    assert rows and all(r["name"] is None and r["revenue"] is None for r in rows)


def test_a_new_dataset_tagged_public_needs_no_grant(
    example_product: Path, settings: DataproductSettings
) -> None:
    def add(content: dict[str, Any]) -> None:
        content["pipeline"].append(
            {"name": "countries", "sql": "SELECT DISTINCT country FROM output.daily_sales"}
        )
        content["datasets"]["countries"] = {"description": "Countries", "tags": ["public"]}

    edit_descriptor(example_product, add)
    with serve(example_product, settings) as client:
        page = client.get("/output/datasets/countries", headers=STRANGER)
        assert page.status_code == 200 and page.json()["count"] > 0


# roles and ports -------------------------------------------------------------------------


def test_an_admin_role_reaches_the_control_port(client: TestClient) -> None:
    """An organisation's token with the admin role and none of our scopes is an admin."""
    assert client.get("/control/runs", headers=bearer(roles=["dataproduct-admin"])).is_success


def test_a_credential_limited_to_reading_is_not_an_admin(client: TestClient) -> None:
    limited = bearer("output:read", roles=["dataproduct-admin"])
    assert_error(client.get("/control/runs", headers=limited), 403)


def test_a_token_without_our_scopes_reads_by_grants_alone(client: TestClient) -> None:
    assert client.get(CUSTOMERS, headers=bearer(groups=["sales-analysts"])).is_success
    assert_error(client.get(CUSTOMERS, headers=bearer(groups=["others"])), 403)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (bearer("input:write", groups=["returns-writers"]), 201),
        (bearer("input:write"), 403),
        (bearer("input:write", "control:admin"), 201),
        (bearer("output:read", groups=["returns-writers"]), 403),
    ],
)
def test_pushing_needs_a_write_grant_on_the_source(
    client: TestClient, headers: dict[str, str], status: int, token: TokenFactory
) -> None:
    response = client.post(
        "/input/returns",
        content=b"order_id,reason\n1,late\n",
        headers={**headers, "content-type": "text/csv"},
    )
    assert response.status_code == status, response.text
