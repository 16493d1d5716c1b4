"""Crawling the discovery ports of products that cannot push, and the staleness sweep.

An administrator registers a product's URL (its base URL or its `/discovery` URL). When a
target is due, the crawler reads `/discovery`, every `/discovery/datasets/{name}`,
`/discovery/lineage` and `/ready` at THAT address only (no redirects, no links followed to
other hosts), with timeouts and a size limit on every answer, builds the publication the
product would push and stores it as the subject `crawler:{url}`. Without a crawl token the
product shows its restricted datasets as summaries only: that is what gets published.

Ownership: the store gives a product name to the first subject that published it, and
offers no take-over. A crawled product is owned by `crawler:{url}`; if the product later
pushes with its own credential it is refused (403) until an operator removes the entry.
A crawl that finds a name someone else owns is recorded as `refused`, nothing stored.

Every failure is recorded on the target (`last_status`, `last_error`), never raised. The
sweep marks products not seen for `stale_after_s` stale, for `unreachable_after_s`
unreachable; `CrawlScheduler` runs both in a background thread.

This module runs the crawls; reading a product's discovery port is `crawl_fetch`, the
registered targets are `crawl_targets`.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dataproduct.errors import ConflictError, DataproductError, PermissionDeniedError
from dataproduct.marketplace.crawl_fetch import (
    DATASET_NAME,
    FAILED,
    INVALID,
    OK,
    REFUSED,
    UNREACHABLE,
    CrawlCancelled,
    CrawlFailure,
    DiscoveryReader,
    gather_publication,
)
from dataproduct.marketplace.crawl_targets import (
    MAX_URL_LENGTH,
    CrawlOutcome,
    CrawlTargets,
    target_url,
)
from dataproduct.marketplace.publication import parse_publication
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore, utc

__all__ = [
    "FAILED",
    "INVALID",
    "MAX_URL_LENGTH",
    "OK",
    "REFUSED",
    "UNREACHABLE",
    "CrawlCancelled",
    "CrawlFailure",
    "CrawlOutcome",
    "CrawlScheduler",
    "CrawlTargets",
    "Crawler",
    "DiscoveryReader",
    "gather_publication",
    "target_url",
]

log = logging.getLogger(__name__)


class Crawler:
    """Crawls the registered targets into the store and sweeps stale products."""

    def __init__(
        self,
        store: MarketplaceStore,
        settings: MarketplaceSettings,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.targets = CrawlTargets(store)
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._client = httpx.Client(
            timeout=settings.crawl_timeout_s, follow_redirects=False, transport=transport
        )
        self._reader = DiscoveryReader(settings, self.cancelled, self._client)

    def crawl(self, url: str, *, now: datetime | None = None) -> CrawlOutcome:
        """Crawl one registered target now and record the outcome."""
        moment = utc(now or datetime.now(UTC))
        key = self.targets.get(url)["url"]
        with self._lock:
            outcome = self._crawl(key, moment)
            self.targets.record(outcome, moment)
        return outcome

    def crawl_due(self, *, now: datetime | None = None) -> list[CrawlOutcome]:
        """Crawl every target due at `now`."""
        moment = utc(now or datetime.now(UTC))
        return [self.crawl(url, now=moment) for url in self.targets.due(moment)]

    def crawl_all(self, *, now: datetime | None = None) -> list[CrawlOutcome]:
        """Crawl every registered target now, due or not."""
        moment = utc(now or datetime.now(UTC))
        return [self.crawl(target["url"], now=moment) for target in self.targets.all()]

    def sweep(self, *, now: datetime | None = None) -> dict[str, int]:
        """Mark products not seen for a while stale, then unreachable."""
        return self.store.mark_stale(
            timedelta(seconds=self.settings.stale_after_s),
            timedelta(seconds=self.settings.unreachable_after_s),
            now=now,
        )

    def run_once(self, *, now: datetime | None = None) -> None:
        """One tick of the schedule: the due crawls, then the sweep."""
        self.crawl_due(now=now)
        self.sweep(now=now)

    def close(self) -> None:
        """Stop crawling and release the HTTP connections."""
        self.cancelled.set()
        with self._lock:
            self._client.close()

    def _crawl(self, url: str, now: datetime) -> CrawlOutcome:
        document: dict[str, Any] | None = None
        try:
            document = gather_publication(self._reader, url, now)
            publication = parse_publication(document)
            result = self.store.publish(publication, subject=f"crawler:{url}", now=now)
        except CrawlFailure as failure:
            return CrawlOutcome(url, failure.status, error=failure.message)
        except DataproductError as error:
            return CrawlOutcome(
                url, _status_of(error), _claimed_name(document), error=_describe(error)
            )
        except CrawlCancelled:
            raise
        except Exception as error:  # a crawl never takes the marketplace down
            log.exception("crawling %s failed", url)
            return CrawlOutcome(url, FAILED, error=f"{type(error).__name__}: {error}")
        return CrawlOutcome(url, OK, result.product, changed=result.changed)


def _claimed_name(document: Any) -> str | None:
    product = document.get("product") if isinstance(document, dict) else None
    name = product.get("name") if isinstance(product, dict) else None
    return name if isinstance(name, str) and DATASET_NAME.match(name) else None


def _status_of(error: DataproductError) -> str:
    if isinstance(error, PermissionDeniedError):
        return REFUSED
    if isinstance(error, ConflictError) or error.transient or error.status >= 500:
        return FAILED  # worth another try at the next crawl
    return INVALID


def _describe(error: DataproductError) -> str:
    if isinstance(error, PermissionDeniedError):
        return f"{error.message}: another publisher owns this name; nothing stored"
    return error.message


class CrawlScheduler:
    """A background thread: every `interval_s`, the due crawls and the staleness sweep."""

    def __init__(self, crawler: Crawler, interval_s: float) -> None:
        self.crawler = crawler
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (its first tick comes after one interval)."""
        self._thread = threading.Thread(target=self._run, name="marketplace-crawler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop promptly: no new request starts; an answer in flight is awaited at most
        the crawl timeout."""
        self._stopping.set()
        self.crawler.cancelled.set()
        if self._thread is not None:
            self._thread.join(timeout_s or self.crawler.settings.crawl_timeout_s + 5)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.crawler.run_once()
            except CrawlCancelled:
                return
            except Exception:  # the schedule outlives one bad tick
                log.exception("the crawl schedule failed; retrying next tick")
