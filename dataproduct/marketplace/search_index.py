"""The write side of marketplace search: a product's entries, texts, facets and the dialect's
full-text index, replaced inside the transaction that stores its publication.

Each product and each dataset is one entry of `search_entries` with four texts in
`search_texts` (names, tags, descriptions, then column names and descriptions, as lower-case
words) and its facets (tags, classifications, and the groups that may see a restricted
product). SQLite indexes the texts in the FTS5 table `search_fts`; PostgreSQL in
`search_documents` (see `search_pg`).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, delete, insert, text

from dataproduct.marketplace import search_pg
from dataproduct.marketplace.models import search_entries, search_facets, search_texts
from dataproduct.marketplace.publication import DatasetDocument, Publication

TEXT_FIELDS = ("names", "tags", "descriptions", "columns")

# The entry's row, its texts and its facets.
Entry = tuple[dict[str, Any], dict[str, str], set[tuple[str, str]]]


def words(text_value: str) -> str:
    """Lower-case words of `text_value`, split on punctuation and underscores."""
    return " ".join(re.findall(r"[^\W_]+", text_value.lower()))


def index_product(connection: Connection, publication: Publication) -> None:
    """Replace the product's entries in the index, in the caller's transaction."""
    product = publication.product.name
    sqlite = connection.dialect.name == "sqlite"
    own_entries = "SELECT id FROM search_entries WHERE product = :product"
    if sqlite:  # an external-content FTS5 table is told the old texts it forgets
        connection.execute(
            text(
                "INSERT INTO search_fts (search_fts, rowid, names, tags, descriptions, columns) "
                "SELECT 'delete', entry_id, names, tags, descriptions, columns "
                f"FROM search_texts WHERE entry_id IN ({own_entries})"
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
            [entry for entry, _, _ in entries],
        )
        .scalars()
        .all()
    )
    connection.execute(
        insert(search_texts),
        [{"entry_id": i, **texts} for i, (_, texts, _) in zip(ids, entries, strict=True)],
    )
    facets = [
        {"entry_id": entry_id, "kind": kind, "value": value}
        for entry_id, (_, _, entry_facets) in zip(ids, entries, strict=True)
        for kind, value in sorted(entry_facets)
    ]
    if facets:
        connection.execute(insert(search_facets), facets)
    if sqlite:
        connection.execute(
            text(
                "INSERT INTO search_fts (rowid, names, tags, descriptions, columns) "
                "SELECT entry_id, names, tags, descriptions, columns FROM search_texts "
                f"WHERE entry_id IN ({own_entries})"
            ),
            {"product": product},
        )
        return
    visibility = search_pg.visibility_tokens(connection, product, publication.product.visible_to)
    search_pg.insert_documents(
        connection,
        [
            {
                "entry_id": entry_id,
                "product": entry["product"],
                "dataset": entry["dataset"],
                "lexemes": search_pg.document_lexemes(entry, texts, facets, visibility),
            }
            for entry_id, (entry, texts, facets) in zip(ids, entries, strict=True)
        ],
    )


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
    facets |= {("group", group) for group in info.visible_to}
    for dataset in publication.datasets.values():
        facets |= {("tag", t.lower()) for t in dataset.tags}
        facets |= {("classification", c.lower()) for c in dataset.classifications}
    entry = {
        **_base_entry(publication),
        "dataset": None,
        "title": info.name,
        "description": info.description[:2000],
    }
    texts = {
        "names": words(info.name),
        "tags": words(" ".join([*info.tags, info.domain])),
        "descriptions": words(info.description),
        "columns": "",
    }
    return entry, texts, facets


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
    }
    texts = {
        "names": words(dataset.name),
        "tags": words(" ".join(dataset.tags)),
        "descriptions": words(f"{dataset.description} {info.name}"),
        "columns": words(columns),
    }
    return entry, texts, facets
