"""The `dataproduct` command: serve, init, validate, token, apikey, gateway-config, marketplace,
mesh."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from importlib import resources
from pathlib import Path

from dataproduct.cli_apikeys import add_apikey_command
from dataproduct.descriptor import ProductDescriptor, load_descriptor
from dataproduct.errors import DataproductError
from dataproduct.gateway import add_gateway_command
from dataproduct.marketplace.cli import add_marketplace_command
from dataproduct.mesh_cli import add_mesh_command
from dataproduct.security import PORT_SCOPES, SCOPES, issue_token
from dataproduct.settings import MIN_SECRET_LENGTH, DataproductSettings, get_settings

EXAMPLE = "sales_eu"


def example_dir() -> Path:
    """The embedded example product's folder."""
    return Path(str(resources.files("dataproduct") / "examples" / EXAMPLE))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except DataproductError as error:
        where = f" ({error.where})" if error.where else ""
        print(f"error{where}: {error.message}", file=sys.stderr)
        for problem in error.details.get("problems", [])[1:]:
            print(f"  also: {_describe_problem(problem)}", file=sys.stderr)
        return 2


def _describe_problem(problem: dict[str, object]) -> str:
    """One problem of a descriptor (path) or of a pipeline (model, position, rule) as text."""
    if problem.get("path"):
        return f"{problem['path']}: {problem.get('message')}"
    where = f"model {problem.get('model')}"
    if problem.get("line"):
        where += f", line {problem['line']}, column {problem.get('column')}"
    return f"{where}: {problem.get('rule')}: {problem.get('message')}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataproduct", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a product folder (default: the example)")
    serve.add_argument("dir", nargs="?", type=Path, help="product folder")
    serve.add_argument("--host", help="listen address (DATAPRODUCT_HOST)")
    serve.add_argument("--port", type=int, help="listen port (DATAPRODUCT_PORT)")
    serve.set_defaults(handler=_serve)

    init = commands.add_parser("init", help="write a small working product folder")
    init.add_argument("dir", type=Path)
    init.set_defaults(handler=_init)

    validate = commands.add_parser("validate", help="check a product folder")
    validate.add_argument("dir", type=Path)
    validate.set_defaults(handler=_validate)

    token = commands.add_parser("token", help="print a local token signed with the secret")
    token.add_argument("--sub", required=True, help="subject (who the token is for)")
    token.add_argument("--scope", action="append", choices=SCOPES, default=[], help="repeatable")
    token.add_argument("--group", action="append", default=[], help="repeatable")
    token.add_argument("--role", action="append", default=[], help="repeatable")
    token.add_argument("--ttl", type=int, default=3600, help="seconds of validity")
    token.set_defaults(handler=_token)

    add_apikey_command(commands)
    add_gateway_command(commands)
    add_marketplace_command(commands)
    add_mesh_command(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    return serve_product(args.dir or example_dir(), args.host, args.port)


def serve_product(product_dir: Path, host: str | None, port: int | None) -> int:
    """Serve a product folder until stopped (SIGTERM is a clean stop)."""
    import uvicorn

    from pipelines.runtime import ProductRuntime
    from ports.app import create_app

    settings = get_settings()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=updates)
    # production with OIDC may run without a secret; only local mode makes a session one
    generated = not settings.require_secret() and settings.env == "local"
    if generated:
        settings = settings.with_session_secret()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per upstream request
    runtime = ProductRuntime.open(product_dir, settings)
    if generated:
        _print_session_tokens(settings, runtime.descriptor)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again under the handler
    # that was there before it; this one makes that clean stop exit with code 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        create_app(runtime),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        proxy_headers=True,
        root_path=settings.root_path,
    )
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    """A requested stop (SIGTERM) is a clean exit."""
    raise SystemExit(0)


def _print_session_tokens(settings: DataproductSettings, descriptor: ProductDescriptor) -> None:
    """Tokens for trying each port; they carry every group the product grants to."""
    base = settings.base_url()
    groups = sorted({g.group for g in descriptor.access if g.group})
    tokens = {
        scope: issue_token(
            settings.jwt_secret, "local-admin", [scope], groups=groups, ttl_s=12 * 3600
        )
        for scope in PORT_SCOPES
    }
    print(
        "\nNo DATAPRODUCT_JWT_SECRET was set: this session signs tokens with a random secret.\n"
        f"Tokens valid for 12 hours, in the groups {', '.join(groups) or 'none'}:\n"
        + "".join(f"  {scope:14} {token}\n" for scope, token in tokens.items())
        + f"\nTry:\n  curl {base}/discovery\n"
        f"  curl -H 'Authorization: Bearer {tokens['output:read']}' "
        f"'{base}/output/datasets'\n"
        f"  curl -H 'Authorization: Bearer {tokens['control:admin']}' {base}/control/runs\n",
        flush=True,
    )


def _init(args: argparse.Namespace) -> int:
    target: Path = args.dir
    if target.exists() and any(target.iterdir()):
        print(f"error: {target} exists and is not empty", file=sys.stderr)
        return 2
    shutil.copytree(
        example_dir(), target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    print(f"wrote a product folder to {target}; run: dataproduct serve {target}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dataproduct.connector import SourceContext, build_connectors

    descriptor = load_descriptor(args.dir.resolve())
    build_connectors(descriptor, SourceContext(args.dir.resolve(), get_settings().data_dir))
    from pipelines.model import Pipeline
    from pipelines.planner import plan_pipeline

    pipeline = Pipeline.from_specs(descriptor.pipeline, descriptor.dialect)
    plan = plan_pipeline(pipeline, set(descriptor.sources))
    print(
        f"{descriptor.name} {descriptor.version}: valid "
        f"({len(descriptor.sources)} sources, {len(plan.steps)} models, "
        f"{len(descriptor.datasets)} documented datasets)"
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    settings = get_settings()
    secret = settings.require_secret()
    if not secret:
        print(
            f"error: set DATAPRODUCT_JWT_SECRET (at least {MIN_SECRET_LENGTH} characters) first",
            file=sys.stderr,
        )
        return 2
    scopes = args.scope or ["output:read"]
    print(
        issue_token(
            secret,
            args.sub,
            scopes,
            groups=args.group,
            roles=args.role,
            ttl_s=args.ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
