"""The policy on its own: row filters guarded, grants matched and combined, tags applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dataproduct.cli import example_dir
from dataproduct.descriptor import load_descriptor
from dataproduct.grants import Grant, GrantSpec, check_row_filter
from dataproduct.policy import Policy
from dataproduct.security import ANONYMOUS, Principal

DESCRIPTOR = load_descriptor(Path(example_dir()))


def _policy(*specs: GrantSpec) -> Policy:
    now = datetime.now(UTC)
    grants = tuple(
        Grant(id=str(i), origin="api", spec=s, created_at=now, created_by="t")
        for i, s in enumerate(specs)
    )
    return Policy(DESCRIPTOR, grants, admin_roles=frozenset({"admins"}), salt="s")


def _who(*groups: str, roles: tuple[str, ...] = (), scopes: tuple[str, ...] = ()) -> Principal:
    return Principal("p", frozenset(scopes), frozenset(groups), frozenset(roles))


@pytest.mark.parametrize(
    "text",
    [
        "country = 'DE'",
        "country IN ('DE', 'FR') AND orders > 3",
        "lower(name) LIKE 'a%' OR revenue BETWEEN 1 AND 2",
        "customer_id IS NOT NULL",
    ],
)
def test_row_filters_over_columns_are_accepted(text: str) -> None:
    check_row_filter(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("country IN (SELECT country FROM output.daily_sales)", "not allowed"),
        ("EXISTS (SELECT 1)", "not allowed"),
        ("t.country = 'DE'", "must not name a table"),
        ("read_csv('/etc/passwd') IS NULL", "read_csv"),
        ("current_setting('threads') = '1'", "current_setting"),
        ("random() < 0.5", "rand()"),
        ("country = 'DE'; DROP TABLE x", "one boolean expression"),
        ("SELECT 1", "one boolean expression"),
        ("country = ", "not a SQL expression"),
        ("country = $1", "not allowed"),
    ],
)
def test_row_filters_that_reach_outside_the_row_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="row_filter") as raised:
        check_row_filter(text)
    assert reason in str(raised.value)


def test_no_grant_no_access_unless_public() -> None:
    policy = _policy()
    assert policy.read_access(_who(), "customer_revenue") is None
    assert policy.read_access(ANONYMOUS, "daily_sales") is not None


def test_everyone_is_a_group_of_every_principal() -> None:
    policy = _policy(GrantSpec(dataset="customer_revenue", group="everyone"))
    assert policy.read_access(_who(), "customer_revenue") is not None


def test_classified_columns_are_masked_without_their_tag() -> None:
    policy = _policy(
        GrantSpec(dataset="customer_revenue", group="a"), GrantSpec(tag="pii", group="a")
    )
    access = policy.read_access(_who("a"), "customer_revenue")
    assert access is not None and access.masks == {"revenue": "null"}


def test_grant_masks_combine_to_the_widest_view() -> None:
    policy = _policy(
        GrantSpec(dataset="daily_sales", group="a", masks={"orders": "null", "country": "null"}),
        GrantSpec(dataset="daily_sales", group="b", masks={"orders": "hash"}),
    )
    access = policy.read_access(_who("a", "b"), "customer_revenue")
    assert access is None
    # daily_sales is public: the implicit public grant has no masks, so nothing is masked
    public = policy.read_access(_who("a", "b"), "daily_sales")
    assert public is not None and public.masks == {}


def test_filters_of_several_grants_are_ored_and_one_without_filter_wins() -> None:
    de = GrantSpec(dataset="customer_revenue", group="a", row_filter="country = 'DE'")
    fr = GrantSpec(dataset="customer_revenue", group="b", row_filter="country = 'FR'")
    access = _policy(de, fr).read_access(_who("a", "b"), "customer_revenue")
    assert access is not None and access.row_filter is not None
    assert access.row_filter.sql("duckdb") == "(country = 'DE') OR (country = 'FR')"
    wide = GrantSpec(dataset="customer_revenue", group="c")
    access = _policy(de, wide).read_access(_who("a", "c"), "customer_revenue")
    assert access is not None and access.row_filter is None


def test_expired_grants_are_ignored() -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    policy = _policy(GrantSpec(dataset="customer_revenue", group="a", expires=past))
    assert policy.read_access(_who("a"), "customer_revenue") is None


def test_admins_by_scope_or_by_role() -> None:
    policy = _policy()
    assert policy.is_admin(_who(scopes=("control:admin",)))
    assert policy.is_admin(_who(roles=("admins",)))
    assert policy.is_admin(_who("admins"))
    assert not policy.is_admin(_who(roles=("admins",), scopes=("output:read",)))
    assert not policy.is_admin(_who("analysts"))


def test_write_needs_a_source_grant() -> None:
    policy = _policy(GrantSpec(source="returns", user="p"))
    assert policy.can_write(_who(), "returns")
    assert not policy.can_write(_who(), "orders")
    assert not _policy().can_write(_who(), "returns")
