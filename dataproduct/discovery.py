"""What a product tells the world about itself: identity, ports, datasets, lineage.

The same documents serve the discovery port (JSON and HTML) and the marketplace.
"""

from __future__ import annotations

from typing import Any

from dataproduct.catalog import PublishedDataset, published_datasets
from dataproduct.descriptor import DatasetSpec, ProductDescriptor
from dataproduct.storage import Storage


def product_document(
    descriptor: ProductDescriptor,
    storage: Storage,
    base_url: str,
    sources: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The product: identity, owner, ports with URLs and a summary of its datasets."""
    datasets = [dataset_summary(d, descriptor, base_url) for d in _published(storage)]
    return {
        "name": descriptor.name,
        "domain": descriptor.domain,
        "version": descriptor.version,
        "major": descriptor.major,
        "description": descriptor.description,
        "owner": descriptor.owner.model_dump(),
        "tags": descriptor.tags,
        "schedule": descriptor.schedule,
        "url": base_url,
        "ports": {
            "discovery": {"url": f"{base_url}/discovery", "auth": "none"},
            "output": {"url": f"{base_url}/output", "auth": "bearer", "scope": "output:read"},
            "input": {"url": f"{base_url}/input", "auth": "bearer", "scope": "input:write"},
            "control": {"url": f"{base_url}/control", "auth": "bearer", "scope": "control:admin"},
        },
        "sources": sources,
        "datasets": datasets,
    }


def dataset_summary(
    dataset: PublishedDataset, descriptor: ProductDescriptor, base_url: str
) -> dict[str, Any]:
    """One dataset in a few fields: name, description, size, freshness, links."""
    spec = descriptor.datasets.get(dataset.name, DatasetSpec())
    return {
        "name": dataset.name,
        "description": spec.description,
        "tags": spec.tags,
        "row_count": dataset.row_count,
        "updated_at": dataset.updated_at.isoformat(),
        "documented": dataset.name in descriptor.datasets,
        "links": {
            "details": f"{base_url}/discovery/datasets/{dataset.name}",
            "rows": f"{base_url}/output/datasets/{dataset.name}",
        },
    }


def dataset_document(
    dataset: PublishedDataset, descriptor: ProductDescriptor, base_url: str
) -> dict[str, Any]:
    """One dataset in full: schema with documentation, size, freshness, SQL and lineage."""
    spec = descriptor.datasets.get(dataset.name, DatasetSpec())
    columns = []
    for column in dataset.columns:
        doc = spec.columns.get(column["name"])
        columns.append(
            {
                "name": column["name"],
                "type": column["type"],
                "nullable": column["nullable"],
                "required": bool(doc and doc.required),
                "description": doc.description if doc else "",
                "classification": doc.classification if doc else None,
            }
        )
    return {
        **dataset_summary(dataset, descriptor, base_url),
        "columns": columns,
        "quality": spec.quality,
        "sql": dataset.sql,
        "run_id": dataset.run_id,
        "pipeline_version": dataset.pipeline_version,
        "formats": ["json", "ndjson", "csv", "parquet", "arrow"],
    }


def _published(storage: Storage) -> list[PublishedDataset]:
    with storage.reader() as cursor:
        return published_datasets(cursor)


def dataset_documents(
    descriptor: ProductDescriptor, storage: Storage, base_url: str
) -> list[dict[str, Any]]:
    """Every published dataset in full."""
    return [dataset_document(d, descriptor, base_url) for d in _published(storage)]
