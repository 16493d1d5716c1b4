"""`dataproduct mesh ...`: run a mesh described by a `mesh.yaml` (see dataproduct/mesh.py).

    dataproduct mesh up DIR                 everything on this machine, supervised
    dataproduct mesh serve DIR PRODUCT      one product, with its mesh settings
    dataproduct mesh marketplace DIR        the mesh's marketplace
    dataproduct mesh gateway DIR            nginx in front of every product
    dataproduct mesh compose DIR --out F    a compose file (see deploy/compose)
    dataproduct mesh k8s DIR --out OUT      Kubernetes manifests (see deploy/k8s)

`serve`, `marketplace` and `gateway` are what each container of the compose file runs, and
what `up` starts as child processes. A product's credential is signed with the mesh's
shared secret (`DATAPRODUCT_JWT_SECRET`) unless `MESH_TOKEN` is already set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dataproduct.errors import ConfigurationError
from dataproduct.gateway import render_nginx
from dataproduct.mesh import CREDENTIAL_VARIABLE, Mesh, load_mesh
from dataproduct.mesh_compose import add_compose_command
from dataproduct.mesh_env import (
    MeshPlaces,
    marketplace_environment,
    marketplace_token,
    product_environment,
    product_token,
)
from dataproduct.mesh_k8s import add_k8s_command
from dataproduct.nginx import nginx_command
from dataproduct.settings import get_settings


def add_mesh_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `mesh up|serve|marketplace|gateway`."""
    mesh = commands.add_parser("mesh", help="run a mesh of products (a folder with mesh.yaml)")
    actions = mesh.add_subparsers(dest="action", required=True)

    up = actions.add_parser("up", help="run the whole mesh here, as supervised processes")
    _common(up)
    up.add_argument("--state-dir", type=Path, help="data, logs and secret (.dataproduct/mesh)")
    up.set_defaults(handler=_up)

    serve = actions.add_parser("serve", help="serve one product of the mesh")
    _common(serve)
    serve.add_argument("product", help="the product's name")
    serve.add_argument("--port", type=int, help="listen port (default: the mesh's)")
    serve.set_defaults(handler=_serve)

    market = actions.add_parser("marketplace", help="serve the mesh's marketplace")
    _common(market)
    market.set_defaults(handler=_marketplace)

    gateway = actions.add_parser("gateway", help="run nginx in front of every product")
    _common(gateway)
    gateway.add_argument("--runtime-dir", type=Path, help="nginx's files (DATA_DIR/gateway)")
    gateway.add_argument("--upstream-host", default="127.0.0.1", help="where products listen")
    gateway.set_defaults(handler=_gateway)

    add_k8s_command(actions)
    add_compose_command(actions)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="the mesh folder (holding mesh.yaml)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--gateway-url", help="the gateway as products and people reach it")
    parser.add_argument("--marketplace-url", help="the marketplace as products reach it")


def places_of(mesh: Mesh, args: argparse.Namespace) -> MeshPlaces:
    """Where the gateway and the marketplace are: the arguments, else on this machine."""
    return MeshPlaces(
        args.gateway_url or f"http://127.0.0.1:{mesh.gateway_port}",
        args.marketplace_url or f"http://127.0.0.1:{mesh.marketplace_port}",
    )


def _secret() -> str:
    secret = get_settings().require_secret()
    if not secret:
        raise ConfigurationError(
            "a mesh signs its products' credentials: set DATAPRODUCT_JWT_SECRET",
            where="DATAPRODUCT_JWT_SECRET",
        )
    return secret


def _apply(environment: dict[str, str]) -> None:
    os.environ.update(environment)
    get_settings.cache_clear()


def _serve(args: argparse.Namespace) -> int:
    from dataproduct.cli import serve_product

    mesh = load_mesh(args.dir.resolve())
    try:
        product = mesh.product(args.product)
    except KeyError:
        names = ", ".join(p.name for p in mesh.products)
        raise ConfigurationError(
            f"no product {args.product} in the mesh (it has {names})", where="product"
        ) from None
    token = os.environ.get(CREDENTIAL_VARIABLE) or product_token(_secret(), product)
    _apply(product_environment(mesh, product, places_of(mesh, args), token))
    return serve_product(product.dir, args.host, args.port or product.port)


def _marketplace(args: argparse.Namespace) -> int:
    from dataproduct.marketplace.cli import serve_marketplace

    mesh = load_mesh(args.dir.resolve())
    _apply(marketplace_environment(places_of(mesh, args), marketplace_token(_secret())))
    database = os.environ.get("DATAPRODUCT_MARKETPLACE_DATABASE_URL") or (
        f"sqlite:///{get_settings().data_dir.resolve() / 'marketplace.db'}"
    )
    served: int = serve_marketplace(args.host, mesh.marketplace_port, database)
    return served


def _gateway(args: argparse.Namespace) -> int:
    mesh = load_mesh(args.dir.resolve())
    runtime: Path = (args.runtime_dir or get_settings().data_dir / "gateway").resolve()
    runtime.mkdir(parents=True, exist_ok=True)
    routes = mesh.routes(lambda p: f"http://{args.upstream_host}:{p.port}")
    listen = f"{args.host or '127.0.0.1'}:{mesh.gateway_port}"
    config = runtime / "nginx.conf"
    config.write_text(render_nginx(routes, listen, runtime_dir=runtime))
    command = nginx_command(config, runtime)
    sys.stdout.flush()
    os.execv(command[0], command)  # noqa: S606 nginx takes this process's place, no shell


def _up(args: argparse.Namespace) -> int:
    from dataproduct.mesh_up import MeshSupervisor

    mesh = load_mesh(args.dir.resolve())
    state = (args.state_dir or Path(".dataproduct/mesh") / mesh.name).resolve()
    supervisor = MeshSupervisor(mesh, state, places_of(mesh, args), host=args.host)
    return supervisor.run()
