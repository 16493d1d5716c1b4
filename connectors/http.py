"""An HTTP endpoint: CSV, JSON, NDJSON or Parquet bodies, with pagination.

Each response body streams to a temporary file next to the product's data; DuckDB's native
readers then stream the files as Arrow batches, so memory stays bounded whatever the size
of the answer. A JSON body that wraps its records (`records_path: result.items`) is
unwrapped by DuckDB too, never as Python lists.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urljoin

import duckdb
import httpx
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from sqlglot import exp

from connectors.errors import first_line
from connectors.http_common import (
    check_same_origin,
    guarded_reader,
    http_faults,
    origin_of,
    same_origin_client,
    shown_url,
)
from dataproduct.connector import Connector, LoadState, SourceSpec
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.ingest import BATCH_ROWS, FileFormat, file_reader, format_from_name

JSON_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
MAX_OBJECT_BYTES = 2**32 - 1  # DuckDB's largest maximum_object_size
_MEDIA_FORMATS: dict[str, FileFormat] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/json": "json",
    "text/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}


class PagePagination(BaseModel):
    """`{type: page, param: page, start: 1, size_param: per_page, size: 100}`: numbered
    pages until an empty one (or, with `size`, one with fewer rows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["page"] = "page"
    param: str = Field(default="page", min_length=1)
    start: int = 1
    size_param: str | None = None
    size: int | None = Field(default=None, ge=1)


class LinkPagination(BaseModel):
    """`{type: link}`: follow the `Link: <...>; rel="next"` header until there is none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["link"] = "link"


class CursorPagination(BaseModel):
    """`{type: cursor, param: cursor, path: meta.next}`: the next cursor is read from a
    field of the JSON body and sent back as a parameter, until it is null or empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["cursor"] = "cursor"
    param: str = Field(default="cursor", min_length=1)
    path: str = Field(default="next_cursor", pattern=JSON_PATH)


Pagination = Annotated[
    PagePagination | LinkPagination | CursorPagination, Field(discriminator="type")
]


class HttpSpec(SourceSpec):
    """`{type: http, url: https://api.example.com/orders, format: json, ...}`."""

    type: Literal["http"] = "http"
    url: str = Field(min_length=1, pattern=r"^(https?://|\$\{)")
    format: FileFormat | None = None
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    records_path: str | None = Field(default=None, pattern=JSON_PATH)
    timeout_s: float = Field(default=30.0, gt=0)
    pagination: Pagination | None = None
    max_pages: int = Field(default=1000, ge=1)


@dataclass(frozen=True)
class PageRequest:
    """One page to fetch: a URL and its query parameters."""

    url: str
    params: dict[str, str]


class HttpConnector(Connector):
    """Reads an HTTP endpoint, following its pages, through DuckDB's file readers."""

    spec_class = HttpSpec

    @property
    def http_spec(self) -> HttpSpec:
        """The spec, typed."""
        assert isinstance(self.spec, HttpSpec)
        return self.spec

    @property
    def where(self) -> str:
        """Where errors of this source point."""
        return f"sources.{self.name}"

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Download every page to temporary files, then stream their records."""
        return self._stream()

    @contextmanager
    def _stream(self) -> Iterator[pa.RecordBatchReader]:
        downloads = self.context.data_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads, prefix=f"{self.name}-") as folder:
            paths, file_format = self._download(Path(folder))
            with self._records(paths, file_format, folder) as reader:
                yield guarded_reader(
                    reader,
                    (pa.ArrowException, OSError, duckdb.Error),
                    f"malformed {file_format} body from {shown_url(self.http_spec.url)}",
                    self.where,
                )

    # downloading ---------------------------------------------------------------------

    def _download(self, folder: Path) -> tuple[list[Path], FileFormat]:
        """Fetch the pages into `folder`: the files holding records, and their format."""
        spec = self.http_spec
        headers = {name: self.secret(value) for name, value in spec.headers.items()}
        origin_url = self.secret(spec.url)
        request: PageRequest | None = PageRequest(
            origin_url, {k: self.secret(v) for k, v in spec.params.items()}
        )
        page_number = spec.pagination.start if isinstance(spec.pagination, PagePagination) else 0
        paths: list[Path] = []
        file_format = spec.format
        with same_origin_client(
            origin_url, timeout_s=spec.timeout_s, where=self.where, headers=headers
        ) as client:
            for index in range(spec.max_pages):
                assert request is not None
                sent = self._with_page_params(request, page_number + index)
                path = folder / f"page-{index:05d}"
                response = self._fetch(client, sent, path)
                file_format = file_format or self._format_of(response)
                self._check_records_path(file_format)
                keep, request = self._after_page(response, sent, path, file_format, str(folder))
                if keep:
                    paths.append(path)
                if request is None:
                    return paths, file_format
        raise SourceError(
            f"{shown_url(self.http_spec.url)} has more than max_pages={spec.max_pages} "
            "pages; raise max_pages to read them all",
            where=f"{self.where}.max_pages",
        )

    def _check_records_path(self, file_format: FileFormat) -> None:
        if self.http_spec.records_path is not None and file_format != "json":
            raise SourceError(
                f"records_path needs a JSON body, not {file_format}",
                where=f"{self.where}.records_path",
            )

    def _with_page_params(self, request: PageRequest, page_number: int) -> PageRequest:
        pagination = self.http_spec.pagination
        if not isinstance(pagination, PagePagination):
            return request
        params = {**request.params, pagination.param: str(page_number)}
        if pagination.size_param and pagination.size:
            params[pagination.size_param] = str(pagination.size)
        return PageRequest(request.url, params)

    def _fetch(self, client: httpx.Client, request: PageRequest, path: Path) -> httpx.Response:
        """Stream one answer's body to `path`; the (closed) response for its headers."""
        target = httpx.URL(request.url).copy_merge_params(request.params)
        shown = shown_url(str(target))
        with (
            http_faults(shown, self.http_spec.timeout_s, self.where),
            client.stream("GET", target) as response,
        ):
            self._check(response, shown)
            with path.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return response

    def _check(self, response: httpx.Response, shown: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = f"{shown} answered {status} {response.reason_phrase}"
        if status == 429 or status >= 500:
            raise SourceUnavailableError(message, where=self.where)
        if status in (401, 403):
            message += ": the credentials of this source were refused"
        raise SourceError(message, where=f"{self.where}.url")

    def _format_of(self, response: httpx.Response) -> FileFormat:
        """The body's format from its Content-Type, else from the URL's extension."""
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        found = _MEDIA_FORMATS.get(media) or format_from_name(response.url.path)
        if found is None:
            raise SourceError(
                f"cannot tell the format of {shown_url(str(response.url))} "
                f"(Content-Type '{media}'): set 'format'",
                where=f"{self.where}.format",
            )
        return found

    def _after_page(
        self,
        response: httpx.Response,
        sent: PageRequest,
        path: Path,
        file_format: FileFormat,
        folder: str,
    ) -> tuple[bool, PageRequest | None]:
        """Whether the page holds records, and the next page to fetch (None: the last)."""
        pagination = self.http_spec.pagination
        if path.stat().st_size == 0:
            return False, None
        if isinstance(pagination, PagePagination):
            rows = self._count(path, file_format, folder)
            full = pagination.size is None or rows >= pagination.size
            return rows > 0, sent if rows > 0 and full else None
        if isinstance(pagination, LinkPagination):
            link = response.links.get("next", {}).get("url")
            return True, self._next_link(response, link) if link else None
        if isinstance(pagination, CursorPagination):
            cursor = self._json_field(path, pagination.path, folder)
            if not cursor:
                return True, None
            return True, PageRequest(sent.url, {**sent.params, pagination.param: cursor})
        return True, None

    def _next_link(self, response: httpx.Response, link: str) -> PageRequest:
        """The page a `rel=next` link names, if it stays on the origin of the source's URL."""
        target = urljoin(str(response.url), link)
        origin = origin_of(self.secret(self.http_spec.url))
        check_same_origin(target, origin, "a next-page link", f"{self.where}.pagination")
        return PageRequest(target, {})

    # reading -------------------------------------------------------------------------

    @contextmanager
    def _records(
        self, paths: list[Path], file_format: FileFormat, folder: str
    ) -> Iterator[pa.RecordBatchReader]:
        """A reader over the records of the downloaded pages."""
        if not paths:
            yield pa.RecordBatchReader.from_batches(pa.schema([]), iter(()))
            return
        names = [str(p) for p in paths]
        with ExitStack() as stack:
            try:
                if self.http_spec.records_path is None:
                    reader = stack.enter_context(file_reader(names, file_format))
                else:
                    engine = stack.enter_context(self._engine())
                    query = self._wrapped_records(names).sql("duckdb")
                    reader = engine.sql(query).to_arrow_reader(batch_size=BATCH_ROWS)
            except SourceError as error:
                raise self._malformed(error.message, file_format, folder) from None
            except duckdb.Error as error:
                raise self._malformed(first_line(error), file_format, folder) from None
            yield reader

    def _wrapped_records(self, names: list[str]) -> exp.Select:
        """`SELECT rec.* FROM (SELECT unnest(<records_path>) AS rec FROM read_json(...))`."""
        path = self.http_spec.records_path
        assert path is not None
        parts = path.split(".")
        value: exp.Expr = exp.column(parts[0], quoted=True)
        for part in parts[1:]:
            key = exp.Literal.string(part)
            value = exp.Anonymous(this="struct_extract", expressions=[value, key])
        records = exp.Anonymous(this="unnest", expressions=[value])
        inner = exp.select(exp.alias_(records, "rec")).from_(_read_json(names, "read_json"))
        return exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("rec"))).from_(
            inner.subquery("wrapped")
        )

    def _count(self, path: Path, file_format: FileFormat, folder: str) -> int:
        """The number of records in one downloaded page."""
        names = [str(path)]
        if self.http_spec.records_path is not None:
            source: exp.Expr = self._wrapped_records(names).subquery("page")
        else:
            source = _reader_table(names, file_format)
        query = exp.select("count(*)").from_(source).sql("duckdb")
        try:
            with self._engine() as engine:
                found = engine.execute(query).fetchone()
        except duckdb.Error as error:
            raise self._malformed(first_line(error), file_format, folder) from None
        return int(found[0]) if found else 0

    def _json_field(self, path: Path, field: str, folder: str) -> str | None:
        """A field of a JSON body (the next cursor), read by DuckDB, as text."""
        extract = exp.Anonymous(
            this="json_extract_string",
            expressions=[exp.column("json"), exp.Literal.string(f"$.{field}")],
        )
        query = exp.select(extract).from_(_read_json([str(path)], "read_json_objects"))
        try:
            with self._engine() as engine:
                found = engine.execute(query.sql("duckdb")).fetchone()
        except duckdb.Error as error:
            raise self._malformed(first_line(error), "json", folder) from None
        return str(found[0]) if found and found[0] is not None else None

    @contextmanager
    def _engine(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB that reads the downloaded files (never the product's)."""
        engine = duckdb.connect(":memory:")
        try:
            engine.execute("SET enable_progress_bar = false")
            yield engine
        finally:
            engine.close()

    def _malformed(self, detail: str, file_format: FileFormat, folder: str) -> SourceError:
        detail = re.sub(rf"{re.escape(folder)}/page-\d+", "the response body", detail)
        return SourceError(
            f"malformed {file_format} body from {shown_url(self.http_spec.url)}: {detail}",
            where=self.where,
        )

    def describe(self) -> dict[str, Any]:
        """Type, mode, URL (secret parameters masked), format and pagination."""
        spec = self.http_spec
        found = {**super().describe(), "url": shown_url(spec.url), "format": spec.format}
        if spec.pagination is not None:
            found["pagination"] = spec.pagination.type
        if spec.records_path:
            found["records_path"] = spec.records_path
        return found


def _read_json(names: list[str], function: str, json_format: str = "auto") -> exp.Expr:
    """`read_json(['a', 'b'], format='auto', maximum_object_size=...)` for whole documents."""
    largest = max(Path(name).stat().st_size for name in names)
    return exp.Anonymous(
        this=function,
        expressions=[
            exp.Array(expressions=[exp.Literal.string(n) for n in names]),
            exp.EQ(this=exp.column("format"), expression=exp.Literal.string(json_format)),
            exp.EQ(
                this=exp.column("maximum_object_size"),
                expression=exp.Literal.number(min(largest + 1024, MAX_OBJECT_BYTES)),
            ),
        ],
    )


def _reader_table(names: list[str], file_format: FileFormat) -> exp.Expr:
    """DuckDB's reader of a file format, as a table expression."""
    if file_format == "json":
        return _read_json(names, "read_json")
    if file_format == "ndjson":
        return _read_json(names, "read_json", "newline_delimited")
    reader = "read_csv" if file_format == "csv" else "read_parquet"
    files = exp.Array(expressions=[exp.Literal.string(n) for n in names])
    return exp.Anonymous(this=reader, expressions=[files])
