"""Every accepted version of the pipeline, with who submitted it and when."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dataproduct.errors import NotFoundError
from dataproduct.storage import Storage, fetch_one
from pipelines.model import Pipeline


@dataclass(frozen=True)
class PipelineVersion:
    """One accepted pipeline."""

    version: int
    origin: str
    submitted_by: str
    submitted_at: datetime
    digest: str
    pipeline: Pipeline

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "version": self.version,
            "origin": self.origin,
            "submitted_by": self.submitted_by,
            "submitted_at": self.submitted_at.isoformat(),
            "digest": self.digest,
            "models": self.pipeline.to_dicts(),
        }


def save_version(
    storage: Storage, pipeline: Pipeline, *, origin: str, submitted_by: str
) -> PipelineVersion:
    """Store a new version (the caller planned it first) and return it."""
    with storage.transaction() as cursor:
        found = fetch_one(cursor, "SELECT coalesce(max(version), 0) FROM meta.pipeline_versions")
        version = PipelineVersion(
            version=(int(found[0]) if found else 0) + 1,
            origin=origin,
            submitted_by=submitted_by,
            submitted_at=datetime.now(UTC),
            digest=pipeline.digest(),
            pipeline=pipeline,
        )
        cursor.execute(
            "INSERT INTO meta.pipeline_versions VALUES (?, ?, ?, ?, ?, ?)",
            [
                version.version,
                origin,
                submitted_by,
                version.submitted_at,
                version.digest,
                json.dumps(pipeline.to_dicts()),
            ],
        )
    return version


def get_version(storage: Storage, version: int | None = None) -> PipelineVersion | None:
    """A stored version (the latest with None); None when nothing was ever stored."""
    query = "SELECT * FROM meta.pipeline_versions"
    params: list[Any] = []
    if version is not None:
        query += " WHERE version = ?"
        params.append(version)
    with storage.reader() as cursor:
        row = fetch_one(cursor, query + " ORDER BY version DESC LIMIT 1", params)
    if row is None:
        if version is not None:
            raise NotFoundError(f"no pipeline version {version}", where="version")
        return None
    return PipelineVersion(
        row[0], row[1], row[2], row[3], row[4], Pipeline.from_dicts(json.loads(row[5]))
    )


def list_versions(storage: Storage) -> list[dict[str, Any]]:
    """Every version, newest first, without the SQL."""
    with storage.reader() as cursor:
        rows = cursor.execute(
            "SELECT version, origin, submitted_by, submitted_at, digest "
            "FROM meta.pipeline_versions ORDER BY version DESC"
        ).fetchall()
    return [
        {
            "version": r[0],
            "origin": r[1],
            "submitted_by": r[2],
            "submitted_at": r[3].isoformat(),
            "digest": r[4],
        }
        for r in rows
    ]


def sync_descriptor_pipeline(storage: Storage, pipeline: Pipeline) -> PipelineVersion | None:
    """Make the descriptor's pipeline current when it changed since it was last loaded.

    The latest change wins: a pipeline put through the control port stays current across
    restarts until the descriptor's own pipeline changes.
    """
    with storage.reader() as cursor:
        row = fetch_one(
            cursor,
            "SELECT digest FROM meta.pipeline_versions WHERE origin = 'descriptor' "
            "ORDER BY version DESC LIMIT 1",
        )
    if row is not None and row[0] == pipeline.digest():
        return get_version(storage)
    if not pipeline.models and row is None:
        return get_version(storage)
    return save_version(storage, pipeline, origin="descriptor", submitted_by="descriptor")
