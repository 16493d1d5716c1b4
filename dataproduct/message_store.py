"""What the message sink remembers in `meta`: the ids it landed and the dead letters.

The check for ids already landed and the recording of the new ones run on the cursor of
the load's transaction (the storage's single writer), so no other commit can land an id
between the check and the insert. `meta.message_ids` has no index: DuckDB does not use an
ART index for a batch's IN-list or join probe, so the check is a filtered scan that only
reads the batch's ids back (about 20 ms for 1000 ids against 1M stored ones).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from dataproduct.connector import Message
from dataproduct.errors import DataproductError
from dataproduct.storage import Storage

log = logging.getLogger("dataproduct.messages")

NO_ID = ""  # a Message with this id has no identity: it is landed every time it arrives

MESSAGE_DDL = (
    """CREATE TABLE IF NOT EXISTS meta.message_ids (
        source VARCHAR, id VARCHAR, landed_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS meta.dead_letters (
        source VARCHAR, id VARCHAR, body BLOB, headers JSON, error VARCHAR,
        failed_at TIMESTAMPTZ)""",
)


@dataclass(frozen=True)
class DeadLetter:
    """A message set aside, with the reason."""

    message: Message
    reason: str


class LandedMeanwhile(DataproductError):
    """Some ids of the batch were committed since the sink looked: the load is undone."""

    code = "messages_landed_meanwhile"


def create_message_tables(storage: Storage) -> None:
    """Create `meta.message_ids` and `meta.dead_letters` if they are missing."""
    with storage.transaction(changes_data=False) as cursor:
        for ddl in MESSAGE_DDL:
            cursor.execute(ddl)


def landed_ids(cursor: duckdb.DuckDBPyConnection, source: str, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are recorded for `source` (only the batch's ids are read back)."""
    wanted = sorted({found for found in ids if found != NO_ID})
    if not wanted:
        return set()
    rows = cursor.execute(
        "SELECT id FROM meta.message_ids WHERE source = ? AND id IN (SELECT unnest(?::VARCHAR[]))",
        [source, wanted],
    ).fetchall()
    return {row[0] for row in rows}


def record_landed(
    cursor: duckdb.DuckDBPyConnection,
    source: str,
    ids: Sequence[str],
    dead: Sequence[DeadLetter],
) -> None:
    """Inside the load's transaction: refuse ids landed meanwhile, then record the ids
    (the dead letters' too) and the dead letters. Messages without id are not recorded."""
    all_ids = [*ids, *(letter.message.id for letter in dead)]
    if clash := landed_ids(cursor, source, all_ids):
        raise LandedMeanwhile(f"{len(clash)} message id(s) of the batch landed meanwhile")
    now = datetime.now(UTC)
    cursor.execute(
        "INSERT INTO meta.message_ids SELECT ?, unnest(?::VARCHAR[]), ?",
        [source, [found for found in all_ids if found != NO_ID], now],
    )
    for letter in dead:
        message = letter.message
        cursor.execute(
            "INSERT INTO meta.dead_letters VALUES (?, ?, ?, ?, ?, ?)",
            [
                source, message.id or None, message.body, json.dumps(message.headers),
                letter.reason, now,
            ],
        )  # fmt: skip
    if dead:
        log.warning("source %s: %d message(s) dead-lettered: %s", source, len(dead), dead[0].reason)


def forget_before(storage: Storage, source: str, before: datetime) -> None:
    """Forget the ids and dead letters of `source` older than `before`."""
    with storage.transaction(changes_data=False) as cursor:
        cursor.execute(
            "DELETE FROM meta.message_ids WHERE source = ? AND landed_at < ?", [source, before]
        )
        cursor.execute(
            "DELETE FROM meta.dead_letters WHERE source = ? AND failed_at < ?", [source, before]
        )
