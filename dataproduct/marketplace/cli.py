"""`dataproduct marketplace serve`: the marketplace service on port 8090."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_marketplace_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `marketplace serve`."""
    marketplace = commands.add_parser("marketplace", help="the central marketplace service")
    actions = marketplace.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="serve the marketplace (default port 8090)")
    serve.add_argument("--host", help="listen address (DATAPRODUCT_MARKETPLACE_HOST)")
    serve.add_argument("--port", type=int, help="listen port (DATAPRODUCT_MARKETPLACE_PORT)")
    serve.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the store (DATAPRODUCT_MARKETPLACE_DATABASE_URL); "
        "a SQLite file by default, postgresql+psycopg://... in production",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    return serve_marketplace(args.host, args.port, args.database_url)


def serve_marketplace(host: str | None, port: int | None, database_url: str | None) -> int:
    """Serve the marketplace until stopped; unset arguments come from the settings."""
    import uvicorn

    from dataproduct.marketplace.settings import MarketplaceSettings
    from dataproduct.marketplace.store import MarketplaceStore
    from dataproduct.settings import get_settings
    from ports.marketplace.app import create_marketplace_app

    updates = {
        key: value
        for key, value in (
            ("host", host), ("port", port), ("database_url", database_url),
        )
        if value is not None
    }  # fmt: skip
    settings = MarketplaceSettings().model_copy(update=updates)
    auth = get_settings()
    logging.basicConfig(
        level=auth.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    store = MarketplaceStore(settings.database_url)
    uvicorn.run(
        create_marketplace_app(store, settings, auth),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=auth.log_level,
        proxy_headers=True,
    )
    return 0
