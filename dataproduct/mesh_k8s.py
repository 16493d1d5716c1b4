"""Kubernetes manifests for a mesh: `dataproduct mesh k8s DIR --out deploy/k8s`.

Per product: a ConfigMap with the product folder (descriptor, pipeline SQL, data files), a
PersistentVolumeClaim for `/data`, a Deployment of one replica with the `Recreate` strategy
(one DuckDB writer, never two pods on one volume), a Service and an Ingress at the standard
address. The marketplace is one more Deployment, Service and Ingress; its PostgreSQL comes
from a Secret. `mesh_k8s_kustomize.py` adds the kustomizations and the overlays.

Addresses: products reach each other, and the marketplace reaches them, through the public
Ingress address (`MESH_URL_SALES_DE=http://HOST/sales/europe/germany/sales-de/v1`), the
same value as each product's `DATAPRODUCT_PUBLIC_URL`, so the marketplace links lineage
across products and sends its credential only under that address. The host must therefore
resolve to the ingress controller inside the cluster too. Products push to the marketplace
by its Service name. Rendering is pure: `write_k8s` is the only part that writes files.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
from pathlib import Path
from typing import Any

from dataproduct.errors import ConfigurationError
from dataproduct.mesh import CREDENTIAL_VARIABLE, Mesh, MeshProduct, load_mesh
from dataproduct.mesh_env import (
    MARKETPLACE_SCOPES,
    PRODUCT_SCOPES,
    MeshPlaces,
    marketplace_environment,
    product_environment,
    product_subject,
)
from dataproduct.mesh_k8s_kustomize import (
    Manifest,
    PodSize,
    dump_documents,
    kustomize_files,
    labels,
    pod_security,
    probe,
    restricted_container,
)

DEFAULT_IMAGE = "dataproduct:dev"
DEFAULT_HOST = "mesh.example.com"
DEFAULT_INGRESS_CLASS = "nginx"
PRODUCT_PORT = 8080
MARKETPLACE_PORT = 8090
MARKETPLACE = "marketplace"
CONFIGMAP_LIMIT_BYTES = 1024 * 1024  # the API server refuses larger ConfigMaps
# A pod mints its credential at start from the shared secret; a year outlives any pod.
# Rotating DATAPRODUCT_JWT_SECRET (and restarting) revokes every credential at once.
TOKEN_TTL_S = 365 * 24 * 3600
PRODUCT_SIZE = PodSize("250m", "512Mi", "2", "2Gi")
MARKETPLACE_SIZE = PodSize("100m", "256Mi", "1", "512Mi")
DATA_SIZE = "10Gi"
CONFIG_ANNOTATION = "dataproduct.io/config-sha256"


def render_k8s(
    mesh: Mesh,
    *,
    image: str = DEFAULT_IMAGE,
    host: str = DEFAULT_HOST,
    namespace: str | None = None,
    ingress_class: str = DEFAULT_INGRESS_CLASS,
    tls_secret: str | None = None,
) -> dict[str, str]:
    """The manifests of `mesh` as {relative path: YAML text}, ready for `kubectl apply -k`.

    `host` is the public Ingress host of the products (the marketplace is at
    `marketplace.<host>`); with `tls_secret` the Ingresses serve HTTPS with that Secret.
    """
    scheme = "https" if tls_secret else "http"
    places = MeshPlaces(f"{scheme}://{host}", f"http://{MARKETPLACE}:{MARKETPLACE_PORT}")
    ingress = _IngressStyle(ingress_class, tls_secret)
    files: dict[str, str] = {}
    for product in mesh.products:
        documents = _product_documents(mesh, product, places, image, host, ingress)
        files[f"base/{product.name}.yaml"] = dump_documents(documents, _header(mesh))
    marketplace = _marketplace_documents(mesh, places, image, f"{MARKETPLACE}.{host}", ingress)
    files[f"base/{MARKETPLACE}.yaml"] = dump_documents(marketplace, _header(mesh))
    files.update(kustomize_files(mesh, namespace or mesh.name, _header(mesh)))
    return files


def write_k8s(files: dict[str, str], out: Path) -> list[Path]:
    """Write rendered files under `out`; returns the paths written."""
    written = []
    for relative, text in sorted(files.items()):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def config_key(relative: str) -> str:
    """A ConfigMap key for a file of the product folder (`pipeline/a.sql` -> `pipeline__a.sql`)."""
    return relative.replace("/", "__")


def product_files(product: MeshProduct) -> dict[str, bytes]:
    """Every file of the product folder by relative path (no hidden files, no caches)."""
    found = {}
    for path in sorted(product.dir.rglob("*")):
        relative = path.relative_to(product.dir)
        if path.is_file() and not any(
            p.startswith(".") or p == "__pycache__" for p in relative.parts
        ):
            found[relative.as_posix()] = path.read_bytes()
    return found


class _IngressStyle:
    """How Ingresses are written: ingress-nginx strips the standard prefix before proxying."""

    def __init__(self, ingress_class: str, tls_secret: str | None) -> None:
        self.ingress_class = ingress_class
        self.tls_secret = tls_secret

    def ingress(
        self, name: str, meta: dict[str, Any], host: str, port: str, prefix: str | None
    ) -> Manifest:
        """The Ingress of one Service; with `prefix`, at that path, stripped before proxying."""
        annotations = {
            "nginx.ingress.kubernetes.io/proxy-body-size": "1g",
            "nginx.ingress.kubernetes.io/proxy-buffering": "off",
            "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
            "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
        }
        path, path_type = "/", "Prefix"
        if prefix is not None:  # /<prefix>/x reaches the product as /x, like the gateway
            annotations |= {
                "nginx.ingress.kubernetes.io/use-regex": "true",
                "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
                "nginx.ingress.kubernetes.io/x-forwarded-prefix": f"/{prefix}",
            }
            path, path_type = f"/{prefix}(/|$)(.*)", "ImplementationSpecific"
        backend = {"service": {"name": name, "port": {"name": port}}}
        spec: dict[str, Any] = {
            "ingressClassName": self.ingress_class,
            "rules": [
                {
                    "host": host,
                    "http": {"paths": [{"path": path, "pathType": path_type, "backend": backend}]},
                }
            ],
        }
        if self.tls_secret:
            spec["tls"] = [{"hosts": [host], "secretName": self.tls_secret}]
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {**meta, "annotations": annotations},
            "spec": spec,
        }


def _header(mesh: Mesh) -> str:
    return (
        f"# Rendered from the mesh {mesh.name} by `dataproduct mesh k8s`; edit the mesh folder\n"
        "# and render again rather than editing this file.\n"
    )


def _product_documents(
    mesh: Mesh,
    product: MeshProduct,
    places: MeshPlaces,
    image: str,
    host: str,
    ingress: _IngressStyle,
) -> list[Manifest]:
    name = product.name
    meta = {"name": name, "labels": labels(mesh, name, "data-product")}
    config, items, digest = _folder_config(product, meta)
    environment = {
        "DATAPRODUCT_ENV": "production",
        "DATAPRODUCT_PORT": str(PRODUCT_PORT),
        "DATAPRODUCT_DATA_DIR": "/data",
        **product_environment(mesh, product, places, token=None),
    }
    scopes = " ".join(f"--scope {scope}" for scope in PRODUCT_SCOPES)
    script = (  # its credential: MESH_TOKEN from its Secret, else signed here
        f'if [ -z "${{{CREDENTIAL_VARIABLE}:-}}" ]; then\n'
        f'  {CREDENTIAL_VARIABLE}="$(dataproduct token --sub {product_subject(product)} '
        f'{scopes} --ttl {TOKEN_TTL_S})"\n'
        "fi\n"
        f'export {CREDENTIAL_VARIABLE} DATAPRODUCT_MARKETPLACE_TOKEN="${CREDENTIAL_VARIABLE}"\n'
        "exec dataproduct serve /product\n"
    )
    container = restricted_container(
        "product", image, ["sh", "-ec", script], PRODUCT_PORT, PRODUCT_SIZE, environment
    )
    container["envFrom"] = [
        {"configMapRef": {"name": "product-runtime"}},
        {"secretRef": {"name": f"{name}-credentials"}},
    ]
    container["volumeMounts"] = [
        {"name": "product", "mountPath": "/product", "readOnly": True},
        {"name": "data", "mountPath": "/data"},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 an emptyDir, the only /tmp there is
    ]
    container["startupProbe"] = probe("/health", period_s=5, failures=60)
    container["livenessProbe"] = probe("/health", period_s=10, failures=3)
    container["readinessProbe"] = probe("/ready", period_s=5, failures=2)
    volumes = [
        {"name": "product", "configMap": {"name": name, "items": items}},
        {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    return [
        _deployment(meta, container, volumes, digest, grace_s=60),
        _service(meta, PRODUCT_PORT),
        ingress.ingress(name, meta, host, "http", product.prefix),
        _claim(mesh, name),
        config,
    ]


def _folder_config(
    product: MeshProduct, meta: dict[str, Any]
) -> tuple[Manifest, list[dict[str, str]], str]:
    """The ConfigMap holding the folder, the volume items rebuilding it, and its digest."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    items = []
    digest = hashlib.sha256()
    size = 0
    for relative, content in product_files(product).items():
        key = config_key(relative)
        if key in data or key in binary:
            raise ConfigurationError(
                f"two files of {product.name} map to the ConfigMap key {key}", where=relative
            )
        try:
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(content).decode("ascii")
        items.append({"key": key, "path": relative})
        digest.update(relative.encode() + b"\0" + content + b"\0")
        size += len(content)
    if size > CONFIGMAP_LIMIT_BYTES:
        raise ConfigurationError(
            f"the folder of {product.name} holds {size} bytes, more than a ConfigMap can "
            f"({CONFIGMAP_LIMIT_BYTES}): read large data from a source instead of data/",
            where=str(product.dir),
        )
    config: Manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
    if binary:
        config["binaryData"] = binary
    return config, items, digest.hexdigest()


