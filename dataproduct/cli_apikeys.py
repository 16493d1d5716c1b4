"""`dataproduct apikey create|list|revoke`: manage a product's API keys.

With `--url` the command goes through the product's control port (the product is running);
without it, it opens the product's database directly (the product must be stopped, since
one process at a time holds the database).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from dataproduct.apikeys import ApiKeyStore
from dataproduct.errors import ConfigurationError, DataproductError
from dataproduct.security import SCOPES, issue_token
from dataproduct.settings import DataproductSettings, get_settings
from dataproduct.storage import Storage, file_connection

DATABASE_FILE = "product.duckdb"


def add_apikey_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `apikey` and its sub-commands."""
    apikey = commands.add_parser("apikey", help="create, list or revoke API keys")
    actions = apikey.add_subparsers(dest="action", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dir", type=Path, help="product folder (offline mode)")
        parser.add_argument("--url", help="the product's base URL: go through its control port")
        parser.add_argument(
            "--token", help="an administrator's token for --url (default: $DATAPRODUCT_TOKEN)"
        )

    create = actions.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", choices=SCOPES, default=[])
    create.add_argument("--group", action="append", default=[])
    create.add_argument("--role", action="append", default=[])
    create.add_argument("--subject", help="the principal the key acts as")
    create.add_argument(
        "--ttl-days", type=_days, help="days until it expires, at least 1 (default: never)"
    )
    common(create)
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    common(listing)
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")
    common(revoke)
    apikey.set_defaults(handler=_apikey)


def _apikey(args: argparse.Namespace) -> int:
    settings = get_settings()
    result = _remote(args, settings) if args.url else _offline(args, settings)
    print(json.dumps(result, indent=2))
    if args.action == "create":
        print("store the key now: it is not shown again", file=sys.stderr)
    return 0


def _remote(args: argparse.Namespace, settings: DataproductSettings) -> Any:
    token = args.token or os.environ.get("DATAPRODUCT_TOKEN") or _local_admin_token(settings)
    base = args.url.rstrip("/")
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        try:
            if args.action == "create":
                response = http.post(f"{base}/control/api-keys", json=_create_body(args))
            elif args.action == "list":
                response = http.get(f"{base}/control/api-keys")
            else:
                response = http.delete(f"{base}/control/api-keys/{args.id}")
        except httpx.TransportError as unreachable:
            raise DataproductError(f"cannot reach {base}: {unreachable}", where="--url") from None
    if response.status_code >= 400:
        error = response.json().get("error", {}) if _is_json(response) else {}
        raise DataproductError(
            f"{response.status_code}: {error.get('message', response.text[:200])}",
            where=error.get("where", args.url),
        )
    return response.json()


def _offline(args: argparse.Namespace, settings: DataproductSettings) -> Any:
    from dataproduct.cli import example_dir
    from dataproduct.descriptor import load_descriptor

    descriptor = load_descriptor((args.dir or example_dir()).resolve())
    database = settings.data_dir.resolve() / descriptor.name / DATABASE_FILE
    try:
        storage = Storage(file_connection(database, settings.memory_limit, settings.threads))
    except DataproductError as error:
        raise ConfigurationError(
            f"cannot open {database} ({error.message}); if the product is running, "
            "pass --url to go through its control port",
            where="dir",
        ) from None
    try:
        keys = ApiKeyStore(storage)
        if args.action == "create":
            body = _create_body(args)
            key, secret = keys.create(
                body["name"],
                scopes=body["scopes"],
                groups=body["groups"],
                roles=body["roles"],
                subject=body["subject"],
                ttl_days=body["ttl_days"],
                created_by="cli",
            )
            return {**key.to_dict(), "key": secret}
        if args.action == "list":
            return {"api_keys": [k.to_dict() for k in keys.list()]}
        return keys.revoke(args.id).to_dict()
    finally:
        storage.close()


def _days(text: str) -> int:
    days = int(text)
    if days < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return days


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "scopes": args.scope or ["output:read"],
        "groups": args.group,
        "roles": args.role,
        "subject": args.subject,
        "ttl_days": args.ttl_days,
    }


def _local_admin_token(settings: DataproductSettings) -> str:
    secret = settings.require_secret()
    if not secret:
        raise ConfigurationError(
            "give --token (or DATAPRODUCT_TOKEN), or set DATAPRODUCT_JWT_SECRET to sign one",
            where="--token",
        )
    return issue_token(secret, "cli", ["control:admin"], ttl_s=300)


def _is_json(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/json")
