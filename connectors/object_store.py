"""Objects in S3 or an S3-compatible store (MinIO, Ceph, moto): a prefix or a glob of keys.

Parquet objects are scanned in place with `pyarrow.dataset` over `pyarrow.fs.S3FileSystem`:
row groups are fetched with ranged reads and streamed as record batches, several objects at
a time. CSV, JSON and NDJSON objects are copied one by one into a private temporary folder
and read by DuckDB's own readers (`dataproduct.ingest.file_reader`), exactly as the `file`
connector and the input port read them: the same CSV dialect sniffing, JSON arrays as well
as NDJSON, and the same column types whether a file sits on disk or in a bucket. pyarrow
reads neither JSON arrays nor sniffs CSV dialects, so its text readers would give the same
file another schema. The copy costs local disk, never memory.

`ObjectStoreConnector` holds that listing and reading over any pyarrow file system;
`S3Connector` (here) and `AzureBlobConnector` (`connectors.azure_blob`) supply the store.
"""

from __future__ import annotations

import re
import tempfile
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from pydantic import Field, model_validator

from dataproduct.connector import Connector, LoadState, SourceSpec
from dataproduct.errors import DataproductError, SourceError, SourceUnavailableError
from dataproduct.ingest import BATCH_ROWS, FileFormat, file_reader, format_from_name
from dataproduct.secrets import mask_url

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0
MAX_ATTEMPTS = 3  # the core retries transient faults again, with backoff
DEFAULT_REGION = "us-east-1"
WILDCARDS = re.compile(r"[*?\[]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
_UNREACHABLE = (
    "NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
    "error sending request", "timed out", "Timeout", "SERVICE_UNAVAILABLE", "SLOW_DOWN",
    "INTERNAL_FAILURE", "THROTTLING", "connection reset", "Connection reset",
)  # fmt: skip
_DENIED = (
    "ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "Forbidden",
    "403",
)  # fmt: skip
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist")


class S3AccessSpec(SourceSpec):
    """Where an S3-compatible store is and how to sign in to it.

    `endpoint` (e.g. `http://127.0.0.1:9000`) is for S3-compatible servers; without it, AWS.
    The keys may be `${env:NAME}` or `${file:/path}` references. Without keys and without
    `anonymous`, the usual AWS chain (environment, profile, instance role) is used.
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    anonymous: bool = False

    @model_validator(mode="after")
    def _credentials(self) -> S3AccessSpec:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        if self.anonymous and self.access_key_id is not None:
            raise ValueError("anonymous access takes no access_key_id or secret_access_key")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        return self

    def shown(self) -> dict[str, Any]:
        """What discovery may show of the store (never a key)."""
        found: dict[str, Any] = {}
        if self.endpoint:
            found["endpoint"] = mask_url(self.endpoint)
        if self.region:
            found["region"] = self.region
        if self.anonymous:
            found["anonymous"] = True
        return found


@dataclass(frozen=True)
class S3Access:
    """Resolved options of an S3 store: secrets read, endpoint split."""

    scheme: str | None
    host: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    anonymous: bool

    @classmethod
    def resolve(cls, spec: S3AccessSpec, secret: Callable[[str], str]) -> S3Access:
        """Read the credentials (through the connector's `secret`) and split the endpoint."""
        scheme = host = None
        if spec.endpoint:
            parts = urlsplit(
                spec.endpoint if "://" in spec.endpoint else f"https://{spec.endpoint}"
            )
            scheme, host = parts.scheme, parts.netloc + parts.path.rstrip("/")
        region = spec.region or (DEFAULT_REGION if spec.endpoint else None)

        def read(value: str | None) -> str | None:
            return None if value is None else secret(value)

        return cls(
            scheme, host, region, read(spec.access_key_id), read(spec.secret_access_key),
            read(spec.session_token), spec.anonymous,
        )  # fmt: skip

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint as a URL, if one is set."""
        return f"{self.scheme}://{self.host}" if self.host else None

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow S3 file system with short connect timeouts and few retries."""
        options: dict[str, Any] = {
            "anonymous": self.anonymous,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "request_timeout": REQUEST_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
        }
        if self.host:
            options |= {"endpoint_override": self.host, "scheme": self.scheme}
        if self.region:
            options["region"] = self.region
        if self.access_key_id:
            options |= {"access_key": self.access_key_id, "secret_key": self.secret_access_key}
            if self.session_token:
                options["session_token"] = self.session_token
        return pafs.S3FileSystem(**options)

    def storage_options(self) -> dict[str, str]:
        """The same options for delta-rs (object_store) as `AWS_*` keys."""
        found = {"connect_timeout": f"{CONNECT_TIMEOUT_S:g}s", "max_retries": str(MAX_ATTEMPTS)}
        if self.host:
            found["AWS_ENDPOINT_URL"] = f"{self.scheme}://{self.host}"
            found["AWS_ALLOW_HTTP"] = "true" if self.scheme == "http" else "false"
        if self.region:
            found["AWS_REGION"] = self.region
        if self.anonymous:
            found["AWS_SKIP_SIGNATURE"] = "true"
        if self.access_key_id and self.secret_access_key:
            found["AWS_ACCESS_KEY_ID"] = self.access_key_id
            found["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
            if self.session_token:
                found["AWS_SESSION_TOKEN"] = self.session_token
        return found


def clean_message(error: BaseException) -> str:
    """The first line of a library's message, without colour codes or request ids."""
    text = _REQUEST_ID.sub("", _ANSI.sub("", str(error))).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def store_error(
    error: BaseException, *, store: str, where: str, message: str | None = None
) -> DataproductError:
    """A library error of an object store as SourceError or SourceUnavailableError."""
    text = _ANSI.sub("", str(error))
    message = message or clean_message(error)
    if any(mark in text for mark in _UNREACHABLE):
        return SourceUnavailableError(f"cannot reach {store}: {message}", where=where)
    if any(mark in text for mark in _NO_BUCKET):
        return SourceError(f"the bucket does not exist in {store}: {message}", where=where)
    if any(mark in text for mark in _DENIED):
        return SourceError(
            f"access denied by {store}: check access_key_id, secret_access_key and "
            f"session_token ({message})",
            where=where,
        )
    return SourceError(f"cannot read from {store}: {message}", where=where)


@contextmanager
def translated_stream(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    translate: Callable[[Exception], DataproductError],
) -> Iterator[pa.RecordBatchReader]:
    """A reader over `batches` whose failures surface as our own errors.

    An error raised while DuckDB pulls the batches reaches the caller as a DuckDB error; the
    error this reader raised is remembered and raised in its place when the context exits.
    """
    failures: list[DataproductError] = []

    def guarded() -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        except DataproductError as error:
            failures.append(error)
            raise
        except Exception as error:  # noqa: BLE001 - whatever the library raises is translated
            found = translate(error)
            failures.append(found)
            raise found from None

    try:
        yield pa.RecordBatchReader.from_batches(schema, guarded())
    except Exception:
        if failures:
            raise failures[0] from None
        raise


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A key glob as a regex: `*` and `?` stay within one folder, `**` crosses folders."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            inner = pattern[i + 1 : end]
            out.append("[^" + inner[1:] + "]" if inner.startswith("!") else "[" + inner + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def literal_folder(pattern: str) -> str:
    """The leading folders of a key glob that hold no wildcard (where to list from)."""
    folders = pattern.split("/")[:-1]
    fixed: list[str] = []
    for folder in folders:
        if WILDCARDS.search(folder):
            break
        fixed.append(folder)
    return "/".join(fixed)


class ObjectSelectionSpec(SourceSpec):
    """Which objects of a bucket or container a source reads, and how.

    `glob` (e.g. `2026/*.parquet`) or a `prefix` of keys; `format` is csv, json, ndjson or
    parquet (else taken from the keys' extension); `hive_partitioning` adds a column for
    every `key=value/` folder of the keys.
    """

    prefix: str | None = None
    glob: str | None = Field(default=None, min_length=1)
    format: FileFormat | None = None
    hive_partitioning: bool = False

    @model_validator(mode="after")
    def _prefix_or_glob(self) -> ObjectSelectionSpec:
        if self.prefix is not None and self.glob is not None:
            raise ValueError("set either prefix or glob, not both")
        return self

    def shown_selection(self) -> dict[str, Any]:
        """What discovery may show of the selection."""
        found: dict[str, Any] = {"format": self.format}
        if self.glob is not None:
            found["glob"] = self.glob
        else:
            found["prefix"] = self.prefix or ""
        if self.hive_partitioning:
            found["hive_partitioning"] = True
        return found


class S3Spec(S3AccessSpec, ObjectSelectionSpec):
    """`{type: s3, bucket: sales, glob: "2026/*.parquet"}`, or a `prefix` of keys."""

    type: Literal["s3"] = "s3"
    bucket: str = Field(min_length=1, pattern=r"^[^/]+$")


@dataclass(frozen=True)
class Listing:
    """The objects a source reads: paths (`bucket/key`) under `base` (`bucket/folder`)."""

    base: str
    paths: list[str]


class ObjectStoreConnector(Connector):
    """Reads objects of one bucket (or container) of a pyarrow file system.

    Parquet is scanned in place; text formats are copied and read by DuckDB. A store
    supplies its file system, its root (bucket or container), how errors name it and how
    its library errors translate.
    """

    url_scheme: ClassVar[str]
    root_noun: ClassVar[str] = "bucket"

    @property
    def selection(self) -> ObjectSelectionSpec:
        """The spec's selection of objects, typed."""
        assert isinstance(self.spec, ObjectSelectionSpec)
        return self.spec

    @property
    def where(self) -> str:
        """The source's place in the descriptor, for errors."""
        return f"sources.{self.name}"

    @property
    @abstractmethod
    def root(self) -> str:
        """The bucket or container the objects are in."""

    @abstractmethod
    def filesystem(self) -> pafs.FileSystem:
        """The store as a pyarrow file system, credentials read (via `self.secret`)."""

    @abstractmethod
    def store(self) -> str:
        """How errors name the bucket or container (and a custom endpoint)."""

    @abstractmethod
    def translate(self, error: BaseException, store: str) -> DataproductError:
        """A library error of the store as SourceError or SourceUnavailableError."""

    def url(self, path: str) -> str:
        """An object's path (`root/key`) as a URL for messages."""
        return f"{self.url_scheme}://{path}"

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """List the matching objects and stream them; SourceError when none match."""
        return self._stream()

    @contextmanager
    def _stream(self) -> Iterator[pa.RecordBatchReader]:
        try:
            fs = self.filesystem()
            listing = self.list_objects(fs)
            file_format = self.file_format(listing)
            opened = (
                self._parquet(fs, listing)
                if file_format == "parquet"
                else self._text(fs, listing, file_format)
            )
            with opened as reader:
                yield reader
        except DataproductError as error:
            self.secrets.scrub_error(error)
            raise

    def list_objects(self, fs: pafs.FileSystem) -> Listing:
        """The objects matching the prefix or glob, sorted by key."""
        spec = self.selection
        matches: Callable[[str], object]
        if spec.glob is not None:
            folder = literal_folder(spec.glob)
            matches = glob_regex(spec.glob).match
        else:
            prefix = spec.prefix or ""
            folder = prefix.rpartition("/")[0]
            matches = self._prefix_matcher(prefix, folder)
        base = f"{self.root}/{folder}".rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = fs.get_file_info(selector)
        except (OSError, pa.ArrowException) as error:
            raise self.translate(error, self.store()) from None
        start = len(self.root) + 1
        paths = sorted(
            info.path
            for info in infos
            if info.type == pafs.FileType.File and matches(info.path[start:])
        )
        if not paths:
            self._check_root(fs)
            shown = f"glob '{spec.glob}'" if spec.glob is not None else f"prefix '{spec.prefix}'"
            raise SourceError(f"no object in {self.store()} matches the {shown}", where=self.where)
        return Listing(base, paths)

    def _check_root(self, fs: pafs.FileSystem) -> None:
        """SourceError when the bucket itself is missing (an empty listing does not say)."""
        try:
            found = fs.get_file_info(self.root)
        except (OSError, pa.ArrowException) as error:
            raise self.translate(error, self.store()) from None
        if found.type == pafs.FileType.NotFound:
            raise SourceError(
                f"the {self.root_noun} does not exist in {self.store()}",
                where=f"{self.where}.{self.root_noun}",
            )

    @staticmethod
    def _prefix_matcher(prefix: str, folder: str) -> Callable[[str], object]:
        """Keys under the prefix, skipping hidden ones (`_SUCCESS`, `.tmp/`, `_delta_log/`)."""
        skip = len(folder) + 1 if folder else 0

        def matches(key: str) -> bool:
            parts = key[skip:].split("/")
            return key.startswith(prefix) and not any(p.startswith(("_", ".")) for p in parts)

        return matches

    def file_format(self, listing: Listing) -> FileFormat:
        """The declared format, else the one every object's extension implies."""
        spec = self.selection
        if spec.format:
            return spec.format
        found = {format_from_name(path) for path in listing.paths}
        if len(found) == 1 and (only := found.pop()) is not None:
            return only
        raise SourceError(
            f"cannot tell the format of the objects in {self.store()}: set 'format'",
            where=f"{self.where}.format",
        )

    def _parquet(
        self, fs: pafs.FileSystem, listing: Listing
    ) -> AbstractContextManager[pa.RecordBatchReader]:
        def translate(error: Exception) -> DataproductError:
            return self._object_error(fs, listing, error)

        try:
            dataset = ds.dataset(
                listing.paths,
                filesystem=fs,
                format="parquet",
                partitioning=ds.partitioning(flavor="hive")
                if self.selection.hive_partitioning
                else None,
                partition_base_dir=listing.base,
            )
            scanner = dataset.scanner(batch_size=BATCH_ROWS, use_threads=True)
        except (OSError, pa.ArrowException) as error:
            raise translate(error) from None
        return translated_stream(scanner.projected_schema, scanner.to_batches(), translate)

    def _object_error(
        self, fs: pafs.FileSystem, listing: Listing, error: Exception
    ) -> DataproductError:
        """The error of a Parquet scan, naming the object that failed."""
        found = self.translate(error, self.store())
        if found.transient:
            return found
        named = next((p for p in listing.paths if p in str(error)), None)
        named = named or _first_unreadable(fs, listing.paths)
        if named is None:
            return found
        return SourceError(
            f"cannot read the Parquet object {self.url(named)}: {clean_message(error)}",
            where=f"{self.where}: {self.url(named)}",
        )

    @contextmanager
    def _text(
        self, fs: pafs.FileSystem, listing: Listing, file_format: FileFormat
    ) -> Iterator[pa.RecordBatchReader]:
        scratch = self.context.data_dir
        scratch.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.url_scheme}-{self.name}-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=scratch) as folder:
            local = self._download(fs, listing, Path(folder))
            options = {"hive_partitioning": self.selection.hive_partitioning}

            def translate(error: Exception) -> DataproductError:
                return self._text_error(error, listing, local, file_format, options)

            try:
                with (
                    file_reader(local, file_format, options) as reader,
                    translated_stream(reader.schema, reader, translate) as translated,
                ):
                    yield translated
            except SourceError as error:
                if error.where and folder in error.where:  # raised by file_reader itself
                    raise translate(error) from None
                raise

    def _text_error(
        self,
        error: Exception,
        listing: Listing,
        local: list[str],
        file_format: FileFormat,
        options: dict[str, Any],
    ) -> SourceError:
        """A DuckDB reader error naming the object (by its store URL) that failed."""
        text = f"{error.__context__ or ''}\n{error}"
        bad = next((path for path in local if path in text), None)
        if bad is None:
            bad = (
                local[0] if len(local) == 1 else _first_unreadable_text(local, file_format, options)
            )
        message = _csv_reason(text) or clean_message(error).removeprefix(
            f"cannot read {file_format}: "
        )
        for path, remote in zip(local, listing.paths, strict=True):
            message = message.replace(path, self.url(remote))
        if bad is None:
            return SourceError(f"cannot read {file_format}: {message}", where=self.where)
        remote = self.url(listing.paths[local.index(bad)])
        return SourceError(
            f"cannot read the {file_format} object {remote}: {message}",
            where=f"{self.where}: {remote}",
        )

    def _download(self, fs: pafs.FileSystem, listing: Listing, folder: Path) -> list[str]:
        """Copy the objects into `folder`, keeping their folders under the base."""
        local: list[str] = []
        start = len(listing.base) + 1
        for path in listing.paths:
            target = folder / path[start:]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                pafs.copy_files(
                    path, str(target), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )  # fmt: skip
            except (OSError, pa.ArrowException) as error:
                raise self.translate(error, self.url(path)) from None
            local.append(str(target))
        return local


class S3Connector(ObjectStoreConnector):
    """Reads objects of one S3 bucket: Parquet in place, text formats through DuckDB."""

    spec_class = S3Spec
    url_scheme = "s3"

    @property
    def s3_spec(self) -> S3Spec:
        """The spec, typed."""
        assert isinstance(self.spec, S3Spec)
        return self.spec

    @property
    def root(self) -> str:
        """The bucket."""
        return self.s3_spec.bucket

    def filesystem(self) -> pafs.FileSystem:
        """pyarrow's S3 file system with the source's endpoint and credentials."""
        return S3Access.resolve(self.s3_spec, self.secret).filesystem()

    def store(self) -> str:
        """How errors name the bucket (and the endpoint, if not AWS)."""
        spec = self.s3_spec
        at = f" at {mask_url(spec.endpoint)}" if spec.endpoint else ""
        return f"s3://{spec.bucket}{at}"

    def translate(self, error: BaseException, store: str) -> DataproductError:
        """An S3 error as SourceError (denied, no bucket) or SourceUnavailableError."""
        return store_error(error, store=store, where=self.where)

    def describe(self) -> dict[str, Any]:
        """Type, mode, bucket, prefix or glob, format, endpoint and region; never keys."""
        spec = self.s3_spec
        found = {**super().describe(), "bucket": spec.bucket}
        return found | spec.shown_selection() | spec.shown()


def _first_unreadable(fs: pafs.FileSystem, paths: list[str]) -> str | None:
    """The first object whose Parquet footer or pages cannot be read (after a failed scan)."""
    for path in paths:
        try:
            for _ in ds.dataset(path, filesystem=fs, format="parquet").to_batches():
                pass
        except (OSError, pa.ArrowException):
            return path
    return None


def _first_unreadable_text(
    paths: list[str], file_format: FileFormat, options: dict[str, Any]
) -> str | None:
    """The first local copy DuckDB cannot read on its own (after a failed read of all)."""
    for path in paths:
        try:
            with file_reader(path, file_format, options) as reader:
                for _ in reader:
                    pass
        except (SourceError, duckdb.Error):
            return path
    return None


def _csv_reason(text: str) -> str | None:
    """DuckDB's CSV error line and its reason (never the offending line: it may hold data)."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "CSV Error on Line" in line:
            reasons = [r for r in lines[i + 1 : i + 3] if not r.startswith("Original Line")]
            return f"{line.split('Error: ', 1)[-1]}: {reasons[0]}" if reasons else line
    return None
