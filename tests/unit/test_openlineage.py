"""OpenLineage run events: valid by the 2-0-2 spec, written to a file or POSTed to a real HTTP
server on loopback, and never blocking or failing a run when the backend is down or slow."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from dataproduct.cli import example_dir
from dataproduct.descriptor import load_descriptor
from pipelines.model import Pipeline
from pipelines.openlineage import OpenLineageEmitter, build_event, run_uuid
from pipelines.planner import Plan, plan_pipeline
from tests.unit.runtime_helpers import EXAMPLE_INPUT_SCHEMAS

SCHEMAS = {
    **EXAMPLE_INPUT_SCHEMAS,
    "staging.orders_clean": {
        "order_id": "BIGINT",
        "customer_id": "VARCHAR",
        "order_date": "DATE",
        "amount": "DECIMAL(12,2)",
        "status": "VARCHAR",
    },
    "output.customer_revenue": {
        "customer_id": "VARCHAR",
        "name": "VARCHAR",
        "country": "VARCHAR",
        "orders": "BIGINT",
        "revenue": "DECIMAL(38,2)",
    },
}
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def plan() -> Plan:
    """The example product's pipeline, planned."""
    descriptor = load_descriptor(example_dir())
    return plan_pipeline(Pipeline.from_specs(descriptor.pipeline), set(descriptor.sources))


# -- the spec, by hand -----------------------------------------------------------------------
# No JSON Schema validator is installed here and the spec files are not shipped by the
# openlineage-python wheel, so the required fields of spec 2-0-2 and of the facets we emit are
# checked by hand, from https://openlineage.io/spec/2-0-2/OpenLineage.json and the facet files.

FACET_REQUIRED = {
    "SQLJobFacet.json": {"query": str},
    "JobTypeJobFacet.json": {"processingType": str, "integration": str},
    "SchemaDatasetFacet.json": {},
    "ColumnLineageDatasetFacet.json": {"fields": dict},
    "ErrorMessageRunFacet.json": {"message": str, "programmingLanguage": str},
}


def require(obj: dict[str, Any], **types: type) -> None:
    """Each named field is present with the type given."""
    for name, kind in types.items():
        assert name in obj, f"missing {name} in {obj}"
        assert isinstance(obj[name], kind), f"{name} is not a {kind.__name__}: {obj[name]!r}"


def assert_uri(value: str) -> None:
    """An absolute URI, as `format: uri` wants."""
    parsed = urlparse(value)
    assert parsed.scheme and (parsed.netloc or parsed.path), value


def assert_facet(facet: dict[str, Any]) -> None:
    """BaseFacet fields, and the required fields of the facet its _schemaURL names."""
    require(facet, _producer=str, _schemaURL=str)
    assert_uri(facet["_producer"])
    assert_uri(facet["_schemaURL"])
    url = facet["_schemaURL"]
    assert url.startswith("https://openlineage.io/spec/facets/"), url
    document, _, definition = url.partition("#/$defs/")
    file = document.rpartition("/")[2]
    assert definition == file.removesuffix(".json"), url
    require(facet, **FACET_REQUIRED[file])
    if file == "SchemaDatasetFacet.json":
        for column in facet["fields"]:
            require(column, name=str)
            assert isinstance(column.get("type", ""), str)
    if file == "ColumnLineageDatasetFacet.json":
        for column in facet["fields"].values():
            require(column, inputFields=list)
            for field in column["inputFields"]:
                require(field, namespace=str, name=str, field=str)
                for transformation in field.get("transformations", []):
                    require(transformation, type=str)
                    assert transformation["type"] in ("DIRECT", "INDIRECT")


