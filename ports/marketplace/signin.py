"""Sign-in of people through the organisation's OIDC issuer (authorization code + PKCE).

`GET /signin` reads the issuer's discovery document, keeps state, nonce and the PKCE
verifier in a short signed cookie and sends the browser to the issuer. `GET
/signin/callback` checks the state, trades the code for tokens, verifies the id_token with
the issuer's JWKS (signature, issuer, audience, expiry, nonce) and starts the session.
`POST /signout` (with the form token) ends it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dataproduct.errors import AuthenticationError
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.oidc import JwksKeySet
from dataproduct.security import LEEWAY_S, claim_value
from dataproduct.settings import DataproductSettings
from ports.marketplace.page_parts import message_page
from ports.marketplace.session import (
    FLOW_COOKIE,
    FLOW_TTL_S,
    SESSION_COOKIE,
    csrf_ok,
    set_cookie,
    signer_of,
    start_session,
    visitor_of,
)

router = APIRouter(include_in_schema=False)
TIMEOUT_S = 10.0


class SignInError(Exception):
    """The sign-in could not complete; the message says why (shown to the person)."""


def local_path(target: str | None) -> str:
    """`target` when it is a path of this site, else `/` (no open redirects)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _issuer(request: Request) -> str:
    settings: MarketplaceSettings = request.app.state.settings
    auth: DataproductSettings = request.app.state.auth
    issuer = settings.oidc_issuer or auth.oidc_issuer
    if not issuer:
        raise SignInError("no OIDC issuer is configured (DATAPRODUCT_MARKETPLACE_OIDC_ISSUER)")
    return issuer.rstrip("/")


async def _metadata(request: Request) -> dict[str, Any]:
    """The issuer's discovery document (cached per app), its issuer checked."""
    issuer = _issuer(request)
    cache: dict[str, dict[str, Any]] = request.app.state.__dict__.setdefault("oidc_metadata", {})
    if issuer in cache:
        return cache[issuer]
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.get(f"{issuer}/.well-known/openid-configuration")
            response.raise_for_status()
            document = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise SignInError(f"the sign-in service cannot be reached: {error}") from None
    if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer:
        raise SignInError("the issuer's discovery document names another issuer")
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(document.get(key), str):
            raise SignInError(f"the issuer's discovery document has no {key}")
    cache[issuer] = document
    return document


def _callback_url(request: Request) -> str:
    settings: MarketplaceSettings = request.app.state.settings
    base = settings.public_url or str(request.base_url)
    return f"{base.rstrip('/')}/signin/callback"


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _failed(request: Request, reason: str, status: int = 400) -> HTMLResponse:
    return HTMLResponse(message_page("Sign-in failed", reason, visitor_of(request)), status)


@router.get("/signin")
async def signin(request: Request, next: str = "/") -> Response:
    """Send the browser to the issuer's login, remembering where to come back."""
    settings: MarketplaceSettings = request.app.state.settings
    try:
        metadata = await _metadata(request)
    except SignInError as error:
        return _failed(request, str(error), 503)
    flow = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": secrets.token_urlsafe(48),
        "next": local_path(next),
    }
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.oidc_client_id,
            "redirect_uri": _callback_url(request),
            "scope": settings.oidc_scopes,
            "state": flow["state"],
            "nonce": flow["nonce"],
            "code_challenge": _challenge(flow["verifier"]),
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"{metadata['authorization_endpoint']}?{query}", 302)
    set_cookie(request, response, FLOW_COOKIE, flow, FLOW_TTL_S, "/signin")
    return response


