"""Prometheus metrics of one product: requests, latency, rows and bytes served, runs, ingestion.

Request metrics are counted as requests end. Runs and ingested rows are read from `meta`
at scrape time, so they are right after a restart too.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dataproduct.storage import Storage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series are noise

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One registry per product (so several products can live in one process)."""

    def __init__(self, storage: Storage) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dataproduct_http_requests",
            "HTTP requests by port, route, method and status.",
            ["port", "route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dataproduct_http_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["port", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows_served = Counter(
            "dataproduct_rows_served", "Rows returned by the output port.", ["dataset"],
            registry=self.registry,
        )  # fmt: skip
        self.bytes_served = Counter(
            "dataproduct_bytes_served", "Response body bytes by port.", ["port"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_MetaCollector(storage))

    def observe(
        self,
        *,
        port: str,
        route: str,
        method: str,
        status: int,
        seconds: float,
        sent: int,
        dataset: str | None,
        rows: int | None,
    ) -> None:
        """Count one finished request."""
        self.requests.labels(port, route, method, str(status)).inc()
        self.latency.labels(port, route).observe(seconds)
        self.bytes_served.labels(port).inc(sent)
        if dataset and rows:
            self.rows_served.labels(dataset).inc(rows)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


class _MetaCollector(Collector):
    """Runs by outcome and ingested rows by source, from `meta`."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "dataproduct_runs", "Pipeline runs by final status.", labels=["status"]
        )
        ingested = CounterMetricFamily(
            "dataproduct_ingested_rows", "Rows loaded into the input layer.", labels=["source"]
        )
        ingestions = CounterMetricFamily(
            "dataproduct_ingestions",
            "Ingestions by source and status.",
            labels=["source", "status"],
        )
        with self._storage.reader() as cursor:
            for status, count in cursor.execute(
                "SELECT status, count(*) FROM meta.runs GROUP BY ALL ORDER BY ALL"
            ).fetchall():
                runs.add_metric([status], count)
            for source, status, count, rows in cursor.execute(
                "SELECT source, status, count(*), coalesce(sum(rows), 0) FROM meta.ingestions "
                "GROUP BY ALL ORDER BY ALL"
            ).fetchall():
                ingestions.add_metric([source, status], count)
                if status == "succeeded":
                    ingested.add_metric([source], rows)
        yield runs
        yield ingested
        yield ingestions

    def describe(self) -> Iterator[Metric]:
        return iter(())
