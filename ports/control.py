"""The control port: ingestion, pipeline SQL, runs. Every call needs `control:admin`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dataproduct.descriptor import ModelSpec, check_dialect
from dataproduct.errors import NotFoundError
from dataproduct.ingest import ingestion_history, source_freshness
from dataproduct.security import Principal
from pipelines.model import Pipeline
from pipelines.planner import PipelineRejectedError
from pipelines.store import list_versions
from ports.auth import require_admin, runtime_of

router = APIRouter(prefix="/control", tags=["control"])
Admin = Annotated[Principal, Depends(require_admin)]


class PipelineBody(BaseModel):
    """A whole pipeline: the models replace the current ones.

    `dialect` is the SQL dialect of every model that does not name its own.
    """

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)
    dialect: str | None = None

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str | None) -> str | None:
        return check_dialect(value) if value else value

    def pipeline(self) -> Pipeline:
        """The submitted pipeline."""
        return Pipeline.from_specs(self.models, self.dialect)


class RunBody(BaseModel):
    """Options of a run: which models (all by default), and how."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = Field(default=None, min_length=1)
    downstream: bool = False
    full_refresh: bool = False
    ingest: bool = False


@router.post("/ingest")
def ingest_all(request: Request, principal: Admin, run: bool = False) -> dict[str, Any]:
    """Pull every pulling source; `run=true` starts a pipeline run afterwards."""
    return _ingest(request, None, principal, run)


@router.post("/ingest/{source}")
def ingest_one(
    source: str,
    request: Request,
    principal: Admin,
    run: bool = False,
    full_refresh: Annotated[
        bool, Query(description="reload an incremental source from scratch")
    ] = False,
) -> dict[str, Any]:
    """Pull one source (an incremental one from its last watermark)."""
    return _ingest(request, source, principal, run, full_refresh)


def _ingest(
    request: Request,
    source: str | None,
    principal: Principal,
    run: bool,
    full_refresh: bool = False,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    results = runtime.ingest(source, principal.subject, full_refresh=full_refresh)
    body: dict[str, Any] = {"ingestions": [r.to_dict() for r in results]}
    if run:
        body["run"] = runtime.start_run(principal.subject, trigger="ingest").to_dict()
    return body


@router.get("/sources")
def sources(request: Request, principal: Admin) -> dict[str, Any]:
    """Every source: its settings (never credentials), freshness, loads in progress and,
    for broker sources, the consumer's state (connected, last error, messages landed)."""
    runtime = runtime_of(request)
    freshness = source_freshness(runtime.storage)
    running = runtime.sources.running()
    consumers = runtime.messages.status()
    return {
        "sources": {
            name: {
                **connector.describe(),
                "pulls": connector.pulls,
                "freshness": freshness.get(name),
                "running": [load for load in running if load["source"] == name],
                **({"consumer": consumers[name]} if name in consumers else {}),
            }
            for name, connector in runtime.connectors.items()
        }
    }


@router.get("/marketplace")
def marketplace(request: Request, principal: Admin) -> dict[str, Any]:
    """Where the product publishes its metadata, and how the last attempts went."""
    runtime = runtime_of(request)
    publisher = runtime.publisher
    if publisher is None:
        return {"enabled": False}
    return {"enabled": True, "url": publisher.endpoint, **publisher.status.to_dict()}


@router.get("/ingestions")
def ingestions(
    request: Request,
    principal: Admin,
    source: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Loads streaming now (`running`, with rows so far), then the latest loads, newest first."""
    runtime = runtime_of(request)
    running = [r for r in runtime.sources.running() if source in (None, r["source"])]
    return {
        "running": running,
        "ingestions": ingestion_history(runtime.storage, source, limit),
    }


@router.get("/pipeline")
def get_pipeline(
    request: Request, principal: Admin, version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """The current pipeline (or `version=`), with who submitted it and when."""
    found = runtime_of(request).pipeline(version)
    if found is None:
        raise NotFoundError("no pipeline was ever submitted", where="pipeline")
    return found.to_dict()


@router.get("/pipeline/versions")
def pipeline_versions(request: Request, principal: Admin) -> dict[str, Any]:
    """Every accepted pipeline version, newest first."""
    return {"versions": list_versions(runtime_of(request).storage)}


@router.put("/pipeline")
def put_pipeline(body: PipelineBody, request: Request, principal: Admin) -> dict[str, Any]:
    """Replace the pipeline; it is planned first and a rejected one changes nothing."""
    stored = runtime_of(request).replace_pipeline(body.pipeline(), principal.subject)
    return stored.to_dict()


@router.post("/pipeline/plan")
def plan_pipeline(
    request: Request, principal: Admin, body: PipelineBody | None = None
) -> dict[str, Any]:
    """Dry run: the ordered steps and lineage, or every problem. Nothing is changed."""
    runtime = runtime_of(request)
    pipeline = body.pipeline() if body else None
    try:
        document = runtime.plan_document(pipeline)
    except PipelineRejectedError as error:
        return {"valid": False, "problems": error.details["problems"]}
    return {"valid": True, **document}


@router.post("/runs", status_code=202)
def start_run(request: Request, principal: Admin, body: RunBody | None = None) -> JSONResponse:
    """Start a run of the current pipeline: 202 with its id; 409 if one is going."""
    runtime = runtime_of(request)
    body = body or RunBody()
    if body.ingest:
        runtime.ingest(None, principal.subject, triggers=False)
    run = runtime.start_run(
        principal.subject,
        models=body.models,
        downstream=body.downstream,
        full_refresh=body.full_refresh,
    )
    location = f"{runtime.settings.base_url()}/control/runs/{run.id}"
    return JSONResponse(run.to_dict(), status_code=202, headers={"Location": location})


@router.get("/runs")
def runs(
    request: Request, principal: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    """Run history, newest first."""
    return {"runs": runtime_of(request).runs.history(limit)}


@router.get("/runs/{run_id}")
def run_status(run_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    """Status, progress, per-model timings and errors of one run."""
    return runtime_of(request).runs.get(run_id)


@router.delete("/runs/{run_id}")
def cancel_run(run_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    """Cancel a running run; it publishes nothing."""
    return runtime_of(request).runs.cancel(run_id)
