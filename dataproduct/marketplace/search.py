"""Full-text search over the marketplace, ranked, filtered, paginated and visibility-aware.

Each product and each dataset is one narrow entry of `search_entries` (what a hit shows and
what the filters test) with four texts in `search_texts`: names (ranked highest), tags,
descriptions, then column names and descriptions (written by `search_index`). Both
dialects match every query word as a prefix and read entries only for the page:

- SQLite: FTS5 (external content `search_texts`, prefix indexes) ranks by bm25 with column
  weights; the filters are sets of ids, so the ranking never reads an entry. Ties are
  broken by product and dataset name among the rows at or above the page's last score.
- PostgreSQL (`search_pg`): one GIN-indexed document per entry answers the words, where
  they were found, the filters and the visibility rule; hits come by the place of their
  weakest word (names, tags, descriptions, columns), then by product and dataset name.

Snippets are cut (in Python, the same on both) from the texts of the page's hits only.
An empty query lists the entries the filters let through, by name, on both alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    Connection,
    Row,
    Select,
    String,
    TextClause,
    bindparam,
    column,
    select,
    text,
)
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import TextualSelect

from dataproduct.errors import BadRequestError
from dataproduct.marketplace import search_pg
from dataproduct.marketplace.models import search_entries, search_facets, search_texts
from dataproduct.marketplace.search_index import TEXT_FIELDS, words
from dataproduct.marketplace.search_index import index_product as index_product

if TYPE_CHECKING:
    from dataproduct.marketplace.store import MarketplaceStore

MAX_LIMIT = 100
MAX_TERMS = 12
SNIPPET_OPEN, SNIPPET_CLOSE = "[", "]"
# bm25 weights of names, tags, descriptions, columns (SQLite).
FTS_WEIGHTS = (10.0, 5.0, 2.0, 1.0)
EXPANDING = ("viewer_groups", "hidden")


@dataclass(frozen=True)
class Viewer:
    """Who looks at the marketplace. A restricted product shows only to members of its
    groups and to the subject that publishes it; `subject` None is an anonymous reader."""

    subject: str | None = None
    groups: frozenset[str] = frozenset()


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


def query_terms(query: str) -> list[str]:
    """The words of a user's query that the index can match (at most `MAX_TERMS`)."""
    return [term[: search_pg.MAX_WORD] for term in words(query).split()][:MAX_TERMS]


def hidden_products_sql(viewer: Viewer) -> tuple[str, dict[str, Any]]:
    """SQL selecting the names of the restricted products `viewer` may not see, and its
    parameters (`viewer_groups` is an expanding list)."""
    sql = "SELECT hp.name FROM products hp WHERE hp.restricted = :restricted"
    params: dict[str, Any] = {"restricted": True}
    if viewer.subject is not None:
        sql += " AND hp.publisher_subject <> :viewer_subject"
        params["viewer_subject"] = viewer.subject
    if viewer.groups:
        sql += (
            " AND NOT EXISTS (SELECT 1 FROM search_entries ge JOIN search_facets gf"
            " ON gf.entry_id = ge.id WHERE ge.product = hp.name AND ge.dataset IS NULL"
            " AND gf.kind = 'group' AND gf.value IN :viewer_groups)"
        )
        params["viewer_groups"] = sorted(viewer.groups)
    return sql, params


def statement(sql: str, params: dict[str, Any]) -> TextClause:
    """`text(sql)` with the list parameters declared as expanding."""
    clause = text(sql)
    expanding: list[BindParameter[Any]] = [
        bindparam(name, expanding=True) for name in EXPANDING if name in params
    ]
    return clause.bindparams(*expanding) if expanding else clause


def hidden_products(viewer: Viewer) -> TextualSelect:
    """The names of the products `viewer` may not see, as a select for `not_in`."""
    sql, params = hidden_products_sql(viewer)
    return statement(sql, params).bindparams(**params).columns(column("name", String))


