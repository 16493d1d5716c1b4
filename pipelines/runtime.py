"""The product runtime: one product's descriptor, storage, sources, pipeline and runs.

This is the core the ports call: each operation of the HTTP contract is one method here.
"""

from __future__ import annotations

import logging
import shutil
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dataproduct.access import AccessControl
from dataproduct.catalog import create_meta_tables
from dataproduct.connector import Connector, LoadState, SourceContext, build_connectors
from dataproduct.cron import Cron
from dataproduct.descriptor import ProductDescriptor, load_descriptor
from dataproduct.errors import (
    ConflictError,
    DataproductError,
    NotFoundError,
    NotReadyError,
)
from dataproduct.ingest import FileFormat, Ingestion, file_reader, load_stream
from dataproduct.result_cache import ResultCache
from dataproduct.settings import DataproductSettings
from dataproduct.storage import Storage, file_connection
from pipelines.lineage import lineage_document
from pipelines.model import Pipeline
from pipelines.openlineage import OpenLineageEmitter
from pipelines.planner import Plan, plan_pipeline
from pipelines.preview import predicted_schemas
from pipelines.runner import RunOptions
from pipelines.runs import Run, RunManager, plan_schemas
from pipelines.schedule import Scheduler
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
        with storage.transaction() as cursor:
            create_meta_tables(cursor)
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
        self.runs = RunManager(
            storage,
            timeout_s=settings.run_timeout_s,
            emitter=self.emitter if self.emitter.enabled else None,
        )
        self.readiness = Readiness()
        self.scheduler = (
            Scheduler(Cron.parse(descriptor.schedule), self.refresh)
            if descriptor.schedule
            else None
        )
        self._pipeline_lock = threading.Lock()
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
        """Stop the schedule and a running run, then close the database."""
        if self.scheduler is not None:
            self.scheduler.stop()
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
        try:
            return self.connectors[name]
        except KeyError:
            raise NotFoundError(
                f"no source '{name}'; declared: {', '.join(self.connectors) or 'none'}",
                where=f"sources/{name}",
            ) from None

    def ingest(self, name: str | None, principal: str) -> list[Ingestion]:
        """Pull one source, or every pulling source, into the input layer."""
        names = [name] if name else [n for n, c in self.connectors.items() if c.pulls]
        results = []
        for source_name in names:
            connector = self.source(source_name)
            results.append(
                load_stream(
                    self.storage,
                    source_name,
                    partial(connector.open_stream, LoadState()),
                    mode=connector.spec.mode,
                    principal=principal,
                )
            )
        return results

    def push_source(self, name: str) -> Connector:
        """A source that receives pushed data: 404 if undeclared, 409 if it pulls."""
        connector = self.source(name)
        if connector.pulls:
            raise ConflictError(
                f"source '{name}' is pulled by its connector, not pushed to; "
                "declare a source of type 'push' to receive data",
                where=f"sources/{name}",
            )
        return connector

    def push(
        self, name: str, path: Path, file_format: FileFormat, principal: str, mode: str | None
    ) -> Ingestion:
        """Load a pushed file into `input.<name>` (all rows or none)."""
        connector = self.push_source(name)
        return load_stream(
            self.storage,
            name,
            lambda: file_reader(str(path), file_format),
            mode=mode or connector.spec.mode,
            principal=principal,
            size_bytes=path.stat().st_size,
            redact={str(path): f"the body pushed to {name}"},
        )

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

    # start-up --------------------------------------------------------------------------

    def startup(self) -> None:
        """Ingest every pulling source and run the pipeline; then the product is ready."""
        try:
            if self.settings.ingest_on_start:
                self.ingest(None, principal="startup")
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
            if self.scheduler is not None:
                self.scheduler.start()

    def refresh(self, principal: str = "scheduler") -> Run:
        """Pull every pulling source, then run the pipeline (what a schedule does)."""
        self.ingest(None, principal)
        return self.start_run(principal, trigger="schedule")

    def require_ready(self) -> None:
        """NotReadyError while the product is still starting."""
        if not self.readiness.ready.is_set():
            raise NotReadyError("the product is starting: first ingestion and run are going")

    def clean_uploads(self) -> None:
        """Remove leftovers of interrupted uploads."""
        shutil.rmtree(self.data_dir / "uploads", ignore_errors=True)
