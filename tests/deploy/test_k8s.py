"""The Kubernetes manifests of the example mesh (deploy/k8s), rendered by `mesh k8s`.

Every manifest is validated offline against the Kubernetes JSON schemas bundled in
`kubernetes-validate` (strict: unknown fields fail). The kustomize overlays are built with
`kubectl kustomize` only where kubectl is installed (it may be missing in CI, where the test
skips): the base manifests they patch are validated without it.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from dataproduct.errors import ConfigurationError
from dataproduct.mesh import Mesh, MeshProduct, load_mesh
from dataproduct.mesh_k8s import add_k8s_command, render_k8s
from dataproduct.settings import DataproductSettings
from tests.server.conftest import CONSOLE_SCRIPT, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
K8S = ROOT / "deploy" / "k8s"
# the oldest Kubernetes the manifests claim to support, and the newest the validator knows
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
HAND_WRITTEN = {"README.md"}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    """The example mesh."""
    return load_mesh(EXAMPLES)


@pytest.fixture(scope="module")
def rendered(mesh: Mesh) -> dict[str, str]:
    """A fresh rendering with the defaults the committed files were rendered with."""
    return render_k8s(mesh)


@pytest.fixture(scope="module")
def manifests(rendered: dict[str, str]) -> list[Manifest]:
    """Every Kubernetes object of the rendering (kustomizations are not objects)."""
    return [
        document
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document["kind"] != "Kustomization"
    ]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The object of that kind and name."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def container_of(deployment: Manifest) -> Manifest:
    """The only container of a workload."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Manifest = containers[0]
    return result


