"""nginx for the tests that run a real gateway: found, or installed from Debian once.

Package scripts are kept from starting nginx's default site; when nothing can be installed
the tests skip locally and fail in CI.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dataproduct.nginx import nginx_binary
from tests.conftest import skip_or_fail

NGINX_PACKAGES = ("nginx", "nginx-light")  # bookworm: `nginx` is the server itself
INSTALL_LOCK = Path("/tmp/dataproduct-nginx-install.lock")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DEBIAN_PID_FILE = Path("/run/nginx.pid")
APT_TIMEOUT_S = 900


@contextmanager
def _services_kept_down() -> Iterator[None]:
    """Keep package scripts from starting services; stop an nginx the install started anyway."""
    had_pid_file = DEBIAN_PID_FILE.exists()
    created_policy = not POLICY_RC_D.exists()
    if created_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# dataproduct tests: start no service\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        if created_policy:
            POLICY_RC_D.unlink(missing_ok=True)
        if not had_pid_file and DEBIAN_PID_FILE.exists():
            _stop_debian_nginx()


def _stop_debian_nginx() -> None:
    """The package's own nginx (default site on port 80) if it was started: stop it."""
    text = DEBIAN_PID_FILE.read_text().strip()
    pid = int(text) if text.isdigit() else 0
    comm = Path(f"/proc/{pid}/comm")
    if pid and comm.exists() and comm.read_text().strip() == "nginx":
        os.kill(pid, signal.SIGQUIT)


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=300", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False
    )


def _install_nginx() -> str:
    """apt-get install nginx (then nginx-light): the binary; RuntimeError with apt's errors."""
    with INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions install once
        found = nginx_binary()
        if found:
            return found
        errors = []
        with _services_kept_down():
            for refresh in (False, True):
                if refresh:
                    _apt_get("update")
                for package in NGINX_PACKAGES:
                    result = _apt_get("install", "-y", "--no-install-recommends", package)
                    found = nginx_binary()
                    if result.returncode == 0 and found:
                        return found
                    errors.append(f"{package}: {(result.stderr.strip() or 'no nginx')[-500:]}")
        raise RuntimeError("\n".join(errors))


@pytest.fixture(scope="session")
def nginx() -> str:
    """The nginx binary, installed from Debian once per session when missing."""
    found = nginx_binary()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        skip_or_fail("nginx is not installed and cannot be (needs root and apt-get)")
    try:
        return _install_nginx()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        skip_or_fail(f"cannot install nginx: {error}")
        raise  # unreachable: skip_or_fail raises
