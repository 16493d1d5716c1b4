"""API keys for machines: created once, stored hashed, compared in constant time, revocable.

A key reads `dpk_<id>_<secret>`. Only the SHA-256 of the secret is kept (the secret is 256
random bits, so a fast hash is enough); the id finds the record without a scan.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dataproduct.errors import AuthenticationError, NotFoundError
from dataproduct.security import Principal
from dataproduct.storage import Storage

PREFIX = "dpk_"
_KEY = re.compile(r"^dpk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
WHERE = "Authorization"

API_KEYS_DDL = """CREATE TABLE IF NOT EXISTS meta.api_keys (
    id VARCHAR, name VARCHAR, subject VARCHAR, scopes JSON, groups JSON, roles JSON,
    digest VARCHAR, created_at TIMESTAMPTZ, created_by VARCHAR, expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ)"""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    subject: str
    scopes: tuple[str, ...]
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    digest: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The key as the control port lists it: never the secret or its hash."""
        return {
            "id": self.id,
            "name": self.name,
            "subject": self.subject,
            "scopes": list(self.scopes),
            "groups": list(self.groups),
            "roles": list(self.roles),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def looks_like_key(credential: str) -> bool:
    """Whether a bearer credential is an API key rather than a JWT."""
    return credential.startswith(PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    """Keys in `meta.api_keys`, mirrored in memory so a check reads no table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        with storage.transaction() as cursor:
            cursor.execute(API_KEYS_DDL)
        self._keys = self._load()

    def create(
        self,
        name: str,
        *,
        scopes: list[str],
        groups: list[str] | None = None,
        roles: list[str] | None = None,
        subject: str | None = None,
        ttl_days: int | None = None,
        created_by: str,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret text (shown once, never stored)."""
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = now + timedelta(days=ttl_days) if ttl_days else None
        row = [
            key_id, name, subject or f"apikey:{name}", json.dumps(scopes),
            json.dumps(groups or []), json.dumps(roles or []), _digest(secret), now,
            created_by, expires, None,
        ]  # fmt: skip
        with self._lock, self._storage.transaction() as cursor:
            cursor.execute("INSERT INTO meta.api_keys VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
        self._keys = self._load()
        return self._keys[key_id], f"{PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once (404 if there is no such key)."""
        if key_id not in self._keys:
            raise NotFoundError(f"no API key '{key_id}'", where="id")
        with self._lock, self._storage.transaction() as cursor:
            cursor.execute(
                "UPDATE meta.api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [datetime.now(UTC), key_id],
            )
        self._keys = self._load()
        return self._keys[key_id]

    def list(self) -> list[ApiKey]:
        """Every key, newest first."""
        return sorted(self._keys.values(), key=lambda k: k.created_at, reverse=True)

    def verify(self, credential: str) -> Principal:
        """The principal of a valid key; AuthenticationError for any other text."""
        match = _KEY.match(credential)
        key = self._keys.get(match.group(1)) if match else None
        presented = _digest(match.group(2) if match else credential)
        expected = key.digest if key else _digest(secrets.token_urlsafe(32))
        if not hmac.compare_digest(presented, expected) or key is None:
            raise AuthenticationError("invalid API key", where=WHERE)
        if key.revoked_at is not None:
            raise AuthenticationError("the API key was revoked", where=WHERE)
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise AuthenticationError("the API key has expired", where=WHERE)
        return Principal(
            subject=key.subject,
            scopes=frozenset(key.scopes),
            groups=frozenset(key.groups),
            roles=frozenset(key.roles),
        )

    def _load(self) -> dict[str, ApiKey]:
        with self._storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT id, name, subject, scopes, groups, roles, digest, created_at, "
                "created_by, expires_at, revoked_at FROM meta.api_keys"
            ).fetchall()
        return {
            row[0]: ApiKey(
                id=row[0],
                name=row[1],
                subject=row[2],
                scopes=tuple(json.loads(row[3])),
                groups=tuple(json.loads(row[4])),
                roles=tuple(json.loads(row[5])),
                digest=row[6],
                created_at=row[7],
                created_by=row[8],
                expires_at=row[9],
                revoked_at=row[10],
            )
            for row in rows
        }