def env_of(container: Manifest) -> dict[str, str]:
    """The container's literal variables."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


PRODUCTS = [product.name for product in load_mesh(EXAMPLES).products]


def test_committed_manifests_match_a_fresh_rendering(rendered: dict[str, str]) -> None:
    committed = {
        path.relative_to(K8S).as_posix()
        for path in K8S.rglob("*")
        if path.is_file() and not (path.parent.parent.name == "overlays" and path.suffix == ".env")
    }
    assert committed - HAND_WRITTEN == set(rendered), "render again: dataproduct mesh k8s"
    for relative, text in rendered.items():
        assert (K8S / relative).read_text(encoding="utf-8") == text, f"{relative} is stale"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    manifests: list[Manifest], version: str
) -> None:
    kinds = set()
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)
        kinds.add(manifest["kind"])
    expected = {"Namespace", "Deployment", "Service", "Ingress", "PersistentVolumeClaim"}
    assert expected | {"ConfigMap", "StatefulSet"} <= kinds


def test_the_validator_refuses_a_broken_manifest(manifests: list[Manifest]) -> None:
    """The schemas really check something: a wrong type and an unknown field both fail."""
    deployment = find(manifests, "Deployment", "sales-de")
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    for broken in (wrong_type, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", PRODUCTS)
def test_a_product_runs_one_replica_replaced_by_recreate(
    manifests: list[Manifest], name: str
) -> None:
    spec = find(manifests, "Deployment", name)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # two DuckDB writers never overlap


@pytest.mark.parametrize("name", PRODUCTS)
def test_a_product_keeps_its_data_on_its_claim_at_data(
    manifests: list[Manifest], name: str
) -> None:
    deployment = find(manifests, "Deployment", name)
    container = container_of(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
    assert find(manifests, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    assert env_of(container)["DATAPRODUCT_DATA_DIR"] == "/data"
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("name", PRODUCTS)
def test_a_product_is_probed_on_health_and_ready(manifests: list[Manifest], name: str) -> None:
    container = container_of(find(manifests, "Deployment", name))
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}


@pytest.mark.parametrize("name", [*PRODUCTS, "marketplace"])
def test_pods_run_non_root_read_only_with_limits(manifests: list[Manifest], name: str) -> None:
    deployment = find(manifests, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}


@pytest.mark.parametrize("name", PRODUCTS)
def test_a_product_is_at_its_standard_path_on_the_ingress(
    mesh: Mesh, manifests: list[Manifest], name: str
) -> None:
    product = mesh.product(name)
    ingress = find(manifests, "Ingress", name)
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == f"/{product.prefix}(/|$)(.*)"  # /<area>/<product>/v<major>
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/rewrite-target"] == "/$2"  # served at /
    service = find(manifests, "Service", path["backend"]["service"]["name"])
    pod_labels = find(manifests, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    public = env_of(container_of(find(manifests, "Deployment", name)))["DATAPRODUCT_PUBLIC_URL"]
    assert public == f"http://{rule['host']}/{product.prefix}"


@pytest.mark.parametrize("name", PRODUCTS)
def test_a_product_configmap_holds_its_descriptor_sql_and_data(
    mesh: Mesh, manifests: list[Manifest], name: str
) -> None:
    product = mesh.product(name)
    config = find(manifests, "ConfigMap", name)
    deployment = find(manifests, "Deployment", name)
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == name
    folder = {item["path"]: config["data"][item["key"]] for item in volume["configMap"]["items"]}
    sql = sorted(product.dir.glob("pipeline/*.sql"))
    assert sql
    for path in [product.dir / "dataproduct.yaml", *sql, *product.dir.glob("data/*")]:
        relative = path.relative_to(product.dir).as_posix()
        assert folder[relative] == path.read_text(encoding="utf-8"), relative
    mounts = {m["name"]: m for m in container_of(deployment)["volumeMounts"]}
    assert mounts[volume["name"]]["mountPath"] == "/product"


def test_upstream_addresses_are_the_public_addresses_the_marketplace_accepts(
    mesh: Mesh, manifests: list[Manifest]
) -> None:
    """MESH_URL_<NAME> everywhere is that product's DATAPRODUCT_PUBLIC_URL, which the
    marketplace matches for lineage and trusts with its credential."""
    public = {
        p.url_variable: env_of(container_of(find(manifests, "Deployment", p.name)))[
            "DATAPRODUCT_PUBLIC_URL"
        ]
        for p in mesh.products
    }
    for product in mesh.products:
        environment = env_of(container_of(find(manifests, "Deployment", product.name)))
        assert {k: v for k, v in environment.items() if k.startswith("MESH_URL_")} == public
        assert environment["DATAPRODUCT_MARKETPLACE_URL"] == "http://marketplace:8090"
    market = env_of(container_of(find(manifests, "Deployment", "marketplace")))
    prefixes = yaml.safe_load(market["DATAPRODUCT_MARKETPLACE_PRODUCT_URL_PREFIXES"])
    assert all(any(url.startswith(p) for p in prefixes) for url in public.values())
    find(manifests, "Service", "marketplace")


def test_marketplace_reads_its_postgresql_settings_from_a_secret(
    manifests: list[Manifest], rendered: dict[str, str]
) -> None:
    container = container_of(find(manifests, "Deployment", "marketplace"))
    assert container["envFrom"] == [{"secretRef": {"name": "marketplace-credentials"}}]
    production = yaml.safe_load(rendered["overlays/production/kustomization.yaml"])
    generator = {g["name"]: g for g in production["secretGenerator"]}["marketplace-credentials"]
    assert "marketplace.env" in generator["envs"]
    example = rendered["overlays/production/marketplace.env.example"]
    assert "DATAPRODUCT_MARKETPLACE_DATABASE_URL=postgresql+psycopg://" in example
    local = yaml.safe_load(rendered["overlays/local/kustomization.yaml"])
    assert "postgres.yaml" in local["resources"]
    find(manifests, "StatefulSet", "postgres")


def test_committed_files_hold_no_secret_only_placeholders_the_product_refuses(
    manifests: list[Manifest], rendered: dict[str, str]
) -> None:
    assert not [m for m in manifests if m["kind"] == "Secret"]
    secrets = {
        line.split("=", 1)[1]
        for path, text in rendered.items()
        if path.endswith(".env.example")
        for line in text.splitlines()
        if line.startswith("DATAPRODUCT_JWT_SECRET=")
    }
    assert secrets == {"change-me"}
    with pytest.raises(ConfigurationError):
        DataproductSettings(env="production", jwt_secret="change-me").require_secret()
    assert "overlays/*/*.env" in rendered[".gitignore"].splitlines()


def test_k8s_command_writes_the_rendering(tmp_path: Path, rendered: dict[str, str]) -> None:
    parser = argparse.ArgumentParser()
    add_k8s_command(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(["k8s", str(EXAMPLES), "--out", str(tmp_path)])
    assert args.handler(args) == 0
    for relative, text in rendered.items():
        assert (tmp_path / relative).read_text(encoding="utf-8") == text


def test_options_set_image_host_namespace_and_tls(mesh: Mesh) -> None:
    files = render_k8s(
        mesh, image="registry.example/dp:1", host="data.corp", namespace="ns", tls_secret="tls"
    )
    deployment = next(yaml.safe_load_all(files["base/sales-de.yaml"]))
    assert container_of(deployment)["image"] == "registry.example/dp:1"
    assert env_of(container_of(deployment))["MESH_URL_SALES_FR"] == (
        "https://data.corp/sales/europe/france/sales-fr/v1"
    )
    ingress = [d for d in yaml.safe_load_all(files["base/sales-de.yaml"]) if d["kind"] == "Ingress"]
    assert ingress[0]["spec"]["tls"] == [{"hosts": ["data.corp"], "secretName": "tls"}]
    assert yaml.safe_load(files["base/kustomization.yaml"])["namespace"] == "ns"


def test_a_data_file_too_large_for_a_configmap_is_refused(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "mesh")
    (tmp_path / "mesh" / "sales-de" / "data" / "big.csv").write_bytes(b"x\n" * 600_000)
    with pytest.raises(ConfigurationError, match="sales-de"):
        render_k8s(load_mesh(tmp_path / "mesh"))


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_overlays_build_and_validate_with_kubectl_kustomize(
    tmp_path: Path, rendered: dict[str, str], overlay: str
) -> None:
    """Built with kubectl where it exists; skipped (even in CI) where it does not."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays are not built")
    for relative, text in rendered.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    for example in (tmp_path / "overlays" / overlay).glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))  # mesh.env.example -> mesh.env
    built = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    objects = list(yaml.safe_load_all(built.stdout))
    for manifest in objects:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[0], strict=True)
        assert manifest["kind"] == "Namespace" or manifest["metadata"]["namespace"] == "sales-mesh"
    secrets = {m["metadata"]["name"] for m in objects if m["kind"] == "Secret"}
    for name in PRODUCTS:
        deployment = find(objects, "Deployment", name)
        [_, credentials] = container_of(deployment)["envFrom"]
        assert credentials["secretRef"]["name"] in secrets  # the generated, hashed name
        secret = find(objects, "Secret", credentials["secretRef"]["name"])
        assert base64.b64decode(secret["data"]["DATAPRODUCT_JWT_SECRET"]) == b"change-me"
    limits = container_of(find(objects, "Deployment", "sales-de"))["resources"]["limits"]
    assert limits["memory"] == ("768Mi" if overlay == "local" else "2Gi")
    if overlay == "local":
        market = container_of(find(objects, "Deployment", "marketplace"))
        names = [e["name"] for e in market["env"]]
        # the URL expands $(POSTGRES_PASSWORD), so the password must come before it
        assert names.index("POSTGRES_PASSWORD") < names.index(
            "DATAPRODUCT_MARKETPLACE_DATABASE_URL"
        )


