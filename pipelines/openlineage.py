"""OpenLineage run events for pipeline runs (spec 2-0-2): START, then COMPLETE, FAIL or ABORT.

One run of a product's pipeline is one OpenLineage run of the job named after the product.
Its inputs are the source tables the pipeline reads; its outputs are every table it builds,
named `layer.table` in the namespace `dataproduct://<product>`. COMPLETE carries each
dataset's schema and, for built tables, the column lineage sqlglot derives from the SQL.

Events go to an HTTP endpoint (POST JSON) and/or a file (one JSON line per event). A
background thread sends them: a run never waits for the lineage backend, and a backend that
is slow or down costs a few retries and a log line, never a failed run.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from dataproduct import __version__
from pipelines.lineage import Schemas, column_lineage
from pipelines.planner import Plan

log = logging.getLogger("dataproduct.openlineage")

SPEC = "https://openlineage.io/spec"
RUN_EVENT_SCHEMA = f"{SPEC}/2-0-2/OpenLineage.json#/$defs/RunEvent"
FACET_SCHEMAS = {
    "sql": f"{SPEC}/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet",
    "jobType": f"{SPEC}/facets/2-0-3/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
    "schema": f"{SPEC}/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
    "columnLineage": (
        f"{SPEC}/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet"
    ),
    "errorMessage": f"{SPEC}/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
}
PRODUCER = f"https://github.com/dataproduct/dataproduct/tree/v{__version__}"
SUBTYPES = {
    "identity": "IDENTITY",
    "expression": "TRANSFORMATION",
    "window": "TRANSFORMATION",
    "aggregation": "AGGREGATION",
}
RETRIED_STATUSES = {408, 425, 429, 500, 502, 503, 504}


def run_uuid(product: str, run_id: str) -> str:
    """The OpenLineage runId of one of our runs: a UUID derived from it, always the same."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataproduct://{product}/runs/{run_id}"))


