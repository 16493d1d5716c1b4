"""Signing keys of an OIDC issuer, read from its JWKS and cached by `kid`.

The JWKS comes from a configured URL, or from the issuer's discovery document
(`<issuer>/.well-known/openid-configuration` -> `jwks_uri`). A token naming a `kid` the
cache does not hold triggers a refresh, but at most one fetch per `min_refresh_interval_s`,
so a flood of made-up `kid`s cannot hammer the issuer. Only asymmetric keys are kept: a
JWKS key is never used as an HMAC secret.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from dataproduct.errors import AuthenticationError
from dataproduct.settings import DataproductSettings

FETCH_TIMEOUT_S = 3.0
MIN_REFRESH_INTERVAL_S = 30.0
ASYMMETRIC_KEY_TYPES = ("RSA", "EC", "OKP")
WHERE = "Authorization"


class IssuerUnavailableError(AuthenticationError):
    """The issuer's keys could not be read; the token cannot be checked now (401, retry)."""

    transient = True


class JwksKeySet:
    """The issuer's public keys by `kid`, fetched lazily and refreshed on an unknown `kid`."""

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_url: str | None = None,
        timeout_s: float = FETCH_TIMEOUT_S,
        min_refresh_interval_s: float = MIN_REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer and not jwks_url:
            raise ValueError("a JWKS needs an issuer or a JWKS URL")
        self.issuer = issuer.rstrip("/") if issuer else None
        self.jwks_url = jwks_url
        self.timeout_s = timeout_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()

    def key_for(self, token: str) -> jwt.PyJWK:
        """The key that should have signed `token`, by its `kid`; AuthenticationError if none."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(f"invalid token: {error}", where=WHERE) from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("the token names no key ('kid')", where=WHERE)
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            if self._may_fetch():
                self._refresh()
            elif not self._keys and self._last_error:
                raise IssuerUnavailableError(self._last_error, where=WHERE)
            key = self._keys.get(kid)
        if key is None:
            raise AuthenticationError(f"the issuer has no key '{kid}'", where=WHERE)
        return key

    def _may_fetch(self) -> bool:
        if self._last_attempt is None:
            return True
        return self.clock() - self._last_attempt >= self.min_refresh_interval_s

    def _refresh(self) -> None:
        self._last_attempt = self.clock()
        self.fetches += 1
        try:
            url = self.jwks_url or self._discover()
            document = self._get_json(url)
            keys = document.get("keys")
            if not isinstance(keys, list):
                raise ValueError(f"{url} holds no 'keys' list")
            usable = [
                k for k in keys if isinstance(k, dict) and k.get("kty") in ASYMMETRIC_KEY_TYPES
            ]
            key_set = jwt.PyJWKSet(usable)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, jwt.PyJWTError) as error:
            self._last_error = f"the token issuer's keys cannot be read now: {error}"
            raise IssuerUnavailableError(self._last_error, where=WHERE) from None
        self._last_error = None
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}

    def _discover(self) -> str:
        assert self.issuer is not None
        url = f"{self.issuer}/.well-known/openid-configuration"
        jwks_uri = self._get_json(url).get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError(f"{url} names no 'jwks_uri'")
        self.jwks_url = jwks_uri
        return jwks_uri

    def _get_json(self, url: str) -> dict[str, Any]:
        response = httpx.get(url, timeout=self.timeout_s, follow_redirects=False)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return document


_key_sets: dict[tuple[str | None, str | None], JwksKeySet] = {}
_key_sets_lock = threading.Lock()


def key_set_for(settings: DataproductSettings) -> JwksKeySet:
    """The process-wide key set of the configured issuer / JWKS URL."""
    where = (settings.oidc_issuer, settings.jwks_url)
    with _key_sets_lock:
        key_set = _key_sets.get(where)
        if key_set is None:
            key_set = JwksKeySet(issuer=settings.oidc_issuer, jwks_url=settings.jwks_url)
            _key_sets[where] = key_set
        return key_set
