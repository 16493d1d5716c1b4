"""Who may see what: grants and classification tags evaluated for one principal.

- A dataset is readable with a grant of it (or of one of its tags) to the principal's
  user, one of its groups (every principal is in `everyone`) or one of its roles; a
  dataset tagged `public` is readable by every authenticated reader; administrators read
  every dataset.
- Several grants combine to the widest view: rows matching any of their filters, a column
  masked only if every grant masks it.
- A column classified `pii`, `confidential` (anything but `public` and `internal`) is
  masked for everyone, administrators included, without a grant of that tag.
- A source is writable by administrators and by principals with a grant of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlglot import exp

from dataproduct.descriptor import DatasetSpec, ProductDescriptor
from dataproduct.grants import EVERYONE, Grant, GrantSpec, MaskKind, check_row_filter
from dataproduct.security import Principal

PUBLIC_TAG = "public"
OPEN_CLASSIFICATIONS = frozenset({"public", "internal"})


@dataclass(frozen=True)
class DatasetAccess:
    """What one principal sees of one dataset: masked columns and the rows it may read."""

    dataset: str
    masks: dict[str, MaskKind] = field(default_factory=dict)
    row_filter: exp.Expr | None = None
    salt: str = ""

    @property
    def fingerprint(self) -> tuple[tuple[tuple[str, str], ...], str | None]:
        """What the view depends on: the masks and the row filter (a cache key)."""
        condition = self.row_filter.sql("duckdb") if self.row_filter is not None else None
        return tuple(sorted(self.masks.items())), condition

    @property
    def restricted(self) -> bool:
        """Whether the principal sees less than the whole dataset."""
        return bool(self.masks) or self.row_filter is not None


class Policy:
    """Grants and the descriptor's tags, checked in memory for each request."""

    def __init__(
        self,
        descriptor: ProductDescriptor,
        grants: tuple[Grant, ...],
        *,
        admin_roles: frozenset[str],
        salt: str,
    ) -> None:
        self.descriptor = descriptor
        self.grants = grants
        self.admin_roles = admin_roles
        self.salt = salt

    def is_admin(self, principal: Principal) -> bool:
        """Holds `control:admin`, or one of the administrator roles (or groups) with a
        credential not limited to other scopes."""
        if "control:admin" in principal.scopes:
            return True
        return principal.allows("control:admin") and bool(
            self.admin_roles & (principal.roles | principal.groups)
        )

    def tags(self, dataset: str) -> list[str]:
        """The dataset's classification tags, from the descriptor."""
        return self._spec(dataset).tags

    def is_public(self, dataset: str) -> bool:
        """Tagged `public`: readable by any authenticated reader, described to anyone."""
        return PUBLIC_TAG in self.tags(dataset)

    def read_access(self, principal: Principal, dataset: str) -> DatasetAccess | None:
        """How the principal may read the dataset; None when it may not."""
        tags = set(self.tags(dataset))
        held = self._held(principal)
        grants = [
            g.spec
            for g in held
            if g.spec.dataset == dataset or (g.spec.tag is not None and g.spec.tag in tags)
        ]
        if self.is_admin(principal) or PUBLIC_TAG in tags:
            grants.append(GrantSpec(dataset=dataset, user=principal.subject))
        if not grants:
            return None
        return DatasetAccess(
            dataset,
            masks=self._masks(dataset, grants, {g.spec.tag for g in held if g.spec.tag}),
            row_filter=_any_filter(grants),
            salt=self.salt,
        )

    def can_write(self, principal: Principal, source: str) -> bool:
        """Whether the principal may push to the source."""
        return self.is_admin(principal) or any(
            g.spec.source == source for g in self._held(principal)
        )

    def _masks(
        self, dataset: str, grants: list[GrantSpec], held_tags: set[str]
    ) -> dict[str, MaskKind]:
        masks: dict[str, MaskKind] = {}
        for name in set.intersection(*(set(g.masks) for g in grants)):
            kinds = {g.masks[name] for g in grants}
            masks[name] = "hash" if "hash" in kinds else "null"
        for name, column in self._spec(dataset).columns.items():
            level = column.classification
            if level and level not in OPEN_CLASSIFICATIONS and level not in held_tags:
                masks.setdefault(name, "null")
        return masks

    def _held(self, principal: Principal) -> list[Grant]:
        now = datetime.now(UTC)
        groups = principal.groups | {EVERYONE}
        held = []
        for grant in self.grants:
            kind, name = grant.spec.grantee
            matches = (
                (kind == "user" and name == principal.subject)
                or (kind == "group" and name in groups)
                or (kind == "role" and name in principal.roles)
            )
            if matches and not grant.spec.expired(now):
                held.append(grant)
        return held

    def _spec(self, dataset: str) -> DatasetSpec:
        return self.descriptor.datasets.get(dataset, DatasetSpec())


def _any_filter(grants: list[GrantSpec]) -> exp.Expr | None:
    """Rows any grant allows: None (all rows) if one grant has no filter."""
    if any(g.row_filter is None for g in grants):
        return None
    filters = [exp.paren(check_row_filter(str(g.row_filter))) for g in grants]
    return exp.or_(*filters) if len(filters) > 1 else filters[0]
