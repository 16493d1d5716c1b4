"""Full-text search on PostgreSQL: one GIN-indexed vector of lexemes per entry, ranked in tiers.

`search_documents` holds per entry a `document` of bare lexemes (no positions) that a GIN
index answers every part of a search from:

- each word of the entry's texts (`order`), matched by a query word as a prefix;
- each word of its names, tags and descriptions once more behind its class marker
  (`#n:order`, `#t:…`, `#d:…`), so the index also tells where a word was found;
- tokens for the filters and the visibility rule (`=tag:gold`, `=area:sales/europe`,
  `=owner:…`, `=classification:pii`; on a restricted product's entries `=restricted`,
  `=group:…` and `=publisher:…`), which no word or marker can prefix. (The kind of
  entry, a filter that keeps most of them, is the `dataset` column's nullness.)

An entry's level is where its weakest query word is found at best: 3 names, 2 tags,
1 descriptions, 0 columns. Hits come by level, then by product and dataset name. Each level
is a tsquery the GIN index answers alone, so ranking never reads a vector: the levels are
read from the top, each once (its first entries by name and how many it holds), until one
reaches the end of the page; the total is then counted. The documents are stored out of
line (see migration 0004), so the heap those bitmap scans visit is ~150 bytes per entry
however long the texts are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, select, text

from dataproduct.marketplace.models import products

if TYPE_CHECKING:
    from dataproduct.marketplace.search import SearchFilters, Viewer

# The marker of each text whose words rank above columns, best first (levels 3, 2, 1).
CLASS_MARKERS = {"names": "#n:", "tags": "#t:", "descriptions": "#d:"}
# The score of a hit at level 0 (columns), 1, 2 and 3 (names).
LEVEL_SCORES = (0.05, 0.2, 0.5, 1.0)
# Query words are cut to this length, so longer words are indexed cut too (same matches).
MAX_WORD = 64

# The entries of one level (by name, the first :take) and how many it holds in all.
LEVEL_SQL = (
    "SELECT d.entry_id, count(*) OVER () AS total FROM search_documents d "
    "WHERE d.document @@ CAST(:query AS tsquery) "
    "AND d.entry_id <> ALL(CAST(:seen AS integer[])){where} "
    "ORDER BY d.product, d.dataset IS NOT NULL, d.dataset LIMIT :take"
)
COUNT_SQL = (
    "SELECT count(*) FROM search_documents d WHERE d.document @@ CAST(:query AS tsquery){where}"
)
# What the hits show, in the page's order.
ENTRIES_SQL = (
    "SELECT e.id, e.product, e.dataset, e.title, e.description, e.domain, p.score "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:scores AS float[])) WITH ORDINALITY "
    "AS p(id, score, n) JOIN search_entries e ON e.id = p.id ORDER BY p.n"
)
# A sequential scan would read every document out of line, the GIN bitmap reads none; a
# level's window keeps its matches (~10 bytes each) in memory.
SETTINGS_SQL = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('work_mem', '16MB', true)"
)
KINDS = {"product": " AND d.dataset IS NULL", "dataset": " AND d.dataset IS NOT NULL"}
RESTRICTED = "=restricted"


def document_lexemes(
    entry: Mapping[str, Any],
    texts: Mapping[str, str],
    facets: Iterable[tuple[str, str]],
    visibility: Sequence[str] = (),
) -> list[str]:
    """The lexemes of an entry's document: its words, its classed words and its tokens.

    `visibility` is the tokens of a restricted product (`visibility_tokens`), on each of
    its entries.
    """
    lexemes = {word[:MAX_WORD] for value in texts.values() for word in value.split()}
    for name, marker in CLASS_MARKERS.items():
        lexemes.update(marker + word[:MAX_WORD] for word in texts[name].split())
    parts = entry["domain"].split("/")
    lexemes.update(_token("area", "/".join(parts[:depth])) for depth in range(1, len(parts) + 1))
    lexemes.update(_token("owner", entry[key]) for key in ("owner_email", "owner_name"))
    lexemes.update(_token(kind, value) for kind, value in facets if kind != "group")
    lexemes.update(visibility)
    return sorted(lexemes)


def visibility_tokens(connection: Connection, product: str, groups: Sequence[str]) -> list[str]:
    """The tokens every entry of a product restricted to `groups` carries ([] when none)."""
    if not groups:
        return []
    subject = connection.execute(
        select(products.c.publisher_subject).where(products.c.name == product)
    ).scalar_one()
    return [RESTRICTED, _token("publisher", subject), *(_token("group", g) for g in groups)]


def insert_documents(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert documents: dicts of `entry_id`, `product`, `dataset` and `lexemes`."""
    connection.execute(
        text(
            "INSERT INTO search_documents (entry_id, product, dataset, document) "
            "VALUES (:entry_id, :product, :dataset, array_to_tsvector(CAST(:lexemes AS text[])))"
        ),
        rows,
    )