def _claim(mesh: Mesh, name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{name}-data", "labels": labels(mesh, name, "data-product")},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": DATA_SIZE}},
        },
    }


def _deployment(
    meta: dict[str, Any],
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    digest: str | None,
    grace_s: int,
) -> Manifest:
    selector = {
        key: meta["labels"][key] for key in ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,  # one writer of the DuckDB file
            "strategy": {"type": "Recreate"},  # the old pod stops before the new one opens it
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": meta["labels"],
                    # a new folder (descriptor, SQL, data) rolls the pod
                    **({"annotations": {CONFIG_ANNOTATION: digest}} if digest else {}),
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": grace_s,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(meta: dict[str, Any], port: int) -> Manifest:
    selector = {
        key: meta["labels"][key] for key in ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def _marketplace_documents(
    mesh: Mesh, places: MeshPlaces, image: str, host: str, ingress: _IngressStyle
) -> list[Manifest]:
    meta = {"name": MARKETPLACE, "labels": labels(mesh, MARKETPLACE, MARKETPLACE)}
    scheme = "https" if ingress.tls_secret else "http"
    environment = {
        "DATAPRODUCT_ENV": "production",
        "DATAPRODUCT_MARKETPLACE_HOST": "0.0.0.0",  # noqa: S104 inside its pod
        "DATAPRODUCT_MARKETPLACE_PORT": str(MARKETPLACE_PORT),
        "DATAPRODUCT_MARKETPLACE_PUBLIC_URL": f"{scheme}://{host}",
        **marketplace_environment(places, token=None),
    }
    scopes = " ".join(f"--scope {scope}" for scope in MARKETPLACE_SCOPES)
    script = (
        'DATAPRODUCT_MARKETPLACE_PRODUCT_TOKEN="$(dataproduct token --sub marketplace '
        f'{scopes} --ttl {TOKEN_TTL_S})"; export DATAPRODUCT_MARKETPLACE_PRODUCT_TOKEN; '
        "exec dataproduct marketplace serve"
    )
    container = restricted_container(
        MARKETPLACE, image, ["sh", "-ec", script], MARKETPLACE_PORT, MARKETPLACE_SIZE, environment
    )
    # DATAPRODUCT_JWT_SECRET and DATAPRODUCT_MARKETPLACE_DATABASE_URL (PostgreSQL)
    container["envFrom"] = [{"secretRef": {"name": f"{MARKETPLACE}-credentials"}}]
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    container["startupProbe"] = probe("/health", period_s=5, failures=60)
    container["livenessProbe"] = probe("/health", period_s=10, failures=3)
    container["readinessProbe"] = probe("/health", period_s=5, failures=2)
    volumes = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    return [
        _deployment(meta, container, volumes, digest=None, grace_s=30),
        _service(meta, MARKETPLACE_PORT),
        ingress.ingress(MARKETPLACE, meta, host, "http", prefix=None),
    ]


def add_k8s_command(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `k8s DIR --out OUT` on the `mesh` command's subcommands."""
    k8s = actions.add_parser("k8s", help="render Kubernetes manifests (kustomize) for the mesh")
    k8s.add_argument("dir", type=Path, help="the mesh folder (holding mesh.yaml)")
    k8s.add_argument("--out", type=Path, required=True, help="where to write, e.g. deploy/k8s")
    k8s.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    k8s.add_argument("--host", default=DEFAULT_HOST, help="public Ingress host of the products")
    k8s.add_argument("--namespace", help="namespace (default: the mesh's name)")
    k8s.add_argument("--ingress-class", default=DEFAULT_INGRESS_CLASS, help="ingress-nginx class")
    k8s.add_argument("--tls-secret", help="Secret with the host's certificate: serve HTTPS")
    k8s.set_defaults(handler=_k8s)


def _k8s(args: argparse.Namespace) -> int:
    mesh = load_mesh(args.dir.resolve())
    files = render_k8s(
        mesh,
        image=args.image,
        host=args.host,
        namespace=args.namespace,
        ingress_class=args.ingress_class,
        tls_secret=args.tls_secret,
    )
    written = write_k8s(files, args.out)
    print(
        f"wrote {len(written)} files to {args.out}; create the secrets of an overlay from its "
        f"*.env.example files, then: kubectl apply -k {args.out}/overlays/local"
    )
    return 0
