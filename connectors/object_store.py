"""Objects in S3 or an S3-compatible store (MinIO, Ceph, moto): a prefix or a glob of keys.

Parquet objects are scanned in place with `pyarrow.dataset` over `pyarrow.fs.S3FileSystem`;
CSV, JSON and NDJSON objects are copied one by one into a private temporary folder and read
by DuckDB's own readers, so a file gets the same column types whether it sits on disk or in
a bucket (see `connectors.object_store_reading`). pyarrow reads neither JSON arrays nor
sniffs CSV dialects, so its text readers would give the same file another schema. The copy
costs local disk, never memory.

`ObjectStoreConnector` holds that listing (`connectors.object_store_listing`) and reading
over any pyarrow file system; `S3Connector` (here, with `connectors.object_store_s3` for
the endpoint, credentials and errors) and `AzureBlobConnector` (`connectors.azure_blob`)
supply the store.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import Field

from connectors.object_store_listing import Listing, ObjectSelectionSpec, list_selection
from connectors.object_store_reading import ObjectReads
from connectors.object_store_s3 import S3Access, S3AccessSpec, store_error
from dataproduct.connector import Connector, LoadState
from dataproduct.errors import DataproductError, SourceError
from dataproduct.ingest import FileFormat, format_from_name
from dataproduct.secrets import mask_url


class S3Spec(S3AccessSpec, ObjectSelectionSpec):
    """`{type: s3, bucket: sales, glob: "2026/*.parquet"}`, or a `prefix` of keys."""

    type: Literal["s3"] = "s3"
    bucket: str = Field(min_length=1, pattern=r"^[^/]+$")


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
            reads = ObjectReads(
                fs, listing, self.store(), self.where, self.url, self.translate,
                self.selection.hive_partitioning,
            )  # fmt: skip
            scratch_prefix = f".{self.url_scheme}-{self.name}-"
            opened = (
                reads.parquet()
                if file_format == "parquet"
                else reads.text(file_format, self.context.data_dir, scratch_prefix)
            )
            with opened as reader:
                yield reader
        except DataproductError as error:
            self.secrets.scrub_error(error)
            raise

    def list_objects(self, fs: pafs.FileSystem) -> Listing:
        """The objects matching the prefix or glob, sorted by key."""
        spec = self.selection
        try:
            listing = list_selection(fs, self.root, spec)
        except (OSError, pa.ArrowException) as error:
            raise self.translate(error, self.store()) from None
        if not listing.paths:
            self._check_root(fs)
            shown = f"glob '{spec.glob}'" if spec.glob is not None else f"prefix '{spec.prefix}'"
            raise SourceError(f"no object in {self.store()} matches the {shown}", where=self.where)
        return listing

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
