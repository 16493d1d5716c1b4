"""The document a product publishes to the marketplace: what its discovery port tells an
administrator (the product, every dataset in full, lineage) and whether it is healthy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataproduct.discovery import dataset_documents, product_document
from dataproduct.security import Principal

if TYPE_CHECKING:
    from pipelines.runtime import ProductRuntime

# The marketplace sees what an administrator sees; it decides itself who may see what.
MARKETPLACE = Principal("marketplace", scopes=frozenset({"control:admin"}))


def publication(runtime: ProductRuntime) -> dict[str, Any]:
    """The product's publication: product, datasets by name, lineage and health."""
    base_url = runtime.settings.base_url()
    policy = runtime.access.policy
    product = product_document(
        runtime.descriptor, runtime.storage, base_url, runtime.source_documents(), policy,
        MARKETPLACE,
    )  # fmt: skip
    datasets = dataset_documents(runtime.descriptor, runtime.storage, base_url, policy, MARKETPLACE)
    return {
        "product": product,
        "datasets": {document["name"]: document for document in datasets},
        "lineage": runtime.lineage(),
        "health": {
            "ready": runtime.readiness.ready.is_set() and not runtime.readiness.problems,
            "problems": list(runtime.readiness.problems),
        },
    }