def ranked_page(
    connection: Connection,
    terms: list[str],
    filters: SearchFilters,
    viewer: Viewer | None,
    limit: int,
    offset: int,
) -> tuple[int, list[Row[Any]]]:
    """How many entries match, and the page of them (best level first, then by name).

    Each level leaves out the entries of the better ones (all of them read: had there been
    enough, the page would have ended there).
    """
    connection.execute(text(SETTINGS_SQL))
    rest = _filter_query(filters, viewer)
    where = KINDS.get(filters.kind or "", "")
    end = offset + limit
    seen: list[int] = []  # the entries of the better levels
    page: dict[int, float] = {}  # entry id: score
    for level in (3, 2, 1, 0):
        params = {"query": _level_query(terms, level) + rest, "seen": seen, "take": end - len(seen)}
        found = connection.execute(text(LEVEL_SQL.format(where=where)), params).all()
        count = int(found[0].total) if found else 0
        ids = [row.entry_id for row in found]
        page.update((i, LEVEL_SCORES[level]) for i in ids[max(0, offset - len(seen)) :])
        if level == 0:
            total = len(seen) + count
        elif len(seen) + count >= end:
            total = _count(connection, _level_query(terms, 0) + rest, where)
        else:
            seen += ids
            continue
        break
    params = {"ids": list(page), "scores": list(page.values())}
    return total, list(connection.execute(text(ENTRIES_SQL), params))


def _count(connection: Connection, query: str, where: str) -> int:
    return int(
        connection.execute(text(COUNT_SQL.format(where=where)), {"query": query}).scalar_one()
    )


def _level_query(terms: list[str], level: int) -> str:
    """Every term found (as a prefix) at `level` or better."""
    markers = list(CLASS_MARKERS.values())[: 4 - level] if level else [""]
    return " & ".join(
        "(" + " | ".join(f"{_quoted(marker + term)}:*" for marker in markers) + ")"
        for term in terms
    )


def _filter_query(filters: SearchFilters, viewer: Viewer | None) -> str:
    """The tsquery tail (`& …`) the filters (but the kind) and the visibility add."""
    tokens = []
    if filters.area:
        tokens.append(_token("area", filters.area.strip("/").lower()))
    if filters.owner:
        tokens.append(_token("owner", filters.owner.strip().lower()))
    for kind in ("tag", "classification"):
        value = getattr(filters, kind)
        if value:
            tokens.append(_token(kind, value.strip().lower()))
    tail = "".join(f" & {_quoted(token)}" for token in tokens)
    if viewer is not None:
        allowed = [_token("group", group) for group in sorted(viewer.groups)]
        if viewer.subject is not None:
            allowed.append(_token("publisher", viewer.subject))
        exempt = f" & !({' | '.join(_quoted(t) for t in allowed)})" if allowed else ""
        tail += f" & !({_quoted(RESTRICTED)}{exempt})"
    return tail


def _token(kind: str, value: str) -> str:
    """A filter token: no word or marker starts with `=`."""
    return f"={kind}:{value}"


def _quoted(lexeme: str) -> str:
    """`lexeme` as a quoted tsquery operand, taken as it is."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
