"""The output port: datasets as JSON pages or streamed NDJSON, CSV, Parquet or Arrow."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterator
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlglot import exp
from starlette.concurrency import run_in_threadpool

from dataproduct.catalog import PublishedDataset
from dataproduct.errors import BadRequestError, NotAcceptableError
from dataproduct.policy import DatasetAccess
from dataproduct.reading import (
    find_dataset,
    guarded_query,
    open_query_stream,
    open_stream,
    query_page,
    read_page,
    restrict_query,
    rows_after,
    select_columns,
)
from dataproduct.result_cache import CachedResult, deterministic
from dataproduct.security import Principal
from ports.auth import require_scope, runtime_of
from ports.discovery import documents_for
from ports.streaming import MEDIA_TYPES, encode_batches

router = APIRouter(prefix="/output", tags=["output"])
Reader = Annotated[Principal, Depends(require_scope("output:read"))]

_ACCEPT = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
}


def negotiate(format_param: str | None, accept: str | None) -> str:
    """The response format: `format=` first, then the Accept header, else JSON."""
    if format_param:
        if format_param not in MEDIA_TYPES:
            raise BadRequestError(
                f"unknown format '{format_param}'; use one of {', '.join(MEDIA_TYPES)}",
                where="format",
            )
        return format_param
    if not accept:
        return "json"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
        if media in ("*/*", "application/*", "text/*", ""):
            return "json"
    raise NotAcceptableError(
        f"cannot produce {accept}; use one of {', '.join(_ACCEPT)}", where="Accept"
    )


@router.get("/datasets")
def list_datasets(request: Request, principal: Reader) -> dict[str, Any]:
    """Datasets this principal may read, with schema and links."""
    documents = documents_for(request, principal)
    return {"datasets": [d for d in documents if d["access"]["readable"]]}


@router.get("/datasets/{name}", response_model=None)
async def read_dataset(
    name: str,
    request: Request,
    principal: Reader,
    format: Annotated[str | None, Query(description="json, ndjson, csv, parquet, arrow")] = None,
    columns: Annotated[str | None, Query(description="comma-separated projection")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: Annotated[str | None, Query(description="from next_cursor of a JSON page")] = None,
    version: Annotated[int | None, Query(ge=1, description="an older major version")] = None,
    after_column: Annotated[
        str | None, Query(max_length=256, description="with `after`: a watermark column")
    ] = None,
    after: Annotated[
        str | None,
        Query(max_length=256, description="only rows whose after_column is greater than this"),
    ] = None,
) -> Response:
    """Rows of a dataset: paged JSON, or the whole dataset streamed in another format.

    `after_column` and `after` keep only the rows past a watermark (an incremental pull).
    """
    runtime = runtime_of(request)
    settings = runtime.settings
    chosen = negotiate(format, request.headers.get("accept"))
    dataset = find_dataset(runtime.storage, name, version)
    request.state.dataset = dataset.name
    access = runtime.access.read_access(principal, name)
    wanted = select_columns(dataset, _split(columns))
    condition = await _watermark_condition(request, dataset, access, after_column, after)
    if chosen == "json":
        page_size = min(limit or settings.default_page_rows, settings.max_page_rows)
        # a page is fixed by the publish (run id), the projection, the place, the view and
        # the watermark filter
        key = (
            "page", dataset.table_name, dataset.run_id, tuple(c["name"] for c in wanted),
            page_size, cursor, access.fingerprint, after_column, after,
        )  # fmt: skip

        def page_body() -> CachedResult:
            page = read_page(
                runtime.storage,
                dataset,
                wanted,
                limit=page_size,
                cursor_token=cursor,
                access=access,
                timeout_s=settings.query_timeout_s,
                condition=condition,
            )
            envelope = {
                "dataset": dataset.name,
                "version": dataset.version,
                "limit": page_size,
                "next_cursor": page.next_cursor,
            }
            return _json_body(page.rows_json, envelope)

        return await _cached(request, key, page_body)
    if cursor:
        raise BadRequestError(
            "cursor pages JSON only; other formats stream every row", where="cursor"
        )
    db_cursor, reader = await run_in_threadpool(
        open_stream,
        runtime.storage,
        dataset,
        wanted,
        limit=limit,
        nested_as_text=chosen == "csv",
        json_lines=chosen == "ndjson",
        access=access,
        timeout_s=settings.query_timeout_s,
        condition=condition,
    )
    extension = "arrows" if chosen == "arrow" else chosen
    return StreamingResponse(
        encode_batches(counted(reader, request), chosen, db_cursor),
        media_type=MEDIA_TYPES[chosen],
        headers={"Content-Disposition": f'inline; filename="{dataset.name}.{extension}"'},
    )


async def _watermark_condition(
    request: Request,
    dataset: PublishedDataset,
    access: DatasetAccess,
    after_column: str | None,
    after: str | None,
) -> exp.Expr | None:
    """The `after_column > after` predicate, or None when neither is given."""
    if after_column is None and after is None:
        return None
    if after_column is None or after is None:
        missing = "after_column" if after_column is None else "after"
        raise BadRequestError(
            "after_column and after go together (the column and the watermark value)",
            where=missing,
        )
    storage = runtime_of(request).storage
    return await run_in_threadpool(rows_after, storage, dataset, access, after_column, after)


async def _cached(request: Request, key: Hashable, compute: Callable[[], CachedResult]) -> Response:
    """The JSON body from the result cache, or computed in a worker thread and kept."""
    results = runtime_of(request).results
    found = results.get(key)
    if found is None:
        found = await run_in_threadpool(compute)
        results.put(key, found)
    request.state.rows = found.rows
    return Response(found.body, media_type=MEDIA_TYPES["json"])


def _split(columns: str | None) -> list[str] | None:
    if columns is None:
        return None
    names = [c.strip() for c in columns.split(",") if c.strip()]
    if not names:
        raise BadRequestError("columns is empty", where="columns")
    return names


def _json_body(rows: list[str], envelope: dict[str, Any]) -> CachedResult:
    """Rows are JSON text already (typed by DuckDB); the envelope is assembled around them."""
    head = json.dumps({**envelope, "count": len(rows)})
    body = head[:-1] + ', "data": [' + ",".join(rows) + "]}"
    return CachedResult(body.encode(), len(rows))


class QueryRequest(BaseModel):
    """A read-only SQL query over the output datasets."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000)
    format: str | None = None
    limit: int | None = Field(default=None, ge=1)


