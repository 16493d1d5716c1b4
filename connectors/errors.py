"""Library errors of the connectors, translated once: their first line, their kind, and a
reader whose failures surface as our own errors.

Drivers and storage libraries tell a transient fault (network, throttling, a server going
down) from a permanent one (denied, missing, malformed) only in their messages. The words,
codes and HTTP statuses that mark each kind live here, shared by every connector. Codes and
statuses are matched as whole tokens in the places libraries print them, never as loose
digits or substrings: a key such as `0403.parquet` in a message says nothing about access.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from dataproduct.errors import DataproductError
from dataproduct.secrets import SecretResolver

# Words of a library's message meaning the server may answer again later (matched ignoring case).
UNREACHABLE_WORDS = (
    "connection refused", "could not connect", "fail to get a new connection",
    "error sending request", "connection reset", "broken pipe", "timed out", "timeout",
    "temporary failure", "max retries exceeded", "network_connection", "curlcode",
    "service_unavailable", "slow_down", "internal_failure", "throttling",
    "server closed the connection", "lost connection", "server has gone away",
    "terminating connection", "too many connections", "starting up", "shutting down",
)  # fmt: skip
# Error codes of S3 (pyarrow's and the service's spelling) and Azure that mean "not allowed".
DENIED_CODES = frozenset(
    {"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
     "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "Forbidden",
     "AuthorizationFailure", "AuthenticationFailed", "AuthorizationPermissionMismatch",
     "InvalidAuthenticationInfo", "InsufficientAccountPermissions"}
)  # fmt: skip
NO_BUCKET_CODES = frozenset({"NO_SUCH_BUCKET", "NoSuchBucket"})
DENIED_STATUS = frozenset({401, 403})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
_CODE = re.compile(r"\b[A-Za-z][A-Za-z_]+\b")
# Where libraries print an HTTP status: pyarrow `(HTTP status 403)`, delta-rs `↳ 403 Forbidden`,
# others `status code 503` or `status: 503`; the number always stands alone.
_STATUS = re.compile(
    r"\b(?:HTTP status|status code|status)\s*:?\s*(?P<after>\d{3})(?!\w)"
    r"|(?:^|[\s(↳])(?P<before>\d{3}) [A-Z][a-z]+"
)


def without_colours(text: str) -> str:
    """The text without terminal colour codes (some Rust libraries print them)."""
    return _ANSI.sub("", text)


def message_lines(error: BaseException) -> list[str]:
    """The non-empty lines of a library's message, without colour codes or request ids."""
    text = _REQUEST_ID.sub("", without_colours(str(error)))
    return [line.strip() for line in text.splitlines() if line.strip()]


def first_line(error: BaseException) -> str:
    """The first line of a library's message (its class name when it has none)."""
    lines = message_lines(error)
    return lines[0] if lines else type(error).__name__


def looks_unreachable(text: str) -> bool:
    """True when the message says the server could not be reached or was too busy."""
    lowered = text.lower()
    return any(word in lowered for word in UNREACHABLE_WORDS)


def error_codes(text: str) -> set[str]:
    """The words of a message that may be error codes (`ACCESS_DENIED`, `NoSuchBucket`)."""
    return set(_CODE.findall(without_colours(text)))


def http_statuses(text: str) -> set[int]:
    """The HTTP statuses a message reports, where libraries print them."""
    found = _STATUS.finditer(without_colours(text))
    return {int(match["after"] or match["before"]) for match in found}


def looks_denied(text: str) -> bool:
    """True when the message carries an access-denied code or a 401/403 status."""
    return bool(error_codes(text) & DENIED_CODES or http_statuses(text) & DENIED_STATUS)


def looks_throttled(text: str) -> bool:
    """True when the message reports an HTTP status that may pass (408, 429, 5xx)."""
    return bool(http_statuses(text) & TRANSIENT_STATUS)


@dataclass
class FailureBox:
    """Keeps the first error a reader raised while DuckDB drained it.

    DuckDB raises its own error over whatever a Python reader raised; the connector raises
    the kept one in its place (`reraise_kept`). `guard` translates a library error into
    SourceError or SourceUnavailableError on the way.
    """

    error: DataproductError | None = None

    def guard(
        self,
        batches: Iterable[pa.RecordBatch],
        translate: Callable[[BaseException], DataproductError],
    ) -> Iterator[pa.RecordBatch]:
        """The batches; a library error is translated, kept and raised as ours."""
        try:
            yield from batches
        except DataproductError as error:
            self.keep(error)
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as error:  # noqa: BLE001 - Rust panics are BaseExceptions
            found = translate(error)
            self.keep(found)
            raise found from None

    def keep(self, error: DataproductError) -> None:
        """Remember the error, unless one came first."""
        if self.error is None:
            self.error = error

    def reader(
        self,
        schema: pa.Schema,
        batches: Iterable[pa.RecordBatch],
        translate: Callable[[BaseException], DataproductError],
    ) -> pa.RecordBatchReader:
        """A record batch reader over the guarded batches."""
        return pa.RecordBatchReader.from_batches(schema, self.guard(batches, translate))

    @contextmanager
    def reraise_kept(self) -> Iterator[None]:
        """Inside the block, an error raised over a kept one is replaced by the kept one."""
        try:
            yield
        except Exception:
            if self.error is not None:
                raise self.error from None
            raise


@contextmanager
def translated_stream(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    translate: Callable[[BaseException], DataproductError],
) -> Iterator[pa.RecordBatchReader]:
    """A reader over `batches` whose failures surface as our own errors, even through DuckDB."""
    box = FailureBox()
    with box.reraise_kept():
        yield box.reader(schema, batches, translate)


@contextmanager
def scanned_stream(
    scan: Callable[[], pa.RecordBatchReader],
    translate: Callable[[BaseException], DataproductError],
    secrets: SecretResolver,
) -> Iterator[pa.RecordBatchReader]:
    """Open a library's reader (`scan`) and stream it translated; our errors, whether met
    opening or reading, leave with the source's secret values hidden."""
    try:
        reader = scan()
        with translated_stream(reader.schema, reader, translate) as translated:
            yield translated
    except DataproductError as error:
        secrets.scrub_error(error)
        raise
