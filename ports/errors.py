"""One handler at the edge: every error becomes the same JSON shape and the right status."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dataproduct.errors import AuthenticationError, DataproductError

log = logging.getLogger("dataproduct.http")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    504: "gateway_timeout",
}


def error_response(error: DataproductError) -> JSONResponse:
    """The JSON response for one of our errors."""
    headers = {}
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="dataproduct"'
    if error.retry_after_s is not None or error.transient:
        headers["Retry-After"] = str(error.retry_after_s or 5)
    return JSONResponse(error.to_dict(), status_code=error.status, headers=headers)


async def _dataproduct_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DataproductError)
    if error.status >= 500 and not error.transient:
        log.error("%s %s failed: %s", request.method, request.url.path, error.message)
    return error_response(error)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [
        {"path": ".".join(str(p) for p in item["loc"]), "message": item["msg"]}
        for item in error.errors()
    ]
    first = problems[0] if problems else {"path": "", "message": "invalid request"}
    in_body = first["path"].startswith("body")
    status = 422 if in_body else 400
    body = {
        "error": {
            "code": "invalid_input" if in_body else "bad_request",
            "message": f"{first['path']}: {first['message']}",
            "where": first["path"],
            "details": {"problems": problems},
        }
    }
    return JSONResponse(body, status_code=status)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    message = str(error.detail) if error.detail else code.replace("_", " ")
    if error.status_code == 404 and error.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.exception("%s %s crashed (incident %s)", request.method, request.url.path, incident)
    body = {
        "error": {
            "code": "internal_error",
            "message": f"internal error; the server log has incident {incident}",
        }
    }
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of the app in the stable shape."""
    app.add_exception_handler(DataproductError, _dataproduct_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
