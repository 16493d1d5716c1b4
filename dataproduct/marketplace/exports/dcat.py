"""Published products as a DCAT-AP style JSON-LD catalog for generic crawlers.

The caller filters out the publications the reader may not see before calling `dcat`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dataproduct.marketplace.exports.addresses import (
    FORMATS,
    Document,
    area_page,
    catalog_url,
    contract_id,
    dataset_page,
    dcat_url,
    marketplace_root,
    odcs_url,
    product_page,
)
from dataproduct.marketplace.exports.odps import ordered_datasets

DCAT_CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
ACCESS_RIGHTS = "http://publications.europa.eu/resource/authority/access-right/"


def dcat(publications: Iterable[Document], marketplace_url: str) -> dict[str, Any]:
    """A DCAT-AP style JSON-LD catalog of every dataset of the given products."""
    datasets = [_dataset(p, d, marketplace_url) for p in publications for d in ordered_datasets(p)]
    return {
        "@context": DCAT_CONTEXT,
        "@id": catalog_url(marketplace_url),
        "@type": "dcat:Catalog",
        "dct:title": "Data product marketplace",
        "dct:description": "Datasets published by the data products of the mesh.",
        "foaf:homepage": {"@id": f"{marketplace_root(marketplace_url)}/"},
        "dcat:dataset": datasets,
    }


def dcat_product(publication: Document, marketplace_url: str) -> dict[str, Any]:
    """The same catalog shape, holding the datasets of one product."""
    catalog = dcat([publication], marketplace_url)
    name = publication["product"]["name"]
    catalog["@id"] = dcat_url(marketplace_url, name)
    catalog["dct:title"] = name
    catalog["dct:description"] = (publication["product"].get("description") or name).strip()
    return catalog


def _dataset(publication: Document, dataset: Document, marketplace_url: str) -> dict[str, Any]:
    product = publication["product"]
    name = dataset["name"]
    owner = product["owner"]
    keywords = list(dict.fromkeys([*(dataset.get("tags") or []), *(product.get("tags") or [])]))
    node: dict[str, Any] = {
        "@id": dataset_page(marketplace_url, product["name"], name),
        "@type": "dcat:Dataset",
        "dct:identifier": contract_id(product["name"], name),
        "dct:title": f"{product['name']} / {name}",
        "dct:description": dataset.get("description") or name,
        "dcat:keyword": keywords,
        "dcat:version": str(dataset["version"]),
        "dct:publisher": {
            "@type": "foaf:Agent",
            "foaf:name": owner["name"],
            "foaf:mbox": {"@id": f"mailto:{owner['email']}"},
        },
        "dcat:contactPoint": {
            "@type": "vcard:Kind",
            "vcard:fn": owner["name"],
            "vcard:hasEmail": {"@id": f"mailto:{owner['email']}"},
        },
        "dcat:theme": _theme(product["domain"], marketplace_url),
        "dct:isPartOf": {"@id": product_page(marketplace_url, product["name"])},
        "dcat:landingPage": {"@id": dataset_page(marketplace_url, product["name"], name)},
        "dct:conformsTo": {"@id": odcs_url(marketplace_url, product["name"], name)},
        "dct:accessRights": {"@id": ACCESS_RIGHTS + _access_right(dataset)},
        "dcat:distribution": _distributions(dataset),
    }
    if dataset.get("updated_at"):
        node["dct:modified"] = {"@value": dataset["updated_at"], "@type": "xsd:dateTime"}
    return node


def _theme(domain: str, marketplace_url: str) -> dict[str, Any]:
    return {
        "@id": area_page(marketplace_url, domain),
        "@type": "skos:Concept",
        "skos:prefLabel": domain,
    }


def _access_right(dataset: Document) -> str:
    public = (dataset.get("access") or {}).get("public") or "public" in (dataset.get("tags") or [])
    return "PUBLIC" if public else "RESTRICTED"


def _distributions(dataset: Document) -> list[dict[str, Any]]:
    rows = dataset["links"]["rows"]
    formats = [f for f in dataset.get("formats") or FORMATS if f in FORMATS]
    return [
        {
            "@id": f"{rows}?format={fmt}",
            "@type": "dcat:Distribution",
            "dct:title": f"{dataset['name']} as {FORMATS[fmt][0]}",
            "dct:format": FORMATS[fmt][0],
            "dcat:mediaType": FORMATS[fmt][1],
            "dcat:accessURL": {"@id": rows},
            "dcat:downloadURL": {"@id": f"{rows}?format={fmt}"},
        }
        for fmt in formats
    ]
