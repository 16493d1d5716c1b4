"""Another data product's output port: one dataset streamed as Arrow IPC.

This is how products compose: a continental product declares
`{type: product, url: http://sales-de:8080, dataset: daily_sales, token: ${env:DE_TOKEN}}`
and reads `GET /output/datasets/daily_sales?format=arrow` batch by batch, never holding the
whole body. With `incremental: {cursor: order_date}` a later pull asks the upstream port for
the rows past the last watermark only (`after_column=order_date&after=<watermark>`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pyarrow as pa
from pydantic import Field, model_validator

from connectors.errors import first_line
from connectors.http_common import (
    guarded_reader,
    http_faults,
    same_origin_client,
    shown_url,
)
from dataproduct.connector import Connector, IncrementalSpec, LoadState, SourceSpec
from dataproduct.errors import DataproductError, SourceError, SourceUnavailableError
from dataproduct.secrets import SecretResolver, mask_url

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
ERROR_BODY_BYTES = 4096  # how much of an error answer is read for its message
PROBE_BODY_BYTES = 1 << 20  # a dataset's discovery document larger than this is not read


class ProductSpec(SourceSpec):
    """`{type: product, url: ..., dataset: ..., token: ${env:...}}`: an upstream product."""

    type: Literal["product"] = "product"
    url: str = Field(min_length=1, pattern=r"^(https?://|\$\{)")
    dataset: str = Field(min_length=1)
    token: str | None = None
    api_key: str | None = None
    version: int | None = Field(default=None, ge=1)
    incremental: IncrementalSpec | None = None
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_credential(self) -> ProductSpec:
        if self.token is not None and self.api_key is not None:
            raise ValueError("give token or api_key, not both")
        return self


class ResponseStream(io.RawIOBase):
    """A read-only file over a streaming HTTP body, for `pyarrow.ipc.open_stream`.

    Only the piece being handed over is held; transport faults become
    SourceUnavailableError (a body cut short may come whole next time).
    """

    def __init__(self, chunks: Iterator[bytes], where: str) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._where = where

    def readable(self) -> bool:
        """Always: this is a body to read."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from the body; 0 at its end."""
        while not self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.HTTPError as error:
                raise SourceUnavailableError(
                    f"the upstream product's answer was cut short: {type(error).__name__}",
                    where=self._where,
                ) from None
            self._pending = memoryview(chunk)
        target = memoryview(buffer).cast("B")
        size = min(len(target), len(self._pending))
        target[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class ProductConnector(Connector):
    """Reads a dataset of another data product through its output port, as Arrow IPC."""

    spec_class = ProductSpec

    @property
    def product_spec(self) -> ProductSpec:
        """The spec, typed."""
        assert isinstance(self.spec, ProductSpec)
        return self.spec

    @property
    def where(self) -> str:
        """Where errors of this source point."""
        return f"sources.{self.name}"

    def dataset_url(self) -> str:
        """The upstream dataset's output-port URL (as declared: references unresolved)."""
        base = self.product_spec.url.rstrip("/")
        return f"{base}/output/datasets/{quote(self.product_spec.dataset, safe='')}"

    def query_params(self, state: LoadState) -> dict[str, str]:
        """Arrow, the version if pinned, and the watermark filter for an incremental pull."""
        params = {"format": "arrow"}
        if self.product_spec.version is not None:
            params["version"] = str(self.product_spec.version)
        incremental = self.product_spec.incremental
        if incremental is not None and state.watermark is not None:
            params["after_column"] = incremental.cursor
            params["after"] = watermark_text(state.watermark)
        return params

    def credential_headers(self) -> dict[str, str]:
        """The Authorization or X-API-Key header, with secret references read."""
        spec = self.product_spec
        if spec.token is not None:
            return {"Authorization": f"Bearer {self.secret(spec.token)}"}
        if spec.api_key is not None:
            return {"X-API-Key": self.secret(spec.api_key)}
        return {}

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Stream the upstream dataset's batches (only those past the watermark, if any)."""
        return self._stream(state)

    @contextmanager
    def _stream(self, state: LoadState) -> Iterator[pa.RecordBatchReader]:
        headers = {"Accept": ARROW_MEDIA_TYPE, **self.credential_headers()}
        url = self.secret(self.dataset_url())
        with ExitStack() as stack:
            client = stack.enter_context(
                same_origin_client(url, timeout_s=self.product_spec.timeout_s, where=self.where)
            )
            response = self._send(client, url, self.query_params(state), headers)
            stack.callback(response.close)
            self._check(response)
            # buffered: Arrow wants every read whole, a body arrives in pieces
            body = io.BufferedReader(ResponseStream(response.iter_bytes(), self.where))
            try:
                reader = pa.ipc.open_stream(body)
            except (pa.ArrowException, OSError) as error:
                raise SourceError(
                    f"the upstream answer is not an Arrow stream: {first_line(error)}",
                    where=self.where,
                ) from None
            yield guarded_reader(
                reader,
                (pa.ArrowException, OSError),
                "the upstream Arrow stream is malformed or was cut short",
                self.where,
            )

    def _send(
        self, client: httpx.Client, url: str, params: dict[str, str], headers: dict[str, str]
    ) -> httpx.Response:
        request = client.build_request("GET", url, params=params, headers=headers)
        what = f"the upstream product at {self._shown_url()}"
        with http_faults(what, self.product_spec.timeout_s, self.where):
            return client.send(request, stream=True)

    def _check(self, response: httpx.Response) -> None:
        """SourceError (or SourceUnavailableError) for an answer that is not rows."""
        status = response.status_code
        if status < 400:
            return
        shown = f"{self._shown_url()} answered {status}"
        if status in (401, 403):
            raise SourceError(
                f"{shown}: the upstream product refused the credential of this source "
                f"({_upstream_message(response)})",
                where=self.where,
            )
        if status == 404:
            raise SourceError(
                f"{shown}: no dataset '{self.product_spec.dataset}' there "
                f"({_upstream_message(response)})",
                where=f"{self.where}.dataset",
            )
        if status == 429 or status >= 500:
            raise SourceUnavailableError(
                f"{shown}: {_upstream_message(response)}", where=self.where
            )
        raise SourceError(f"{shown}: {_upstream_message(response)}", where=self.where)

    def _shown_url(self) -> str:
        return shown_url(self.dataset_url())

    def probe(self) -> str | None:
        """The upstream dataset's last run and versions, from its discovery port.

        None when discovery does not answer with them: the poll then pulls, and the pull
        reports what is wrong.
        """
        spec = self.product_spec
        url = self.secret(
            f"{spec.url.rstrip('/')}/discovery/datasets/{quote(spec.dataset, safe='')}"
        )
        headers = {"Accept": "application/json", **self.credential_headers()}
        try:
            with (
                same_origin_client(url, timeout_s=spec.timeout_s, where=self.where) as client,
                client.stream("GET", url, headers=headers) as response,
            ):
                if response.status_code != 200:
                    return None
                body = _head(response, PROBE_BODY_BYTES + 1)
            if len(body) > PROBE_BODY_BYTES:
                return None
            document = json.loads(body)
        except (httpx.HTTPError, ValueError, SourceError):
            return None
        if not isinstance(document, dict) or "run_id" not in document:
            return None
        versions = document.get("versions") or []
        marks = [(v.get("version"), v.get("updated_at")) for v in versions if isinstance(v, dict)]
        return json.dumps([document["run_id"], marks], default=str)

    def describe(self) -> dict[str, Any]:
        """Type, mode, upstream dataset URL and version; never the credential.

        The URL is shown with its `${env:...}` references read (a mesh sets the upstream's
        address that way) and its user and query masked, so a marketplace can link products.
        """
        spec = self.product_spec
        found = {**super().describe(), "url": _shown_address(spec.url), "dataset": spec.dataset}
        if spec.version is not None:
            found["version"] = spec.version
        found["auth"] = "token" if spec.token else "api_key" if spec.api_key else "none"
        return found


def _shown_address(url: str) -> str:
    """The URL with its references read by a resolver of its own (so nothing read here is
    scrubbed from the source's errors), masked; as written when a reference is missing."""
    try:
        return mask_url(SecretResolver("describe").resolve(url))
    except DataproductError:
        return mask_url(url)


def watermark_text(value: Any) -> str:
    """A watermark as the output port's `after` parameter expects it (typed by the port)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        # in UTC: a TIMESTAMP column compares the wall time and ignores the offset
        return value.astimezone(UTC).isoformat()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal | int | str):
        return str(value)
    raise SourceError(f"cannot send a watermark of type {type(value).__name__} upstream")


def _head(response: httpx.Response, limit: int) -> bytes:
    """The body's first chunks, read until they hold at least `limit` bytes (or it ends)."""
    raw = b""
    for chunk in response.iter_bytes():
        raw += chunk
        if len(raw) >= limit:
            break
    return raw


def _upstream_message(response: httpx.Response) -> str:
    """The message of the upstream error body (its stable JSON shape), bounded."""
    try:
        raw = _head(response, ERROR_BODY_BYTES)
    except httpx.HTTPError:
        raw = b""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw[:200].decode("utf-8", errors="replace").strip()
    return str(message) or response.reason_phrase
