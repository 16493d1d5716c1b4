"""ODPS, ODCS and DCAT exports of a publication built from the running example product.

ODPS and ODCS documents are validated against the official JSON Schemas (copies in
`schemas/`, see its README); DCAT is parsed as JSON-LD with rdflib and queried as triples.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import pytest
from rdflib import RDF, Graph, Literal, Namespace, URIRef

from dataproduct.marketplace.exports import (
    contract_id,
    dcat,
    dcat_product,
    odcs,
    odps,
    physical_type,
)
from tests.marketplace.documents import example_publication

SCHEMAS = Path(__file__).parent / "schemas"
MARKET = "https://market.example.com"
DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCT = Namespace("http://purl.org/dc/terms/")
FOAF = Namespace("http://xmlns.com/foaf/0.1/")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
SKOS = Namespace("http://www.w3.org/2004/02/skos/core#")
XSD = Namespace("http://www.w3.org/2001/XMLSchema#")
DATASETS = ("customer_revenue", "daily_sales")
FORMATS = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example product's publication and its DuckDB file, from one real run."""
    root = tmp_path_factory.mktemp("exports")
    publication = example_publication(root)
    return {"publication": publication, "database": root / "data" / "sales-eu" / "product.duckdb"}


@pytest.fixture
def publication(example_run: dict[str, Any]) -> dict[str, Any]:
    """A private deep copy each test may change."""
    return copy.deepcopy(example_run["publication"])


def _validator(name: str) -> jsonschema.Draft201909Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    checker = jsonschema.Draft201909Validator.FORMAT_CHECKER
    return jsonschema.Draft201909Validator(schema, format_checker=checker)


def _errors(name: str, document: dict[str, Any]) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in _validator(name).iter_errors(document)]


# -- ODPS ---------------------------------------------------------------------------------


def test_odps_is_valid_and_describes_the_product(publication: dict[str, Any]) -> None:
    document = odps(publication, MARKET)
    assert _errors("odps-1.0.0", document) == []
    assert document["apiVersion"] == "v1.0.0" and document["kind"] == "DataProduct"
    assert (document["id"], document["name"], document["version"]) == (
        "sales-eu",
        "sales-eu",
        "1.0.0",
    )
    assert document["domain"] == "sales/europe"
    assert document["tags"] == ["sales", "eu", "example"]
    assert document["description"]["purpose"].startswith("Orders from EU shops")
    assert "pii" in document["description"]["limitations"]
    assert "confidential" in document["description"]["limitations"]
    ports = {p["name"]: p for p in document["outputPorts"]}
    assert list(ports) == list(DATASETS)
    for name, port in ports.items():
        assert port["contractId"] == contract_id("sales-eu", name) == f"sales-eu.{name}"
        assert port["version"] == "1"
        rows = f"http://127.0.0.1:8080/output/datasets/{name}"
        urls = {d["type"]: d["url"] for d in port["authoritativeDefinitions"]}
        assert urls["implementation"] == rows
        assert urls["contract"] == f"{MARKET}/api/v1/products/sales-eu/datasets/{name}/odcs"
    assert ports["daily_sales"]["tags"] == ["sales", "public"]
    inputs = {p["name"]: p["customProperties"] for p in document["inputPorts"]}
    assert inputs == {
        "orders": [{"property": "sourceType", "value": "file"}],
        "customers": [{"property": "sourceType", "value": "file"}],
        "returns": [{"property": "sourceType", "value": "push"}],
    }
    management = {p["name"]: (p["content"], p["url"]) for p in document["managementPorts"]}
    assert management == {
        "discovery": ("discoverability", "http://127.0.0.1:8080/discovery"),
        "lineage": ("dictionary", "http://127.0.0.1:8080/discovery/lineage"),
        "control": ("control", "http://127.0.0.1:8080/control"),
    }
    assert document["team"]["members"] == [
        {"username": "ana.silva@example.com", "name": "Ana Silva", "role": "owner"}
    ]
    assert document["support"][0]["url"] == "mailto:ana.silva@example.com"
    properties = {p["property"]: p["value"] for p in document["customProperties"]}
    assert properties["businessArea"] == "sales/europe"
    assert properties["ready"] is True


