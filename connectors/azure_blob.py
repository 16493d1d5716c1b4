"""Blobs in Azure Blob Storage (or the Azurite emulator): a prefix or a glob of blob names.

The same reader as the `s3` connector (`connectors.object_store.ObjectStoreConnector`) over
`pyarrow.fs.AzureFileSystem`: Parquet scanned in place with ranged reads, CSV, JSON and
NDJSON copied to a private temporary folder and read by DuckDB, globs and hive partitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from pydantic import Field

from connectors.errors import (
    DENIED_CODES,
    DENIED_STATUS,
    TRANSIENT_STATUS,
    first_line,
    looks_unreachable,
)
from connectors.object_store import ObjectStoreConnector
from connectors.object_store_listing import ObjectSelectionSpec
from dataproduct.errors import DataproductError, SourceError, SourceUnavailableError
from dataproduct.secrets import mask_url

_AZURE_ERROR = re.compile(r"Azure Error: \[(?P<code>\w*)\] (?P<status>\d{3})?")


class AzureBlobSpec(ObjectSelectionSpec):
    """`{type: azure, account_name: acme, account_key: ${env:AZ_KEY}, container: sales,
    glob: "2026/*.parquet"}`.

    `account_key` may be a `${env:NAME}` or `${file:/path}` reference; without it, the
    default Azure credential chain (environment, managed identity, Azure CLI) is used.
    `endpoint` (e.g. `http://127.0.0.1:10000`) is for emulators such as Azurite, which
    address blobs as `<endpoint>/<account>/<container>/<blob>`.
    """

    type: Literal["azure"] = "azure"
    account_name: str = Field(min_length=1, pattern=r"^[a-z0-9]+$")
    account_key: str | None = Field(default=None, min_length=1)
    container: str = Field(min_length=1, pattern=r"^[^/]+$")
    endpoint: str | None = None


@dataclass(frozen=True)
class AzureEndpoint:
    """An emulator's endpoint split as pyarrow wants it: scheme and `host:port`."""

    scheme: str
    authority: str

    @classmethod
    def parse(cls, endpoint: str) -> AzureEndpoint:
        """`http://127.0.0.1:10000` (a URL without a scheme means https)."""
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        return cls(parts.scheme, parts.netloc)


class AzureBlobConnector(ObjectStoreConnector):
    """Reads blobs of one container: Parquet in place, text formats through DuckDB."""

    spec_class = AzureBlobSpec
    url_scheme = "az"
    root_noun = "container"

    @property
    def azure_spec(self) -> AzureBlobSpec:
        """The spec, typed."""
        assert isinstance(self.spec, AzureBlobSpec)
        return self.spec

    @property
    def root(self) -> str:
        """The container."""
        return self.azure_spec.container

    def filesystem(self) -> pafs.FileSystem:
        """pyarrow's Azure file system for the account, its key read through `secret`."""
        spec = self.azure_spec
        options: dict[str, Any] = {"account_name": spec.account_name}
        if spec.account_key is not None:
            options["account_key"] = self.secret(spec.account_key)
        if spec.endpoint:
            endpoint = AzureEndpoint.parse(spec.endpoint)
            options |= {
                "blob_storage_authority": endpoint.authority,
                "blob_storage_scheme": endpoint.scheme,
                "dfs_storage_authority": endpoint.authority,
                "dfs_storage_scheme": endpoint.scheme,
            }
        try:
            return pafs.AzureFileSystem(**options)
        except (OSError, ValueError) as error:
            raise SourceError(
                f"cannot use the Azure account {spec.account_name}: {first_line(error)}",
                where=self.where,
            ) from None

    def store(self) -> str:
        """How errors name the container (with the account, and the endpoint if custom)."""
        spec = self.azure_spec
        at = f" at {mask_url(spec.endpoint)}" if spec.endpoint else ""
        return f"az://{spec.container} (account {spec.account_name}){at}"

    def translate(self, error: BaseException, store: str) -> DataproductError:
        """An Azure error as SourceError (denied, no container) or SourceUnavailableError."""
        text = str(error)
        message = first_line(error)
        found = _AZURE_ERROR.search(text)
        code, status = (found["code"], int(found["status"] or 0)) if found else ("", 0)
        if code in DENIED_CODES or status in DENIED_STATUS:
            return SourceError(
                f"access denied by {store}: check account_name and account_key ({message})",
                where=self.where,
            )
        if code == "ContainerNotFound":
            return SourceError(
                f"the container does not exist in {store}", where=f"{self.where}.container"
            )
        if status in TRANSIENT_STATUS or looks_unreachable(text):
            return SourceUnavailableError(f"cannot reach {store}: {message}", where=self.where)
        return SourceError(f"cannot read from {store}: {message}", where=self.where)

    def describe(self) -> dict[str, Any]:
        """Type, mode, account, container, prefix or glob, format, endpoint; never the key."""
        spec = self.azure_spec
        found = {
            **super().describe(),
            "account_name": spec.account_name,
            "container": spec.container,
        }
        if spec.endpoint:
            found["endpoint"] = mask_url(spec.endpoint)
        return found | spec.shown_selection()
