"""The azure connector against a real Azure Blob Storage emulator (Azurite) on loopback.

Azurite is an npm package; the session fixture installs it into `build/azurite` (once) with
the machine's npm and starts its blob service on a free loopback port, in memory.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from connectors.azure_blob import AzureBlobConnector
from dataproduct.connector import SourceContext
from dataproduct.errors import DescriptorError, SourceError, SourceUnavailableError
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.conftest import skip_or_fail
from tests.connectors.test_object_store import load, orders, parquet_bytes, write_product
from tests.server.conftest import free_port

AZURITE_DIR = Path(__file__).resolve().parents[2] / "build" / "azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
KEY_ENV = "DP_TEST_AZURE_KEY"


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service and the helpers tests use to fill it."""

    endpoint: str
    account: str = ACCOUNT
    key: str = ACCOUNT_KEY

    def filesystem(self) -> pafs.AzureFileSystem:
        """pyarrow's Azure file system of the emulator (may create containers)."""
        authority = self.endpoint.removeprefix("http://")
        return pafs.AzureFileSystem(
            account_name=self.account, account_key=self.key,
            blob_storage_authority=authority, blob_storage_scheme="http",
            dfs_storage_authority=authority, dfs_storage_scheme="http",
        )  # fmt: skip

    def new_container(self) -> str:
        """A new, empty container with a unique name."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def put(self, container: str, blob: str, data: bytes) -> None:
        """Write one blob."""
        with self.filesystem().open_output_stream(f"{container}/{blob}") as out:
            out.write(data)


def install_azurite() -> None:
    """Install Azurite into `build/azurite` with the machine's npm, unless it is there."""
    if AZURITE_BIN.exists():
        return
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        skip_or_fail("node and npm are needed to run the Azurite emulator")
        return
    AZURITE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [npm, "install", "--prefix", str(AZURITE_DIR), "--no-audit", "--no-fund", "azurite@3"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as error:
        skip_or_fail(f"cannot install Azurite with npm: {error}")
    if not AZURITE_BIN.exists():
        skip_or_fail("npm installed no azurite-blob")


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Return once the emulator accepts connections; skip if it dies or never listens."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            skip_or_fail(f"Azurite exited: {log.read_text(errors='replace')[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    skip_or_fail("Azurite did not listen within 30 s")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service on 127.0.0.1 and a free port, for the whole session."""
    install_azurite()
    folder = tmp_path_factory.mktemp("azurite")
    port = free_port()
    log = folder / "azurite.log"
    command = [
        str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--inMemoryPersistence", "--silent",
        "--skipApiVersionCheck", "--disableTelemetry",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(process, port, log)
        yield Azurite(endpoint=f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    """One container holding every kind of blob the tests read (written once)."""
    name = azurite.new_container()
    put = azurite.put
    put(name, "sales/2026/jan.parquet", parquet_bytes(orders(1, 3, "2026-01-05")))
    put(name, "sales/2026/feb.parquet", parquet_bytes(orders(4, 2, "2026-02-07")))
    put(name, "sales/2025/dec.parquet", parquet_bytes(orders(100, 1, "2025-12-24")))
    put(name, "csv/a.csv", b"id;name;born\n1;Ana;1990-04-01\n2;Bo;1985-11-30\n")
    put(name, "csv/b.csv", b"id;name;born\n3;Cy;2001-01-01\n")
    put(name, "hive/country=DE/part-0.parquet", parquet_bytes(orders(1, 2, "2026-03-01")))
    put(name, "hive/country=FR/part-0.parquet", parquet_bytes(orders(3, 1, "2026-03-02")))
    return name


def connector(tmp_path: Path, server: Azurite, **options: Any) -> AzureBlobConnector:
    """An azure source of the emulator, validated as the descriptor would be."""
    options = {
        "type": "azure",
        "endpoint": server.endpoint,
        "account_name": server.account,
        "account_key": server.key,
        **options,
    }
    spec = AzureBlobConnector.spec_class.model_validate(options)
    return AzureBlobConnector("blobs", spec, SourceContext(tmp_path, tmp_path / "data"))


def test_parquet_glob_reads_only_matching_blobs(
    tmp_path: Path, azurite: Azurite, container: str
) -> None:
    source = connector(tmp_path, azurite, container=container, glob="sales/2026/*.parquet")
    table = load(source, "order_id")
    assert table.column("order_id").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("amount").to_pylist() == [1.5, 3.0, 4.5, 6.0, 7.5]
    assert table.column("day").to_pylist()[-1] == dt.date(2026, 2, 7)


def test_csv_blobs_are_read_like_local_csv(
    tmp_path: Path, azurite: Azurite, container: str
) -> None:
    source = connector(tmp_path, azurite, container=container, prefix="csv/")
    table = load(source, "id")
    assert table.to_pylist() == [
        {"id": 1, "name": "Ana", "born": dt.date(1990, 4, 1)},
        {"id": 2, "name": "Bo", "born": dt.date(1985, 11, 30)},
        {"id": 3, "name": "Cy", "born": dt.date(2001, 1, 1)},
    ]
    assert list(tmp_path.joinpath("data").iterdir()) == []  # the copies are gone


def test_hive_partitions_become_columns(tmp_path: Path, azurite: Azurite, container: str) -> None:
    source = connector(
        tmp_path, azurite, container=container, glob="hive/**/*.parquet", hive_partitioning=True
    )
    table = load(source, "order_id")
    assert table.select(["order_id", "country"]).to_pylist() == [
        {"order_id": 1, "country": "DE"},
        {"order_id": 2, "country": "DE"},
        {"order_id": 3, "country": "FR"},
    ]


def test_wrong_key_is_refused_without_showing_it(
    tmp_path: Path, azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "V3Jvbmcga2V5IGZvciB0aGUgdGVzdCBhY2NvdW50IDEyMzQ1Njc4OTA="
    monkeypatch.setenv(KEY_ENV, wrong)
    source = connector(
        tmp_path, azurite, container=container, prefix="sales/", account_key=f"${{env:{KEY_ENV}}}"
    )
    with pytest.raises(SourceError) as caught:
        load(source)
    assert not isinstance(caught.value, SourceUnavailableError)
    assert "access denied" in caught.value.message
    assert "AuthorizationFailure" in caught.value.message
    assert wrong not in str(caught.value.to_dict())
    assert wrong not in json.dumps(source.describe())


def test_missing_container(tmp_path: Path, azurite: Azurite) -> None:
    source = connector(tmp_path, azurite, container="no-such-container-0000", prefix="x/")
    with pytest.raises(SourceError, match="container does not exist") as caught:
        load(source)
    assert not caught.value.transient
    assert caught.value.where == "sources.blobs.container"


def test_no_matching_blob(tmp_path: Path, azurite: Azurite, container: str) -> None:
    source = connector(tmp_path, azurite, container=container, glob="sales/2030/*.parquet")
    with pytest.raises(SourceError, match=rf"no object in az://{container} .* glob 'sales/2030/"):
        load(source)


def test_corrupt_parquet_blob_is_named(tmp_path: Path, azurite: Azurite) -> None:
    name = azurite.new_container()
    azurite.put(name, "p/0-good.parquet", parquet_bytes(orders(1, 5, "2026-01-01")))
    azurite.put(name, "p/1-bad.parquet", b"PAR1 not really parquet")
    with pytest.raises(SourceError, match=rf"az://{name}/p/1-bad.parquet"):
        load(connector(tmp_path, azurite, container=name, prefix="p/"))


@pytest.mark.slow
def test_unreachable_endpoint_is_transient(tmp_path: Path, azurite: Azurite) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    source = connector(tmp_path, azurite, container="c", prefix="x/", endpoint=closed)
    with pytest.raises(SourceUnavailableError, match=f"cannot reach az://c .* at {closed}"):
        load(source)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"prefix": "a/", "glob": "*.csv"}, "either prefix or glob"),
        ({"container": "a/b"}, "container"),
        ({"account_name": "Not-Valid"}, "account_name"),
        ({"bucket": "x"}, "bucket"),
    ],
)
def test_invalid_spec_is_refused(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        AzureBlobConnector.spec_class.model_validate(
            {"type": "azure", "account_name": "acct", "container": "c", **options}
        )


def test_ingest_azure_source_through_a_product(
    tmp_path: Path,
    azurite: Azurite,
    container: str,
    settings: DataproductSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Needs the `azure` entry point (connectors.azure_blob:AzureBlobConnector) installed."""
    monkeypatch.setenv(KEY_ENV, azurite.key)
    source = {
        "type": "azure", "account_name": azurite.account, "account_key": f"${{env:{KEY_ENV}}}",
        "container": container, "glob": "hive/**/*.parquet", "hive_partitioning": True,
        "endpoint": azurite.endpoint,
    }  # fmt: skip
    product = write_product(tmp_path / "product", {"orders": source})
    try:
        runtime = ProductRuntime.open(product, settings)
    except DescriptorError as error:
        if "unknown connector type 'azure'" in error.message:
            pytest.fail("register the entry point azure = connectors.azure_blob:AzureBlobConnector")
        raise
    try:
        [ingestion] = runtime.ingest("orders", principal="test")
        assert ingestion.status == "succeeded" and ingestion.rows == 3
        with runtime.storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT order_id, amount, day, country FROM input.orders ORDER BY order_id"
            ).fetchall()
        assert rows == [
            (1, 1.5, dt.date(2026, 3, 1), "DE"),
            (2, 3.0, dt.date(2026, 3, 1), "DE"),
            (3, 4.5, dt.date(2026, 3, 2), "FR"),
        ]
        shown = json.dumps(runtime.source("orders").describe())
        assert azurite.key not in shown and shown.count(container) == 1
    finally:
        runtime.close()
