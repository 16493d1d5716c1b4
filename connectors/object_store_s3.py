"""Where an S3-compatible store is, how to sign in to it, and what its errors mean.

Shared by the `s3` connector (`connectors.object_store`) and the `delta` connector
(`connectors.lake`): the spec's endpoint and credentials, resolved once into a pyarrow file
system or delta-rs storage options, and S3 errors translated into ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from pydantic import model_validator

from connectors.errors import (
    NO_BUCKET_CODES,
    error_codes,
    first_line,
    looks_denied,
    looks_throttled,
    looks_unreachable,
)
from dataproduct.connector import SourceSpec
from dataproduct.errors import DataproductError, SourceError, SourceUnavailableError
from dataproduct.secrets import mask_url

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0
MAX_ATTEMPTS = 3  # the core retries transient faults again, with backoff
DEFAULT_REGION = "us-east-1"
NO_BUCKET_WORDS = "bucket does not exist"


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


def store_error(
    error: BaseException, *, store: str, where: str, message: str | None = None
) -> DataproductError:
    """A library error of an object store as SourceError or SourceUnavailableError."""
    text = str(error)
    message = message or first_line(error)
    if looks_unreachable(text) or looks_throttled(text):
        return SourceUnavailableError(f"cannot reach {store}: {message}", where=where)
    if error_codes(text) & NO_BUCKET_CODES or NO_BUCKET_WORDS in text:
        return SourceError(f"the bucket does not exist in {store}: {message}", where=where)
    if looks_denied(text):
        return SourceError(
            f"access denied by {store}: check access_key_id, secret_access_key and "
            f"session_token ({message})",
            where=where,
        )
    return SourceError(f"cannot read from {store}: {message}", where=where)
