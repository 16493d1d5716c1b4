"""Finding nginx and the command that runs it in the foreground with a rendered config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dataproduct.errors import ConfigurationError

SEARCH_PATH = "/usr/sbin:/usr/local/sbin:/sbin"  # Debian's nginx is not on a user's PATH


def nginx_binary() -> str | None:
    """The nginx executable, if any: PATH first, then the sbin folders."""
    path = os.pathsep.join(filter(None, (os.environ.get("PATH"), SEARCH_PATH)))
    return shutil.which("nginx", path=path)


def nginx_command(config: Path, runtime_dir: Path) -> list[str]:
    """nginx in the foreground with `config`, its files under `runtime_dir`."""
    binary = nginx_binary()
    if binary is None:
        raise ConfigurationError(
            "the gateway runs nginx, which is not installed (Debian: apt-get install nginx)",
            where="nginx",
        )
    error_log = runtime_dir / "error.log"
    return [binary, "-p", str(runtime_dir), "-e", str(error_log), "-c", str(config),
            "-g", "daemon off;"]  # fmt: skip
