"""Grants: who may read which dataset (or every dataset with a tag), and write which source.

A grant names one target (a dataset, a tag or a source) and one grantee (a user, a group or
a role), with an optional expiry. Read grants may mask columns (null or a keyed hash) and
filter rows with a guarded SQL predicate. Grants come from the descriptor's `access`
section and from the control port; both live in `meta.grants`, and every change made
through the control port is kept in `meta.grant_changes`.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import sqlglot
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from dataproduct.errors import NotFoundError
from dataproduct.sqlguard import GuardContext, NoOutsideFunctions, function_name, position
from dataproduct.storage import Storage, fetch_value

MaskKind = Literal["null", "hash"]
GRANTEE_KINDS = ("user", "group", "role")
TARGET_KINDS = ("dataset", "tag", "source")
EVERYONE = "everyone"  # the group every authenticated principal belongs to

_FILTER_FORBIDDEN = (exp.Query, exp.Subquery, exp.Table, exp.Placeholder, exp.Parameter)
_FILTER_DENIED_FUNCTIONS = ("rand", "setseed", "uuid", "gen_random_uuid", "now", "current_")

GRANTS_DDL = (
    """CREATE TABLE IF NOT EXISTS meta.grants (
        id VARCHAR, origin VARCHAR, spec JSON, created_at TIMESTAMPTZ, created_by VARCHAR,
        position BIGINT)""",
    """CREATE TABLE IF NOT EXISTS meta.grant_changes (
        changed_at TIMESTAMPTZ, principal VARCHAR, action VARCHAR, grant_id VARCHAR, spec JSON)""",
)


def check_row_filter(text: str) -> exp.Expr:
    """A row filter parsed and guarded: one boolean expression over the dataset's columns.

    No subqueries, tables, parameters or functions that reach outside the row; raises
    ValueError with the reason (and position) otherwise.
    """
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except (ParseError, TokenError) as error:
        first = str(error).splitlines()[0]
        raise ValueError(f"row_filter is not a SQL expression: {first}") from None
    if not isinstance(tree, exp.Condition) or isinstance(tree, exp.Query):
        raise ValueError("row_filter must be one boolean expression, like country = 'DE'")
    for node in tree.walk():
        reason = _filter_problem(node)
        if reason:
            line, column = position(node)
            at = f" (line {line}, column {column})" if line else ""
            raise ValueError(f"row_filter: {reason}{at}")
    return tree


def _filter_problem(node: exp.Expr) -> str | None:
    if isinstance(node, _FILTER_FORBIDDEN):
        return f"{type(node).__name__.lower()} is not allowed in a row filter"
    if isinstance(node, exp.Column) and (node.table or node.args.get("db")):
        return f"column '{node.sql()}' must not name a table"
    if isinstance(node, exp.Func):
        name = function_name(node)
        outside = next(NoOutsideFunctions().check(node, GuardContext()), None)
        if outside is not None or name.startswith(_FILTER_DENIED_FUNCTIONS):
            return f"function {name}() is not allowed in a row filter"
    return None


class GrantSpec(BaseModel):
    """One grant as written: a target, a grantee, and what the grantee sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str | None = None
    tag: str | None = None
    source: str | None = None
    user: str | None = Field(default=None, min_length=1)
    group: str | None = Field(default=None, min_length=1)
    role: str | None = Field(default=None, min_length=1)
    expires: datetime | None = None
    masks: dict[str, MaskKind] = {}
    row_filter: str | None = None

    @field_validator("row_filter")
    @classmethod
    def _guarded_filter(cls, value: str | None) -> str | None:
        if value is not None:
            check_row_filter(value)
        return value

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _one_target_one_grantee(self) -> GrantSpec:
        targets = [kind for kind in TARGET_KINDS if getattr(self, kind) is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one of 'dataset', 'tag' or 'source'")
        grantees = [kind for kind in GRANTEE_KINDS if getattr(self, kind) is not None]
        if len(grantees) != 1:
            raise ValueError("give exactly one of 'user', 'group' or 'role'")
        if self.source is not None and (self.masks or self.row_filter):
            raise ValueError("a source grant allows writing; masks and row_filter apply to reads")
        return self

    @property
    def target(self) -> tuple[str, str]:
        """(kind, name) of what is granted."""
        kind = next(k for k in TARGET_KINDS if getattr(self, k) is not None)
        return kind, str(getattr(self, kind))

    @property
    def grantee(self) -> tuple[str, str]:
        """(kind, name) of who is granted."""
        kind = next(k for k in GRANTEE_KINDS if getattr(self, k) is not None)
        return kind, str(getattr(self, kind))

    def expired(self, now: datetime) -> bool:
        """Whether the grant has lapsed."""
        return self.expires is not None and self.expires <= now

    def to_raw(self) -> dict[str, Any]:
        """The grant as JSON, without empty fields."""
        return self.model_dump(mode="json", exclude_defaults=True)


class Grant(BaseModel):
    """A stored grant: the spec plus where it came from."""

    model_config = ConfigDict(frozen=True)

    id: str
    origin: Literal["descriptor", "api"]
    spec: GrantSpec
    created_at: datetime
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        """The grant as the control port shows it."""
        return {
            "id": self.id,
            "origin": self.origin,
            **self.spec.to_raw(),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


class GrantStore:
    """The grants in `meta`, mirrored in memory so checking a request reads no table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self.version = 0  # bumped after every change of the grants (a cache key)
        with storage.transaction() as cursor:
            for ddl in GRANTS_DDL:
                cursor.execute(ddl)
        self._reload()

    def all(self) -> tuple[Grant, ...]:
        """Every grant, descriptor ones first."""
        return self._grants

    def sync_descriptor(self, specs: list[GrantSpec]) -> None:
        """Make the descriptor's grants exactly `specs` (a redeploy replaces them)."""
        wanted = [spec.to_raw() for spec in specs]
        current = [g.spec.to_raw() for g in self._grants if g.origin == "descriptor"]
        if wanted == current:
            return
        with self._lock, self._storage.transaction() as cursor:
            cursor.execute("DELETE FROM meta.grants WHERE origin = 'descriptor'")
            self._insert(cursor, specs, "descriptor", "descriptor")
        self._reload()

    def replace(self, specs: list[GrantSpec], principal: str) -> tuple[Grant, ...]:
        """Replace every grant made through the control port; the change is recorded."""
        with self._lock, self._storage.transaction() as cursor:
            old = [g for g in self._grants if g.origin == "api"]
            cursor.execute("DELETE FROM meta.grants WHERE origin = 'api'")
            for grant in old:
                _record(cursor, principal, "revoke", grant.id, grant.spec)
            for grant_id, spec in self._insert(cursor, specs, "api", principal):
                _record(cursor, principal, "grant", grant_id, spec)
        self._reload()
        return self._grants

    def add(self, spec: GrantSpec, principal: str) -> Grant:
        """Add one grant through the control port."""
        with self._lock, self._storage.transaction() as cursor:
            [(grant_id, _)] = self._insert(cursor, [spec], "api", principal)
            _record(cursor, principal, "grant", grant_id, spec)
        self._reload()
        return next(g for g in self._grants if g.id == grant_id)

    def revoke(self, grant_id: str, principal: str) -> Grant:
        """Remove one grant made through the control port (404 if there is none)."""
        grant = next((g for g in self._grants if g.id == grant_id), None)
        if grant is None or grant.origin != "api":
            reason = "it comes from the descriptor" if grant else "there is no such grant"
            raise NotFoundError(f"cannot revoke grant '{grant_id}': {reason}", where="grant")
        with self._lock, self._storage.transaction() as cursor:
            cursor.execute("DELETE FROM meta.grants WHERE id = ?", [grant_id])
            _record(cursor, principal, "revoke", grant_id, grant.spec)
        self._reload()
        return grant

    def changes(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest changes made through the control port, newest first."""
        with self._storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT changed_at, principal, action, grant_id, spec FROM meta.grant_changes "
                "ORDER BY changed_at DESC LIMIT ?",
                [limit],
            ).fetchall()
        return [
            {"at": at.isoformat(), "principal": who, "action": act, "id": gid, **json.loads(s)}
            for at, who, act, gid, s in rows
        ]

    def _insert(
        self, cursor: Any, specs: list[GrantSpec], origin: str, principal: str
    ) -> list[tuple[str, GrantSpec]]:
        now = datetime.now(UTC)
        added = [(uuid.uuid4().hex[:16], spec) for spec in specs]
        last = fetch_value(cursor, "SELECT coalesce(max(position), 0) FROM meta.grants")
        for offset, (grant_id, spec) in enumerate(added, start=1):
            cursor.execute(
                "INSERT INTO meta.grants VALUES (?, ?, ?, ?, ?, ?)",
                [grant_id, origin, json.dumps(spec.to_raw()), now, principal, last + offset],
            )
        return added

    def _reload(self) -> None:
        self._grants = self._load()
        self.version += 1  # after the grants: whoever reads the new version sees them

    def _load(self) -> tuple[Grant, ...]:
        with self._storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT id, origin, spec, created_at, created_by FROM meta.grants "
                "ORDER BY origin DESC, position"
            ).fetchall()
        return tuple(
            Grant(
                id=grant_id,
                origin=origin,
                spec=GrantSpec.model_validate(json.loads(spec)),
                created_at=created_at,
                created_by=created_by,
            )
            for grant_id, origin, spec, created_at, created_by in rows
        )


def _record(cursor: Any, principal: str, action: str, grant_id: str, spec: GrantSpec) -> None:
    cursor.execute(
        "INSERT INTO meta.grant_changes VALUES (?, ?, ?, ?, ?)",
        [datetime.now(UTC), principal, action, grant_id, json.dumps(spec.to_raw())],
    )