def test_output_ports_point_at_the_contracts_exported(publication: dict[str, Any]) -> None:
    ids = {p["contractId"] for p in odps(publication, MARKET)["outputPorts"]}
    assert ids == {odcs(publication, name, MARKET)["id"] for name in DATASETS}


# -- ODCS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_odcs_contract_of_each_dataset_is_valid(publication: dict[str, Any], name: str) -> None:
    contract = odcs(publication, name, MARKET)
    assert _errors("odcs-3.0.2", contract) == []
    assert contract["apiVersion"] == "v3.0.2" and contract["kind"] == "DataContract"
    assert contract["dataProduct"] == "sales-eu" and contract["domain"] == "sales/europe"
    assert contract["servers"][0]["type"] == "api"
    assert contract["servers"][0]["location"] == f"http://127.0.0.1:8080/output/datasets/{name}"
    assert contract["team"] == [
        {"username": "ana.silva@example.com", "name": "Ana Silva", "role": "owner"}
    ]
    [table] = contract["schema"]
    assert (table["name"], table["logicalType"], table["physicalName"]) == (
        name,
        "object",
        f"output.{name}",
    )
    columns = publication["datasets"][name]["columns"]
    assert [p["name"] for p in table["properties"]] == [c["name"] for c in columns]


def test_odcs_columns_carry_types_required_and_classification(
    publication: dict[str, Any],
) -> None:
    properties = {
        p["name"]: p
        for p in odcs(publication, "customer_revenue", MARKET)["schema"][0]["properties"]
    }
    typed = {n: (p["logicalType"], p["physicalType"], p["required"]) for n, p in properties.items()}
    assert typed == {
        "customer_id": ("string", "VARCHAR", True),
        "name": ("string", "VARCHAR", False),
        "country": ("string", "VARCHAR", False),
        "orders": ("integer", "BIGINT", True),
        "revenue": ("number", "DECIMAL(38,2)", True),
    }
    assert properties["name"]["classification"] == "pii"
    assert properties["revenue"]["classification"] == "confidential"
    assert "classification" not in properties["country"]
    assert properties["customer_id"]["unique"] is True
    assert properties["customer_id"]["description"] == "CRM customer id"
    checks = {q["rule"]: q for q in properties["customer_id"]["quality"]}
    assert set(checks) == {"nullValues", "duplicateCount"}
    assert checks["nullValues"]["mustBe"] == 0 and checks["duplicateCount"]["mustBe"] == 0
    last = {c["property"]: c["value"] for c in checks["nullValues"]["customProperties"]}
    assert last["lastStatus"] == "pass" and last["lastFailingRows"] == 0
    date = odcs(publication, "daily_sales", MARKET)["schema"][0]["properties"][0]
    assert (date["name"], date["logicalType"], date["physicalType"]) == (
        "order_date",
        "date",
        "DATE",
    )


ALL_RULES = [
    {"not_null": "country"},
    {"unique": ["order_date", "country"]},
    {"accepted_values": {"column": "country", "values": ["DE", "FR", "IT", "ES", "NL"]}},
    {"range": {"column": "orders", "min": 1, "max": 100000}, "severity": "warn"},
    {"row_count": {"min": 1, "max": 1000000}},
    {"row_count": {"min": 1}, "name": "not_empty"},
    {"freshness": {"column": "order_date", "max_age": "36500d"}, "name": "recent"},
    {"sql": "SELECT * FROM output.daily_sales WHERE revenue < 0", "name": "no_negative"},
]


def _with_all_rules(publication: dict[str, Any]) -> dict[str, Any]:
    publication["datasets"]["daily_sales"]["quality"] = copy.deepcopy(ALL_RULES)
    return publication


