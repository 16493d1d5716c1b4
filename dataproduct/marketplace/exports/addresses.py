"""Addresses in the marketplace, contract ids and the constants the exports share.

Every URL an export writes into a document comes from here, so the marketplace's URL
layout lives in one place:

- pages: `{base}/products/{product}` and `{base}/products/{product}/datasets/{dataset}`;
- API: `{base}/api/v1/products/{product}/odps`, `.../datasets/{dataset}/odcs`,
  `{base}/api/v1/products/{product}/dcat` and the catalog `{base}/api/v1/dcat`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

Document = Mapping[str, Any]

# The output port's formats: DCAT format label and media type.
FORMATS = {
    "json": ("JSON", "application/json"),
    "ndjson": ("NDJSON", "application/x-ndjson"),
    "csv": ("CSV", "text/csv"),
    "parquet": ("Parquet", "application/vnd.apache.parquet"),
    "arrow": ("Arrow", "application/vnd.apache.arrow.stream"),
}
API_PREFIX = "/api/v1"


def marketplace_root(marketplace_url: str) -> str:
    """The marketplace's base address, without a trailing slash."""
    return marketplace_url.rstrip("/")


def _segment(name: str) -> str:
    return quote(name, safe="")


def product_page(marketplace_url: str, product: str) -> str:
    """The marketplace page of a product."""
    return f"{marketplace_root(marketplace_url)}/products/{_segment(product)}"


def dataset_page(marketplace_url: str, product: str, dataset: str) -> str:
    """The marketplace page of one dataset of a product."""
    return f"{product_page(marketplace_url, product)}/datasets/{_segment(dataset)}"


def area_page(marketplace_url: str, domain: str) -> str:
    """The marketplace page of a business area (its `/` separators kept)."""
    return f"{marketplace_root(marketplace_url)}/areas/{quote(domain, safe='/')}"


def _api(marketplace_url: str) -> str:
    return f"{marketplace_root(marketplace_url)}{API_PREFIX}"


def _product_api(marketplace_url: str, product: str) -> str:
    return f"{_api(marketplace_url)}/products/{_segment(product)}"


def odps_url(marketplace_url: str, product: str) -> str:
    """Where the marketplace serves a product's ODPS document."""
    return f"{_product_api(marketplace_url, product)}/odps"


def odcs_url(marketplace_url: str, product: str, dataset: str) -> str:
    """Where the marketplace serves one dataset's ODCS contract."""
    return f"{_product_api(marketplace_url, product)}/datasets/{_segment(dataset)}/odcs"


def dcat_url(marketplace_url: str, product: str) -> str:
    """Where the marketplace serves the DCAT catalog of one product's datasets."""
    return f"{_product_api(marketplace_url, product)}/dcat"


def catalog_url(marketplace_url: str) -> str:
    """Where the marketplace serves the DCAT catalog of every product."""
    return f"{_api(marketplace_url)}/dcat"


def contract_id(product: str, dataset: str) -> str:
    """The stable id of a dataset's contract: `<product>.<dataset>`."""
    return f"{product}.{dataset}"
