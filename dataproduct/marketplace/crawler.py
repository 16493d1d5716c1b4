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
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dataproduct.errors import (
    ConflictError,
    DataproductError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from dataproduct.marketplace.crawl_models import crawl_targets
from dataproduct.marketplace.publication import MAX_DATASETS, NAME_PATTERN, parse_publication
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore, utc

log = logging.getLogger(__name__)

OK, UNREACHABLE, INVALID, REFUSED, FAILED = "ok", "unreachable", "invalid", "refused", "error"
MAX_URL_LENGTH = 500
_DATASET_NAME = re.compile(NAME_PATTERN)


class CrawlFailure(Exception):
    """One crawl went wrong: `status` says how (unreachable, invalid, refused, error)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CrawlCancelled(Exception):
    """The crawler is shutting down."""


@dataclass(frozen=True)
class CrawlOutcome:
    """What one crawl of a target did."""

    url: str
    status: str
    product: str | None = None
    changed: bool = False
    error: str | None = None


def target_url(raw: str) -> str:
    """The product's base URL from a registered URL; `ValidationError` if unusable."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{raw!r} is not an http(s) URL", where="url")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError("the URL may not carry a query, fragment or credentials", where="url")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/discovery")
    url = urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"the URL is longer than {MAX_URL_LENGTH} characters", where="url")
    return url


