"""Signed cookies of the marketplace's pages: the signed-in visitor and the sign-in flow.

A cookie value is `base64url(JSON payload) "." base64url(HMAC-SHA256)`, the payload always
carrying `exp` (epoch seconds). A value whose signature or expiry does not hold reads as
nothing. The cookies are HttpOnly and SameSite=Lax, and Secure behind https.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.security import Principal

SESSION_COOKIE = "marketplace_session"
FLOW_COOKIE = "marketplace_signin"
FLOW_TTL_S = 600


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CookieSigner:
    """Signs and checks cookie payloads with one secret key."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"marketplace-cookie:" + secret.encode()).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def sign(self, payload: dict[str, Any], ttl_s: int) -> str:
        """The cookie value of `payload`, valid for `ttl_s` seconds."""
        body = _b64(json.dumps({**payload, "exp": int(time.time()) + ttl_s}).encode())
        return f"{body}.{self._mac(body)}"

    def read(self, value: str | None) -> dict[str, Any] | None:
        """The payload of a genuine, unexpired cookie value; None otherwise."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int):
            return None
        return payload if payload["exp"] > time.time() else None


@dataclass(frozen=True)
class Visitor:
    """A person signed in to the pages: who, their groups, and their form token (CSRF)."""

    subject: str
    email: str | None
    groups: frozenset[str]
    csrf: str
    expires_at: int

    def principal(self) -> Principal:
        """The visitor as a principal of the security model."""
        return Principal(self.subject, groups=self.groups, expires_at=float(self.expires_at))

    @property
    def label(self) -> str:
        """How the pages name the visitor."""
        return self.email or self.subject


def signer_of(request: Request) -> CookieSigner:
    """The app's cookie signer (its secret from settings, or random for this process)."""
    state = request.app.state
    signer: CookieSigner | None = getattr(state, "cookie_signer", None)
    if signer is None:
        settings: MarketplaceSettings = state.settings
        signer = CookieSigner(settings.session_secret or secrets.token_urlsafe(32))
        state.cookie_signer = signer
    return signer


def _secure(request: Request) -> bool:
    settings: MarketplaceSettings = request.app.state.settings
    return (settings.public_url or str(request.base_url)).startswith("https://")


def set_cookie(
    request: Request, response: Response, name: str, payload: dict[str, Any], ttl_s: int, path: str
) -> None:
    """Set a signed, HttpOnly, SameSite=Lax cookie."""
    response.set_cookie(
        name,
        signer_of(request).sign(payload, ttl_s),
        max_age=ttl_s,
        path=path,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def start_session(
    request: Request, response: Response, subject: str, email: str | None, groups: list[str]
) -> None:
    """Sign the visitor in: a session cookie with the principal and a fresh form token."""
    settings: MarketplaceSettings = request.app.state.settings
    payload = {"sub": subject, "email": email, "groups": groups, "csrf": secrets.token_urlsafe(24)}
    set_cookie(request, response, SESSION_COOKIE, payload, settings.session_ttl_s, "/")


def visitor_of(request: Request) -> Visitor | None:
    """The signed-in visitor of this request, or None."""
    payload = signer_of(request).read(request.cookies.get(SESSION_COOKIE))
    if payload is None or not isinstance(payload.get("sub"), str):
        return None
    groups = payload.get("groups")
    email = payload.get("email")
    return Visitor(
        subject=payload["sub"],
        email=email if isinstance(email, str) else None,
        groups=frozenset(str(g) for g in groups) if isinstance(groups, list) else frozenset(),
        csrf=str(payload.get("csrf", "")),
        expires_at=payload["exp"],
    )


def csrf_ok(visitor: Visitor | None, submitted: str | None) -> bool:
    """Whether a form's token is the visitor's session token."""
    return (
        visitor is not None
        and bool(visitor.csrf)
        and submitted is not None
        and hmac.compare_digest(visitor.csrf, submitted)
    )
