"""Credentials referenced from the descriptor, never written into it.

A source option may hold `${env:PG_PASSWORD}` or `${file:/run/secrets/pg}`: the value is
read when a connector opens the source (so a rotated secret is picked up), and every value
read is remembered so that errors can be scrubbed of it before anyone sees them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dataproduct.errors import DataproductError, SourceError

_REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
HIDDEN = "***"


class SecretResolver:
    """Expands secret references and remembers what it expanded, for redaction."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.values: set[str] = set()

    def resolve(self, text: str) -> str:
        """`text` with every `${env:NAME}` and `${file:PATH}` replaced by its value."""
        return _REFERENCE.sub(lambda match: self._value(match[1], match[2].strip()), text)

    def _value(self, kind: str, name: str) -> str:
        if kind == "env":
            value = os.environ.get(name)
            if value is None:
                raise SourceError(f"the environment variable {name} is not set", where=self.where)
        else:
            try:
                value = Path(name).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise SourceError(
                    f"cannot read the secret file {name}: {error.strerror}", where=self.where
                ) from None
        if value:
            self.values.add(value)
        return value

    def scrub(self, text: str) -> str:
        """`text` with every secret value this resolver produced hidden."""
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, HIDDEN)
        return text

    def scrub_error(self, error: DataproductError) -> None:
        """Hide every secret value from an error's message and location, in place."""
        error.message = self.scrub(error.message)
        if error.where:
            error.where = self.scrub(error.where)
        error.args = (error.message,)


def is_reference(text: str) -> bool:
    """True when `text` names a secret instead of holding one."""
    return bool(_REFERENCE.search(text))


def mask_url(url: str) -> str:
    """A URL without its password (or its whole user part if that is a literal secret)."""
    parts = urlsplit(url)
    if parts.password is None or is_reference(parts.password):
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{HIDDEN}@{host}"))
