"""The registered crawl targets and what their last crawl found, in the store's database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dataproduct.errors import ConflictError, NotFoundError, ValidationError
from dataproduct.marketplace.crawl_models import crawl_targets
from dataproduct.marketplace.store import MarketplaceStore, utc

MAX_URL_LENGTH = 500


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