async def _exchange(request: Request, metadata: dict[str, Any], code: str, verifier: str) -> str:
    """Trade the code for tokens; the id_token."""
    settings: MarketplaceSettings = request.app.state.settings
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _callback_url(request),
        "client_id": settings.oidc_client_id,
        "code_verifier": verifier,
    }
    secret = settings.oidc_client_secret
    auth: httpx.Auth | None = httpx.BasicAuth(settings.oidc_client_id, secret) if secret else None
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.post(
                metadata["token_endpoint"], data=form, auth=auth or httpx.USE_CLIENT_DEFAULT
            )
    except httpx.HTTPError as error:
        raise SignInError(f"the sign-in service cannot be reached: {error}") from None
    if response.status_code != 200:
        raise SignInError(f"the issuer refused the code ({response.status_code})")
    id_token = response.json().get("id_token")
    if not isinstance(id_token, str):
        raise SignInError("the issuer returned no id_token")
    return id_token


def _key_set(request: Request, metadata: dict[str, Any]) -> JwksKeySet:
    key_sets: dict[str, JwksKeySet] = request.app.state.__dict__.setdefault("oidc_key_sets", {})
    url = str(metadata["jwks_uri"])
    if url not in key_sets:
        key_sets[url] = JwksKeySet(jwks_url=url)
    return key_sets[url]


def verify_id_token(
    request: Request, metadata: dict[str, Any], id_token: str, nonce: str
) -> dict[str, Any]:
    """The id_token's claims once its signature, issuer, audience, expiry and nonce hold."""
    settings: MarketplaceSettings = request.app.state.settings
    try:
        algorithm = jwt.get_unverified_header(id_token).get("alg")
        if algorithm not in settings.oidc_algorithms:
            raise SignInError(f"the id_token's algorithm {algorithm!r} is not accepted")
        key = _key_set(request, metadata).key_for(id_token)
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key,
            algorithms=[str(algorithm)],
            audience=settings.oidc_client_id,
            issuer=str(metadata["issuer"]),
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except (jwt.PyJWTError, AuthenticationError) as error:
        raise SignInError(f"the id_token is not valid: {error}") from None
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(
        claims["nonce"], nonce
    ):
        raise SignInError("the id_token's nonce does not match this sign-in")
    return claims


@router.get("/signin/callback")
async def callback(request: Request) -> Response:
    """Finish the sign-in: state, code exchange, id_token check, session cookie."""
    flow = signer_of(request).read(request.cookies.get(FLOW_COOKIE))
    params = request.query_params
    if flow is None:
        return _failed(request, "this sign-in expired or was not started here; sign in again")
    if not secrets.compare_digest(str(flow.get("state")), params.get("state", "")):
        return _failed(request, "the sign-in state does not match; sign in again")
    if "error" in params or "code" not in params:
        return _failed(request, f"the issuer refused: {params.get('error', 'no code')}", 401)
    try:
        metadata = await _metadata(request)
        id_token = await _exchange(request, metadata, params["code"], str(flow["verifier"]))
        claims = await run_in_threadpool(
            verify_id_token, request, metadata, id_token, str(flow["nonce"])
        )
    except SignInError as error:
        return _failed(request, str(error), 401)
    auth: DataproductSettings = request.app.state.auth
    groups = claim_value(claims, auth.jwt_groups_claim)
    email = claims.get("email")
    response = RedirectResponse(local_path(str(flow.get("next"))), 303)
    start_session(
        request,
        response,
        str(claims["sub"]),
        email if isinstance(email, str) else None,
        [str(g) for g in groups] if isinstance(groups, list) else [],
    )
    response.delete_cookie(FLOW_COOKIE, path="/signin")
    return response


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form post (the first value of each), bounded in size."""
    body = await request.body()
    if len(body) > 64 * 1024:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


@router.post("/signout")
async def signout(request: Request) -> Response:
    """End the session (the form must carry the session's token)."""
    fields = await form_fields(request)
    visitor = visitor_of(request)
    if visitor is not None and not csrf_ok(visitor, fields.get("csrf")):
        return HTMLResponse(
            message_page("Refused", "the form is stale; reload the page", visitor), 403
        )
    response = RedirectResponse("/", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