def search(
    store: MarketplaceStore,
    query: str = "",
    filters: SearchFilters | None = None,
    limit: int = 20,
    offset: int = 0,
    *,
    viewer: Viewer | None = None,
) -> SearchResults:
    """Entries matching every word of `query` (as prefixes) and the filters, best first.

    An empty query lists the entries the filters let through, by product and dataset name.
    With a `viewer`, restricted products it may not see (and their datasets) are left out;
    without one (internal callers) nothing is.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIMIT}", where="limit")
    if offset < 0:
        raise BadRequestError("offset must not be negative", where="offset")
    terms = query_terms(query)
    with store.engine.connect() as connection:
        if terms and store.dialect != "sqlite":
            # one snapshot for the counts and the page
            connection.execution_options(isolation_level="REPEATABLE READ")
            total, rows = search_pg.ranked_page(
                connection, terms, filters or SearchFilters(), viewer, limit, offset
            )
        else:
            total, rows = _listed_or_matched(
                connection, terms, filters or SearchFilters(), viewer, limit, offset
            )
        snippets = _snippets(connection, [r.id for r in rows], terms)
    hits = [
        SearchHit(
            r.product,
            r.dataset,
            float(r.score),
            snippets.get(r.id) or None,
            r.title,
            r.description,
            r.domain,
        )
        for r in rows
    ]
    return SearchResults(total=total, hits=hits, limit=limit, offset=offset)


def _listed_or_matched(
    connection: Connection,
    terms: list[str],
    filters: SearchFilters,
    viewer: Viewer | None,
    limit: int,
    offset: int,
) -> tuple[int, list[Row[Any]]]:
    """The total and the page of an empty query (both dialects) or of FTS5 (SQLite)."""
    sqlite = connection.dialect.name == "sqlite"
    # unary + keeps SQLite from driving FTS5 by these ids (one MATCH per id): they filter
    id_column = "+search_fts.rowid" if terms else "e.id"
    hidden = _hidden_names(connection, viewer)
    clauses, params = _filter_clauses(filters, hidden, id_column, sqlite, viewer)
    params.update(limit=limit, offset=offset, last=offset + limit - 1)
    if terms:
        params["match"] = " ".join(f'"{term}"*' for term in terms)
        sql_count, sql_page = _fts5_sql(clauses)
    else:
        sql_count, sql_page = _browse_sql(clauses)
    rows = list(connection.execute(statement(sql_page, params), params))
    if rows:
        return int(rows[0].total), rows
    return int(connection.execute(statement(sql_count, params), params).scalar_one()), rows


MAX_HIDDEN_LISTED = 5000


def _hidden_names(connection: Connection, viewer: Viewer | None) -> list[str] | str:
    """The products hidden from `viewer`: their names, or (when there are very many) the
    SQL that selects them, with its parameters bound later."""
    if viewer is None:
        return []
    sql, params = hidden_products_sql(viewer)
    names = connection.execute(
        statement(f"{sql} LIMIT {MAX_HIDDEN_LISTED + 1}", params), params
    ).scalars()
    listed = list(names)
    return listed if len(listed) <= MAX_HIDDEN_LISTED else sql


def _filter_clauses(
    filters: SearchFilters,
    hidden: list[str] | str,
    id_column: str,
    sqlite: bool,
    viewer: Viewer | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """WHERE clauses on `id_column` (the FTS5 rowid or `e.id`) and their parameters.

    Every clause is a set of entry ids read from an index, so FTS5 ranks without reading
    an entry.
    """
    entry: list[str] = []
    ids: list[str] = []
    params: dict[str, Any] = {}
    if filters.area:
        area = filters.area.strip("/").lower()
        if sqlite:  # a range the domain index answers ('0' follows '/')
            entry.append(
                "(e.domain = :area OR (e.domain >= :area_prefix AND e.domain < :area_end))"
            )
        else:
            entry.append("(e.domain = :area OR substr(e.domain, 1, :area_len) = :area_prefix)")
        params.update(
            area=area, area_prefix=f"{area}/", area_end=f"{area}0", area_len=len(area) + 1
        )
    if filters.owner:
        entry.append("(e.owner_email = :owner OR e.owner_name = :owner)")
        params["owner"] = filters.owner.strip().lower()
    if filters.kind == "product":
        entry.append("e.dataset IS NULL")
    elif filters.kind == "dataset":
        entry.append("e.dataset IS NOT NULL")
    for kind in ("tag", "classification"):
        value = getattr(filters, kind)
        if value:
            ids.append(
                f"{id_column} IN (SELECT f.entry_id FROM search_facets f "
                f"WHERE f.kind = '{kind}' AND f.value = :{kind})"
            )
            params[kind] = value.strip().lower()
    if hidden:
        if isinstance(hidden, str):  # very many: the subquery, parameters of the viewer
            names = f"({hidden})"
            params.update(hidden_products_sql(viewer or Viewer())[1])
        else:
            names = ":hidden"
            params["hidden"] = hidden
        if id_column == "e.id":
            entry.append(f"e.product NOT IN {names}")
        else:  # the ids of the hidden products' entries, read from the product index
            ids.append(
                f"{id_column} NOT IN (SELECT he.id FROM search_entries he "
                f"WHERE he.product IN {names})"
            )
    if entry and id_column != "e.id":
        ids.append(
            f"{id_column} IN (SELECT e.id FROM search_entries e WHERE {' AND '.join(entry)})"
        )
        entry = []
    return entry + ids, params


def _and(clauses: list[str]) -> str:
    return "".join(f" AND {clause}" for clause in clauses)


TIE_BREAK = "product, dataset IS NOT NULL, dataset"
COLUMNS = "e.id, e.product, e.dataset, e.title, e.description, e.domain"


def _browse_sql(clauses: list[str]) -> tuple[str, str]:
    where = f"WHERE 1 = 1{_and(clauses)}"
    return (
        f"SELECT count(*) FROM search_entries e {where}",
        f"SELECT {COLUMNS}, 0.0 AS score, count(*) OVER () AS total "
        f"FROM search_entries e {where} ORDER BY {TIE_BREAK} LIMIT :limit OFFSET :offset",
    )


def _fts5_sql(clauses: list[str]) -> tuple[str, str]:
    """bm25 over the FTS5 table alone; entries are read only for the rows at or above the
    page's last score (the ties there are ordered by name)."""
    weights = ", ".join(str(w) for w in FTS_WEIGHTS)
    matches = (
        f"SELECT search_fts.rowid AS id, bm25(search_fts, {weights}) AS rank FROM search_fts "
        f"WHERE search_fts MATCH :match{_and(clauses)}"
    )
    page = (
        f"WITH matches AS MATERIALIZED ({matches}), "
        "cut AS (SELECT rank FROM matches ORDER BY rank LIMIT 1 OFFSET :last) "
        f"SELECT {COLUMNS}, -m.rank AS score, (SELECT count(*) FROM matches) AS total "
        "FROM matches m JOIN search_entries e ON e.id = m.id "
        "WHERE m.rank <= coalesce((SELECT rank FROM cut), 1e308) "
        "ORDER BY m.rank, e.product, e.dataset IS NOT NULL, e.dataset "
        "LIMIT :limit OFFSET :offset"
    )
    return f"SELECT count(*) FROM ({matches})", page


