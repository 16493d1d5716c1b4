"""Tokens and principals.

A bearer JWT becomes a `Principal` (subject, groups, scopes). The accepted algorithms come
from settings, never from the token. Scopes gate the ports: `output:read`, `input:write`,
`control:admin`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jwt

from dataproduct.errors import AuthenticationError, PermissionDeniedError
from dataproduct.settings import DataproductSettings

SCOPES = ("output:read", "input:write", "control:admin")
LEEWAY_S = 30


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    groups: frozenset[str] = field(default_factory=frozenset)

    def require(self, scope: str) -> None:
        """PermissionDeniedError unless the principal holds `scope`."""
        if scope not in self.scopes:
            raise PermissionDeniedError(
                f"this needs the scope '{scope}'; the token has: "
                f"{', '.join(sorted(self.scopes)) or 'none'}",
                where="scope",
            )


ANONYMOUS = Principal("anonymous")


def issue_token(
    secret: str,
    subject: str,
    scopes: list[str],
    *,
    groups: list[str] | None = None,
    ttl_s: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A local HS256 token, signed with the configured secret."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
    }
    if groups:
        claims["groups"] = groups
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(settings: DataproductSettings, token: str) -> Principal:
    """Check a bearer token's signature, expiry and (when configured) issuer and audience."""
    options = {"require": ["exp", "sub"]}
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=settings.jwt_algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=LEEWAY_S,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the token has expired", where="Authorization") from None
    except jwt.InvalidTokenError as error:
        raise AuthenticationError(f"invalid token: {error}", where="Authorization") from None
    return Principal(
        subject=str(claims["sub"]),
        scopes=frozenset(_as_list(claims.get("scope")) + _as_list(claims.get("scopes"))),
        groups=frozenset(_as_list(claims.get("groups"))),
    )


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(item) for item in value]
    return []


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header; AuthenticationError otherwise."""
    if not authorization:
        raise AuthenticationError("missing bearer token", where="Authorization")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "the Authorization header must be 'Bearer <token>'", where="Authorization"
        )
    return token.strip()
