"""Brokers the tests own: a NATS server and a Mosquitto on free loopback ports, and a TCP
proxy in front of the shared RabbitMQ that the tests cut and restore (not a test module).

The shared services are never stopped: an outage is always one of these.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.server.conftest import free_port

NATS_SERVER = "/usr/sbin/nats-server"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_service(port: int, name: str) -> None:
    """Skip (fail in CI) when the shared service is not listening."""
    if not port_open(port):
        skip_or_fail(f"{name} is not running on 127.0.0.1:{port}")


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the broker exited early:\n{log.read_text(errors='replace')}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"the broker did not listen on {port}:\n{log.read_text(errors='replace')}")


class OwnBroker:
    """A broker process of our own: started, killed and started again on the same port."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = self.workdir / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts the broker."""
        raise NotImplementedError

    def start(self) -> None:
        """Start (or start again) and wait until it listens."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process, self.log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop it the hard way (SIGKILL) or gracefully (SIGTERM), and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, sig: int = signal.SIGKILL) -> None:
        """Kill, then start again with the same storage and port."""
        self.kill(sig)
        self.start()


class NatsServer(OwnBroker):
    """nats-server with JetStream, file storage under the work folder."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "nats")

    @property
    def url(self) -> str:
        """Where clients connect."""
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """nats-server -js on loopback."""
        store = str(self.workdir / "jetstream")
        return [NATS_SERVER, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(self.port)]


class MosquittoServer(OwnBroker):
    """Mosquitto with persistence on, so sessions and queued messages survive a restart."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "mosquitto")
        self.config = self.workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "log_dest stdout\n" + ("user root\n" if os.geteuid() == 0 else ""),
            # as root, mosquitto would switch to its own user, who cannot write here
            encoding="utf-8",
        )

    def command(self) -> list[str]:
        """mosquitto -c <config>."""
        return [MOSQUITTO, "-c", str(self.config)]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server of this test's own."""
    if not Path(NATS_SERVER).is_file():
        skip_or_fail(f"{NATS_SERVER} is not installed")
    server = NatsServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def mosquitto_server(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto of this test's own."""
    if not Path(MOSQUITTO).is_file():
        skip_or_fail("mosquitto is not installed")
    server = MosquittoServer(tmp_path)
    server.start()
    yield server
    server.kill()


class TcpProxy:
    """Forwards a loopback port to a target port; `cut()` drops every connection and
    refuses new ones until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Listen and forward."""
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(self._accept, listener)

    def cut(self) -> None:
        """Close the listener and every forwarded connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        """Listen again on the same port."""
        self.start()

    def close(self) -> None:
        """Cut and wait for the forwarding threads."""
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def rabbit_proxy() -> Iterator[TcpProxy]:
    """A proxy in front of the shared RabbitMQ, which the test may cut."""
    require_service(5672, "RabbitMQ")
    proxy = TcpProxy(5672)
    proxy.start()
    yield proxy
    proxy.close()
