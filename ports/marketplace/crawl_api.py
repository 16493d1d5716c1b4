"""Crawl targets: discovery URLs the marketplace crawls for products that cannot push.

Marketplace administrators only (a credential with the scope `marketplace:admin`, or a
member of one of the `admin_groups`): register, list, remove, and crawl now.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from dataproduct.errors import PermissionDeniedError
from dataproduct.marketplace.crawler import Crawler, CrawlScheduler
from dataproduct.marketplace.settings import ADMIN_SCOPE, MarketplaceSettings
from dataproduct.security import Principal
from ports.marketplace.api import authenticate, settings_of, store_of

router = APIRouter(prefix="/api/v1", tags=["crawler"])


def administrator(request: Request, caller: Annotated[Principal, Depends(authenticate)]) -> str:
    """The caller's subject if it administers the marketplace (403 otherwise)."""
    admin_groups = set(settings_of(request).admin_groups)
    if ADMIN_SCOPE not in caller.scopes and not caller.groups & admin_groups:
        raise PermissionDeniedError(
            f"crawl targets are for marketplace administrators (scope {ADMIN_SCOPE})",
            where="scope",
        )
    return caller.subject


Admin = Annotated[str, Depends(administrator)]


def crawler_of(request: Request) -> Crawler:
    """The app's crawler (made on first use when the lifespan did not start one)."""
    crawler: Crawler | None = getattr(request.app.state, "crawler", None)
    if crawler is None:
        crawler = Crawler(store_of(request), settings_of(request))
        request.app.state.crawler = crawler
    return crawler


def start_crawler(app: FastAPI) -> CrawlScheduler:
    """Make the app's crawler and start its schedule; call `.stop()` on shutdown."""
    settings: MarketplaceSettings = app.state.settings
    crawler = Crawler(app.state.store, settings)
    app.state.crawler = crawler
    scheduler = CrawlScheduler(crawler, settings.sweep_interval_s)
    scheduler.start()
    return scheduler


def stop_crawler(app: FastAPI, scheduler: CrawlScheduler) -> None:
    """Stop the schedule and close the crawler's connections."""
    scheduler.stop()
    scheduler.crawler.close()


class NewTarget(BaseModel):
    """A discovery URL to crawl, and how often (seconds; the default setting if absent)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=500)
    interval_s: float | None = Field(default=None, ge=1, le=7 * 86400)


@router.post("/crawl-targets", status_code=201)
def add_target(target: NewTarget, request: Request, admin: Admin) -> dict[str, Any]:
    """Register a product's discovery URL; it is due at once."""
    interval = target.interval_s or settings_of(request).crawl_interval_s
    now = datetime.now(UTC)
    return crawler_of(request).targets.add(target.url, interval, admin, now=now)


@router.get("/crawl-targets")
def list_targets(request: Request, admin: Admin) -> dict[str, Any]:
    """Every target with what its last crawl found."""
    return {"targets": crawler_of(request).targets.all()}


@router.post("/crawl-targets/crawl")
def crawl_now(
    request: Request,
    admin: Admin,
    url: Annotated[str | None, Body(embed=True)] = None,
) -> dict[str, Any]:
    """Crawl one target (`{"url": ...}`) or every target now, due or not."""
    crawler = crawler_of(request)
    outcomes = [crawler.crawl(url)] if url else crawler.crawl_all()
    return {"results": [asdict(outcome) for outcome in outcomes]}


@router.delete("/crawl-targets/{target:path}")
def remove_target(target: str, request: Request, admin: Admin) -> dict[str, Any]:
    """Forget a target (its URL, url-encoded); the product's entry stays and goes stale."""
    return {"deleted": crawler_of(request).targets.remove(target)}
