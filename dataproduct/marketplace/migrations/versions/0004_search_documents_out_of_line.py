"""PostgreSQL search: a document of lexemes per entry (words, classed words, filter and
visibility tokens), stored out of line, replaces the weighted vector (SQLite: nothing).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

KEYS = (
    "CONSTRAINT pk_search_documents PRIMARY KEY (entry_id), "
    "CONSTRAINT fk_search_documents_entry_id_search_entries FOREIGN KEY (entry_id) "
    "REFERENCES search_entries (id) ON DELETE CASCADE"
)

# PostgreSQL moves a value out of line only in a row over ~2 kB (TOAST_TUPLE_THRESHOLD,
# whatever toast_tuple_target says). `toast_pad`, 2 kB of zeros, makes every row that long:
# the toaster then stores `document` (EXTERNAL) out of line first and only then compresses
# the pad (MAIN) to ~35 bytes inline. A GIN bitmap scan thus visits rows of ~150 bytes
# whatever the texts, and never reads a document (its tsquery needs no recheck).
CREATE = (
    "CREATE TABLE search_documents (entry_id integer NOT NULL, "
    "product varchar(128) NOT NULL, dataset varchar(128), document tsvector NOT NULL, "
    f"toast_pad bytea NOT NULL DEFAULT decode(repeat('00', 2048), 'hex'), {KEYS})",
    "ALTER TABLE search_documents ALTER COLUMN product SET STORAGE PLAIN, "
    "ALTER COLUMN dataset SET STORAGE PLAIN, ALTER COLUMN document SET STORAGE EXTERNAL, "
    "ALTER COLUMN toast_pad SET STORAGE MAIN",
)


def _words(column: str, prefix: str = "") -> str:
    """The (cut) words of a `search_texts` column as lexemes behind `prefix`."""
    return f"SELECT '{prefix}' || left(w, 64) FROM regexp_split_to_table(t.{column}, ' ') w"


# The lexemes `search_pg.document_lexemes` writes, as they are at this revision.
LEXEMES = " UNION ".join(
    [
        *(_words(c) for c in ("names", "tags", "descriptions", "columns")),
        _words("names", "#n:"),
        _words("tags", "#t:"),
        _words("descriptions", "#d:"),
        "SELECT '=area:' || array_to_string((string_to_array(e.domain, '/'))[1:n], '/') "
        "FROM generate_series(1, cardinality(string_to_array(e.domain, '/'))) n",
        "SELECT '=owner:' || e.owner_email",
        "SELECT '=owner:' || e.owner_name",
        "SELECT '=' || f.kind || ':' || f.value FROM search_facets f "
        "WHERE f.entry_id = e.id AND f.kind <> 'group'",
        "SELECT x FROM products p, LATERAL (SELECT '=restricted' UNION "
        "SELECT '=publisher:' || p.publisher_subject UNION "
        "SELECT '=group:' || g FROM json_array_elements_text(p.visibility_groups) g) r(x) "
        "WHERE p.name = e.product AND p.restricted",
    ]
)
FILL = (
    "INSERT INTO search_documents (entry_id, product, dataset, document) "
    "SELECT e.id, e.product, e.dataset, array_to_tsvector(ARRAY("
    f"SELECT l FROM ({LEXEMES}) u(l) WHERE l NOT IN ('', '#n:', '#t:', '#d:'))) "
    "FROM search_entries e JOIN search_texts t ON t.entry_id = e.id"
)


def _distinct(column: str) -> str:
    """The words of a `search_texts` column, each once, in order (as 0001 indexed them)."""
    return (
        "(SELECT coalesce(string_agg(w, ' ' ORDER BY i), '') FROM (SELECT w, min(i) AS i "
        f"FROM regexp_split_to_table(t.{column}, ' ') WITH ORDINALITY s(w, i) "
        "WHERE w <> '' GROUP BY w) u)"
    )


def upgrade() -> None:
    """Rebuild `search_documents` in the new layout from the entries, texts and facets."""
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("DROP TABLE search_documents")
    for statement in CREATE:
        op.execute(statement)
    op.execute(FILL)
    op.execute("CREATE INDEX ix_search_documents_document ON search_documents USING gin (document)")
    op.execute("ANALYZE search_documents")


def downgrade() -> None:
    """Back to one weighted vector per entry (names A, tags B, descriptions C, columns D)."""
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("DROP TABLE search_documents")
    op.execute(
        "CREATE TABLE search_documents (entry_id integer NOT NULL, document tsvector NOT NULL, "
        f"{KEYS})"
    )
    weighted = " || ".join(
        f"setweight(to_tsvector('simple', {_distinct(column)}), '{weight}')"
        for column, weight in zip(("names", "tags", "descriptions", "columns"), "ABCD", strict=True)
    )
    op.execute(
        "INSERT INTO search_documents (entry_id, document) "
        f"SELECT t.entry_id, {weighted} FROM search_texts t"
    )
    op.execute("CREATE INDEX ix_search_documents_document ON search_documents USING gin (document)")
