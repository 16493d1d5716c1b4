"""A published product exported for other tools: ODPS, ODCS and DCAT JSON-LD.

Pure functions over a publication document (the JSON a product pushes, as plain mappings):

- `odps`: the product as an Open Data Product Standard v1.0.0 document;
- `odcs`: one dataset as an Open Data Contract Standard v3.0.2 contract;
- `dcat` / `dcat_product`: a DCAT-AP style JSON-LD catalog for generic crawlers.

Only what a catalog may show leaves here: sources by name and type (never paths, URLs or
options), the owner as contact, classifications as metadata. The caller filters out the
publications the reader may not see before calling `dcat`.
"""

from dataproduct.marketplace.exports.addresses import (
    catalog_url,
    contract_id,
    dataset_page,
    dcat_url,
    odcs_url,
    odps_url,
    product_page,
)
from dataproduct.marketplace.exports.dcat import dcat, dcat_product
from dataproduct.marketplace.exports.odcs import (
    ODCS_API_VERSION,
    logical_type,
    odcs,
    physical_type,
)
from dataproduct.marketplace.exports.odps import ODPS_API_VERSION, odps

__all__ = [
    "ODCS_API_VERSION",
    "ODPS_API_VERSION",
    "catalog_url",
    "contract_id",
    "dataset_page",
    "dcat",
    "dcat_product",
    "dcat_url",
    "logical_type",
    "odcs",
    "odcs_url",
    "odps",
    "odps_url",
    "physical_type",
    "product_page",
]
