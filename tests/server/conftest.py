"""Real `dataproduct serve` processes on free loopback ports, shared by the server tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

READY_TIMEOUT_S = 60.0
CONSOLE_SCRIPT = Path(sys.executable).parent / "dataproduct"


@dataclass
class Server:
    """A running `dataproduct serve` process and where it listens."""

    process: subprocess.Popen[bytes]
    base: str
    stdout: Path
    stderr: Path

    def logs(self) -> str:
        """What the process wrote so far (for failure messages)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


Launch = Callable[..., Server]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_ready(server: Server) -> None:
    """Poll GET /ready until 200 (bounded); fail with the process's output."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{server.logs()}")
        try:
            if httpx.get(f"{server.base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server was not ready in {READY_TIMEOUT_S}s:\n{server.logs()}")


class Launcher:
    """Starts `dataproduct serve` processes writing their output under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def __call__(
        self,
        product_dir: Path,
        data_dir: Path,
        *,
        secret: str | None,
        console_script: bool = False,
        env: dict[str, str] | None = None,
    ) -> Server:
        """Serve `product_dir` on a free loopback port (extra `env` on top) and wait for it."""
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DATAPRODUCT_")}
        environment |= {
            "DATAPRODUCT_HOST": "127.0.0.1",
            "DATAPRODUCT_PORT": str(port),
            "DATAPRODUCT_DATA_DIR": str(data_dir),
        }
        if secret is not None:
            environment["DATAPRODUCT_JWT_SECRET"] = secret
        environment |= env or {}
        command = (
            [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "dataproduct.cli"]
        )
        label = f"{len(self.started)}-{port}"
        stdout = self.workdir / f"stdout-{label}.txt"
        stderr = self.workdir / f"stderr-{label}.txt"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [*command, "serve", str(product_dir)],
                stdout=out,
                stderr=err,
                env=environment,
                cwd=self.workdir,
            )
        self.started.append(process)
        server = Server(process, f"http://127.0.0.1:{port}", stdout, stderr)
        wait_ready(server)
        return server

    def close(self) -> None:
        """Kill whatever is still running."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start `dataproduct serve`; whatever is still running at the end is killed."""
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()