def assert_valid_event(event: dict[str, Any]) -> None:
    """A RunEvent by spec 2-0-2: BaseEvent, run, job, datasets and every facet."""
    require(event, eventTime=str, producer=str, schemaURL=str, run=dict, job=dict)
    assert (
        event["schemaURL"] == "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    )
    assert_uri(event["producer"])
    moment = datetime.fromisoformat(event["eventTime"])
    assert moment.tzinfo is not None
    assert event["eventType"] in ("START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER")
    require(event["run"], runId=str)
    assert str(uuid.UUID(event["run"]["runId"])) == event["run"]["runId"]
    require(event["job"], namespace=str, name=str)
    facets = [*event["run"].get("facets", {}).values(), *event["job"].get("facets", {}).values()]
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        require(dataset, namespace=str, name=str)
        facets += dataset.get("facets", {}).values()
    for facet in facets:
        assert_facet(facet)


# -- events ----------------------------------------------------------------------------------


def test_complete_event_has_schemas_and_column_lineage(plan: Plan) -> None:
    event = build_event("COMPLETE", "run1", plan, WHEN, product="sales-eu", schemas=SCHEMAS)
    assert_valid_event(event)
    assert event["eventType"] == "COMPLETE"
    assert event["eventTime"] == "2026-03-01T12:00:00+00:00"
    assert event["job"]["name"] == "sales-eu"
    assert event["job"]["namespace"] == "dataproduct"
    assert event["job"]["facets"]["sql"]["query"].startswith("-- staging.orders_clean\nSELECT")
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
        ("dataproduct://sales-eu", "input.orders"),
        ("dataproduct://sales-eu", "input.customers"),
    ]
    outputs = {d["name"]: d for d in event["outputs"]}
    assert list(outputs) == [
        "staging.orders_clean",
        "output.customer_revenue",
        "output.daily_sales",
    ]
    revenue_table = outputs["output.customer_revenue"]["facets"]
    assert revenue_table["schema"]["fields"][-1] == {"name": "revenue", "type": "DECIMAL(38,2)"}
    lineage = revenue_table["columnLineage"]["fields"]
    assert lineage["revenue"]["inputFields"] == [
        {
            "namespace": "dataproduct://sales-eu",
            "name": "staging.orders_clean",
            "field": "amount",
            "transformations": [
                {
                    "type": "DIRECT",
                    "subtype": "AGGREGATION",
                    "description": "aggregation",
                    "masking": False,
                }
            ],
        }
    ]
    assert "orders" not in lineage  # count(*) derives from no column
    clean = outputs["staging.orders_clean"]["facets"]["columnLineage"]["fields"]
    assert clean["amount"]["inputFields"][0]["name"] == "input.orders"
    assert clean["amount"]["inputFields"][0]["transformations"][0]["subtype"] == "TRANSFORMATION"
    assert clean["order_id"]["inputFields"][0]["transformations"][0]["subtype"] == "IDENTITY"
    # a table whose types were not given still lists its columns
    assert [f["name"] for f in outputs["output.daily_sales"]["facets"]["schema"]["fields"]] == [
        "order_date",
        "country",
        "orders",
        "revenue",
    ]
    json.dumps(event)


def test_start_fail_and_abort_events(plan: Plan) -> None:
    start = build_event("START", "run1", plan, WHEN, product="sales-eu")
    fail = build_event("FAIL", "run1", plan, WHEN, product="sales-eu", error="model x failed")
    for event in (start, fail):
        assert_valid_event(event)
        assert "facets" not in event["outputs"][0]
    assert start["run"] == {"runId": run_uuid("sales-eu", "run1")}
    assert fail["run"]["facets"]["errorMessage"]["message"] == "model x failed"
    assert fail["run"]["facets"]["errorMessage"]["programmingLanguage"] == "python"
    assert fail["run"]["runId"] == start["run"]["runId"]


def test_run_ids_are_stable_uuids_per_product_and_run() -> None:
    first = run_uuid("sales-eu", "abc")
    assert uuid.UUID(first).version == 5
    assert run_uuid("sales-eu", "abc") == first
    assert run_uuid("sales-eu", "abd") != first
    assert run_uuid("sales-us", "abc") != first


def test_event_times_are_utc_with_an_offset(plan: Plan) -> None:
    cet = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert build_event("START", "r", plan, cet, product="p")["eventTime"] == (
        "2026-03-01T12:00:00+00:00"
    )
    naive = datetime(2026, 3, 1, 12, 0)  # taken as UTC
    assert build_event("START", "r", plan, naive, product="p")["eventTime"] == (
        "2026-03-01T12:00:00+00:00"
    )


# -- the file transport ----------------------------------------------------------------------


@pytest.fixture
def emitters() -> Iterator[list[OpenLineageEmitter]]:
    """Emitters a test makes; closed at its end."""
    made: list[OpenLineageEmitter] = []
    yield made
    for emitter in made:
        emitter.close(timeout_s=5)


def test_file_gets_one_valid_event_per_line(
    plan: Plan, tmp_path: Path, emitters: list[OpenLineageEmitter]
) -> None:
    path = tmp_path / "lineage" / "events.ndjson"
    emitter = OpenLineageEmitter("sales-eu", file=path, namespace="sales/europe")
    emitters.append(emitter)
    emitter.start("r1", plan, WHEN)
    emitter.complete("r1", plan, SCHEMAS, WHEN + timedelta(seconds=3))
    emitter.start("r2", plan, WHEN)
    emitter.fail("r2", plan, {"code": "run_cancelled", "message": "cancelled"}, WHEN, True)
    emitter.start("r3", plan, WHEN)
    emitter.fail("r3", plan, ValueError("model daily_sales failed: boom"), WHEN)
    assert emitter.flush(timeout_s=10)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == [
        "START",
        "COMPLETE",
        "START",
        "ABORT",
        "START",
        "FAIL",
    ]
    for event in events:
        assert_valid_event(event)
        assert event["job"]["namespace"] == "sales/europe"
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"] == run_uuid("sales-eu", "r1")
    assert events[3]["run"]["facets"]["errorMessage"]["message"] == "cancelled"
    assert events[5]["run"]["facets"]["errorMessage"]["message"] == (
        "model daily_sales failed: boom"
    )
    assert "columnLineage" in events[1]["outputs"][1]["facets"]


