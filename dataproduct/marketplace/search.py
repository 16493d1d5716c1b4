"""Full-text search over the marketplace, ranked, filtered and paginated.

Each product and each dataset is one entry of `search_entries` with four weighted texts:
names (heaviest), tags, descriptions, then column names and descriptions. SQLite searches
an FTS5 table with bm25 column weights; PostgreSQL a weighted `tsvector` with a GIN index
and `ts_rank`. Both match every query word as a prefix, so partial words find results.
The index is rebuilt for a product inside the transaction that stores its publication.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Select, delete, insert, select, text

from dataproduct.errors import BadRequestError
from dataproduct.marketplace.models import search_entries, search_facets
from dataproduct.marketplace.publication import DatasetDocument, Publication

if TYPE_CHECKING:
    from dataproduct.marketplace.store import MarketplaceStore

MAX_LIMIT = 100
MAX_TERMS = 12
SNIPPET_OPEN, SNIPPET_CLOSE = "[", "]"
# bm25 weights of names, tags, descriptions, columns (SQLite) ...
FTS_WEIGHTS = (10.0, 5.0, 2.0, 1.0)
# ... and ts_rank weights of D (columns), C (descriptions), B (tags), A (names) (PostgreSQL).
TS_WEIGHTS = "{0.05, 0.2, 0.5, 1.0}"
TS_DOCUMENT = (
    "setweight(to_tsvector('simple', names), 'A') || "
    "setweight(to_tsvector('simple', tags), 'B') || "
    "setweight(to_tsvector('simple', descriptions), 'C') || "
    "setweight(to_tsvector('simple', columns), 'D')"
)


@dataclass(frozen=True)
class SearchFilters:
    """Narrow a search: business area (path prefix), owner (email or name), tag,
    classification of a column, and the kind of entry."""

    area: str | None = None
    owner: str | None = None
    tag: str | None = None
    classification: str | None = None
    kind: Literal["product", "dataset"] | None = None


@dataclass(frozen=True)
class SearchHit:
    """One product (`dataset` None) or one dataset that matched, best first."""

    product: str
    dataset: str | None
    score: float
    snippet: str | None
    title: str
    description: str
    domain: str


@dataclass(frozen=True)
class SearchResults:
    """A page of hits and how many entries matched in all."""

    total: int
    hits: list[SearchHit] = field(default_factory=list)
    limit: int = 20
    offset: int = 0


def words(text_value: str) -> str:
    """Lower-case words of `text_value`, split on punctuation and underscores."""
    return " ".join(re.findall(r"[^\W_]+", text_value.lower()))


def query_terms(query: str) -> list[str]:
    """The words of a user's query that the index can match (at most `MAX_TERMS`)."""
    return [term[:64] for term in words(query).split()][:MAX_TERMS]