class CrawlTargets:
    """The registered URLs and what their last crawl found, in the store's database."""

    def __init__(self, store: MarketplaceStore) -> None:
        self.engine = store.engine

    def add(self, url: str, interval_s: float, added_by: str, *, now: datetime) -> dict[str, Any]:
        """Register `url` (normalised), due at once; `ConflictError` if already there."""
        url = target_url(url)
        values = {"url": url, "interval_s": interval_s, "added_by": added_by}
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(crawl_targets).values(**values, added_at=now, next_due_at=now)
                )
        except IntegrityError as error:
            raise ConflictError(f"{url} is already registered", where="url") from error
        return self.get(url)

    def get(self, url: str) -> dict[str, Any]:
        """One target; `NotFoundError` if not registered."""
        query = select(crawl_targets).where(crawl_targets.c.url == _lookup(url))
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise NotFoundError(f"no crawl target {url!r}", where="url")
        return _view(row._mapping)

    def all(self) -> list[dict[str, Any]]:
        """Every target, by URL."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(crawl_targets).order_by(crawl_targets.c.url))
            return [_view(row._mapping) for row in rows]

    def remove(self, url: str) -> str:
        """Forget a target (its product entry stays and goes stale); its URL."""
        key = _lookup(url)
        with self.engine.begin() as connection:
            deleted = connection.execute(delete(crawl_targets).where(crawl_targets.c.url == key))
        if deleted.rowcount == 0:
            raise NotFoundError(f"no crawl target {url!r}", where="url")
        return key

    def due(self, now: datetime) -> list[str]:
        """The URLs whose next crawl is due at `now`, the longest waiting first."""
        query = (
            select(crawl_targets.c.url)
            .where(crawl_targets.c.next_due_at <= now)
            .order_by(crawl_targets.c.next_due_at, crawl_targets.c.url)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def record(self, outcome: CrawlOutcome, now: datetime) -> None:
        """Keep what a crawl found and schedule the next one."""
        with self.engine.begin() as connection:
            interval = connection.execute(
                select(crawl_targets.c.interval_s).where(crawl_targets.c.url == outcome.url)
            ).scalar_one_or_none()
            if interval is None:  # removed while it was being crawled
                return
            values: dict[str, Any] = {
                "last_crawled_at": now,
                "last_status": outcome.status,
                "last_error": outcome.error,
                "next_due_at": now + timedelta(seconds=interval),
            }
            if outcome.product is not None:
                values["product"] = outcome.product
            connection.execute(
                update(crawl_targets).where(crawl_targets.c.url == outcome.url).values(**values)
            )


def _lookup(url: str) -> str:
    try:
        return target_url(url)
    except ValidationError:
        return url


def _view(row: Any) -> dict[str, Any]:
    view = dict(row)
    for field in ("added_at", "last_crawled_at", "next_due_at"):
        if view[field] is not None:
            view[field] = utc(view[field])
    return view


class DiscoveryReader:
    """Reads JSON from one product's address: bounded in time and size, no redirects."""

    def __init__(
        self, settings: MarketplaceSettings, cancelled: threading.Event, client: httpx.Client
    ) -> None:
        self.max_bytes = settings.crawl_max_bytes
        self.cancelled = cancelled
        self.client = client
        self.headers = {"Accept": "application/json"}
        if settings.crawl_token:
            self.headers["Authorization"] = f"Bearer {settings.crawl_token}"

    def get(self, url: str) -> tuple[int, Any]:
        """The status and parsed JSON body of `GET url`; `CrawlFailure` when unusable."""
        if self.cancelled.is_set():
            raise CrawlCancelled
        try:
            with self.client.stream("GET", url, headers=self.headers) as response:
                body = self._read(url, response)
                status = response.status_code
        except httpx.TimeoutException as error:
            raise CrawlFailure(UNREACHABLE, f"{url}: no answer in time ({error})") from None
        except httpx.HTTPError as error:
            raise CrawlFailure(UNREACHABLE, f"{url}: {type(error).__name__}: {error}") from None
        try:
            return status, json.loads(body)
        except ValueError:
            if status >= 500:
                raise CrawlFailure(UNREACHABLE, f"{url}: answered {status}") from None
            raise CrawlFailure(INVALID, f"{url}: answered {status} with no JSON") from None

    def document(self, url: str) -> dict[str, Any]:
        """A JSON object answered with 200; anything else is a `CrawlFailure`."""
        status, body = self.get(url)
        if status >= 500:
            raise CrawlFailure(UNREACHABLE, f"{url}: answered {status}")
        if status != 200:
            raise CrawlFailure(INVALID, f"{url}: answered {status}: {_error_text(body)}")
        if not isinstance(body, dict):
            raise CrawlFailure(INVALID, f"{url}: the answer is not a JSON object")
        return body

    def _read(self, url: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise CrawlFailure(INVALID, f"{url}: {declared} bytes, more than {self.max_bytes}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise CrawlFailure(INVALID, f"{url}: the answer is larger than {self.max_bytes}")
        return bytes(body)


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:300]
    return json.dumps(body)[:300]


def gather_publication(reader: DiscoveryReader, base: str, now: datetime) -> dict[str, Any]:
    """The publication of the product at `base`, read from its discovery port."""
    product = reader.document(f"{base}/discovery")
    datasets = {}
    for name in _dataset_names(product, base):
        datasets[name] = reader.document(f"{base}/discovery/datasets/{quote(name, safe='')}")
    return {
        "product": product,
        "datasets": datasets,
        "lineage": reader.document(f"{base}/discovery/lineage"),
        "health": _health(reader, base),
        "published_at": now.isoformat(),
    }


def _dataset_names(product: dict[str, Any], base: str) -> list[str]:
    summaries = product.get("datasets", [])
    if not isinstance(summaries, list) or len(summaries) > MAX_DATASETS:
        raise CrawlFailure(INVALID, f"{base}/discovery: datasets is not a list of datasets")
    names = []
    for index, summary in enumerate(summaries):
        name = summary.get("name") if isinstance(summary, dict) else None
        if not isinstance(name, str) or not _DATASET_NAME.match(name):
            raise CrawlFailure(INVALID, f"{base}/discovery: datasets.{index}.name is not a name")
        names.append(name)
    return names


def _health(reader: DiscoveryReader, base: str) -> dict[str, Any]:
    try:
        status, body = reader.get(f"{base}/ready")
    except CrawlFailure as failure:
        return {"ready": False, "problems": [failure.message]}
    problems = body.get("problems", []) if isinstance(body, dict) else []
    if status != 200:
        problems = [f"/ready answered {status}: {_error_text(body)}"]
    return {"ready": status == 200, "problems": problems if isinstance(problems, list) else []}


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
    return name if isinstance(name, str) and _DATASET_NAME.match(name) else None


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
