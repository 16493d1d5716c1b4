"""The kustomize side of `dataproduct mesh k8s`: shared pieces, kustomizations and overlays.

    base/                  every product and the marketplace (mesh_k8s.py), no secrets
    overlays/local/        smaller pods, a small PostgreSQL StatefulSet for the marketplace
    overlays/production/   the marketplace on an existing PostgreSQL

Secrets are never rendered: each overlay generates them (kustomize `secretGenerator`) from
env files the user creates next to the committed `*.env.example` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from dataproduct.mesh import Mesh

Manifest = dict[str, Any]
USER_ID = 10001  # the image's user
KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
POSTGRES_IMAGE = "postgres:17"
POSTGRES_USER_ID = 999  # postgres in the Debian-based image
MESH_ENV = "mesh.env"


@dataclass(frozen=True)
class PodSize:
    """Resource requests and limits of one container."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    def resources(self) -> dict[str, dict[str, str]]:
        """The container's `resources`."""
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


# DuckDB's memory limit stays well under the container's, which also holds Python and Arrow.
PRODUCT_RUNTIME = {"DATAPRODUCT_MEMORY_LIMIT": "1GB", "DATAPRODUCT_THREADS": "2"}
LOCAL_PRODUCT_RUNTIME = {"DATAPRODUCT_MEMORY_LIMIT": "256MB", "DATAPRODUCT_THREADS": "1"}
LOCAL_PRODUCT_SIZE = PodSize("100m", "256Mi", "1", "768Mi")
LOCAL_DATA_SIZE = "1Gi"
POSTGRES_SIZE = PodSize("100m", "128Mi", "1", "512Mi")


def labels(mesh: Mesh, name: str, component: str) -> dict[str, str]:
    """The recommended labels of one part of the mesh."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": mesh.name,
    }


def pod_security(user_id: int = USER_ID) -> dict[str, Any]:
    """A pod security context of the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user_id,
        "runAsGroup": user_id,
        "fsGroup": user_id,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container(
    name: str,
    image: str,
    args: list[str],
    port: int,
    size: PodSize,
    environment: dict[str, str],
) -> dict[str, Any]:
    """A container with a read-only root, no privileges, its port named `http`."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": key, "value": value} for key, value in environment.items()],
        "resources": size.resources(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def probe(path: str, *, period_s: int, failures: int) -> dict[str, Any]:
    """An HTTP probe on the container's `http` port."""
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 4,
        "failureThreshold": failures,
    }


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors; multi-line strings (descriptors, SQL) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_documents(documents: list[Manifest], header: str = "") -> str:
    """YAML documents, keys in the order given."""
    return header + yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
    )


def kustomize_files(mesh: Mesh, namespace: str, header: str) -> dict[str, str]:
    """The base kustomization, both overlays and the files around them."""
    products = [product.name for product in mesh.products]
    namespace_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    base = {
        **KUSTOMIZATION,
        "namespace": namespace,
        "resources": ["namespace.yaml", *(f"{name}.yaml" for name in products), "marketplace.yaml"],
        "configMapGenerator": [{"name": "product-runtime", "literals": _literals(PRODUCT_RUNTIME)}],
    }
    files = {
        "base/namespace.yaml": dump_documents([namespace_doc], header),
        "base/kustomization.yaml": dump_documents([base], header),
        ".gitignore": "# the secrets each overlay generates its Secrets from (see README.md)\n"
        "overlays/*/*.env\n",
    }
    files.update(_local_overlay(products, namespace, header))
    files.update(_production_overlay(products, namespace, header))
    return files


