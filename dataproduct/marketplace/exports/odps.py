"""A published product as an Open Data Product Standard (v1.0.0) document.

Also the reading of a publication that the ODCS and DCAT exports share: its datasets in
order, classified columns, the owner as support channel and team member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dataproduct.marketplace.exports.addresses import (
    Document,
    contract_id,
    dataset_page,
    odcs_url,
    product_page,
)

ODPS_API_VERSION = "v1.0.0"


def odps(publication: Document, marketplace_url: str) -> dict[str, Any]:
    """The product as an Open Data Product Standard (v1.0.0) document."""
    product = publication["product"]
    name = product["name"]
    datasets = ordered_datasets(publication)
    document: dict[str, Any] = {
        "apiVersion": ODPS_API_VERSION,
        "kind": "DataProduct",
        "id": name,
        "name": name,
        "version": product["version"],
        "status": "active",
        "domain": product["domain"],
        "description": _description(product, datasets, marketplace_url),
        "tags": list(product.get("tags") or []),
        "authoritativeDefinitions": [
            {"type": "businessDefinition", "url": product_page(marketplace_url, name)},
        ],
        "inputPorts": _input_ports(product),
        "outputPorts": [_output_port(name, d, marketplace_url) for d in datasets],
        "managementPorts": _management_ports(product),
        "support": support_channels(product, marketplace_url),
        "team": _team(product),
        "customProperties": _product_properties(publication),
    }
    return document


def ordered_datasets(publication: Document) -> list[Document]:
    """The datasets in the order the product lists them, in full where published in full."""
    full: Mapping[str, Document] = publication.get("datasets") or {}
    summaries: Sequence[Document] = publication["product"].get("datasets") or []
    ordered = [full.get(s["name"], s) for s in summaries]
    listed = {s["name"] for s in summaries}
    return ordered + [d for n, d in full.items() if n not in listed]


def is_classified(column: Document) -> bool:
    """Whether a column carries a classification tag (masked without a grant)."""
    return bool(column.get("classification"))


def support_channels(product: Document, marketplace_url: str) -> list[dict[str, str]]:
    """The owner by email and the marketplace page, as ODPS/ODCS support channels."""
    owner = product["owner"]
    return [
        {
            "channel": "owner",
            "url": f"mailto:{owner['email']}",
            "tool": "email",
            "scope": "issues",
            "description": f"{owner['name']}, owner of {product['name']}",
        },
        {
            "channel": "marketplace",
            "url": product_page(marketplace_url, product["name"]),
            "tool": "other",
            "scope": "interactive",
            "description": "Documentation and access requests",
        },
    ]


def owner_member(product: Document) -> dict[str, str]:
    """The product's owner as a team member with the role `owner`."""
    owner = product["owner"]
    return {"username": owner["email"], "name": owner["name"], "role": "owner"}


def custom_properties(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ODPS/ODCS `customProperties`: one entry per value that is not None, in order."""
    return [{"property": k, "value": v} for k, v in values.items() if v is not None]


def _description(
    product: Document, datasets: Sequence[Document], marketplace_url: str
) -> dict[str, str]:
    classified = sorted(
        {c["classification"] for d in datasets for c in d.get("columns") or [] if is_classified(c)}
    )
    limitations = "Reading needs a grant; request access in the marketplace."
    if classified:
        limitations += (
            f" Columns classified {', '.join(classified)} are masked without a grant for that tag."
        )
    return {
        "purpose": (product.get("description") or "").strip() or product["name"],
        "limitations": limitations,
        "usage": (
            f"Read each dataset from the output port ({_port_url(product, 'output')}) "
            f"as JSON, CSV, Parquet or Arrow with a bearer token of scope output:read. "
            f"Request access at {product_page(marketplace_url, product['name'])}."
        ),
    }


def _input_ports(product: Document) -> list[dict[str, Any]]:
    """One input port per source: its name and connector type, never its options."""
    sources: Mapping[str, Document] = product.get("sources") or {}
    return [
        {
            "name": name,
            "version": product["version"],
            "contractId": f"{product['name']}.input.{name}",
            "customProperties": [{"property": "sourceType", "value": str(spec.get("type"))}],
        }
        for name, spec in sources.items()
    ]


def _output_port(product: str, dataset: Document, marketplace_url: str) -> dict[str, Any]:
    name = dataset["name"]
    port: dict[str, Any] = {
        "name": name,
        "description": dataset.get("description") or name,
        "type": "tables",
        "version": str(dataset["version"]),
        "contractId": contract_id(product, name),
        "tags": list(dataset.get("tags") or []),
        "authoritativeDefinitions": [
            {"type": "implementation", "url": dataset["links"]["rows"]},
            {"type": "businessDefinition", "url": dataset_page(marketplace_url, product, name)},
            {"type": "contract", "url": odcs_url(marketplace_url, product, name)},
        ],
    }
    return port


def _management_ports(product: Document) -> list[dict[str, Any]]:
    ports = [
        ("discovery", "discoverability", _port_url(product, "discovery")),
        ("lineage", "dictionary", product.get("lineage")),
        ("control", "control", _port_url(product, "control")),
    ]
    return [
        {"name": name, "content": content, "type": "rest", "url": url}
        for name, content, url in ports
        if url
    ]


def _port_url(product: Document, port: str) -> str | None:
    found = (product.get("ports") or {}).get(port)
    return found.get("url") if found else None


def _team(product: Document) -> dict[str, Any]:
    return {"name": f"{product['name']} team", "members": [owner_member(product)]}


def _product_properties(publication: Document) -> list[dict[str, Any]]:
    product = publication["product"]
    health = publication.get("health") or {}
    values = {
        "businessArea": product["domain"],
        "majorVersion": product.get("major"),
        "schedule": product.get("schedule"),
        "address": product.get("url"),
        "ready": health.get("ready"),
        "publishedAt": publication.get("published_at"),
    }
    return custom_properties(values)
