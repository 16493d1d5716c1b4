"""Schema migrations of the marketplace (alembic), configured in code: no ini file.

`upgrade_to_head(url)` brings a database to the newest revision; the store calls it when
it opens. New revisions go in `versions/` (`alembic revision` with `alembic_config(url)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine

from dataproduct.marketplace.models import DIALECT_SEARCH_OBJECTS, FTS_TABLE, metadata

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic configuration for our scripts, bound to `connection` when given."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(target: str | Engine) -> None:
    """Apply every migration not yet applied to the database at `target` (URL or engine)."""
    engine = create_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        if isinstance(target, str):
            engine.dispose()


def schema_differences(connection: Connection) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty: none).

    The dialect's full-text objects (`DIALECT_SEARCH_OBJECTS`) and alembic's own version
    table are left aside.
    """
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "include_object": _compared, "include_name": _named},
    )
    return list(compare_metadata(context, metadata))


def _named(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    return type_ != "table" or not _dialect_object(name)


def _compared(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not _dialect_object(name)


def _dialect_object(name: str | None) -> bool:
    return name is not None and (
        name.startswith(FTS_TABLE) or name in DIALECT_SEARCH_OBJECTS or name == "alembic_version"
    )
