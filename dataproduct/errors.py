"""The one error tree of dataproduct.

Every error a user can cause is a `DataproductError` carrying its HTTP status, a stable
machine-readable `code`, a human message and, where it helps, *where* the problem is
(a file, a path inside a document, a line and column in SQL, a dataset or column).
The HTTP edge renders them all the same way; nothing else leaks to clients.
"""

from __future__ import annotations

from typing import Any


class DataproductError(Exception):
    """Base of every error dataproduct raises on purpose."""

    status = 500
    code = "internal_error"
    transient = False
    retry_after_s: int | None = None

    def __init__(self, message: str, *, where: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape: {"error": {"code", "message", "where"?, "details"?}}."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.where:
            body["where"] = self.where
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequestError(DataproductError):
    """The request is malformed (a parameter, a header, a body that cannot be read)."""

    status = 400
    code = "bad_request"


class DescriptorError(DataproductError):
    """The product descriptor is invalid; `where` is the file and the path inside it."""

    status = 422
    code = "invalid_descriptor"


class ValidationError(DataproductError):
    """Input that was read but does not fit: wrong schema, wrong type, bad value."""

    status = 422
    code = "invalid_input"


class SqlRejectedError(DataproductError):
    """Injected SQL refused by the guard or by the planner."""

    status = 422
    code = "sql_rejected"


class AuthenticationError(DataproductError):
    """No credential, or one that is not valid."""

    status = 401
    code = "unauthenticated"


class PermissionDeniedError(DataproductError):
    """A valid principal without the right to do this."""

    status = 403
    code = "forbidden"


class NotFoundError(DataproductError):
    """The named dataset, source, run or version does not exist."""

    status = 404
    code = "not_found"


class ConflictError(DataproductError):
    """The request clashes with the current state (a run already going, a stale cursor)."""

    status = 409
    code = "conflict"


class PayloadTooLargeError(DataproductError):
    """The body is larger than the configured limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(DataproductError):
    """The body or the requested format is of a type we do not read or write."""

    status = 415
    code = "unsupported_media_type"


class NotAcceptableError(DataproductError):
    """The requested response format is not one we produce."""

    status = 406
    code = "not_acceptable"


class ConfigurationError(DataproductError):
    """The runtime settings are unusable (for instance no secret outside local mode)."""

    status = 500
    code = "configuration_error"


class SourceError(DataproductError):
    """A connector could not read its source (missing file, malformed content)."""

    status = 422
    code = "source_error"


class SourceUnavailableError(SourceError):
    """A source that may come back: retrying later can succeed."""

    status = 503
    code = "source_unavailable"
    transient = True


class NotReadyError(DataproductError):
    """The product is still starting (first ingestion and run)."""

    status = 503
    code = "not_ready"
    transient = True


class RateLimitedError(DataproductError):
    """The caller made too many requests; `retry_after_s` says when to try again."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, where="rate_limit", **details)
        self.retry_after_s = retry_after_s


class QueryTimeoutError(DataproductError):
    """A query ran past the configured time and was stopped."""

    status = 504
    code = "query_timeout"
    transient = True  # the same query may finish when the product is less busy


def first_line(error: BaseException) -> str:
    """The first line of an exception's text (its class name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
