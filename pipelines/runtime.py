"""The product runtime: one product's descriptor, storage, sources, pipeline and runs.

This is the core the ports call: each operation of the HTTP contract is one method here.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from dataproduct.access import AccessControl
from dataproduct.catalog import create_meta_tables
from dataproduct.connector import Connector, MessageConnector, SourceContext, build_connectors
from dataproduct.cron import Cron
from dataproduct.descriptor import ProductDescriptor, load_descriptor
from dataproduct.errors import (
    ConflictError,
    DataproductError,
    NotReadyError,
)
from dataproduct.ingest import FileFormat, Ingestion, source_freshness
from dataproduct.messages import InputSink, MessageSupervisor
from dataproduct.publisher import Publisher
from dataproduct.result_cache import ResultCache
from dataproduct.settings import DataproductSettings
from dataproduct.storage import Storage, file_connection
from pipelines.lineage import lineage_document
from pipelines.model import Pipeline
from pipelines.openlineage import OpenLineageEmitter
from pipelines.planner import Plan, plan_pipeline
from pipelines.polling import SourcePoller
from pipelines.preview import predicted_schemas
from pipelines.publication import publication
from pipelines.run_requests import RunRequests
from pipelines.runner import RunOptions
from pipelines.runs import Run, RunManager, plan_schemas
from pipelines.schedule import Scheduler
from pipelines.sources import SourceLoader, StreamFactory
from pipelines.store import PipelineVersion, get_version, save_version, sync_descriptor_pipeline

log = logging.getLogger("dataproduct")

DATABASE_FILE = "product.duckdb"


@dataclass
class Readiness:
    """Whether the product finished starting, and what went wrong if it did not."""

    ready: threading.Event = field(default_factory=threading.Event)
    problems: list[dict[str, Any]] = field(default_factory=list)


class ProductRuntime:
    """Everything one running data product is made of."""

    def __init__(
        self,
        product_dir: Path,
        descriptor: ProductDescriptor,
        settings: DataproductSettings,
        storage: Storage,
    ) -> None:
        self.product_dir = product_dir
        self.descriptor = descriptor
        self.settings = settings
        self.storage = storage
        self.data_dir = settings.data_dir.resolve() / descriptor.name
        self.connectors: dict[str, Connector] = build_connectors(
            descriptor, SourceContext(product_dir, self.data_dir)
        )
        self.sources = SourceLoader(
            storage,
            self.connectors,
            backoff_s=settings.ingest_backoff_s,
            request_run=self._request_run,
        )
        self.messages = MessageSupervisor(
            {n: c for n, c in self.connectors.items() if isinstance(c, MessageConnector)},
            lambda name: InputSink(name, storage, self.load, spool_dir=self.data_dir / "messages"),
        )
        with storage.transaction() as cursor:
            create_meta_tables(cursor)
        self.sources.create_declared_tables()
        self.access = AccessControl(descriptor, storage, settings)
        self.results = ResultCache(settings.result_cache_bytes)
        self.emitter = OpenLineageEmitter(
            descriptor.name,
            url=settings.openlineage_url,
            file=settings.openlineage_file,
            namespace=settings.openlineage_namespace,
            api_key=settings.openlineage_api_key,
            timeout_s=settings.openlineage_timeout_s,
        )
        self.publisher = (
            Publisher(
                descriptor.name,
                settings.marketplace_url,
                settings.marketplace_token,
                partial(publication, self),
                heartbeat_s=settings.marketplace_heartbeat_s,
            )
            if settings.marketplace_url
            else None
        )
        self.runs = RunManager(
            storage,
            timeout_s=settings.run_timeout_s,
            emitter=self.emitter if self.emitter.enabled else None,
            on_end=lambda run: self.changed(f"run {run.id} {run.status}"),
        )
        self.readiness = Readiness()
        self.run_requests = RunRequests(
            lambda trigger: self.start_run("source", trigger=trigger), self.runs.active
        )
        self.poller = SourcePoller(
            self.connectors, lambda name: self.sources.pull(name, principal="poll")
        )
        self.scheduler = (
            Scheduler(Cron.parse(descriptor.schedule), self.refresh)
            if descriptor.schedule
            else None
        )
        self._pipeline_lock = threading.Lock()
        self._closing = threading.Event()
        self._lineage_cache: tuple[tuple[int, str], dict[str, Any]] | None = None
        sync_descriptor_pipeline(
            storage, Pipeline.from_specs(descriptor.pipeline, descriptor.dialect)
        )

    @classmethod
    def open(cls, product_dir: Path, settings: DataproductSettings) -> ProductRuntime:
        """Load and validate the product folder, then open its database."""
        product_dir = product_dir.resolve()
        descriptor = load_descriptor(product_dir)
        data_dir = settings.data_dir.resolve() / descriptor.name
        storage = Storage(
            file_connection(data_dir / DATABASE_FILE, settings.memory_limit, settings.threads)
        )
        try:
            return cls(product_dir, descriptor, settings, storage)
        except BaseException:
            storage.close()
            raise

    def close(self) -> None:
        """Stop the message consumers, the schedule and a running run; close the database."""
        self._closing.set()
        self.messages.stop()
        if self.publisher is not None:
            self.publisher.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.poller.stop()
        self.run_requests.stop()
        active = self.runs.active()
        if active is not None:
            with suppress(ConflictError):  # it ended meanwhile
                self.runs.cancel(active.id)
            active.done.wait(10)
        self.emitter.close()
        self.access.close()
        self.storage.close()

    # sources -------------------------------------------------------------------------

    def source(self, name: str) -> Connector:
        """A declared source, or NotFoundError."""
        return self.sources.source(name)

    def ingest(
        self,
        name: str | None,
        principal: str,
        *,
        full_refresh: bool = False,
        triggers: bool = True,
    ) -> list[Ingestion]:
        """Pull one source, or every pulling source, into the input layer.

        Without `triggers`, sources do not start runs: the caller runs once all are in.
        """
        if name is None:
            return self.sources.pull_all(principal, triggers=triggers)
        return [self.sources.pull(name, principal, full_refresh=full_refresh, triggers=triggers)]

    def source_documents(self) -> dict[str, dict[str, Any]]:
        """What discovery shows of each source: its settings (never credentials) and when
        it last loaded."""
        loads = source_freshness(self.storage)
        return {
            name: {**connector.describe(), "freshness": loads.get(name)}
            for name, connector in self.connectors.items()
        }

    def push_source(self, name: str) -> Connector:
        """A source that receives pushed data: 404 if undeclared, 409 if it pulls."""
        return self.sources.push_source(name)

    def push(
        self,
        name: str,
        path: Path,
        file_format: FileFormat,
        principal: str,
        mode: str | None = None,
        *,
        idempotency_key: str | None = None,
        run: bool = False,
    ) -> Ingestion:
        """Load a pushed file into `input.<name>` (all rows or none)."""
        return self.sources.push(
            name, path, file_format, principal,
            mode=mode, idempotency_key=idempotency_key, run=run,
        )  # fmt: skip

    def load(
        self,
        name: str,
        open_stream: StreamFactory,
        *,
        principal: str,
        mode: str | None = None,
        size_bytes: int = 0,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> Ingestion:
        """Load a stream into `input.<name>` under the source's rules (brokers use this)."""
        return self.sources.load(
            name, open_stream,
            principal=principal, mode=mode, size_bytes=size_bytes, before_commit=before_commit,
        )  # fmt: skip

    def upload_dir(self) -> Path:
        """Where pushed bodies are streamed to before loading."""
        path = self.data_dir / "uploads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # pipeline ------------------------------------------------------------------------

    def pipeline(self, version: int | None = None) -> PipelineVersion | None:
        """The current pipeline (or an older version)."""
        return get_version(self.storage, version)

    def plan(self, pipeline: Pipeline | None = None) -> Plan:
        """Plan a pipeline (the current one with None) without running anything."""
        if pipeline is None:
            current = self.pipeline()
            pipeline = current.pipeline if current else Pipeline(())
        return plan_pipeline(pipeline, set(self.connectors))

    def plan_document(self, pipeline: Pipeline | None = None) -> dict[str, Any]:
        """A dry run: ordered steps with the SQL that will run, each output's predicted
        columns, and table- and column-level lineage. Raises PipelineRejectedError."""
        plan = self.plan(pipeline)
        predicted = predicted_schemas(self.storage, plan)
        schemas = {
            table: columns
            for table, columns in plan_schemas(self.storage, plan).items()
            if table.startswith("input.")
        }
        document = plan.to_dict()
        for step in document["steps"]:
            prediction = predicted[step["target"]]
            step["predicted_columns"] = prediction.get("columns")
            if "error" in prediction:
                step["prediction_error"] = prediction["error"]
            else:
                schemas[step["target"]] = {c["name"]: c["type"] for c in prediction["columns"]}
        document["column_lineage"] = lineage_document(plan, schemas)
        return document

    def lineage(self) -> dict[str, Any]:
        """Lineage of the current pipeline over the tables as they are, cached per publish."""
        current = self.pipeline()
        if current is None:
            return lineage_document(Plan(()), {})
        latest = self.runs.history(1)
        key = (current.version, latest[0]["id"] if latest else "")
        if self._lineage_cache is None or self._lineage_cache[0] != key:
            plan = self.plan(current.pipeline)
            self._lineage_cache = (key, lineage_document(plan, plan_schemas(self.storage, plan)))
        return self._lineage_cache[1]

    def replace_pipeline(self, pipeline: Pipeline, principal: str) -> PipelineVersion:
        """Validate and store a new pipeline; a rejected one changes nothing."""
        with self._pipeline_lock:
            self.plan(pipeline)
            return save_version(self.storage, pipeline, origin="api", submitted_by=principal)

    def start_run(
        self,
        principal: str,
        trigger: str = "api",
        *,
        models: list[str] | None = None,
        downstream: bool = False,
        full_refresh: bool = False,
    ) -> Run:
        """Plan the current pipeline (or the named models) and run it in the background."""
        current = self.pipeline()
        if current is None or not current.pipeline.models:
            raise ConflictError("there is no pipeline to run; PUT /control/pipeline first")
        plan = self.plan(current.pipeline)
        if models:
            plan = plan.select(models, downstream)
        options = RunOptions(
            contracts=dict(self.descriptor.datasets),
            full_refresh=full_refresh,
            keep_versions=self.settings.dataset_versions_kept,
        )
        return self.runs.start(
            plan,
            pipeline_version=current.version,
            trigger=trigger,
            principal=principal,
            options=options,
        )

    def changed(self, reason: str) -> None:
        """Something the marketplace shows changed: publish it (in the background)."""
        if self.publisher is not None:
            self.publisher.notify(reason)

    def _request_run(self, trigger: str) -> None:
        self.run_requests.request(trigger)

    # start-up --------------------------------------------------------------------------

    def startup(self) -> None:
        """Ingest every pulling source and run the pipeline; then the product is ready."""
        try:
            if self.settings.ingest_on_start:
                self.ingest(None, principal="startup", triggers=False)
                current = self.pipeline()
                if current is not None and current.pipeline.models:
                    run = self.start_run("startup", trigger="startup")
                    state = self.runs.wait(run.id, timeout_s=3600)
                    if state["status"] != "succeeded":
                        self.readiness.problems.append(
                            {"run": state["id"], **(state["error"] or {})}
                        )
        except DataproductError as error:
            log.error("start-up: %s", error.message)
            self.readiness.problems.append(error.to_dict()["error"])
        finally:
            self.readiness.ready.set()
            if not self._closing.is_set():  # stopped while starting: start nothing more
                self._start_background()

    def _start_background(self) -> None:
        """The schedule, the polls, the broker consumers and the publisher."""
        if self.scheduler is not None:
            self.scheduler.start()
        self.poller.start()
        self.messages.start()
        if self.publisher is not None:
            self.publisher.start()

    def refresh(self, principal: str = "scheduler") -> Run:
        """Pull every pulling source, then run the pipeline (what a schedule does)."""
        self.ingest(None, principal, triggers=False)
        return self.start_run(principal, trigger="schedule")

    def require_ready(self) -> None:
        """NotReadyError while the product is still starting."""
        if not self.readiness.ready.is_set():
            raise NotReadyError("the product is starting: first ingestion and run are going")

    def clean_uploads(self) -> None:
        """Remove leftovers of interrupted uploads."""
        shutil.rmtree(self.data_dir / "uploads", ignore_errors=True)