def search(
    store: MarketplaceStore,
    query: str = "",
    filters: SearchFilters | None = None,
    limit: int = 20,
    offset: int = 0,
) -> SearchResults:
    """Entries matching every word of `query` (as prefixes) and the filters, best first.

    An empty query lists the entries the filters let through, by product and dataset name.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIMIT}", where="limit")
    if offset < 0:
        raise BadRequestError("offset must not be negative", where="offset")
    terms = query_terms(query)
    clauses, params = _filter_clauses(filters or SearchFilters())
    params.update(limit=limit, offset=offset)
    if not terms:
        sql_count, sql_page = _browse_sql(clauses)
    elif store.dialect == "sqlite":
        params["match"] = " ".join(f'"{term}"*' for term in terms)
        sql_count, sql_page = _fts5_sql(clauses)
    else:
        params["match"] = " & ".join(f"{term}:*" for term in terms)
        sql_count, sql_page = _tsquery_sql(clauses)
    with store.engine.connect() as connection:
        total = connection.execute(text(sql_count), params).scalar_one()
        rows = connection.execute(text(sql_page), params).all() if total > offset else []
    hits = [
        SearchHit(
            r.product,
            r.dataset,
            float(r.score),
            r.snippet or None,
            r.title,
            r.description,
            r.domain,
        )
        for r in rows
    ]
    return SearchResults(total=total, hits=hits, limit=limit, offset=offset)


def _filter_clauses(filters: SearchFilters) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if filters.area:
        area = filters.area.strip("/").lower()
        clauses.append("(e.domain = :area OR substr(e.domain, 1, :area_len) = :area_prefix)")
        params.update(area=area, area_prefix=f"{area}/", area_len=len(area) + 1)
    if filters.owner:
        clauses.append("(e.owner_email = :owner OR e.owner_name = :owner)")
        params["owner"] = filters.owner.strip().lower()
    for kind in ("tag", "classification"):
        value = getattr(filters, kind)
        if value:
            clauses.append(
                "EXISTS (SELECT 1 FROM search_facets f WHERE f.entry_id = e.id "
                f"AND f.kind = '{kind}' AND f.value = :{kind})"
            )
            params[kind] = value.strip().lower()
    if filters.kind == "product":
        clauses.append("e.dataset IS NULL")
    elif filters.kind == "dataset":
        clauses.append("e.dataset IS NOT NULL")
    return clauses, params


def _and(clauses: list[str]) -> str:
    return "".join(f" AND {clause}" for clause in clauses)


PAGE_ORDER = (
    "ORDER BY score DESC, product, dataset IS NOT NULL, dataset LIMIT :limit OFFSET :offset"
)
COLUMNS = "e.product, e.dataset, e.title, e.description, e.domain"


def _browse_sql(clauses: list[str]) -> tuple[str, str]:
    where = f"WHERE 1 = 1{_and(clauses)}"
    return (
        f"SELECT count(*) FROM search_entries e {where}",
        f"SELECT {COLUMNS}, 0.0 AS score, NULL AS snippet FROM search_entries e {where} "
        f"{PAGE_ORDER}",
    )


def _fts5_sql(clauses: list[str]) -> tuple[str, str]:
    source = (
        "FROM search_fts JOIN search_entries e ON e.id = search_fts.rowid "
        f"WHERE search_fts MATCH :match{_and(clauses)}"
    )
    weights = ", ".join(str(w) for w in FTS_WEIGHTS)
    snippet = f"snippet(search_fts, -1, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 12)"
    return (
        f"SELECT count(*) {source}",
        f"SELECT {COLUMNS}, -bm25(search_fts, {weights}) AS score, {snippet} AS snippet "
        f"{source} {PAGE_ORDER}",
    )


def _tsquery_sql(clauses: list[str]) -> tuple[str, str]:
    source = (
        "FROM search_entries e, to_tsquery('simple', :match) q "
        f"WHERE e.document @@ q{_and(clauses)}"
    )
    page = (
        f"SELECT e.id, {COLUMNS}, ts_rank('{TS_WEIGHTS}', e.document, q) AS score "
        f"{source} {PAGE_ORDER}"
    )
    headline = (
        "ts_headline('simple', e.descriptions || ' ' || e.columns, to_tsquery('simple', :match), "
        f"'StartSel={SNIPPET_OPEN}, StopSel={SNIPPET_CLOSE}, MaxWords=14, MinWords=4')"
    )
    return (
        f"SELECT count(*) {source}",
        f"SELECT p.product, p.dataset, p.title, p.description, p.domain, p.score, "
        f"{headline} AS snippet FROM ({page}) p JOIN search_entries e ON e.id = p.id "
        "ORDER BY p.score DESC, p.product, p.dataset IS NOT NULL, p.dataset",
    )


def products_with_facet(kind: str, value: str) -> Select[tuple[str]]:
    """Names of products whose entry carries the facet (its own or a dataset's tag)."""
    return (
        select(search_entries.c.product)
        .join(search_facets, search_facets.c.entry_id == search_entries.c.id)
        .where(
            search_entries.c.dataset.is_(None),
            search_facets.c.kind == kind,
            search_facets.c.value == value.strip().lower(),
        )
    )


def index_product(connection: Connection, publication: Publication) -> None:
    """Replace the product's entries in the index, in the caller's transaction."""
    product = publication.product.name
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.execute(
            text(
                "DELETE FROM search_fts WHERE rowid IN "
                "(SELECT id FROM search_entries WHERE product = :product)"
            ),
            {"product": product},
        )
    connection.execute(delete(search_entries).where(search_entries.c.product == product))
    entries = [_product_entry(publication)] + [
        _dataset_entry(publication, d) for d in publication.datasets.values()
    ]
    ids = (
        connection.execute(
            insert(search_entries).returning(search_entries.c.id, sort_by_parameter_order=True),
            [entry for entry, _ in entries],
        )
        .scalars()
        .all()
    )
    facets = [
        {"entry_id": entry_id, "kind": kind, "value": value}
        for entry_id, (_, entry_facets) in zip(ids, entries, strict=True)
        for kind, value in entry_facets
    ]
    if facets:
        connection.execute(insert(search_facets), facets)
    if sqlite:
        statement = (
            "INSERT INTO search_fts (rowid, names, tags, descriptions, columns) "
            "SELECT id, names, tags, descriptions, columns FROM search_entries "
            "WHERE product = :product"
        )
    else:
        statement = f"UPDATE search_entries SET document = {TS_DOCUMENT} WHERE product = :product"
    connection.execute(text(statement), {"product": product})


Entry = tuple[dict[str, Any], set[tuple[str, str]]]


def _base_entry(publication: Publication) -> dict[str, Any]:
    info = publication.product
    return {
        "product": info.name,
        "domain": info.domain.lower(),
        "owner_email": info.owner.email.lower(),
        "owner_name": info.owner.name.lower(),
    }


def _product_entry(publication: Publication) -> Entry:
    info = publication.product
    facets = {("tag", t.lower()) for t in info.tags}
    for dataset in publication.datasets.values():
        facets |= {("tag", t.lower()) for t in dataset.tags}
        facets |= {("classification", c.lower()) for c in dataset.classifications}
    entry = {
        **_base_entry(publication),
        "dataset": None,
        "title": info.name,
        "description": info.description[:2000],
        "names": words(info.name),
        "tags": words(" ".join([*info.tags, info.domain])),
        "descriptions": words(info.description),
        "columns": "",
    }
    return entry, facets


def _dataset_entry(publication: Publication, dataset: DatasetDocument) -> Entry:
    info = publication.product
    facets = {("tag", t.lower()) for t in [*dataset.tags, *info.tags]}
    facets |= {("classification", c.lower()) for c in dataset.classifications}
    columns = " ".join(f"{c.name} {c.description}" for c in dataset.columns)
    entry = {
        **_base_entry(publication),
        "dataset": dataset.name,
        "title": dataset.name,
        "description": dataset.description[:2000],
        "names": words(dataset.name),
        "tags": words(" ".join(dataset.tags)),
        "descriptions": words(f"{dataset.description} {info.name}"),
        "columns": words(columns),
    }
    return entry, facets
