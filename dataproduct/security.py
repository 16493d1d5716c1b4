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
from dataproduct.oidc import key_set_for
from dataproduct.settings import DataproductSettings

PORT_SCOPES = ("output:read", "input:write", "control:admin")
SCOPES = (*PORT_SCOPES, "metrics:read", "marketplace:publish")
LEEWAY_S = 30


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    groups: frozenset[str] = field(default_factory=frozenset)
    roles: frozenset[str] = field(default_factory=frozenset)
    expires_at: float | None = field(default=None, compare=False)

    def allows(self, scope: str) -> bool:
        """Whether the credential permits `scope`: a credential naming any of our scopes is
        limited to those; one naming none (an organisation's token) is limited by grants
        and roles alone."""
        return scope in self.scopes or not (self.scopes & frozenset(SCOPES))

    def require(self, scope: str) -> None:
        """PermissionDeniedError unless the credential permits `scope`."""
        if not self.allows(scope):
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
    roles: list[str] | None = None,
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
    if roles:
        claims["roles"] = roles
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ISSUER_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
WHERE = "Authorization"


def verify_token(settings: DataproductSettings, token: str) -> Principal:
    """Check a bearer token's signature, expiry and (when configured) issuer and audience.

    The algorithm must be one of `settings.jwt_algorithms`; its family picks the key: the
    shared secret for HMAC, the issuer's JWKS key (by `kid`) for RSA/EC. A JWKS key is
    never used as an HMAC secret, and the token's header only selects among what is allowed.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as error:
        raise AuthenticationError(f"invalid token: {error}", where=WHERE) from None
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in settings.jwt_algorithms:
        raise AuthenticationError(
            f"invalid token: the algorithm {algorithm!r} is not accepted", where=WHERE
        )
    key: jwt.PyJWK | str
    issuer = settings.jwt_issuer
    if algorithm in HMAC_ALGORITHMS:
        if not settings.jwt_secret:
            raise AuthenticationError(
                "invalid token: no shared secret is configured for HMAC tokens", where=WHERE
            )
        key = settings.jwt_secret
    elif algorithm in ISSUER_ALGORITHMS and settings.oidc_configured():
        key = key_set_for(settings).key_for(token)
        issuer = settings.jwt_issuer or settings.oidc_issuer
    else:
        raise AuthenticationError(
            f"invalid token: no key is configured for the algorithm {algorithm!r}", where=WHERE
        )
    options = {"require": ["exp", "sub"]}
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer,
            audience=settings.jwt_audience,
            leeway=LEEWAY_S,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the token has expired", where=WHERE) from None
    except jwt.InvalidTokenError as error:
        raise AuthenticationError(f"invalid token: {error}", where=WHERE) from None
    scopes = (
        _as_list(claims.get("scope")) + _as_list(claims.get("scp")) + _as_list(claims.get("scopes"))
    )
    return Principal(
        subject=str(claims["sub"]),
        scopes=frozenset(scopes),
        groups=frozenset(_as_list(claim_value(claims, settings.jwt_groups_claim))),
        roles=frozenset(_as_list(claim_value(claims, settings.jwt_roles_claim))),
        expires_at=float(claims["exp"]),
    )


def claim_value(claims: dict[str, object], name: str) -> object:
    """The claim `name`; a dotted name (`realm_access.roles`) reaches into nested objects.

    A top-level claim spelled with dots (such as a URL-like namespaced claim) wins.
    """
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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