def test_unwritable_file_is_logged_not_raised(
    plan: Plan,
    tmp_path: Path,
    emitters: list[OpenLineageEmitter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter = OpenLineageEmitter("sales-eu", file=tmp_path)  # a directory
    emitters.append(emitter)
    with caplog.at_level(logging.WARNING, logger="dataproduct.openlineage"):
        emitter.start("r1", plan, WHEN)
        assert emitter.flush(timeout_s=10)
    assert "could not write" in caplog.text


def test_emitter_without_a_destination_does_nothing(plan: Plan) -> None:
    emitter = OpenLineageEmitter("sales-eu")
    assert not emitter.enabled
    emitter.start("r1", plan, WHEN)
    emitter.complete("r1", plan, SCHEMAS, WHEN)
    assert emitter._worker is None


# -- the HTTP transport ----------------------------------------------------------------------


class Recorder(ThreadingHTTPServer):
    """A lineage backend on loopback that records what it receives and answers as scripted."""

    daemon_threads = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.statuses = statuses  # answers to give, in order; then 201
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        """The lineage endpoint."""
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1/lineage"


class RecordingHandler(BaseHTTPRequestHandler):
    """Records each POST: path, headers and JSON body."""

    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "event": json.loads(body)}
        )
        status = self.server.statuses.pop(0) if self.server.statuses else 201
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def backend() -> Iterator[Recorder]:
    """A running recorder on 127.0.0.1."""
    server = Recorder([])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_posts_each_event_in_order(
    plan: Plan, backend: Recorder, emitters: list[OpenLineageEmitter]
) -> None:
    emitter = OpenLineageEmitter("sales-eu", url=backend.url, api_key="secret-key")
    emitters.append(emitter)
    emitter.start("r1", plan, WHEN)
    emitter.complete("r1", plan, SCHEMAS, WHEN)
    assert emitter.flush(timeout_s=10)
    assert [r["event"]["eventType"] for r in backend.requests] == ["START", "COMPLETE"]
    for request in backend.requests:
        assert request["path"] == "/api/v1/lineage"
        assert request["headers"]["Authorization"] == "Bearer secret-key"
        assert request["headers"]["Content-Type"] == "application/json"
        assert_valid_event(request["event"])


def test_http_retries_server_errors_with_backoff(
    plan: Plan, backend: Recorder, emitters: list[OpenLineageEmitter]
) -> None:
    backend.statuses[:] = [503, 500]
    emitter = OpenLineageEmitter("sales-eu", url=backend.url, retries=2, backoff_s=0.05)
    emitters.append(emitter)
    emitter.start("r1", plan, WHEN)
    assert emitter.flush(timeout_s=10)
    assert len(backend.requests) == 3
    assert {r["event"]["run"]["runId"] for r in backend.requests} == {run_uuid("sales-eu", "r1")}


def test_http_client_errors_are_not_retried(
    plan: Plan,
    backend: Recorder,
    emitters: list[OpenLineageEmitter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend.statuses[:] = [400]
    emitter = OpenLineageEmitter("sales-eu", url=backend.url, retries=3, backoff_s=0.05)
    emitters.append(emitter)
    with caplog.at_level(logging.WARNING, logger="dataproduct.openlineage"):
        emitter.start("r1", plan, WHEN)
        assert emitter.flush(timeout_s=10)
    assert len(backend.requests) == 1
    assert "HTTP 400" in caplog.text


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_backend_down_gives_up_quickly_without_raising(
    plan: Plan, emitters: list[OpenLineageEmitter], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/lineage"
    emitter = OpenLineageEmitter("sales-eu", url=url, retries=2, backoff_s=0.05)
    emitters.append(emitter)
    with caplog.at_level(logging.WARNING, logger="dataproduct.openlineage"):
        began = time.perf_counter()
        emitter.start("r1", plan, WHEN)
        emitter.fail("r1", plan, "boom", WHEN)
        returned = time.perf_counter() - began
        assert emitter.flush(timeout_s=10)
        gave_up = time.perf_counter() - began
    assert returned < 0.1
    assert gave_up < 3
    assert caplog.text.count("gave up sending") == 2
    assert "ConnectError" in caplog.text


def test_backend_that_never_answers_does_not_hold_the_run(
    plan: Plan, emitters: list[OpenLineageEmitter], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1/lineage"
        emitter = OpenLineageEmitter("sales-eu", url=url, timeout_s=0.2, retries=1, backoff_s=0.05)
        emitters.append(emitter)
        with caplog.at_level(logging.WARNING, logger="dataproduct.openlineage"):
            began = time.perf_counter()
            emitter.complete("r1", plan, SCHEMAS, WHEN)
            assert time.perf_counter() - began < 0.1
            assert emitter.flush(timeout_s=10)
            assert time.perf_counter() - began < 3
    assert "ReadTimeout" in caplog.text
