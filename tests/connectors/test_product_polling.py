"""Polling another product: the connector's probe of the upstream's last run, and the
poller that pulls only after the upstream ran. Against a real `dataproduct serve`."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.polling import SourcePoller
from tests.connectors.upstream import READER, Country, connector, refresh
from tests.server.conftest import free_port

pytestmark = pytest.mark.server


def test_probe_changes_only_when_the_upstream_runs(tmp_path: Path, country: Country) -> None:
    source = connector(tmp_path, url=country.base, dataset="daily_sales", token=READER)
    first = source.probe()
    assert first is not None
    assert source.probe() == first
    refresh(country)
    assert source.probe() not in (None, first)


def test_probe_of_an_upstream_that_is_down_cannot_tell(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert connector(tmp_path, url=url, dataset="daily_sales").probe() is None


def test_probe_of_an_unknown_dataset_cannot_tell(tmp_path: Path, country: Country) -> None:
    source = connector(tmp_path, url=country.base, dataset="no_such", token=READER)
    assert source.probe() is None


def test_the_poller_pulls_only_after_the_upstream_ran(tmp_path: Path, country: Country) -> None:
    source = connector(tmp_path, url=country.base, dataset="daily_sales", token=READER,
                       poll_s=60)  # fmt: skip
    pulled: list[str] = []
    poller = SourcePoller({"sales_de": source}, pulled.append)
    poller.markers["sales_de"] = source.probe()  # what start() records
    assert poller.poll("sales_de") is False
    refresh(country)
    assert poller.poll("sales_de") is True
    assert pulled == ["sales_de"]
    assert poller.poll("sales_de") is False  # the new state counts as pulled


def test_a_failed_pull_is_tried_again_at_the_next_poll(tmp_path: Path, country: Country) -> None:
    source = connector(tmp_path, url=country.base, dataset="daily_sales", token=READER,
                       poll_s=60)  # fmt: skip
    attempts: list[str] = []

    def failing_pull(name: str) -> None:
        attempts.append(name)
        raise RuntimeError("the load failed")

    poller = SourcePoller({"sales_de": source}, failing_pull)
    poller.markers["sales_de"] = source.probe()
    refresh(country)
    assert poller.poll("sales_de") is True
    assert poller.poll("sales_de") is True  # the marker was not taken: pulled again
    assert attempts == ["sales_de", "sales_de"]


def test_sources_without_poll_are_not_polled(tmp_path: Path, country: Country) -> None:
    source = connector(tmp_path, url=country.base, dataset="daily_sales", token=READER)
    poller = SourcePoller({"sales_de": source}, lambda name: None)
    assert poller._threads == []


def test_describe_shows_the_address_a_mesh_set_but_no_credential(
    tmp_path: Path, country: Country, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_URL_TEST", country.base)
    monkeypatch.setenv("MESH_TOKEN_TEST", READER)
    source = connector(tmp_path, url="${env:MESH_URL_TEST}", dataset="daily_sales",
                       token="${env:MESH_TOKEN_TEST}", poll_s=5)  # fmt: skip
    shown = source.describe()
    assert shown["url"] == country.base
    assert shown["poll_s"] == 5
    assert READER not in str(shown)
    monkeypatch.delenv("MESH_URL_TEST")
    assert source.describe()["url"] == "${env:MESH_URL_TEST}"
