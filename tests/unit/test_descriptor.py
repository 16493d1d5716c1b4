"""The product descriptor: the example loads; a bad one is refused with file, path and reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataproduct.connector import SourceContext, build_connectors
from dataproduct.descriptor import DESCRIPTOR_FILE, load_descriptor
from dataproduct.errors import DescriptorError

Mutation = Callable[[dict[str, Any]], None]


def edit_descriptor(product: Path, mutate: Mutation) -> Path:
    """Apply `mutate` to the parsed dataproduct.yaml of `product` and write it back."""
    path = product / DESCRIPTOR_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    mutate(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def refusal(product: Path) -> DescriptorError:
    """The error loading `product` raises."""
    with pytest.raises(DescriptorError) as caught:
        load_descriptor(product)
    assert caught.value.status == 422
    return caught.value


def test_example_descriptor_loads(example_product: Path) -> None:
    descriptor = load_descriptor(example_product)
    assert (descriptor.name, descriptor.domain, descriptor.version) == (
        "sales-eu",
        "sales/europe",
        "1.0.0",
    )
    assert descriptor.major == 1
    assert descriptor.owner.email == "ana.silva@example.com"
    assert list(descriptor.sources) == ["orders", "customers", "returns"]
    assert descriptor.sources["orders"].options() == {"path": "data/orders.csv", "format": "csv"}
    assert list(descriptor.datasets) == ["customer_revenue", "daily_sales"]
    revenue = descriptor.datasets["customer_revenue"].columns["revenue"]
    assert (revenue.type, revenue.required, revenue.classification) == (
        "DECIMAL(38, 2)",
        True,
        "confidential",
    )
    assert [(m.name, m.layer) for m in descriptor.pipeline] == [
        ("orders_clean", "staging"),
        ("customer_revenue", "output"),
        ("daily_sales", "output"),
    ]


def test_pipeline_sql_files_become_models(example_product: Path) -> None:
    sql_dir = example_product / "pipeline"
    (sql_dir / "by_status.sql").write_text(
        "-- a model without a layer comment goes to output\n"
        "SELECT status, count(*) AS n FROM staging.orders_clean GROUP BY ALL\n"
    )
    (sql_dir / "recent.sql").write_text(
        "-- Orders of this year.\n  --  layer:  staging\nSELECT * FROM input.orders\n"
    )
    models = {m.name: m for m in load_descriptor(example_product).pipeline}
    assert models["by_status"].layer == "output"
    assert models["recent"].layer == "staging"
    assert models["recent"].sql.endswith("SELECT * FROM input.orders\n")
    assert models["customer_revenue"].sql == (sql_dir / "customer_revenue.sql").read_text()


def test_bad_yaml_is_refused_with_line_and_column(example_product: Path) -> None:
    path = example_product / DESCRIPTOR_FILE
    path.write_text("name: sales-eu\ndescription: a: b\n", encoding="utf-8")
    error = refusal(example_product)
    assert error.where == f"{path}:2:15"
    assert error.message == "not valid YAML: mapping values are not allowed here"


def test_unclosed_flow_mapping_points_past_the_opening(example_product: Path) -> None:
    path = example_product / DESCRIPTOR_FILE
    path.write_text("name: sales-eu\nowner: {name: Ana\nversion: 1.0.0\n", encoding="utf-8")
    error = refusal(example_product)
    assert error.where is not None
    assert error.where.startswith(f"{path}:3:")
    assert error.message.startswith("not valid YAML")


def test_descriptor_must_be_a_mapping(example_product: Path) -> None:
    path = example_product / DESCRIPTOR_FILE
    path.write_text("- just\n- a list\n", encoding="utf-8")
    error = refusal(example_product)
    assert error.where == str(path)
    assert "mapping" in error.message


def test_missing_descriptor_is_refused(tmp_path: Path) -> None:
    error = refusal(tmp_path)
    assert error.where == str(tmp_path / DESCRIPTOR_FILE)


def _set(*keys: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _duplicate_model(data: dict[str, Any]) -> None:
    data["pipeline"].append(dict(data["pipeline"][0]))


def _grant_unknown(data: dict[str, Any]) -> None:
    data["access"].append({"dataset": "ghost", "group": "everyone"})


def _model_named_like_source(data: dict[str, Any]) -> None:
    data["pipeline"][0]["name"] = "orders"


REVENUE = ("datasets", "customer_revenue", "columns", "revenue")

BAD_DESCRIPTORS = [
    ("unknown-top-field", _set("colour", value="red"), "colour", "unknown field"),
    ("unknown-owner-field", _set("owner", "phone", value="1"), "owner.phone", "unknown field"),
    (
        "unknown-column-field",
        _set(*REVENUE, "colour", value="red"),
        "datasets.customer_revenue.columns.revenue.colour",
        "unknown field",
    ),
    ("name-not-slug", _set("name", value="Sales EU"), "name", "should match pattern"),
    ("name-too-long", _set("name", value="a" * 64), "name", "should match pattern"),
    ("domain-uppercase", _set("domain", value="Sales/Europe"), "domain", "business-area path"),
    ("domain-empty-area", _set("domain", value="sales//europe"), "domain", "business-area path"),
    ("semver-two-parts", _set("version", value="1.0"), "version", "should match pattern"),
    ("semver-leading-zero", _set("version", value="01.0.0"), "version", "should match pattern"),
    ("semver-prefix", _set("version", value="v1.0.0"), "version", "should match pattern"),
    ("email-no-at", _set("owner", "email", value="ana.example.com"), "owner.email", "pattern"),
    ("email-spaces", _set("owner", "email", value="ana @x.com"), "owner.email", "pattern"),
    ("owner-missing", lambda d: d.pop("owner"), "owner", "Field required"),
    ("cron-words", _set("schedule", value="every hour"), "schedule", "cron expression"),
    ("cron-four-fields", _set("schedule", value="0 * * *"), "schedule", "cron expression"),
    ("cron-six-fields", _set("schedule", value="0 0 * * * *"), "schedule", "cron expression"),
    ("cron-bad-chars", _set("schedule", value="0 ! * * *"), "schedule", "cron expression"),
    (
        "unknown-column-type",
        _set(*REVENUE, "type", value="MONEYZ"),
        "datasets.customer_revenue.columns.revenue.type",
        "'MONEYZ' is not a SQL type",
    ),
    (
        "column-name",
        _set("datasets", "daily_sales", "columns", "Bad Name", value={"type": "INTEGER"}),
        "datasets.daily_sales.columns",
        "column name 'Bad Name'",
    ),
    (
        "dataset-name",
        _set("datasets", "Daily-Sales", value={}),
        "datasets",
        "dataset name 'Daily-Sales'",
    ),
    ("bad-layer", _set("pipeline", 0, "layer", value="gold"), "pipeline.0.layer", "'staging'"),
    ("model-name", _set("pipeline", 0, "name", value="Orders"), "pipeline.0.name", "pattern"),
    ("duplicate-model", _duplicate_model, "pipeline.1.name", "another model is named"),
    ("model-like-source", _model_named_like_source, "pipeline.0.name", "a source is named"),
    ("access-unknown", _grant_unknown, "access.5.dataset", "unknown dataset 'ghost'"),
    (
        "access-two-grantees",
        _set("access", 0, "user", value="ana"),
        "access.0",
        "exactly one of 'user', 'group' or 'role'",
    ),
    ("sources-not-mapping", _set("sources", value=["orders"]), "sources", "dictionary"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_DESCRIPTORS],
)
def test_bad_descriptor_is_refused_with_path_and_reason(
    example_product: Path, mutate: Mutation, path: str, reason: str
) -> None:
    descriptor_file = edit_descriptor(example_product, mutate)
    error = refusal(example_product)
    assert error.where == f"{descriptor_file}: {path}"
    assert error.message.startswith(f"invalid descriptor: {path}: ")
    assert reason in error.message
    assert error.details["problems"][0]["path"] == path


def test_every_problem_is_listed(example_product: Path) -> None:
    def mutate(data: dict[str, Any]) -> None:
        data["version"] = "one"
        data["owner"]["email"] = "nobody"
        data["colour"] = "red"

    edit_descriptor(example_product, mutate)
    error = refusal(example_product)
    paths = sorted(p["path"] for p in error.details["problems"])
    assert paths == ["colour", "owner.email", "version"]
    assert error.message.endswith("(and 2 more)")


def test_bad_sql_file_model_names_the_sql_file(example_product: Path) -> None:
    sql_file = example_product / "pipeline" / "gold.sql"
    sql_file.write_text("-- layer: gold\nSELECT 1 AS x\n")
    error = refusal(example_product)
    assert error.where == f"{sql_file}: layer"
    assert error.details["problems"] == [
        {"path": "layer", "message": "Input should be 'staging' or 'output'", "file": str(sql_file)}
    ]


def test_error_body_has_the_stable_shape(example_product: Path) -> None:
    edit_descriptor(example_product, _set("version", value="1"))
    body = refusal(example_product).to_dict()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "invalid_descriptor"
    assert set(body["error"]) == {"code", "message", "where", "details"}


# connectors: the rest of a source entry is validated by the connector of its type


def connector_refusal(product: Path, mutate: Mutation) -> DescriptorError:
    """The error building the connectors of `product` after `mutate` raises."""
    edit_descriptor(product, mutate)
    descriptor = load_descriptor(product)
    with pytest.raises(DescriptorError) as caught:
        build_connectors(descriptor, SourceContext(product, product / "data"))
    return caught.value


def test_example_connectors_build(example_product: Path) -> None:
    connectors = build_connectors(
        load_descriptor(example_product), SourceContext(example_product, example_product / "d")
    )
    assert {name: c.spec.type for name, c in connectors.items()} == {
        "orders": "file",
        "customers": "file",
        "returns": "push",
    }
    assert [c.spec.mode for c in connectors.values()] == ["replace", "replace", "append"]
    assert connectors["returns"].pulls is False
    assert connectors["orders"].describe() == {
        "type": "file",
        "mode": "replace",
        "path": "data/orders.csv",
        "format": "csv",
    }


def test_unknown_connector_type_is_refused(example_product: Path) -> None:
    error = connector_refusal(example_product, _set("sources", "orders", "type", value="ftp"))
    assert error.where == f"{example_product / DESCRIPTOR_FILE}: sources.orders.type"
    assert "unknown connector type 'ftp'" in error.message
    assert "file" in error.message and "push" in error.message


BAD_SOURCES = [
    ("unknown-field", ("orders", "colour"), "red", "sources.orders.colour", "unknown field"),
    ("empty-path", ("orders", "path"), "", "sources.orders.path", "at least 1 character"),
    ("bad-format", ("orders", "format"), "xls", "sources.orders.format", "'parquet'"),
    ("bad-mode", ("returns", "mode"), "upsert", "sources.returns.mode", "'append'"),
    ("bad-option", ("customers", "options"), "x", "sources.customers.options", "dictionary"),
]


@pytest.mark.parametrize(
    ("keys", "value", "path", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_SOURCES],
)
def test_bad_connector_field_is_refused(
    example_product: Path, keys: tuple[str, str], value: Any, path: str, reason: str
) -> None:
    error = connector_refusal(example_product, _set("sources", *keys, value=value))
    assert error.where == f"{example_product / DESCRIPTOR_FILE}: {path}"
    assert error.message.startswith(f"{path}: ")
    assert reason in error.message


def test_missing_connector_field_is_refused(example_product: Path) -> None:
    error = connector_refusal(example_product, lambda d: d["sources"]["orders"].pop("path"))
    assert error.where == f"{example_product / DESCRIPTOR_FILE}: sources.orders.path"
    assert error.message == "sources.orders.path: Field required"
