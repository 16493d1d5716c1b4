"""One dataset of a published product as an Open Data Contract Standard (v3.0.2) contract.

The quality rules become ODCS checks in `odcs_quality`; DuckDB column types become ODCS
logical and physical types here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError

from dataproduct.marketplace.exports.addresses import (
    FORMATS,
    Document,
    contract_id,
    dataset_page,
    odps_url,
)
from dataproduct.marketplace.exports.odcs_quality import (
    Check,
    freshness_slas,
    grouped_checks,
    parse_known,
    quality_parts,
    unique_columns,
)
from dataproduct.marketplace.exports.odps import (
    custom_properties,
    is_classified,
    owner_member,
    support_channels,
)

ODCS_API_VERSION = "v3.0.2"


def odcs(publication: Document, dataset_name: str, marketplace_url: str) -> dict[str, Any]:
    """One dataset as an Open Data Contract Standard (v3.0.2) contract; KeyError if unknown."""
    product = publication["product"]
    dataset = (publication.get("datasets") or {})[dataset_name]
    name = product["name"]
    rules, results = quality_parts(dataset)
    parsed = [parse_known(raw) for raw in rules]
    table = exp.table_(dataset_name, db="output")
    contract: dict[str, Any] = {
        "apiVersion": ODCS_API_VERSION,
        "kind": "DataContract",
        "id": contract_id(name, dataset_name),
        "name": dataset_name,
        "version": str(dataset["version"]),
        "status": "active",
        "domain": product["domain"],
        "dataProduct": name,
        "description": _description(product, dataset, marketplace_url),
        "tags": list(dataset.get("tags") or []),
        "schema": [_schema_object(dataset, parsed, results, table)],
        "servers": [_server(dataset)],
        "support": support_channels(product, marketplace_url),
        "team": [owner_member(product)],
        "roles": [_reader_role(product, dataset_name, marketplace_url)],
        "authoritativeDefinitions": [
            {
                "type": "businessDefinition",
                "url": dataset_page(marketplace_url, name, dataset_name),
            },
            {"type": "dataProduct", "url": odps_url(marketplace_url, name)},
        ],
        "customProperties": _dataset_properties(dataset),
    }
    sla = freshness_slas(dataset_name, parsed)
    if sla:
        contract["slaProperties"] = sla
    return contract


def physical_type(duckdb_type: str) -> dict[str, Any]:
    """ODCS `logicalType` and `physicalType` of a DuckDB type, with nested items or fields."""
    try:
        parsed = exp.DataType.build(duckdb_type, dialect="duckdb")
    except SqlglotError:  # a type sqlglot does not know is still documented, as a string
        return {"logicalType": "string", "physicalType": duckdb_type}
    return _typed(parsed, duckdb_type)


def logical_type(parsed: exp.DataType) -> str:
    """ODCS v3.0 logical type: string, integer, number, boolean, date, array or object.

    ODCS v3.0 has no timestamp or time type: its `date` covers them (physicalType tells).
    """
    kind = exp.DataType.Type
    if parsed.is_type(*exp.DataType.INTEGER_TYPES):
        return "integer"
    if parsed.is_type(*exp.DataType.REAL_TYPES):
        return "number"
    if parsed.is_type(kind.BOOLEAN):
        return "boolean"
    if parsed.is_type(*exp.DataType.TEMPORAL_TYPES):
        return "date"
    if parsed.is_type(kind.ARRAY, kind.LIST):
        return "array"
    if parsed.is_type(kind.STRUCT, kind.MAP):
        return "object"
    return "string"


def _typed(parsed: exp.DataType, physical: str) -> dict[str, Any]:
    described: dict[str, Any] = {"logicalType": logical_type(parsed), "physicalType": physical}
    nested = [e for e in parsed.expressions if isinstance(e, exp.DataType | exp.ColumnDef)]
    if parsed.this in (exp.DataType.Type.ARRAY, exp.DataType.Type.LIST) and nested:
        item = nested[0]
        if isinstance(item, exp.DataType):
            described["items"] = _typed(item, item.sql("duckdb"))
    elif parsed.this == exp.DataType.Type.STRUCT:
        described["properties"] = [
            {"name": f.name, **_typed(f.kind, f.kind.sql("duckdb"))}
            for f in nested
            if isinstance(f, exp.ColumnDef) and isinstance(f.kind, exp.DataType)
        ]
    return described


def _description(product: Document, dataset: Document, marketplace_url: str) -> dict[str, str]:
    classified = [c["name"] for c in dataset.get("columns") or [] if is_classified(c)]
    limitations = "Reading needs a grant; request access in the marketplace."
    if classified:
        limitations += f" Classified columns ({', '.join(classified)}) are masked without a grant."
    name = dataset["name"]
    return {
        "purpose": dataset.get("description") or name,
        "limitations": limitations,
        "usage": (
            f"GET {dataset['links']['rows']} with a bearer token of scope output:read; "
            f"request access at {dataset_page(marketplace_url, product['name'], name)}."
        ),
    }


def _schema_object(
    dataset: Document, rules: list[Any], results: list[Document], table: exp.Table
) -> dict[str, Any]:
    column_checks, table_checks = grouped_checks(rules, results, table)
    unique = unique_columns(rules)
    obj: dict[str, Any] = {
        "name": dataset["name"],
        "logicalType": "object",
        "physicalType": "table",
        "physicalName": f"output.{dataset['name']}",
        "description": dataset.get("description") or dataset["name"],
        "properties": [
            _column_property(c, column_checks.get(c["name"], []), c["name"] in unique)
            for c in dataset.get("columns") or []
        ],
    }
    if table_checks:
        obj["quality"] = table_checks
    return obj


def _column_property(column: Document, quality: list[Check], unique: bool) -> dict[str, Any]:
    prop = {"name": column["name"], **physical_type(column["type"])}
    prop["required"] = bool(column.get("required"))
    if unique:
        prop["unique"] = True
    if column.get("description"):
        prop["description"] = column["description"]
    if is_classified(column):
        prop["classification"] = column["classification"]
    if quality:
        prop["quality"] = quality
    return prop


def _server(dataset: Document) -> dict[str, Any]:
    formats = dataset.get("formats") or list(FORMATS)
    return {
        "server": "output",
        "type": "api",
        "location": dataset["links"]["rows"],
        "description": "The product's output port: bearer token of scope output:read.",
        "customProperties": [{"property": "formats", "value": list(formats)}],
    }


def _reader_role(product: Document, dataset: str, marketplace_url: str) -> dict[str, Any]:
    return {
        "role": f"{product['name']}.{dataset}.reader",
        "access": "read",
        "description": f"Request at {dataset_page(marketplace_url, product['name'], dataset)}",
        "firstLevelApprovers": product["owner"]["email"],
    }


def _dataset_properties(dataset: Document) -> list[dict[str, Any]]:
    return custom_properties(
        {
            "rowCount": dataset.get("row_count"),
            "updatedAt": dataset.get("updated_at"),
            "qualityStatus": _quality_status(dataset),
            "transformationSql": dataset.get("sql"),
        }
    )


def _quality_status(dataset: Document) -> Any:
    quality = dataset.get("quality")
    if isinstance(quality, Mapping):
        return quality.get("status")
    return dataset.get("quality_status")