def _snippets(connection: Connection, ids: list[int], terms: list[str]) -> dict[int, str]:
    """The highlighted passage of each hit of the page, by entry id (texts read by key)."""
    if not ids or not terms:
        return {}
    query = select(search_texts).where(search_texts.c.entry_id.in_(ids))
    return {
        row.entry_id: found
        for row in connection.execute(query)
        if (found := snippet({f: getattr(row, f) for f in TEXT_FIELDS}, terms)) is not None
    }


SNIPPET_FIELDS = ("descriptions", "columns", "names", "tags")


def snippet(texts: Mapping[str, Any], terms: list[str], size: int = 12) -> str | None:
    """About `size` words of the text matching the most query terms, each word that a term
    prefixes between `SNIPPET_OPEN` and `SNIPPET_CLOSE` (None when nothing matches)."""
    best: tuple[int, int, list[str], list[int]] | None = None
    for name in SNIPPET_FIELDS:
        tokens = texts[name].split()
        hits = [i for i, token in enumerate(tokens) if token.startswith(tuple(terms))]
        matched = {t for t in terms for i in hits if tokens[i].startswith(t)}
        if hits and (best is None or (len(matched), len(hits)) > best[:2]):
            best = (len(matched), len(hits), tokens, hits)
    if best is None:
        return None
    _, _, tokens, hits = best
    start = max(0, min(hits[0] - 2, len(tokens) - size))
    shown = [
        f"{SNIPPET_OPEN}{token}{SNIPPET_CLOSE}" if index in hits else token
        for index, token in enumerate(tokens[start : start + size], start)
    ]
    before = "…" if start > 0 else ""
    after = "…" if start + size < len(tokens) else ""
    return before + " ".join(shown) + after


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
