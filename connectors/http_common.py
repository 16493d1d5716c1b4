"""What the HTTP-based connectors (`http`, `product`) share.

A client that keeps credentials on the source's origin, the translation of httpx faults
into source errors, and a guard over a reader's batches.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pyarrow as pa

from connectors.errors import first_line
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.secrets import HIDDEN, mask_url

DEFAULT_PORTS = {"http": 80, "https": 443}
SECRET_PARAM = re.compile(r"token|key|secret|passw|signature|sig$|auth|credential", re.I)
Origin = tuple[str, str, int | None]


def shown_url(url: str) -> str:
    """A URL fit for messages: no password, parameters named like credentials masked."""
    parts = urlsplit(mask_url(url))
    if not parts.query:
        return urlunsplit(parts)
    pairs = [
        (name, HIDDEN if SECRET_PARAM.search(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    query = urlencode(pairs, safe="*${}:", quote_via=quote)
    return urlunsplit(parts._replace(query=query))


def origin_of(url: httpx.URL | str) -> Origin:
    """Scheme, host and port of a URL (the scheme's default port when none is written)."""
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port or DEFAULT_PORTS.get(parsed.scheme)


def shown_origin(origin: Origin) -> str:
    """`scheme://host:port`: an origin fit for messages (no path, query or user info)."""
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def check_same_origin(url: httpx.URL | str, origin: Origin, what: str, where: str) -> None:
    """A SourceError when `url` (a redirect or next link: `what`) leaves `origin`."""
    found = origin_of(url)
    if found != origin:
        raise SourceError(
            f"refused to follow {what} from {shown_origin(origin)} to another origin "
            f"{shown_origin(found)}: the credentials of this source are sent to its own "
            "origin (scheme, host and port) only",
            where=where,
        )


def same_origin_client(
    url: str, *, timeout_s: float, where: str, headers: dict[str, str] | None = None
) -> httpx.Client:
    """An httpx client that follows redirects only within the origin of `url`.

    Every request the client sends (redirects included) passes a hook that refuses one
    bound for another origin before it leaves, so no header reaches another host.
    """
    origin = origin_of(url)

    def stay_on_origin(request: httpx.Request) -> None:
        check_same_origin(request.url, origin, "a redirect", where)

    return httpx.Client(
        timeout=timeout_s,
        headers=headers or {},
        follow_redirects=True,
        event_hooks={"request": [stay_on_origin]},
    )


@contextmanager
def http_faults(what: str, timeout_s: float, where: str) -> Iterator[None]:
    """Turn httpx faults while talking to `what` into SourceUnavailableError or SourceError."""
    try:
        yield
    except httpx.TimeoutException:
        raise SourceUnavailableError(
            f"{what} did not answer within {timeout_s:g} s", where=where
        ) from None
    except httpx.TransportError as error:
        raise SourceUnavailableError(
            f"cannot reach {what}: {type(error).__name__}", where=where
        ) from None
    except httpx.HTTPError as error:
        raise SourceError(f"cannot read {what}: {first_line(error)}", where=where) from None


def guarded_reader(
    reader: pa.RecordBatchReader,
    errors: tuple[type[BaseException], ...],
    message: str,
    where: str,
) -> pa.RecordBatchReader:
    """`reader` streamed on; one of `errors` midway is a SourceError `<message>: <detail>`."""
    return pa.RecordBatchReader.from_batches(
        reader.schema, _guarded_batches(reader, errors, message, where)
    )


def _guarded_batches(
    reader: pa.RecordBatchReader,
    errors: tuple[type[BaseException], ...],
    message: str,
    where: str,
) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except errors as error:
            raise SourceError(f"{message}: {first_line(error)}", where=where) from None
        yield batch
