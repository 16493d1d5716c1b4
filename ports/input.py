"""The input port: push a file or JSON records into a declared push source."""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dataproduct.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from dataproduct.ingest import FILE_FORMATS, FileFormat
from dataproduct.security import Principal
from ports.auth import require_scope, runtime_of

router = APIRouter(prefix="/input", tags=["input"])
Writer = Annotated[Principal, Depends(require_scope("input:write"))]

_CONTENT_TYPES: dict[str, FileFormat] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


_UNTYPED = ("", "application/octet-stream", "application/x-www-form-urlencoded")


def body_format(
    content_type: str | None, format_param: str | None, default: FileFormat | None = None
) -> FileFormat:
    """The pushed body's format: `format=` first, then Content-Type, then the source's own
    format when the body says nothing of its type (as `curl --data-binary` sends it)."""
    if format_param:
        if format_param not in FILE_FORMATS:
            raise BadRequestError(
                f"unknown format '{format_param}'; use one of {', '.join(FILE_FORMATS)}",
                where="format",
            )
        return format_param
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _CONTENT_TYPES:
        return _CONTENT_TYPES[media]
    if media in _UNTYPED and default is not None:
        return default
    raise UnsupportedMediaTypeError(
        f"cannot load Content-Type '{media or 'none'}'; send one of "
        f"{', '.join(_CONTENT_TYPES)} or set format=",
        where="Content-Type",
    )


async def spool_body(request: Request, directory: Path, limit: int) -> Path:
    """Stream the request body to a file, refusing it past `limit` bytes (413)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the body is {declared} bytes; the limit is {limit}", where="Content-Length"
        )
    handle, name = tempfile.mkstemp(dir=directory, suffix=".upload")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(handle, "wb") as file:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(
                        f"the body is larger than the limit of {limit} bytes", where="body"
                    )
                file.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise BadRequestError("the body is empty", where="body")
    return path


@router.post("/{source}")
async def push(
    source: str,
    request: Request,
    principal: Writer,
    format: Annotated[str | None, Query(description="csv, json, ndjson, parquet")] = None,
    mode: Annotated[str | None, Query(pattern="^(append|replace)$")] = None,
    run: Annotated[bool, Query(description="start a pipeline run after the load")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="a retried push with the same key is not loaded twice"),
    ] = None,
) -> JSONResponse:
    """Load the body (a file, or JSON records) into `input.<source>`: all rows or none.

    201 with the rows accepted; with an `Idempotency-Key` already used for this source, 200
    and the first load's record (`replayed: true`), nothing loaded again. A row that does not
    fit the declared columns is refused (422) naming its line and column.
    """
    runtime = runtime_of(request)
    # 404, 409 and 403 before reading the body
    declared = getattr(runtime.push_source(source).spec, "format", None)
    runtime.access.require_write(principal, source)
    chosen = body_format(request.headers.get("content-type"), format, declared)
    path = await spool_body(request, runtime.upload_dir(), runtime.settings.max_upload_bytes)
    try:
        ingestion = await run_in_threadpool(
            partial(
                runtime.push, source, path, chosen, principal.subject, mode,
                idempotency_key=idempotency_key, run=run,
            )
        )  # fmt: skip
    finally:
        path.unlink(missing_ok=True)
    return JSONResponse(
        {
            "source": source,
            "rows": ingestion.rows,
            "replayed": ingestion.replayed,
            "ingestion": ingestion.to_dict(),
        },
        status_code=200 if ingestion.replayed else 201,
    )