def _checks(contract: dict[str, Any]) -> dict[str, dict[str, Any]]:
    table = contract["schema"][0]
    found = {q["name"]: q for q in table.get("quality", [])}
    for prop in table["properties"]:
        found |= {q["name"]: {**q, "column": prop["name"]} for q in prop.get("quality", [])}
    return found


def test_odcs_maps_every_rule_kind(publication: dict[str, Any]) -> None:
    contract = odcs(_with_all_rules(publication), "daily_sales", MARKET)
    assert _errors("odcs-3.0.2", contract) == []
    checks = _checks(contract)
    assert set(checks) == {
        "not_null_country",
        "unique_order_date_country",
        "accepted_values_country",
        "range_orders",
        "row_count",
        "not_empty",
        "recent",
        "no_negative",
    }
    assert checks["not_null_country"]["column"] == "country"
    assert checks["accepted_values_country"]["rule"] == "validValues"
    assert checks["accepted_values_country"]["validValues"] == ["DE", "FR", "IT", "ES", "NL"]
    assert checks["range_orders"]["type"] == "sql" and checks["range_orders"]["column"] == "orders"
    assert checks["range_orders"]["severity"] == "warning"
    assert checks["row_count"]["rule"] == "rowCount"
    assert checks["row_count"]["mustBeBetween"] == [1, 1000000]
    assert checks["not_empty"]["mustBeGreaterOrEqualTo"] == 1
    assert checks["unique_order_date_country"]["type"] == "sql"
    assert "column" not in checks["unique_order_date_country"]  # a table-level check
    assert checks["recent"]["mustBeLessOrEqualTo"] == 36500 * 86400
    assert contract["slaProperties"] == [
        {
            "property": "latency",
            "value": 36500,
            "unit": "d",
            "element": "daily_sales.order_date",
            "driver": "operational",
        }
    ]


def _run(connection: duckdb.DuckDBPyConnection, query: str) -> Any:
    row = connection.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_odcs_sql_checks_run_on_duckdb_and_catch_bad_rows(
    publication: dict[str, Any], example_run: dict[str, Any], tmp_path: Path
) -> None:
    checks = _checks(odcs(_with_all_rules(publication), "daily_sales", MARKET))
    sql = {name: q["query"] for name, q in checks.items() if q["type"] == "sql"}
    assert set(sql) == {"unique_order_date_country", "range_orders", "recent", "no_negative"}
    # The checks run on a copy of the product's own database, where physicalName points.
    database = tmp_path / "product.duckdb"
    shutil.copyfile(example_run["database"], database)
    connection = duckdb.connect(str(database))
    assert _run(connection, "SELECT count(*) FROM output.daily_sales") == 1935
    assert _run(connection, sql["unique_order_date_country"]) == 0
    assert _run(connection, sql["range_orders"]) == 0
    assert _run(connection, sql["no_negative"]) == 0
    age = _run(connection, sql["recent"])
    assert 0 <= age <= checks["recent"]["mustBeLessOrEqualTo"]
    connection.execute(
        "INSERT INTO output.daily_sales "
        "SELECT order_date, country, 0, -1 FROM output.daily_sales LIMIT 1"
    )
    assert _run(connection, sql["unique_order_date_country"]) == 1
    assert _run(connection, sql["range_orders"]) == 1
    assert _run(connection, sql["no_negative"]) == 1
    connection.close()


def test_odcs_keeps_a_rule_it_does_not_know_as_text(publication: dict[str, Any]) -> None:
    publication["datasets"]["daily_sales"]["quality"] = [{"distribution": {"column": "x"}}]
    contract = odcs(publication, "daily_sales", MARKET)
    assert _errors("odcs-3.0.2", contract) == []
    [check] = contract["schema"][0]["quality"]
    assert check["type"] == "text" and "distribution" in check["description"]