@pytest.mark.server
def test_a_product_starts_from_its_configmap_and_command(
    tmp_path: Path, mesh: Mesh, manifests: list[Manifest], rendered: dict[str, str]
) -> None:
    """The folder rebuilt from the ConfigMap's items, the container's own script (which
    signs the product's credential) and its environment make a product that gets ready."""
    product: MeshProduct = mesh.product("sales-de")
    deployment = find(manifests, "Deployment", product.name)
    container = container_of(deployment)
    config = find(manifests, "ConfigMap", product.name)
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    folder = configmap_volume(tmp_path / "product", config, volume["configMap"]["items"])
    port = free_port()
    base = yaml.safe_load(rendered["base/kustomization.yaml"])
    [runtime] = [
        g["literals"] for g in base["configMapGenerator"] if g["name"] == "product-runtime"
    ]
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DATAPRODUCT_")},
        "PATH": f"{CONSOLE_SCRIPT.parent}:{os.environ['PATH']}",
        **dict(literal.split("=", 1) for literal in runtime),
        **env_of(container),
        "DATAPRODUCT_JWT_SECRET": "k8s-test-secret-that-is-long-enough-0123",
        "DATAPRODUCT_HOST": "127.0.0.1",
        "DATAPRODUCT_PORT": str(port),
        "DATAPRODUCT_DATA_DIR": str(tmp_path / "data"),
        "DATAPRODUCT_MARKETPLACE_URL": f"http://127.0.0.1:{free_port()}",  # nobody: retried
    }
    command, flag, script = container["args"]
    script = script.replace(" /product\n", f" {folder}\n")
    log = tmp_path / "product.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [command, flag, script], env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("not ready in 60 s:\n" + log.read_text(errors="replace"))
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        orders = httpx.get(f"{base}/discovery/datasets/orders", timeout=5).json()
        assert orders["row_count"] > 0  # data/orders.csv read through the projected links
        public = env_of(container)["DATAPRODUCT_PUBLIC_URL"]
        assert orders["links"]["rows"] == f"{public}/output/datasets/orders"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)


def configmap_volume(folder: Path, config: Manifest, items: list[dict[str, str]]) -> Path:
    """The folder as the kubelet projects a ConfigMap with `items`: the files in a hidden
    timestamped folder, `..data` linking to it, each top-level name linking through
    `..data`, everything read-only."""
    payload = folder / "..2026_01_01_00_00_00.000000000"
    for item in items:
        (payload / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (payload / item["path"]).write_text(config["data"][item["key"]], encoding="utf-8")
    (folder / "..data").symlink_to(payload.name)
    for top in {item["path"].split("/")[0] for item in items}:
        (folder / top).symlink_to(f"..data/{top}")
    for path in [*sorted(payload.rglob("*"), reverse=True), payload, folder]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return folder
