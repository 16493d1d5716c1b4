"""The marketplace store: what products published, kept in SQLite or PostgreSQL.

`MarketplaceStore(url)` opens (and migrates) the database. `publish` records a product's
publication in one transaction: the product, its datasets (older versions kept), the
history and the search index; an unchanged publication only refreshes when it was seen.
A product name belongs to the credential subject that first published it.

A product may restrict who sees it (`product.visibility.groups`). Every read takes an
optional `viewer` (`search.Viewer`: the caller's subject and groups): a restricted product
is then left out of lists, search and the area tree, and reads of it or its datasets answer
404 exactly as for an unknown name, unless the viewer is in one of its groups or is the
subject that publishes it. Without a viewer (internal callers) everything is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dataproduct.errors import ConflictError, NotFoundError, PermissionDeniedError
from dataproduct.marketplace import search
from dataproduct.marketplace.migrations import upgrade_to_head
from dataproduct.marketplace.models import (
    dataset_versions,
    datasets,
    products,
    publications,
)
from dataproduct.marketplace.publication import (
    DatasetDocument,
    Publication,
    publication_digest,
)
from dataproduct.marketplace.search import Viewer as Viewer
from dataproduct.marketplace.search import hidden_products

DEFAULT_URL = "sqlite:///marketplace.db"
ACTIVE, STALE, UNREACHABLE = "active", "stale", "unreachable"


@dataclass(frozen=True)
class PublishResult:
    """What a publish did: `changed` is False when the content was already known."""

    product: str
    changed: bool
    created: bool
    version: str
    digest: str
    archived_versions: tuple[tuple[str, int], ...] = ()


def utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime (SQLite hands back naive ones)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout, real BEGINs."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's begin event issues BEGIN
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


class MarketplaceStore:
    """Products, datasets, history and search index of the marketplace."""

    def __init__(self, url: str = DEFAULT_URL, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            upgrade_to_head(self.engine)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def publish(
        self, publication: Publication, subject: str, *, now: datetime | None = None
    ) -> PublishResult:
        """Record `publication`, pushed with the credential of `subject`, atomically.

        Raises `PermissionDeniedError` (nothing stored) when the product name belongs to
        another subject.
        """
        moment = utc(now or datetime.now(UTC))
        try:
            return self._publish_once(publication, subject, moment)
        except IntegrityError:  # a first publish of the same name raced ours: decide again
            try:
                return self._publish_once(publication, subject, moment)
            except IntegrityError as error:
                raise ConflictError(
                    "the product is being published concurrently; retry",
                    where="product.name",
                ) from error

    def _publish_once(self, publication: Publication, subject: str, now: datetime) -> PublishResult:
        name = publication.product.name
        digest = publication_digest(publication)
        with self.engine.connect() as connection:
            connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with connection.begin():
                known = self._owned_row(connection, name, subject)
                if known is not None and known.digest == digest:
                    self._seen_again(connection, publication, subject, digest, now)
                    return PublishResult(name, False, False, publication.product.version, digest)
                values = _product_values(publication, digest, now)
                if known is None:
                    connection.execute(
                        insert(products).values(
                            **values, name=name, publisher_subject=subject, first_seen=now
                        )
                    )
                else:
                    connection.execute(
                        update(products).where(products.c.name == name).values(**values)
                    )
                archived = _replace_datasets(connection, publication, now)
                search.index_product(connection, publication)
                _record(connection, name, digest, subject, now, changed=True)
        return PublishResult(
            name, True, known is None, publication.product.version, digest, archived
        )

    def _owned_row(self, connection: Connection, name: str, subject: str) -> Any:
        """The product's row (None when new); refuses a name another subject owns."""
        query = select(products.c.publisher_subject, products.c.digest).where(
            products.c.name == name
        )
        if self.dialect != "sqlite":
            query = query.with_for_update()
        known = connection.execute(query).first()
        if known is not None and known.publisher_subject != subject:
            raise PermissionDeniedError(
                f"the product {name!r} was published by another credential",
                where="product.name",
            )
        return known

    def _seen_again(
        self,
        connection: Connection,
        publication: Publication,
        subject: str,
        digest: str,
        now: datetime,
    ) -> None:
        """Same content: refresh when it was seen and the volatile parts (freshness)."""
        name = publication.product.name
        connection.execute(
            update(products)
            .where(products.c.name == name)
            .values(last_seen=now, status=ACTIVE, publication=publication.model_dump(mode="json"))
        )
        _record(connection, name, digest, subject, now, changed=False)

    def product(self, name: str, *, viewer: Viewer | None = None) -> dict[str, Any]:
        """One product with its dataset summaries and its last publication (404 when
        unknown or hidden from `viewer`)."""
        query = _visible(select(products).where(products.c.name == name), viewer)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
            if row is None:
                raise NotFoundError(f"no product {name!r}", where="product")
            rows = connection.execute(
                select(datasets).where(datasets.c.product == name).order_by(datasets.c.name)
            ).all()
        return {
            **_product_view(row),
            "publication": row.publication,
            "datasets": [_dataset_summary(r) for r in rows],
        }

    def dataset(
        self,
        product: str,
        name: str,
        version: int | None = None,
        *,
        viewer: Viewer | None = None,
    ) -> dict[str, Any]:
        """A dataset in full: the current version, or an older one kept by the marketplace
        (404 when unknown, or when its product is hidden from `viewer`)."""
        where = f"datasets.{product}.{name}"
        suffix = f" version {version}" if version is not None else ""
        missing = NotFoundError(f"no dataset {name!r}{suffix} in product {product!r}", where=where)
        with self.engine.connect() as connection:
            if viewer is not None and not self._visible_to(connection, product, viewer):
                raise missing
            current = connection.execute(
                select(datasets).where(datasets.c.product == product, datasets.c.name == name)
            ).first()
            older = connection.execute(
                select(dataset_versions)
                .where(dataset_versions.c.product == product, dataset_versions.c.name == name)
                .order_by(dataset_versions.c.version.desc())
            ).all()
        versions = [_version_view(r, current=False) for r in older]
        if current is not None:
            versions.insert(0, _version_view(current, current=True))
        if current is not None and version in (None, current.version):
            return {**_dataset_view(current), "current": True, "versions": versions}
        chosen = next((r for r in older if version in (None, r.version)), None)
        if chosen is None:
            raise missing
        return {
            **chosen.document,
            "product": product,
            "version": chosen.version,
            "current": False,
            "versions": versions,
        }

    def products(
        self,
        *,
        area: str | None = None,
        owner: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        order: Literal["name", "recent"] = "name",
        limit: int = 100,
        offset: int = 0,
        viewer: Viewer | None = None,
    ) -> list[dict[str, Any]]:
        """Products, filtered by business area (a path prefix), owner, tag and status; only
        those `viewer` may see."""
        query = _visible(select(products), viewer)
        if area:
            query = query.where(
                or_(products.c.domain == area, products.c.domain.startswith(f"{area}/"))
            )
        if owner:
            query = query.where(
                or_(
                    func.lower(products.c.owner_email) == owner.lower(),
                    func.lower(products.c.owner_name) == owner.lower(),
                )
            )
        if tag:
            query = query.where(products.c.name.in_(search.products_with_facet("tag", tag)))
        if status:
            query = query.where(products.c.status == status)
        ordering = (
            (products.c.last_updated.desc(), products.c.name)
            if order == "recent"
            else (products.c.name,)
        )
        query = query.order_by(*ordering).limit(limit).offset(offset)
        with self.engine.connect() as connection:
            return [_product_view(row) for row in connection.execute(query)]

    def business_areas(self, *, viewer: Viewer | None = None) -> list[dict[str, Any]]:
        """The business-area tree: {name, path, products (with sub-areas), children},
        counting the products `viewer` may see (an area with none is left out)."""
        query = _visible(select(products.c.domain, func.count()), viewer).group_by(
            products.c.domain
        )
        with self.engine.connect() as connection:
            counts = {domain: count for domain, count in connection.execute(query)}
        root: dict[str, Any] = {"children": {}}
        for domain, count in counts.items():
            node = root
            parts = domain.split("/")
            for depth, part in enumerate(parts):
                node = node["children"].setdefault(
                    part,
                    {
                        "name": part,
                        "path": "/".join(parts[: depth + 1]),
                        "products": 0,
                        "children": {},
                    },
                )
                node["products"] += count
        return _sorted_tree(root["children"])

    def _visible_to(self, connection: Connection, name: str, viewer: Viewer) -> bool:
        """Whether the product exists and `viewer` may see it."""
        query = _visible(select(products.c.name).where(products.c.name == name), viewer)
        return connection.execute(query).first() is not None

    def mark_stale(
        self,
        stale_after: timedelta,
        unreachable_after: timedelta | None = None,
        *,
        now: datetime | None = None,
    ) -> dict[str, int]:
        """Mark products not seen for `stale_after` stale, for `unreachable_after` unreachable.

        Returns how many products changed to each status. A new publication makes a product
        active again.
        """
        moment = utc(now or datetime.now(UTC))
        changed = {STALE: 0, UNREACHABLE: 0}
        with self.engine.begin() as connection:
            if unreachable_after is not None:
                changed[UNREACHABLE] = _set_status(
                    connection, UNREACHABLE, moment - unreachable_after, (ACTIVE, STALE)
                )
            changed[STALE] = _set_status(connection, STALE, moment - stale_after, (ACTIVE,))
        return changed

    def history(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The publications received for a product, newest first."""
        query = (
            select(publications)
            .where(publications.c.product == name)
            .order_by(publications.c.received_at.desc(), publications.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            if (
                connection.execute(select(products.c.name).where(products.c.name == name)).first()
                is None
            ):
                raise NotFoundError(f"no product {name!r}", where="product")
            rows = connection.execute(query).all()
        return [
            {
                "digest": r.digest,
                "subject": r.subject,
                "received_at": utc(r.received_at),
                "changed": r.changed,
            }
            for r in rows
        ]


def _visible(query: Select[Any], viewer: Viewer | None) -> Select[Any]:
    """`query` over `products` without the products hidden from `viewer`."""
    if viewer is None:
        return query
    return query.where(products.c.name.not_in(hidden_products(viewer)))


def _set_status(
    connection: Connection, status: str, seen_before: datetime, from_statuses: tuple[str, ...]
) -> int:
    result = connection.execute(
        update(products)
        .where(products.c.last_seen < seen_before, products.c.status.in_(from_statuses))
        .values(status=status)
    )
    return result.rowcount


def _sorted_tree(children: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**node, "children": _sorted_tree(node["children"])} for _, node in sorted(children.items())
    ]


def _record(
    connection: Connection, name: str, digest: str, subject: str, now: datetime, *, changed: bool
) -> None:
    connection.execute(
        insert(publications).values(
            product=name, digest=digest, subject=subject, received_at=now, changed=changed
        )
    )


def _product_values(publication: Publication, digest: str, now: datetime) -> dict[str, Any]:
    info = publication.product
    return {
        "domain": info.domain,
        "domain_parts": info.domain.split("/"),
        "version": info.version,
        "major": info.major,
        "owner_name": info.owner.name,
        "owner_email": info.owner.email,
        "description": info.description,
        "tags": list(info.tags),
        "status": ACTIVE,
        "url": info.url,
        "health": "ready" if publication.health.ready else "not_ready",
        "visibility_groups": info.visible_to,
        "restricted": bool(info.visible_to),
        "digest": digest,
        "last_updated": now,
        "last_seen": now,
        "publication": publication.model_dump(mode="json"),
    }


def _dataset_values(product: str, dataset: DatasetDocument) -> dict[str, Any]:
    return {
        "product": product,
        "name": dataset.name,
        "version": dataset.version,
        "description": dataset.description,
        "tags": list(dataset.tags),
        "columns": [c.model_dump(mode="json") for c in dataset.columns],
        "classifications": dataset.classifications,
        "row_count": dataset.row_count,
        "updated_at": dataset.updated_at,
        "quality_status": dataset.quality_status,
        "sql": dataset.sql,
        "document": dataset.model_dump(mode="json"),
    }


def _replace_datasets(
    connection: Connection, publication: Publication, now: datetime
) -> tuple[tuple[str, int], ...]:
    """Store the publication's datasets; a dataset whose version moved is kept as older."""
    product = publication.product.name
    previous = connection.execute(select(datasets).where(datasets.c.product == product)).all()
    archived = [
        row
        for row in previous
        if row.name not in publication.datasets
        or publication.datasets[row.name].version != row.version
    ]
    for row in archived:
        connection.execute(
            delete(dataset_versions).where(
                dataset_versions.c.product == product,
                dataset_versions.c.name == row.name,
                dataset_versions.c.version == row.version,
            )
        )
    if archived:
        connection.execute(
            insert(dataset_versions),
            [
                {
                    "product": product,
                    "name": r.name,
                    "version": r.version,
                    "columns": r.columns,
                    "row_count": r.row_count,
                    "updated_at": r.updated_at,
                    "superseded_at": now,
                    "document": r.document,
                }
                for r in archived
            ],
        )
    connection.execute(delete(datasets).where(datasets.c.product == product))
    if publication.datasets:
        connection.execute(
            insert(datasets),
            [_dataset_values(product, d) for d in publication.datasets.values()],
        )
    return tuple((r.name, r.version) for r in archived)


def _product_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "name": row.name,
        "domain": row.domain,
        "domain_parts": row.domain_parts,
        "version": row.version,
        "major": row.major,
        "owner": {"name": row.owner_name, "email": row.owner_email},
        "description": row.description,
        "tags": row.tags,
        "status": row.status,
        "url": row.url,
        "health": row.health,
        "visibility": {"groups": row.visibility_groups},
        "first_seen": utc(row.first_seen),
        "last_updated": utc(row.last_updated),
        "last_seen": utc(row.last_seen),
    }


def _dataset_summary(row: Row[Any]) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "description": row.description,
        "tags": row.tags,
        "row_count": row.row_count,
        "updated_at": utc(row.updated_at) if row.updated_at else None,
        "quality_status": row.quality_status,
        "classifications": row.classifications,
    }


def _dataset_view(row: Row[Any]) -> dict[str, Any]:
    return {
        **row.document,
        **_dataset_summary(row),
        "product": row.product,
        "columns": row.columns,
        "sql": row.sql,
    }


def _version_view(row: Row[Any], *, current: bool) -> dict[str, Any]:
    return {
        "version": row.version,
        "current": current,
        "row_count": row.row_count,
        "updated_at": utc(row.updated_at) if row.updated_at else None,
        "columns": [{"name": c["name"], "type": c["type"]} for c in row.columns],
    }
