"""The gateway layer around every port: audit, metrics, body limits and response headers.

A plain ASGI middleware (streams pass through untouched): it measures each request from
its first byte to the last byte of the response, then records one audit record and the
metrics. The endpoints leave the principal, the dataset and the rows returned on
`request.state`.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataproduct.access import AccessControl
from dataproduct.audit import AuditRecord
from dataproduct.errors import PayloadTooLargeError
from dataproduct.settings import DataproductSettings
from ports.errors import error_response

UNLIMITED_PREFIX = "/input/"  # uploads stream to disk under their own, larger limit
_PORTS = {"discovery", "output", "input", "control", "metrics", "health", "ready"}


def port_of(path: str) -> str:
    """The port a path belongs to (its first segment), `other` for the rest."""
    first = path.lstrip("/").split("/", 1)[0]
    if first in ("health", "ready"):
        return "health"
    return first if first in _PORTS else "other"


def security_headers(settings: DataproductSettings) -> list[tuple[bytes, bytes]]:
    """The headers every response carries, from settings."""
    if not settings.security_headers:
        return []
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-site",
        "Content-Security-Policy": settings.content_security_policy,
    }
    if settings.hsts_seconds:
        headers["Strict-Transport-Security"] = f"max-age={settings.hsts_seconds}"
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _unsized_body(scope: Scope) -> bool:
    """A request that may carry a body without saying how long (chunked)."""
    if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return False
    if scope["path"].startswith(UNLIMITED_PREFIX):
        return False
    return "content-length" not in Headers(scope=scope)


class GatewayMiddleware:
    """Audit, metrics, JSON body limits and security headers for every HTTP request."""

    def __init__(self, app: ASGIApp, access: AccessControl, settings: DataproductSettings) -> None:
        self.app = app
        self.access = access
        self.max_body = settings.max_json_body_bytes
        self.headers = security_headers(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        outcome = {"status": 500, "bytes": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-Id", request_id)
                message["headers"] = [*message["headers"], *self.headers]
            elif message["type"] == "http.response.body":
                outcome["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            problem = self._too_large(scope)
            if problem is None and _unsized_body(scope):
                receive, problem = await self._buffered(receive)
            if problem is not None:
                await error_response(problem)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, state, request_id, outcome, time.perf_counter() - started)

    def _too_large(self, scope: Scope) -> PayloadTooLargeError | None:
        if scope["path"].startswith(UNLIMITED_PREFIX):
            return None
        declared = Headers(scope=scope).get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            return PayloadTooLargeError(
                f"the body is {declared} bytes; the limit is {self.max_body}",
                where="Content-Length",
            )
        return None

    async def _buffered(self, receive: Receive) -> tuple[Receive, PayloadTooLargeError | None]:
        """Read a body sent without a length (chunked) up to the limit, to replay it."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body:
                problem = PayloadTooLargeError(
                    f"the body is larger than the limit of {self.max_body} bytes", where="body"
                )
                return receive, problem
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return replay, None

    def _record(
        self,
        scope: Scope,
        state: dict[str, Any],
        request_id: str,
        outcome: dict[str, int],
        seconds: float,
    ) -> None:
        principal = state.get("principal")
        client = scope.get("client")
        route = scope.get("route")
        port = port_of(scope["path"])
        dataset, rows = state.get("dataset"), state.get("rows")
        self.access.metrics.observe(
            port=port,
            route=getattr(route, "path", "unmatched"),
            method=scope["method"],
            status=outcome["status"],
            seconds=seconds,
            sent=outcome["bytes"],
            dataset=dataset,
            rows=rows,
        )
        if port == "health" or scope["path"] == "/metrics":
            return  # probes and scrapes would drown the log
        self.access.audit.record(
            AuditRecord(
                at=datetime.now(UTC),
                request_id=request_id,
                principal=principal.subject if principal else "anonymous",
                client=client[0] if client else "unknown",
                method=scope["method"],
                path=scope["path"],
                status=outcome["status"],
                port=port,
                dataset=dataset,
                rows=rows,
                bytes=outcome["bytes"],
                duration_ms=round(seconds * 1000, 3),
            )
        )