def test_odcs_of_an_unknown_dataset_is_a_key_error(publication: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        odcs(publication, "nope", MARKET)


def test_the_schemas_refuse_broken_documents(publication: dict[str, Any]) -> None:
    """The validation above is live: the same schemas refuse documents that break them."""
    contract = odcs(publication, "customer_revenue", MARKET)
    del contract["id"]
    contract["schema"][0]["properties"][0]["logicalType"] = "timestamp"
    contract["schema"][0]["properties"][1]["colour"] = "red"
    errors = _errors("odcs-3.0.2", contract)
    assert len(errors) == 3, errors
    product = odps(publication, MARKET)
    product["outputPorts"][0].pop("version")
    product["kind"] = "DataContract"
    assert len(_errors("odps-1.0.0", product)) == 2


@pytest.mark.parametrize(
    ("duckdb_type", "expected"),
    [
        ("VARCHAR", {"logicalType": "string"}),
        ("UUID", {"logicalType": "string"}),
        ("BLOB", {"logicalType": "string"}),
        ("INTEGER", {"logicalType": "integer"}),
        ("HUGEINT", {"logicalType": "integer"}),
        ("UBIGINT", {"logicalType": "integer"}),
        ("DOUBLE", {"logicalType": "number"}),
        ("DECIMAL(12,2)", {"logicalType": "number"}),
        ("BOOLEAN", {"logicalType": "boolean"}),
        ("DATE", {"logicalType": "date"}),
        ("TIMESTAMP WITH TIME ZONE", {"logicalType": "date"}),
        ("MAP(VARCHAR, INTEGER)", {"logicalType": "object"}),
        (
            "BIGINT[]",
            {"logicalType": "array", "items": {"logicalType": "integer", "physicalType": "BIGINT"}},
        ),
        (
            "STRUCT(a INTEGER, b VARCHAR[])",
            {
                "logicalType": "object",
                "properties": [
                    {"name": "a", "logicalType": "integer", "physicalType": "INT"},
                    {
                        "name": "b",
                        "logicalType": "array",
                        "physicalType": "TEXT[]",
                        "items": {"logicalType": "string", "physicalType": "TEXT"},
                    },
                ],
            },
        ),
        ("NOT A TYPE ((", {"logicalType": "string"}),
    ],
)
def test_duckdb_types_map_to_odcs_logical_types(duckdb_type: str, expected: dict[str, Any]) -> None:
    assert physical_type(duckdb_type) == {**expected, "physicalType": duckdb_type}


def test_nested_types_are_valid_odcs(publication: dict[str, Any]) -> None:
    columns = publication["datasets"]["daily_sales"]["columns"]
    columns.append({"name": "lines", "type": "STRUCT(sku VARCHAR, qty INTEGER)[]"})
    contract = odcs(publication, "daily_sales", MARKET)
    assert _errors("odcs-3.0.2", contract) == []
    lines = contract["schema"][0]["properties"][-1]
    assert lines["logicalType"] == "array"
    assert [p["name"] for p in lines["items"]["properties"]] == ["sku", "qty"]


# -- nothing internal leaves --------------------------------------------------------------


def test_exports_carry_no_source_options_or_credentials(publication: dict[str, Any]) -> None:
    publication["product"]["sources"]["crm"] = {
        "type": "database",
        "url": "postgresql://reader:s3cret-pw@crm.internal/crm",
        "table": "customers",
        "token": "tok-abc123",
    }
    exported = json.dumps(
        [
            odps(publication, MARKET),
            *(odcs(publication, name, MARKET) for name in DATASETS),
            dcat([publication], MARKET),
        ]
    )
    for secret in ("s3cret-pw", "crm.internal", "tok-abc123", "data/orders.csv", "Bearer "):
        assert secret not in exported
    crm = next(p for p in odps(publication, MARKET)["inputPorts"] if p["name"] == "crm")
    assert crm["customProperties"] == [{"property": "sourceType", "value": "database"}]
    # What the administrator's caller happened to see is not part of the export.
    assert "masked_columns" not in exported


# -- DCAT ---------------------------------------------------------------------------------


def _graph(document: dict[str, Any]) -> Graph:
    """The triples of a JSON-LD document (rdflib's parser warns about its own internals)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ConjunctiveGraph is deprecated", DeprecationWarning)
        return Graph().parse(data=json.dumps(document), format="json-ld")


def _second_product(publication: dict[str, Any]) -> dict[str, Any]:
    other = copy.deepcopy(publication)
    other["product"]["name"] = "sales-us"
    other["product"]["domain"] = "sales/americas"
    return other


def test_dcat_catalog_expands_to_the_expected_triples(publication: dict[str, Any]) -> None:
    document = dcat([publication, _second_product(publication)], MARKET)
    assert set(document["@context"]) >= {"dcat", "dct", "foaf", "vcard"}
    graph = _graph(document)
    [catalog] = graph.subjects(RDF.type, DCAT.Catalog)
    datasets = set(graph.subjects(RDF.type, DCAT.Dataset))
    assert len(datasets) == 4
    assert set(graph.objects(catalog, DCAT.dataset)) == datasets
    titles = {str(graph.value(d, DCT.title)) for d in datasets}
    assert titles == {
        "sales-eu / customer_revenue",
        "sales-eu / daily_sales",
        "sales-us / customer_revenue",
        "sales-us / daily_sales",
    }
    themes = {str(graph.value(graph.value(d, DCAT.theme), SKOS.prefLabel)) for d in datasets}
    assert themes == {"sales/europe", "sales/americas"}


def test_dcat_dataset_has_contact_modified_and_a_distribution_per_format(
    publication: dict[str, Any],
) -> None:
    graph = _graph(dcat([publication], MARKET))
    node = URIRef(f"{MARKET}/products/sales-eu/datasets/customer_revenue")
    assert (node, RDF.type, DCAT.Dataset) in graph
    description = publication["datasets"]["customer_revenue"]["description"]
    assert graph.value(node, DCT.description) == Literal(description)
    assert {str(k) for k in graph.objects(node, DCAT.keyword)} == {"sales", "eu", "example"}
    modified = graph.value(node, DCT.modified)
    assert isinstance(modified, Literal) and modified.datatype == XSD.dateTime
    assert str(modified) == publication["datasets"]["customer_revenue"]["updated_at"]
    assert str(graph.value(graph.value(node, DCT.publisher), FOAF.name)) == "Ana Silva"
    contact = graph.value(node, DCAT.contactPoint)
    assert graph.value(contact, VCARD.hasEmail) == URIRef("mailto:ana.silva@example.com")
    access = "http://publications.europa.eu/resource/authority/access-right/RESTRICTED"
    assert graph.value(node, DCT.accessRights) == URIRef(access)
    rows = "http://127.0.0.1:8080/output/datasets/customer_revenue"
    media = {}
    for distribution in graph.objects(node, DCAT.distribution):
        assert graph.value(distribution, DCAT.accessURL) == URIRef(rows)
        media[str(graph.value(distribution, DCAT.mediaType))] = str(
            graph.value(distribution, DCAT.downloadURL)
        )
    assert media == {m: f"{rows}?format={f}" for f, m in FORMATS.items()}


def test_dcat_of_one_product(publication: dict[str, Any]) -> None:
    document = dcat_product(publication, MARKET)
    assert document["@id"] == f"{MARKET}/api/v1/products/sales-eu/dcat"
    graph = _graph(document)
    datasets = set(graph.subjects(RDF.type, DCAT.Dataset))
    assert {str(graph.value(d, DCT.identifier)) for d in datasets} == {
        "sales-eu.customer_revenue",
        "sales-eu.daily_sales",
    }
    public = URIRef(f"{MARKET}/products/sales-eu/datasets/daily_sales")
    assert str(graph.value(public, DCT.accessRights)).endswith("/PUBLIC")


def test_dcat_of_no_products_is_an_empty_catalog() -> None:
    graph = _graph(dcat([], MARKET))
    assert len(set(graph.subjects(RDF.type, DCAT.Catalog))) == 1
    assert not set(graph.subjects(RDF.type, DCAT.Dataset))
