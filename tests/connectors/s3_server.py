"""A real S3-compatible server (moto) on a free loopback port, for the whole test session.

    from tests.connectors.s3_server import S3Server, s3_server

`s3_server` is session-scoped: one server, a fresh bucket per test (`new_bucket`).
moto accepts any credentials unless authentication is switched on; `enforced_credentials`
creates an IAM user with an access key, turns authentication on for the duration of the
block (moto's `/moto-api/reset-auth`), then off again.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow.fs as pafs
import pytest

from tests.server.conftest import free_port

REGION = "us-east-1"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    """A running moto server and the helpers tests use to fill it."""

    endpoint: str
    region: str = REGION
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's S3 file system for this server (may create buckets)."""
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
            allow_bucket_creation=True,
        )

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of this server."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """A new, empty bucket with a unique name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write one object."""
        with self.filesystem().open_output_stream(f"{bucket}/{key}") as out:
            out.write(data)

    def storage_options(self) -> dict[str, str]:
        """delta-rs options for this server (with unsafe rename, for writes in tests)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        }

    def set_auth(self, enforced: bool) -> None:
        """Switch moto's signature and IAM checks on or off, from the next request."""
        response = httpx.post(
            f"{self.endpoint}/moto-api/reset-auth",
            content=b"0" if enforced else b"inf",
            headers={"Content-Type": "text/plain"},
        )
        response.raise_for_status()

    @contextmanager
    def enforced_credentials(self) -> Iterator[tuple[str, str]]:
        """An IAM user allowed s3:* and its (key id, secret); only valid keys pass inside."""
        iam = self.client("iam")
        user = f"reader-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(ALLOW_ALL))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.set_auth(True)
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self.set_auth(False)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 and a free port, for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
