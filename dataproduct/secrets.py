"""Credentials referenced from the descriptor, never written into it.

A source option may hold `${env:PG_PASSWORD}` or `${file:/run/secrets/pg}`: the value is
read when a connector opens the source (so a rotated secret is picked up), and every value
read is remembered so that errors can be scrubbed of it before anyone sees them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from dataproduct.errors import DataproductError, SourceError

_REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
HIDDEN = "***"


class SecretResolver:
    """Expands secret references and remembers what it expanded, for redaction."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.values: set[str] = set()

    def resolve(self, text: str) -> str:
        """`text` with every `${env:NAME}` and `${file:PATH}` replaced by its value.

        In a URL, a value that lands in the user part or the query is percent-encoded, so
        a password holding `@`, `/` or `:` stays a password (and never becomes a host).
        """
        encoded = _url_encoded_spans(text)
        return _REFERENCE.sub(
            lambda match: self._value(match[1], match[2].strip(), match.start() in encoded),
            text,
        )

    def _value(self, kind: str, name: str, url_encoded: bool) -> str:
        value = self._read(kind, name)
        if not url_encoded:
            return value
        quoted = quote(value, safe="")
        if quoted:
            self.values.add(quoted)
        return quoted

    def _read(self, kind: str, name: str) -> str:
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


def _url_encoded_spans(text: str) -> set[int]:
    """Where in `text` (a URL) the references sit in its user part or its query."""
    matches = list(_REFERENCE.finditer(text))
    if not matches or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is None:
        return set()
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        return set()  # the whole URL is the secret
    # positions measured on the text with each reference as one placeholder character
    template = _REFERENCE.sub("\x00", text)
    scheme_end = template.index("://") + 3
    authority_end = len(template)
    for mark in "/?#":
        found = template.find(mark, scheme_end)
        if found != -1:
            authority_end = min(authority_end, found)
    user_end = template.rfind("@", scheme_end, authority_end)
    query_start = template.find("?", scheme_end)
    encoded: set[int] = set()
    placeholder = -1
    for match in matches:
        placeholder = template.index("\x00", placeholder + 1)
        in_user = scheme_end <= placeholder < user_end
        in_query = query_start != -1 and placeholder > query_start
        if in_user or in_query:
            encoded.add(match.start())
    return encoded


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
