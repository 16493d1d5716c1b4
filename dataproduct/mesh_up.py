"""`dataproduct mesh up`: a whole mesh on this machine, as supervised child processes.

The marketplace starts first, then the gateway, then the products upstream first, each
waited for until it is ready (its first pull reads its upstream products). A child that
dies is started again, with a growing pause. SIGINT or SIGTERM stops everything, the
downstream products first. Each child is a `dataproduct mesh serve|marketplace|gateway`
command, exactly what a container of the compose file runs.

The state folder keeps the token secret (so credentials and masked values stay stable
across restarts), every product's data, the marketplace's store, one log per child and an
administrator's token for trying the mesh.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from dataproduct.errors import ConfigurationError
from dataproduct.mesh import CREDENTIAL_VARIABLE, Mesh
from dataproduct.mesh_env import MeshPlaces
from dataproduct.security import PORT_SCOPES, issue_token

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
RESTART_PAUSE_S = (1.0, 60.0)  # first and longest pause before starting a dead child again
ADMIN_TTL_S = 12 * 3600


@dataclass
class Child:
    """One supervised process and how to tell it is up."""

    name: str
    arguments: list[str]
    ready_url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0


class MeshSupervisor:
    """Starts, watches and stops the processes of one mesh."""

    def __init__(
        self, mesh: Mesh, state_dir: Path, places: MeshPlaces, host: str | None = None
    ) -> None:
        self.mesh = mesh
        self.state_dir = state_dir
        self.places = places
        self.host = host
        self._stop = threading.Event()
        self.children = self._children()

    def _children(self) -> list[Child]:
        local = "http://127.0.0.1"
        places = ["--gateway-url", self.places.gateway_url,
                  "--marketplace-url", self.places.marketplace_url]  # fmt: skip
        host = ["--host", self.host] if self.host else []
        directory = str(self.mesh.dir)
        logs = self.state_dir / "logs"
        found = [
            Child("marketplace", ["marketplace", directory, *places, *host],
                  f"{local}:{self.mesh.marketplace_port}/health", logs / "marketplace.log"),
            Child("gateway", ["gateway", directory, *places, *host],
                  f"{local}:{self.mesh.gateway_port}/", logs / "gateway.log"),
        ]  # fmt: skip
        found += [
            Child(product.name, ["serve", directory, product.name, *places, *host],
                  f"{local}:{product.port}/ready", logs / f"{product.name}.log")
            for product in self.mesh.products
        ]  # fmt: skip
        return found

    # the state folder -----------------------------------------------------------------

    def secret(self) -> str:
        """The mesh's token secret, made once and kept in the state folder (mode 0600)."""
        path = self.state_dir / "secret"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def environment(self) -> dict[str, str]:
        """What every child runs with: this environment, the secret and the data folder."""
        found = dict(os.environ)
        found.pop(CREDENTIAL_VARIABLE, None)  # each product signs its own
        found["DATAPRODUCT_JWT_SECRET"] = self.secret()
        found["DATAPRODUCT_DATA_DIR"] = str(self.state_dir / "data")
        found["PYTHONUNBUFFERED"] = "1"
        return found

    def write_admin_token(self) -> Path:
        """A token for trying the mesh: every port, in every group the products grant to."""
        groups = sorted(
            {g.group for p in self.mesh.products for g in p.descriptor.access if g.group}
        )
        token = issue_token(
            self.secret(), "mesh-admin", list(PORT_SCOPES), groups=groups, ttl_s=ADMIN_TTL_S
        )
        path = self.state_dir / "admin-token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path

    # processes -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every child in order, each ready before the next; ConfigurationError if one
        does not come up (the ones started are stopped)."""
        environment = self.environment()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._launch(child, environment)
            if not self._wait_ready(child):
                if self._stop.is_set():  # a signal arrived while starting
                    return
                self.stop()
                raise ConfigurationError(
                    f"{child.name} did not become ready in {READY_TIMEOUT_S:.0f} s; "
                    f"see {child.log}",
                    where=child.name,
                )

    def _launch(self, child: Child, environment: dict[str, str]) -> None:
        command = [sys.executable, "-m", "dataproduct.cli", "mesh", *child.arguments]
        with child.log.open("ab") as log:
            child.process = subprocess.Popen(  # noqa: S603 our own command, no shell
                command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def _wait_ready(self, child: Child) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if child.process is None or child.process.poll() is not None:
                return False
            try:
                if httpx.get(child.ready_url, timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        return False

    def watch(self) -> None:
        """Until stopped: start again any child that ended, with a growing pause."""
        environment = self.environment()
        while not self._stop.wait(0.5):
            for child in self.children:
                if child.process is None or child.process.poll() is None:
                    continue
                now = time.monotonic()
                if child.next_start == 0.0:
                    pause = min(RESTART_PAUSE_S[0] * 2**child.restarts, RESTART_PAUSE_S[1])
                    child.next_start = now + pause
                    print(f"mesh: {child.name} exited ({child.process.returncode}); "
                          f"starting it again in {pause:.0f} s", flush=True)  # fmt: skip
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    self._launch(child, environment)

    def stop(self) -> None:
        """Stop every child, downstream first: SIGTERM, then SIGKILL after a while."""
        self._stop.set()
        for child in reversed(self.children):
            process = child.process
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)

    def run(self) -> int:
        """Start the mesh, say where everything is, supervise until SIGINT or SIGTERM."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        try:
            self.start()
            print(self.summary(self.write_admin_token()), flush=True)
            self.watch()  # until a signal
        finally:
            self.stop()
        print("mesh: stopped", flush=True)
        return 0

    def summary(self, admin_token: Path) -> str:
        """Where everything is, and a first command to try."""
        width = max(len(p.name) for p in self.mesh.products)
        lines = [f"\nmesh {self.mesh.name} is up (state in {self.state_dir})",
                 f"  marketplace  {self.places.marketplace_url}/",
                 f"  gateway      {self.places.gateway_url}/"]  # fmt: skip
        lines += [f"  {p.name:<{width}}  {self.places.address(p)}/" for p in self.mesh.products]
        first = self.places.address(self.mesh.products[-1])
        lines += [
            f"\nlogs in {self.state_dir / 'logs'}; an administrator's token in {admin_token}",
            f'try: curl -H "Authorization: Bearer $(cat {admin_token})" {first}/output/datasets',
            "stop with Ctrl-C",
        ]
        return "\n".join(lines)
