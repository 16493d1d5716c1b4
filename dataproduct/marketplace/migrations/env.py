"""Alembic environment: runs the migrations on the connection `alembic_config` carries."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from dataproduct.marketplace.models import metadata


def run_migrations(connection: Connection) -> None:
    """Run the pending migrations in the caller's transaction."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Entry point alembic runs; online only (offline SQL scripts are not supported)."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("use dataproduct.marketplace.migrations.upgrade_to_head(url)")
    run_migrations(connection)


main()
