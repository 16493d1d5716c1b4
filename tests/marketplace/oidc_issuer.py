"""A small but real OIDC provider for tests, served on loopback.

Discovery document, an authorization endpoint with a login form (the person types a user
name, an email and groups; no password), a token endpoint (authorization code with PKCE
S256, single-use codes bound to client and redirect URI), and a JWKS with one RS256 key.
The id_token and the access token are RS256 JWTs with `sub`, `email` and `groups`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tests.server.conftest import serve_in_thread

KID = "test-issuer-key-1"


@dataclass
class Grant:
    """What an authorization code stands for until it is redeemed."""

    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    subject: str
    email: str
    groups: list[str]
    expires_at: float


@dataclass
class TestIssuer:
    """The issuer's keys, registered clients and outstanding codes; `app` serves it."""

    __test__ = False  # not a test class for pytest

    url: str = ""
    clients: dict[str, str | None] = field(default_factory=dict)  # client_id -> secret
    audience: str | None = None
    codes: dict[str, Grant] = field(default_factory=dict)
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    redemptions: int = 0

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS document."""
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any]) -> str:
        """`claims` as an RS256 JWT of this issuer."""
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})

    def access_token(
        self, subject: str, groups: list[str] | None = None, email: str | None = None,
        ttl_s: int = 600,
    ) -> str:  # fmt: skip
        """An access token as the organisation's issuer gives it (for API calls)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url, "sub": subject, "iat": now, "exp": now + ttl_s,
            "email": email or f"{subject}@example.com", "groups": groups or [],
        }  # fmt: skip
        if self.audience:
            claims["aud"] = self.audience
        return self.sign(claims)

    def id_token(self, grant: Grant) -> str:
        """The id_token of a redeemed code."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url, "aud": grant.client_id, "sub": grant.subject, "iat": now,
            "exp": now + 300, "email": grant.email, "groups": grant.groups,
        }  # fmt: skip
        if grant.nonce:
            claims["nonce"] = grant.nonce
        return self.sign(claims)


def _login_form(params: dict[str, str]) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items()
    )
    return (
        "<!doctype html><html><head><title>Test issuer sign-in</title></head><body>"
        "<h1>Test issuer</h1><form method='post' action='/authorize'>"
        f"{hidden}<label>User <input name='username' id='username'></label><br>"
        "<label>Email <input name='email' id='email'></label><br>"
        "<label>Groups (comma-separated) <input name='groups' id='groups'></label><br>"
        "<button type='submit' id='login'>Sign in</button></form></body></html>"
    )


AUTHORIZE_PARAMS = (
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
    "code_challenge", "code_challenge_method",
)  # fmt: skip


def _check_authorize(issuer: TestIssuer, params: dict[str, str]) -> str | None:
    """Why an authorization request is refused, or None."""
    if params.get("response_type") != "code":
        return "unsupported_response_type"
    if params.get("client_id") not in issuer.clients:
        return "unauthorized_client"
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        return "invalid_request: PKCE S256 is required"
    if not params.get("redirect_uri", "").startswith("http://127.0.0.1:"):
        return "invalid_request: redirect_uri"
    return None


def _form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}


def _client_of(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        decoded = base64.b64decode(header[6:]).decode()
        client, _, secret = decoded.partition(":")
        return client, secret
    return form.get("client_id"), form.get("client_secret")


def _redeem(issuer: TestIssuer, request: Request, form: dict[str, str]) -> Response:
    client_id, secret = _client_of(request, form)
    grant = issuer.codes.pop(form.get("code", ""), None)
    if form.get("grant_type") != "authorization_code" or grant is None:
        return JSONResponse({"error": "invalid_grant"}, 400)
    expected_secret = issuer.clients.get(client_id or "")
    if client_id != grant.client_id or (expected_secret and secret != expected_secret):
        return JSONResponse({"error": "invalid_client"}, 401)
    verifier = form.get("code_verifier", "")
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    if not secrets.compare_digest(challenge, grant.challenge):
        return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
    if form.get("redirect_uri") != grant.redirect_uri or grant.expires_at < time.time():
        return JSONResponse({"error": "invalid_grant"}, 400)
    issuer.redemptions += 1
    return JSONResponse(
        {
            "token_type": "Bearer",
            "expires_in": 600,
            "id_token": issuer.id_token(grant),
            "access_token": issuer.access_token(grant.subject, grant.groups, grant.email),
        }
    )


def issuer_app(issuer: TestIssuer) -> FastAPI:
    """The HTTP face of `issuer`."""
    app = FastAPI()

    @app.get("/.well-known/openid-configuration")
    def discovery() -> dict[str, Any]:
        return {
            "issuer": issuer.url,
            "authorization_endpoint": f"{issuer.url}/authorize",
            "token_endpoint": f"{issuer.url}/token",
            "jwks_uri": f"{issuer.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code"],
        }

    @app.get("/jwks")
    def jwks() -> dict[str, Any]:
        return issuer.jwks()

    @app.get("/authorize")
    def authorize(request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if k in AUTHORIZE_PARAMS}
        refused = _check_authorize(issuer, params)
        if refused:
            return HTMLResponse(f"refused: {escape(refused)}", 400)
        return HTMLResponse(_login_form(params))

    @app.post("/authorize")
    async def login(request: Request) -> Response:
        form = _form(await request.body())
        refused = _check_authorize(issuer, form)
        if refused or not form.get("username"):
            return HTMLResponse(f"refused: {escape(refused or 'no user')}", 400)
        code = secrets.token_urlsafe(24)
        issuer.codes[code] = Grant(
            form["client_id"], form["redirect_uri"], form["code_challenge"],
            form.get("nonce") or None, form["username"],
            form.get("email") or f"{form['username']}@example.com",
            [g.strip() for g in form.get("groups", "").split(",") if g.strip()],
            time.time() + 60,
        )  # fmt: skip
        query = urlencode({"code": code, "state": form.get("state", "")})
        return RedirectResponse(f"{form['redirect_uri']}?{query}", 302)

    @app.post("/token")
    async def token(request: Request) -> Response:
        return _redeem(issuer, request, _form(await request.body()))

    return app


@contextmanager
def serve_issuer(
    clients: dict[str, str | None], audience: str | None = None
) -> Iterator[TestIssuer]:
    """A test issuer served on a free loopback port (its URL in `issuer.url`)."""
    issuer = TestIssuer(clients=clients, audience=audience)
    with serve_in_thread(issuer_app(issuer)) as url:
        issuer.url = url
        yield issuer