def _literals(values: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def _secrets(products: list[str], marketplace_envs: list[str]) -> list[dict[str, Any]]:
    """One credentials Secret per product and one for the marketplace."""
    found: list[dict[str, Any]] = [
        {"name": f"{name}-credentials", "envs": [MESH_ENV]} for name in products
    ]
    found.append({"name": "marketplace-credentials", "envs": marketplace_envs})
    return found


def _json_patch(target: dict[str, str], operations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"target": target, "patch": yaml.dump(operations, Dumper=_Dumper, sort_keys=False)}


def _secret_env(name: str, secret: str) -> dict[str, Any]:
    """A variable read from the key of the same name in a Secret."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}


def _local_overlay(products: list[str], namespace: str, header: str) -> dict[str, str]:
    product_pods = {
        "kind": "Deployment",
        "labelSelector": "app.kubernetes.io/component=data-product",
    }
    container = "/spec/template/spec/containers/0"
    resources = {
        "op": "replace",
        "path": f"{container}/resources",
        "value": LOCAL_PRODUCT_SIZE.resources(),
    }
    storage = {
        "op": "replace",
        "path": "/spec/resources/requests/storage",
        "value": LOCAL_DATA_SIZE,
    }
    database_url = "postgresql+psycopg://marketplace:$(POSTGRES_PASSWORD)@postgres:5432/marketplace"
    database = [  # in this order: the URL expands the password defined before it
        _secret_env("POSTGRES_PASSWORD", "postgres"),
        {"name": "DATAPRODUCT_MARKETPLACE_DATABASE_URL", "value": database_url},
    ]
    runtime = {
        "name": "product-runtime",
        "behavior": "merge",
        "literals": _literals(LOCAL_PRODUCT_RUNTIME),
    }
    kustomization = {
        **KUSTOMIZATION,
        "namespace": namespace,
        "resources": ["../../base", "postgres.yaml"],
        "configMapGenerator": [runtime],
        "secretGenerator": [
            *_secrets(products, [MESH_ENV]),
            {"name": "postgres", "envs": ["postgres.env"]},
        ],
        "patches": [
            _json_patch(product_pods, [resources]),
            _json_patch({**product_pods, "kind": "PersistentVolumeClaim"}, [storage]),
            _json_patch(
                {"kind": "Deployment", "name": "marketplace"},
                [{"op": "add", "path": f"{container}/env/-", "value": v} for v in database],
            ),
        ],
    }
    intro = (
        "# A mesh on a local cluster (kind, minikube, k3d): small pods, and PostgreSQL for the\n"
        "# marketplace in the cluster. Create mesh.env and postgres.env first (README.md).\n"
    )
    return {
        "overlays/local/kustomization.yaml": dump_documents([kustomization], header + intro),
        "overlays/local/postgres.yaml": dump_documents(_postgres(), header),
        "overlays/local/mesh.env.example": _MESH_ENV_EXAMPLE,
        "overlays/local/postgres.env.example": (
            "# The password of the marketplace's PostgreSQL (letters and digits: it goes into\n"
            "# a URL). Create postgres.env:\n"
            "#   printf 'POSTGRES_PASSWORD=%s\\n' \"$(openssl rand -hex 16)\" > postgres.env\n"
            "POSTGRES_PASSWORD=change-me\n"
        ),
    }


def _production_overlay(products: list[str], namespace: str, header: str) -> dict[str, str]:
    kustomization = {
        **KUSTOMIZATION,
        "namespace": namespace,
        "resources": ["../../base"],
        "secretGenerator": _secrets(products, [MESH_ENV, "marketplace.env"]),
    }
    intro = (
        "# A mesh on a shared cluster; the marketplace uses an existing PostgreSQL. Create\n"
        "# mesh.env and marketplace.env first (README.md); set your image with `images:`.\n"
    )
    return {
        "overlays/production/kustomization.yaml": dump_documents([kustomization], header + intro),
        "overlays/production/mesh.env.example": _MESH_ENV_EXAMPLE,
        "overlays/production/marketplace.env.example": (
            "# Where the marketplace keeps its catalogue (an existing PostgreSQL database).\n"
            "DATAPRODUCT_MARKETPLACE_DATABASE_URL="
            "postgresql+psycopg://marketplace:change-me@postgres.example.com:5432/marketplace\n"
        ),
    }


_MESH_ENV_EXAMPLE = (
    "# The mesh's shared HS256 secret, at least 32 characters: products check tokens with it\n"
    "# and each pod signs its own mesh credential with it at start. Create mesh.env:\n"
    "#   printf 'DATAPRODUCT_JWT_SECRET=%s\\n' \"$(openssl rand -hex 32)\" > mesh.env\n"
    "# A product's own credentials (its sources' passwords, or a MESH_TOKEN from your issuer)\n"
    "# go into another env file added to its Secret's `envs` in kustomization.yaml.\n"
    "DATAPRODUCT_JWT_SECRET=change-me\n"
)


def _postgres() -> list[Manifest]:
    """A one-pod PostgreSQL for the marketplace of a local mesh (not for production)."""
    meta = {
        "name": "postgres",
        "labels": {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "database"},
    }
    selector = {"app.kubernetes.io/name": "postgres"}
    ready = ["pg_isready", "--host=127.0.0.1", "--username=marketplace", "--dbname=marketplace"]
    container = {
        "name": "postgres",
        "image": POSTGRES_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "postgres", "containerPort": 5432}],
        "env": [
            {"name": "POSTGRES_USER", "value": "marketplace"},
            {"name": "POSTGRES_DB", "value": "marketplace"},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
            _secret_env("POSTGRES_PASSWORD", "postgres"),
        ],
        "resources": POSTGRES_SIZE.resources(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 an emptyDir
        ],
        "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 5},
        "livenessProbe": {"exec": {"command": ready}, "periodSeconds": 10, "failureThreshold": 6},
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "serviceName": "postgres",
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(POSTGRES_USER_ID),
                    "containers": [container],
                    "volumes": [
                        {"name": "run", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": LOCAL_DATA_SIZE}},
                    },
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": selector,
            "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}],
        },
    }
    return [service, statefulset]