def build_event(
    event_type: str,
    run_id: str,
    plan: Plan,
    when: datetime,
    *,
    product: str,
    namespace: str = "dataproduct",
    producer: str = PRODUCER,
    schemas: Schemas | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One RunEvent; with `schemas`, datasets carry their schema and column lineage."""
    datasets = f"dataproduct://{product}"
    built = [step.target for step in plan.steps]
    sources = list(dict.fromkeys(t for step in plan.steps for t in step.reads if t not in built))
    inputs: list[dict[str, Any]] = [{"namespace": datasets, "name": n} for n in sources]
    outputs: list[dict[str, Any]] = [{"namespace": datasets, "name": n} for n in built]
    if schemas is not None:
        lineage = column_lineage(plan, schemas)
        for dataset in inputs + outputs:
            facets = _dataset_facets(dataset["name"], datasets, schemas, lineage, producer)
            if facets:
                dataset["facets"] = facets
    run: dict[str, Any] = {"runId": run_uuid(product, run_id)}
    if error is not None:
        run["facets"] = {
            "errorMessage": _facet(
                producer, "errorMessage", message=error, programmingLanguage="python"
            )
        }
    job_facets = {
        "jobType": _facet(
            producer, "jobType", processingType="BATCH", integration="DATAPRODUCT", jobType="DAG"
        ),
        "sql": _facet(producer, "sql", query=_pipeline_sql(plan), dialect="duckdb"),
    }
    return {
        "eventType": event_type,
        "eventTime": _timestamp(when),
        "producer": producer,
        "schemaURL": RUN_EVENT_SCHEMA,
        "run": run,
        "job": {"namespace": namespace, "name": product, "facets": job_facets},
        "inputs": inputs,
        "outputs": outputs,
    }


def _dataset_facets(
    name: str, namespace: str, schemas: Schemas, lineage: dict[str, Any], producer: str
) -> dict[str, Any]:
    """The schema of a dataset and, for a table the pipeline builds, its column lineage."""
    facets: dict[str, Any] = {}
    traced: dict[str, Any] = lineage.get(name, {}).get("columns", {})
    columns = schemas.get(name) or dict.fromkeys(traced, "")
    if columns:
        fields = [{"name": c, "type": t} if t else {"name": c} for c, t in columns.items()]
        facets["schema"] = _facet(producer, "schema", fields=fields)
    fields_lineage = {
        column: {"inputFields": [_input_field(namespace, source) for source in trace["sources"]]}
        for column, trace in traced.items()
        if trace["sources"]
    }
    if fields_lineage:
        facets["columnLineage"] = _facet(producer, "columnLineage", fields=fields_lineage)
    return facets


def _input_field(namespace: str, source: dict[str, str]) -> dict[str, Any]:
    transformation = {
        "type": "DIRECT",
        "subtype": SUBTYPES[source["transformation"]],
        "description": source["transformation"],
        "masking": False,
    }
    return {
        "namespace": namespace,
        "name": source["table"],
        "field": source["column"],
        "transformations": [transformation],
    }


def _facet(producer: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": producer, "_schemaURL": FACET_SCHEMAS[kind], **fields}


def _pipeline_sql(plan: Plan) -> str:
    return "\n\n".join(f"-- {step.target}\n{step.sql};" for step in plan.steps)


def _timestamp(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat()


class OpenLineageEmitter:
    """Sends the OpenLineage events of a product's runs to an HTTP endpoint and/or a file.

    `url` is the full endpoint (for Marquez, `http://host:5000/api/v1/lineage`); `api_key`
    is sent as a bearer token. `file` gets one JSON event per line. Sending happens on a
    background thread, in order; each POST has `timeout_s` and up to `retries` retries with
    exponential backoff, after which the event is logged and dropped.
    """

    def __init__(
        self,
        product: str,
        *,
        url: str | None = None,
        file: Path | str | None = None,
        namespace: str = "dataproduct",
        api_key: str | None = None,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.25,
        producer: str = PRODUCER,
        max_pending: int = 1000,
    ) -> None:
        self.product = product
        self.url = url
        self.file = Path(file) if file else None
        self.namespace = namespace
        self.producer = producer
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._queue: queue.Queue[Callable[[], dict[str, Any]] | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def enabled(self) -> bool:
        """Whether events go anywhere."""
        return bool(self.url or self.file)

    def start(self, run_id: str, plan: Plan, started_at: datetime) -> None:
        """The run started."""
        self._emit("START", run_id, plan, started_at)

    def complete(self, run_id: str, plan: Plan, schemas: Schemas, finished_at: datetime) -> None:
        """The run published; `schemas` maps `layer.table` to `{column: type}`."""
        self._emit("COMPLETE", run_id, plan, finished_at, schemas=schemas)

    def fail(
        self,
        run_id: str,
        plan: Plan,
        error: dict[str, Any] | BaseException | str | None,
        finished_at: datetime,
        cancelled: bool = False,
    ) -> None:
        """The run failed (FAIL) or was cancelled (ABORT); it published nothing."""
        self._emit("ABORT" if cancelled else "FAIL", run_id, plan, finished_at, error=error)

    def _emit(
        self,
        event_type: str,
        run_id: str,
        plan: Plan,
        when: datetime,
        *,
        schemas: Schemas | None = None,
        error: dict[str, Any] | BaseException | str | None = None,
    ) -> None:
        """Queue the event; the sender builds it (column lineage takes a while) and sends it."""
        if not self.enabled:
            return
        build = partial(
            build_event,
            event_type,
            run_id,
            plan,
            when,
            product=self.product,
            namespace=self.namespace,
            producer=self.producer,
            schemas=dict(schemas) if schemas is not None else None,
            error=_message(error),
        )
        self._put(build)

    def send(self, event: dict[str, Any]) -> None:
        """Queue one ready event for the background sender."""
        self._put(lambda: event)

    def _put(self, build: Callable[[], dict[str, Any]]) -> None:
        self._ensure_worker()
        try:
            self._queue.put_nowait(build)
        except queue.Full:
            log.warning("OpenLineage: %d events pending, dropping one", self._queue.maxsize)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued event is sent or given up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for at most `timeout_s`) and stop the sender."""
        worker = self._worker
        if worker is None:
            return
        self.flush(timeout_s)
        self._closing.set()
        with suppress(queue.Full):  # a full queue: the daemon sender dies with the process
            self._queue.put_nowait(None)
        worker.join(timeout_s)
        if not worker.is_alive():
            with self._lock:
                self._worker = None
                self._closing.clear()

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="openlineage-sender", daemon=True
                )
                self._worker.start()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, headers=self._headers) as client:
            while True:
                build = self._queue.get()
                try:
                    if build is None:
                        return
                    self._deliver(client, build())
                except Exception:  # lineage is never a reason for anything to fail
                    log.exception("OpenLineage: could not build or send an event")
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, event: dict[str, Any]) -> None:
        if self.file is not None:
            _append(self.file, event)
        if self.url:
            self._post(client, self.url, event)

    def _post(self, client: httpx.Client, url: str, event: dict[str, Any]) -> None:
        """POST with retries and backoff; after the last attempt, log and give up."""
        problem = "not sent"
        for attempt in range(self.retries + 1):
            if attempt and self._closing.wait(self.backoff_s * 2 ** (attempt - 1)):
                break  # closing: no more waiting
            try:
                response = client.post(url, json=event)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code not in RETRIED_STATUSES:
                break
        what = f"{event['eventType']} event of run {event['run']['runId']}"
        log.warning("OpenLineage: gave up sending the %s to %s: %s", what, url, problem)


def _append(path: Path, event: dict[str, Any]) -> None:
    """One JSON line per event; a file that cannot be written is logged, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
    except OSError as error:
        log.warning("OpenLineage: could not write %s: %s", path, error)


def _message(error: dict[str, Any] | BaseException | str | None) -> str | None:
    """The error text of a run: our error dict, an exception or a string."""
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)
    return str(error)
