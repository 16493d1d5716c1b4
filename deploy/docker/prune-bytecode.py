"""Keep the bytecode of what a product and the marketplace import while starting; drop the rest.

The Dockerfile's `rootfs` stage runs this with the image's Python. A container runs on a
read-only root filesystem, so Python never writes bytecode there: a module without it is
compiled each time a process imports it. The modules imported while the embedded example
product starts and becomes ready, and while the marketplace starts, keep theirs (start-up
stays fast), as does the project itself; the others (connectors for other sources, SQL
dialects for transpiling, ...) compile when a process first needs them.

Usage: python prune-bytecode.py ROOT...   (the directories whose bytecode is pruned)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = ("dataproduct", "ports", "connectors", "pipelines")
READY_TIMEOUT_S = 120.0
# Runs the CLI; on SIGUSR1 writes the bytecode file of every module imported so far.
PROBE = """
import signal, sys
def dump(signum, frame):
    cached = (getattr(m, "__cached__", None) for m in list(sys.modules.values()))
    with open(sys.argv[1] + ".part", "w") as out:
        out.write("\\n".join(c for c in cached if c))
    __import__("os").replace(sys.argv[1] + ".part", sys.argv[1])
signal.signal(signal.SIGUSR1, dump)
from dataproduct.cli import main
sys.exit(main(sys.argv[2:]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def imported_bytecode(work: Path, name: str, args: list[str], ready_path: str) -> set[str]:
    """Start `dataproduct ARGS` on a free port, wait for `ready_path`, list its bytecode."""
    port = free_port()
    listing = work / f"{name}.modules"
    env = {
        **os.environ,
        "DATAPRODUCT_HOST": "127.0.0.1",
        "DATAPRODUCT_PORT": str(port),
        "DATAPRODUCT_MARKETPLACE_PORT": str(port),
        "DATAPRODUCT_DATA_DIR": str(work / "data"),
        "DATAPRODUCT_MARKETPLACE_DATABASE_URL": f"sqlite:///{work}/marketplace.db",
    }
    command = [sys.executable, "-c", PROBE, str(listing), *args]
    log = work / f"{name}.log"
    with (
        log.open("wb") as output,
        subprocess.Popen(  # noqa: S603 our own command
            command, env=env, cwd=work, stdout=output, stderr=subprocess.STDOUT
        ) as process,
    ):
        try:
            if not answers(f"http://127.0.0.1:{port}{ready_path}", process):
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"prune-bytecode: the {name} did not start\n{tail}")
            process.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 30
            while not listing.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            process.kill()
    return {os.path.realpath(line) for line in listing.read_text().splitlines()}


def answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Poll `url` until it answers 200 (True), the process ends or time runs out (False)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 http only
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def prune(roots: list[Path], keep: set[str]) -> tuple[int, int]:
    """Delete bytecode under `roots` that is not in `keep` (nor the project's); sizes."""
    kept = removed = 0
    for root in roots:
        for path in root.rglob("*.pyc"):
            size = path.stat().st_size
            top = path.relative_to(root).parts[0]
            if top in PROJECT or os.path.realpath(path) in keep:
                kept += size
            else:
                path.unlink()
                removed += size
    return kept, removed


def main() -> None:
    roots = [Path(arg) for arg in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        keep = imported_bytecode(work, "product", ["serve"], "/ready")
        keep |= imported_bytecode(work, "marketplace", ["marketplace", "serve"], "/health")
    kept, removed = prune(roots, keep)
    print(f"prune-bytecode: kept {kept / 1e6:.1f} MB, removed {removed / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
