"""What a product tells the world about itself: identity, ports, datasets, lineage.

The same documents serve the discovery port (JSON and HTML) and the marketplace. Every
caller sees each dataset's summary; the details (schema, SQL, quality, versions) only of
the datasets it may read (a `public` dataset: anyone).
"""

from __future__ import annotations

from typing import Any

from dataproduct.catalog import PublishedDataset, older_versions, published_datasets
from dataproduct.descriptor import DatasetSpec, ProductDescriptor
from dataproduct.policy import DatasetAccess, Policy
from dataproduct.quality_rules import rules_to_raw
from dataproduct.quality_store import published_quality
from dataproduct.security import ANONYMOUS, Principal
from dataproduct.storage import Storage


def product_document(
    descriptor: ProductDescriptor,
    storage: Storage,
    base_url: str,
    sources: dict[str, dict[str, Any]],
    policy: Policy | None = None,
    principal: Principal = ANONYMOUS,
) -> dict[str, Any]:
    """The product: identity, owner, ports with URLs and a summary of its datasets."""
    datasets = [
        {**dataset_summary(d, descriptor, base_url), "access": _access(policy, principal, d.name)}
        for d in _published(storage)
    ]
    document = {
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
        "lineage": f"{base_url}/discovery/lineage",
        "sources": sources,
        "datasets": datasets,
    }
    if policy is not None and policy.is_admin(principal):  # the marketplace's view
        document["visibility"] = {"groups": descriptor.marketplace.visible_to}
        document["access_approvers"] = descriptor.marketplace.approvers
    return document


def dataset_summary(
    dataset: PublishedDataset, descriptor: ProductDescriptor, base_url: str
) -> dict[str, Any]:
    """One dataset in a few fields: name, description, size, freshness, links."""
    spec = descriptor.datasets.get(dataset.name, DatasetSpec())
    return {
        "name": dataset.name,
        "description": spec.description,
        "tags": spec.tags,
        "version": dataset.version,
        "row_count": dataset.row_count,
        "updated_at": dataset.updated_at.isoformat(),
        "documented": dataset.name in descriptor.datasets,
        "links": {
            "details": f"{base_url}/discovery/datasets/{dataset.name}",
            "rows": f"{base_url}/output/datasets/{dataset.name}",
        },
    }


def access_summary(access: DatasetAccess | None, public: bool) -> dict[str, Any]:
    """What the caller may see of a dataset: readable, masked columns, filtered rows."""
    return {
        "public": public,
        "readable": access is not None,
        "masked_columns": sorted(access.masks) if access else [],
        "row_filter": access is not None and access.row_filter is not None,
    }


def _access(policy: Policy | None, principal: Principal, name: str) -> dict[str, Any]:
    if policy is None:
        return access_summary(DatasetAccess(name), public=False)
    return access_summary(policy.read_access(principal, name), policy.is_public(name))


def dataset_document(
    dataset: PublishedDataset,
    descriptor: ProductDescriptor,
    base_url: str,
    storage: Storage | None = None,
    policy: Policy | None = None,
    principal: Principal = ANONYMOUS,
) -> dict[str, Any]:
    """One dataset in full: schema with documentation, size, freshness, SQL, lineage, quality.

    The quality status is that of the checks of the run that published the data, read from
    `storage` (`unknown` without it). With a `policy`, a caller who may not read the
    dataset gets its summary only.
    """
    summary = dataset_summary(dataset, descriptor, base_url)
    access = summary["access"] = _access(policy, principal, dataset.name)
    if not access["readable"]:
        return summary
    spec = descriptor.datasets.get(dataset.name, DatasetSpec())
    quality = {"rules": rules_to_raw(spec.quality), "status": "unknown", "results": []}
    older: list[PublishedDataset] = []
    if storage is not None:
        with storage.reader() as cursor:
            quality = published_quality(cursor, dataset.name, dataset.run_id, spec.quality)
            older = older_versions(cursor, dataset.name)
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
        **summary,
        "columns": columns,
        "quality": quality["rules"],
        "quality_status": quality["status"],
        "quality_results": quality["results"],
        "sql": dataset.sql,
        "run_id": dataset.run_id,
        "pipeline_version": dataset.pipeline_version,
        "formats": ["json", "ndjson", "csv", "parquet", "arrow"],
        "versions": [_version(dataset, base_url)] + [_version(v, base_url) for v in older],
    }


def _version(dataset: PublishedDataset, base_url: str) -> dict[str, Any]:
    """One readable major version of a dataset and how to read it."""
    rows = f"{base_url}/output/datasets/{dataset.name}"
    return {
        "version": dataset.version,
        "current": dataset.current,
        "row_count": dataset.row_count,
        "updated_at": dataset.updated_at.isoformat(),
        "columns": [{"name": c["name"], "type": c["type"]} for c in dataset.columns],
        "rows": rows if dataset.current else f"{rows}?version={dataset.version}",
    }


def _published(storage: Storage) -> list[PublishedDataset]:
    with storage.reader() as cursor:
        return published_datasets(cursor)


def dataset_documents(
    descriptor: ProductDescriptor,
    storage: Storage,
    base_url: str,
    policy: Policy | None = None,
    principal: Principal = ANONYMOUS,
) -> list[dict[str, Any]]:
    """Every published dataset: in full where the caller may read it."""
    return [
        dataset_document(d, descriptor, base_url, storage, policy, principal)
        for d in _published(storage)
    ]