@router.post("/query", response_model=None)
async def query(body: QueryRequest, request: Request, principal: Reader) -> Response:
    """Guarded read-only SQL over `output.*`: JSON (bounded) or streamed formats."""
    runtime = runtime_of(request)
    settings = runtime.settings
    chosen = negotiate(body.format, request.headers.get("accept"))
    timeout_s = settings.query_timeout_s
    access = runtime.access
    # the answer depends on the data (generation), the grants and who asks
    generation, grants = runtime.storage.generation, access.grants.version
    if chosen == "json":
        limit = min(body.limit or settings.max_page_rows, settings.max_page_rows)
        key = ("query", generation, grants, principal, body.sql, limit)
        found = runtime.results.get(key)
        if found is not None:
            request.state.rows = found.rows
            return Response(found.body, media_type=MEDIA_TYPES["json"])
    statement = await run_in_threadpool(_restricted, request, body.sql, principal)
    if chosen == "json":

        def answer() -> CachedResult:
            rows, truncated = query_page(runtime.storage, statement, limit, timeout_s)
            return _json_body(rows, {"limit": limit, "truncated": truncated})

        result = await run_in_threadpool(answer)
        if deterministic(statement):
            runtime.results.put(key, result)
        request.state.rows = result.rows
        return Response(result.body, media_type=MEDIA_TYPES["json"])
    db_cursor, reader = await run_in_threadpool(
        open_query_stream,
        runtime.storage,
        statement,
        limit=body.limit,
        json_lines=chosen == "ndjson",
        timeout_s=timeout_s,
    )
    return StreamingResponse(
        encode_batches(counted(reader, request), chosen, db_cursor),
        media_type=MEDIA_TYPES[chosen],
    )


def _restricted(request: Request, sql: str, principal: Principal) -> exp.Query:
    """The caller's query, guarded and limited to what it may see."""
    runtime = runtime_of(request)
    return restrict_query(
        runtime.storage,
        guarded_query(sql),
        lambda dataset: runtime.access.read_access(principal, dataset),
    )


def counted(reader: pa.RecordBatchReader, request: Request) -> pa.RecordBatchReader:
    """The same batches, counting rows on `request.state` for the audit log and metrics."""
    request.state.rows = 0

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            request.state.rows += batch.num_rows
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
