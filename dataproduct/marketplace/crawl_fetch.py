"""Reading one product's discovery port: `/discovery`, every `/discovery/datasets/{name}`,
`/discovery/lineage` and `/ready`, at that address only, bounded in time and size, into
the publication the product would push. Every problem is a `CrawlFailure`.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from dataproduct.marketplace.publication import MAX_DATASETS, NAME_PATTERN
from dataproduct.marketplace.settings import MarketplaceSettings

OK, UNREACHABLE, INVALID, REFUSED, FAILED = "ok", "unreachable", "invalid", "refused", "error"
DATASET_NAME = re.compile(NAME_PATTERN)


class CrawlFailure(Exception):
    """One crawl went wrong: `status` says how (unreachable, invalid, refused, error)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CrawlCancelled(Exception):
    """The crawler is shutting down."""


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
        if not isinstance(name, str) or not DATASET_NAME.match(name):
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
