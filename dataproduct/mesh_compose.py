"""A compose file for a mesh: `dataproduct mesh compose DIR --out deploy/compose/compose.yaml`.

One service per process of the mesh, each running the project's image with the command
`dataproduct mesh up` would start as a child (`mesh marketplace|gateway|serve`), so the
two ways of running a mesh cannot drift apart. Every container shares the host's network
(the engine runs without a bridge) and listens on 127.0.0.1 at the port `mesh.yaml` gives
it; the gateway and the marketplace are where `mesh up` puts them. Roots are read-only:
a product writes only its named volume at /data and /tmp. The mesh folder is mounted
read-only at /mesh. Products start once the marketplace, the gateway and the products they
read are healthy. The token secret comes from `MESH_JWT_SECRET` (deploy/compose/up.sh keeps
one in deploy/compose/.env). The file works with `docker compose` (v2) and `docker-compose`
1.29. Rendering is pure; only the command writes a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from dataproduct.mesh import Mesh, MeshProduct, load_mesh
from dataproduct.mesh_env import MeshPlaces

DEFAULT_IMAGE = "dataproduct:dev"
MESH_IN_CONTAINER = "/mesh"
SECRET_VARIABLE = "MESH_JWT_SECRET"  # noqa: S105 the variable's name, not a secret
TMPFS = "/tmp"  # noqa: S108 a tmpfs of the container's own
GATEWAY_RUNTIME = f"{TMPFS}/gateway"  # nginx's config, pid file and temporary files
LOOPBACK = "127.0.0.1"
ADDRESS_LABEL = "dataproduct.address"  # where people reach the service (up.sh prints them)
# A product's first pull waits for its upstream; later probes are cheap (a Python one-liner).
HEALTHCHECK = {"interval": "3s", "timeout": "4s", "retries": 3, "start_period": "180s"}
# SIGTERM cancels a running run, rolls it back and closes DuckDB; this leaves it the time.
STOP_GRACE_PERIOD = "30s"

HEADER = """\
# The {name} mesh on one machine with Docker: the marketplace, the gateway and one container
# per product, all from the image {image}. Rendered by `dataproduct mesh compose`
# (do not edit by hand; a test checks it is up to date). Start it with deploy/compose/up.sh,
# or: MESH_JWT_SECRET=<32+ characters> docker compose -f THIS_FILE up -d
"""


def render_compose(
    mesh: Mesh,
    *,
    image: str = DEFAULT_IMAGE,
    mesh_path: str = "../examples",
    mesh_dir_in_container: str = MESH_IN_CONTAINER,
) -> str:
    """The compose file of `mesh` as YAML text.

    `mesh_path` is the mesh folder as the compose file sees it (relative to the file's
    folder, or absolute); it is mounted read-only at `mesh_dir_in_container`.
    """
    mount = f"{mesh_path}:{mesh_dir_in_container}:ro"
    places = MeshPlaces(
        f"http://{LOOPBACK}:{mesh.gateway_port}", f"http://{LOOPBACK}:{mesh.marketplace_port}"
    )
    services: dict[str, Any] = {
        "marketplace": _service(
            image,
            _mesh_command("marketplace", mesh_dir_in_container),
            _probe(mesh.marketplace_port, "/health"),
            [mount, "marketplace-data:/data"],
            f"{places.marketplace_url}/",
        ),
        "gateway": _service(
            image,
            _mesh_command("gateway", mesh_dir_in_container, "--runtime-dir", GATEWAY_RUNTIME),
            _probe(mesh.gateway_port, "/"),
            [mount],
            f"{places.gateway_url}/",
            secret=False,  # nginx checks no token: every product checks its own
        ),
    }
    for product in mesh.products:
        service = _service(
            image,
            _mesh_command("serve", mesh_dir_in_container, product.name),
            _probe(product.port, "/ready"),
            [mount, f"{_volume(product)}:/data"],
            f"{places.address(product)}/",
        )
        needs = ["marketplace", "gateway", *(p.name for p in mesh.upstreams(product))]
        service["depends_on"] = {name: {"condition": "service_healthy"} for name in needs}
        services[product.name] = service
    volumes = ["marketplace-data", *(_volume(p) for p in mesh.products)]
    document = {"services": services, "volumes": {name: {} for name in volumes}}
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=200)
    return HEADER.format(name=mesh.name, image=image) + body


def _mesh_command(*words: str) -> list[str]:
    return ["dataproduct", "mesh", *words]


class _Dumper(yaml.SafeDumper):
    """Block style, but a list of strings (a command, a probe, mounts) on one line."""

    def represent_strings(self, data: list[Any]) -> yaml.SequenceNode:
        """A sequence, in flow style when it holds only strings."""
        flow = all(isinstance(item, str) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_strings)


def _service(
    image: str,
    command: list[str],
    healthcheck: dict[str, Any],
    volumes: list[str],
    address: str,
    *,
    secret: bool = True,
) -> dict[str, Any]:
    environment = {"DATAPRODUCT_HOST": LOOPBACK}
    if secret:
        environment["DATAPRODUCT_JWT_SECRET"] = (
            f"${{{SECRET_VARIABLE}:?set {SECRET_VARIABLE}, as deploy/compose/up.sh does}}"
        )
    return {
        "image": image,
        "command": command,
        "network_mode": "host",
        "read_only": True,
        "tmpfs": [TMPFS],
        "volumes": volumes,
        "environment": environment,
        "labels": {ADDRESS_LABEL: address},
        "healthcheck": healthcheck,
        "restart": "unless-stopped",
        "stop_grace_period": STOP_GRACE_PERIOD,
    }


def _probe(port: int, path: str) -> dict[str, Any]:
    url = f"http://{LOOPBACK}:{port}{path}"
    code = f"import urllib.request as r; r.urlopen('{url}', timeout=3)"
    return {"test": ["CMD", "python", "-I", "-S", "-c", code], **HEALTHCHECK}


def _volume(product: MeshProduct) -> str:
    return f"{product.name}-data"


def _relative(target: Path, start: Path) -> str:
    """`target` from `start`, starting with `.` (compose reads a bare name as a volume)."""
    found = os.path.relpath(target, start)
    return found if found.startswith(".") else f"./{found}"


def add_compose_command(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `compose DIR [--out FILE] [--image IMAGE] [--mesh-path PATH]` on `mesh`."""
    compose = actions.add_parser("compose", help="render a compose file for the mesh")
    compose.add_argument("dir", type=Path, help="the mesh folder (holding mesh.yaml)")
    compose.add_argument("--out", type=Path, help="write here (default: standard output)")
    compose.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    compose.add_argument(
        "--mesh-path",
        help="the mesh folder as the compose file sees it (default: relative to --out)",
    )
    compose.set_defaults(handler=_compose)


def _compose(args: argparse.Namespace) -> int:
    mesh_dir: Path = args.dir.resolve()
    mesh = load_mesh(mesh_dir)
    mesh_path = args.mesh_path or (
        _relative(mesh_dir, args.out.resolve().parent) if args.out else str(mesh_dir)
    )
    text = render_compose(mesh, image=args.image, mesh_path=mesh_path)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}; start it with deploy/compose/up.sh")
    return 0
