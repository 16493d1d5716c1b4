"""A real `dataproduct serve` process on loopback, and a sampler of its memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import psutil


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command(product_dir: Path) -> list[str]:
    """`dataproduct serve DIR`, with the console script next to this Python if there is one."""
    script = Path(sys.executable).parent / "dataproduct"
    if script.exists():
        return [str(script), "serve", str(product_dir)]
    found = shutil.which("dataproduct")
    if found:
        return [found, "serve", str(product_dir)]
    return [sys.executable, "-m", "dataproduct.cli", "serve", str(product_dir)]


class ProductServer:
    """`dataproduct serve DIR` as a subprocess, stopped (and waited for) on exit."""

    def __init__(
        self, product_dir: Path, data_dir: Path, secret: str, log_file: Path, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._command = serve_command(product_dir)
        self._env = {
            **os.environ,
            "DATAPRODUCT_HOST": "127.0.0.1",
            "DATAPRODUCT_PORT": str(self.port),
            "DATAPRODUCT_DATA_DIR": str(data_dir),
            "DATAPRODUCT_JWT_SECRET": secret,
            # the bench publishes the dataset before serving; the server only serves it
            "DATAPRODUCT_INGEST_ON_START": "false",
            "DATAPRODUCT_LOG_LEVEL": "warning",
        }
        self._log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProductServer:
        log = self._log_file.open("wb")
        self.process = subprocess.Popen(
            self._command, env=self._env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            self._wait_ready(timeout_s=120)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}; see {self._log_file}"
                )
            try:
                response = httpx.get(f"{self.base_url}/ready", timeout=2)
                if response.status_code == 200:
                    problems = response.json().get("problems")
                    if problems:
                        raise RuntimeError(f"the server started with problems: {problems}")
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server was not ready after {timeout_s}s; see {self._log_file}")

    def stop(self) -> None:
        """Ask the server to stop (SIGINT, as Ctrl-C), kill it if it does not."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class RssSampler:
    """Samples a process's resident memory (with its children) every `interval_s` seconds.

    `reset()` starts a new window: `peak` is the highest RSS seen since, `baseline` the RSS
    at the reset.
    """

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.baseline = self.rss()
        self.peak = self.baseline
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        """The current RSS in bytes of the process and its children."""
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return int(total)

    def start(self) -> RssSampler:
        """Begin sampling in a background thread."""
        self._thread.start()
        return self

    def reset(self) -> int:
        """A new window; returns the baseline."""
        with self._lock:
            self.baseline = self.rss()
            self.peak = self.baseline
        return self.baseline

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                value = self.rss()
            except psutil.Error:
                return
            with self._lock:
                self.samples += 1
                self.peak = max(self.peak, value)

    def window(self) -> tuple[int, int]:
        """(baseline, peak) of the current window, after one last sample."""
        try:
            value = self.rss()
        except psutil.Error:
            value = 0
        with self._lock:
            self.peak = max(self.peak, value)
            return self.baseline, self.peak

    def stop(self) -> None:
        """End sampling."""
        self._stop.set()
        self._thread.join(timeout=5)
