"""Tokens from an OIDC issuer: a real small issuer on loopback publishes its JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dataproduct import oidc
from dataproduct.errors import AuthenticationError, ConfigurationError
from dataproduct.security import verify_token
from dataproduct.settings import DataproductSettings
from tests.api import assert_error, serve, serve_example
from tests.conftest import SECRET

AUDIENCE = "dataproduct-tests"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Issuer:
    """An OIDC issuer on 127.0.0.1: discovery document, JWKS, and keys to sign tokens."""

    def __init__(self) -> None:
        self.private: dict[str, PrivateKey] = {}
        self.published: list[str] = []
        self.jwks_hits = 0
        self.broken = False
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.broken:
                    self._send(500, {"error": "down for maintenance"})
                elif self.path == "/.well-known/openid-configuration":
                    self._send(200, {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks.json"})
                elif self.path == "/jwks.json":
                    issuer.jwks_hits += 1
                    self._send(200, {"keys": [issuer.jwk(kid) for kid in issuer.published]})
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Issuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def add_key(self, kid: str, kind: str = "RSA", *, publish: bool = True) -> None:
        """Make a new key; publish it in the JWKS unless told not to."""
        if kind == "RSA":
            self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        public = self.private[kid].public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
            alg = "RS256"
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
            alg = "ES256"
        return {**data, "kid": kid, "alg": alg, "use": "sig"}

    def public_pem(self, kid: str) -> bytes:
        return (
            self.private[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "alice",
            "scope": "output:read",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, kid: str = "rsa-1", **changes: Any) -> str:
        """A token signed by key `kid` with the default claims, changed by `changes`."""
        alg = "RS256" if isinstance(self.private[kid], rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(self.claims(**changes), self.private[kid], alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand: HMAC-SHA256 over it with `secret`, or no signature at all."""
    head = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return f"{head}."
    return f"{head}.{_b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())}"


def _oidc_settings(base: DataproductSettings, issuer_url: str, **extra: Any) -> DataproductSettings:
    update: dict[str, Any] = {
        "oidc_issuer": issuer_url,
        "jwt_audience": AUDIENCE,
        "jwt_algorithms": ["RS256", "ES256", "HS256"],
        **extra,
    }
    return base.model_copy(update=update)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _dead_url() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    """One issuer with an RSA and an EC key, and one key it never publishes."""
    with Issuer() as started:
        started.add_key("rsa-1", "RSA")
        started.add_key("ec-1", "EC")
        started.add_key("rsa-secret", "RSA", publish=False)
        yield started


@pytest.fixture(scope="module")
def shared(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The example product trusting `issuer` (and the shared secret for HS256)."""
    with serve_example(
        tmp_path_factory.mktemp("oidc"),
        oidc_issuer=issuer.url,
        jwt_audience=AUDIENCE,
        jwt_algorithms=["RS256", "ES256", "HS256"],
    ) as started:
        yield started


@pytest.fixture
def fresh_issuer() -> Iterator[Issuer]:
    """An issuer of this test only (its key cache starts empty)."""
    with Issuer() as started:
        started.add_key("rsa-1", "RSA")
        yield started


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"], ids=["RS256", "ES256"])
def test_issuer_tokens_are_accepted(kid: str, issuer: Issuer, shared: TestClient) -> None:
    """RS256 and ES256 tokens signed with a published key pass; their scopes count."""
    headers = _bearer(issuer.sign(kid))
    assert shared.get("/output/datasets", headers=headers).status_code == 200
    assert_error(shared.get("/control/runs", headers=headers), 403, "forbidden")


def test_scp_list_scopes_are_understood(issuer: Issuer, shared: TestClient) -> None:
    """`scp: [...]` (as some issuers write it) grants scopes too."""
    token = issuer.sign(scope=None, scp=["control:admin"])
    assert shared.get("/control/runs", headers=_bearer(token)).status_code == 200
    assert_error(shared.get("/output/datasets", headers=_bearer(token)), 403, "forbidden")


def test_shared_secret_still_works_beside_oidc(shared: TestClient, issuer: Issuer) -> None:
    """HS256 with the configured secret stays accepted when HS256 is configured."""
    token = jwt.encode(issuer.claims(), SECRET, algorithm="HS256")
    assert shared.get("/output/datasets", headers=_bearer(token)).status_code == 200
    # the hand-made HMAC tokens of the refused cases below are valid when the key is right
    by_hand = _unsigned({"alg": "HS256", "typ": "JWT"}, issuer.claims(), SECRET.encode())
    assert shared.get("/output/datasets", headers=_bearer(by_hand)).status_code == 200


REFUSED: dict[str, Callable[[Issuer], str]] = {
    "alg none": lambda i: _unsigned({"alg": "none", "kid": "rsa-1"}, i.claims(), None),
    "HS256 signed with the RSA public key": lambda i: _unsigned(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, i.claims(), i.public_pem("rsa-1")
    ),
    "HS256 signed with the RSA JWK": lambda i: _unsigned(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
        i.claims(),
        json.dumps(i.jwk("rsa-1")).encode(),
    ),
    "expired": lambda i: i.sign(exp=int(time.time()) - 120),
    "not yet valid": lambda i: i.sign(nbf=int(time.time()) + 3600),
    "wrong issuer": lambda i: i.sign(iss="http://127.0.0.1:1/elsewhere"),
    "no issuer": lambda i: i.sign(iss=None),
    "wrong audience": lambda i: i.sign(aud="another-product"),
    "tampered payload": lambda i: _tamper(i.sign()),
    "unknown kid": lambda i: i.sign("rsa-secret"),
    "published kid, other key": lambda i: jwt.encode(
        i.claims(), i.private["rsa-secret"], "RS256", headers={"kid": "rsa-1"}
    ),
    "ES256 header on the RSA key": lambda i: jwt.encode(
        i.claims(), i.private["ec-1"], "ES256", headers={"kid": "rsa-1"}
    ),
    "no kid": lambda i: jwt.encode(i.claims(), i.private["rsa-1"], "RS256"),
    "algorithm not configured": lambda i: jwt.encode(
        i.claims(), i.private["rsa-1"], "PS256", headers={"kid": "rsa-1"}
    ),
}


def _tamper(token: str) -> str:
    """The same signature over a payload that grants more."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "output:read control:admin"
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_issuer_tokens_are_refused_with_401(
    case: str, issuer: Issuer, shared: TestClient
) -> None:
    """Forged, confused, expired, future, foreign or tampered tokens: 401 JSON."""
    response = shared.get("/output/datasets", headers=_bearer(REFUSED[case](issuer)))
    error = assert_error(response, 401, "unauthenticated")
    assert error["where"] == "Authorization"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_issuer_token_says_expired(issuer: Issuer, shared: TestClient) -> None:
    """The message tells an expired token apart from a forged one."""
    response = shared.get("/output/datasets", headers=_bearer(issuer.sign(exp=1)))
    assert "expired" in assert_error(response, 401)["message"]


def test_small_clock_skew_is_tolerated(issuer: Issuer, shared: TestClient) -> None:
    """The existing leeway applies to issuer tokens too (just expired / about to start)."""
    now = int(time.time())
    for token in (issuer.sign(exp=now - 5), issuer.sign(nbf=now + 5)):
        assert shared.get("/output/datasets", headers=_bearer(token)).status_code == 200


def test_key_rotation_is_picked_up_and_refreshes_are_rate_limited(
    fresh_issuer: Issuer, settings: DataproductSettings, example_product: Path
) -> None:
    """A new kid at the issuer is fetched on first sight; unknown kids cannot hammer it."""
    configured = _oidc_settings(settings, fresh_issuer.url)
    now = [1000.0]
    key_set = oidc.key_set_for(configured)
    key_set.clock = lambda: now[0]
    with serve(example_product, configured) as client:
        assert (
            client.get("/output/datasets", headers=_bearer(fresh_issuer.sign())).status_code == 200
        )
        assert fresh_issuer.jwks_hits == 1

        fresh_issuer.add_key("rsa-2", "RSA")
        fresh_issuer.published.remove("rsa-1")
        now[0] += key_set.min_refresh_interval_s + 1
        rotated = _bearer(fresh_issuer.sign("rsa-2"))
        assert client.get("/output/datasets", headers=rotated).status_code == 200
        assert fresh_issuer.jwks_hits == 2
        assert client.get("/output/datasets", headers=rotated).status_code == 200
        assert fresh_issuer.jwks_hits == 2  # known kid: served from the cache

        # a flood of made-up kids right after a refresh fetches nothing
        for n in range(20):
            forged = jwt.encode(
                fresh_issuer.claims(),
                fresh_issuer.private["rsa-2"],
                "RS256",
                headers={"kid": f"x{n}"},
            )
            assert_error(client.get("/output/datasets", headers=_bearer(forged)), 401)
        assert fresh_issuer.jwks_hits == 2

        # a key published meanwhile waits for the interval, then one refresh finds it
        fresh_issuer.add_key("rsa-3", "RSA")
        newest = _bearer(fresh_issuer.sign("rsa-3"))
        assert_error(client.get("/output/datasets", headers=newest), 401)
        assert fresh_issuer.jwks_hits == 2
        now[0] += key_set.min_refresh_interval_s + 1
        assert client.get("/output/datasets", headers=newest).status_code == 200
        assert fresh_issuer.jwks_hits == 3


def test_issuer_down_gives_401_json_not_500(
    settings: DataproductSettings, example_product: Path
) -> None:
    """An unreachable issuer: 401 with a clear message and Retry-After, never a 500."""
    dead = _dead_url()
    with Issuer() as signer:
        signer.add_key("rsa-1", "RSA")
        token = jwt.encode(
            signer.claims(iss=dead), signer.private["rsa-1"], "RS256", headers={"kid": "rsa-1"}
        )
    with serve(example_product, _oidc_settings(settings, dead)) as client:
        for _ in range(2):
            response = client.get("/output/datasets", headers=_bearer(token))
            error = assert_error(response, 401, "unauthenticated")
            assert "issuer" in error["message"]
            assert response.headers["retry-after"]


def test_issuer_answering_errors_gives_401(
    fresh_issuer: Issuer, settings: DataproductSettings
) -> None:
    """A broken discovery endpoint (500) is an authentication failure, not a crash."""
    fresh_issuer.broken = True
    with pytest.raises(oidc.IssuerUnavailableError, match="issuer"):
        verify_token(_oidc_settings(settings, fresh_issuer.url), fresh_issuer.sign())


def test_configured_jwks_url_needs_no_discovery(
    fresh_issuer: Issuer, settings: DataproductSettings
) -> None:
    """With `jwks_url` set, the keys are read from there; the issuer claim is still checked."""
    configured = settings.model_copy(
        update={
            "jwks_url": f"{fresh_issuer.url}/jwks.json",
            "jwt_issuer": fresh_issuer.url,
            "jwt_audience": AUDIENCE,
            "jwt_algorithms": ["RS256"],
        }
    )
    assert verify_token(configured, fresh_issuer.sign()).subject == "alice"
    with pytest.raises(AuthenticationError, match="issuer"):
        verify_token(configured, fresh_issuer.sign(iss="http://127.0.0.1:1/other"))


@pytest.mark.parametrize(
    ("claim_name", "claims", "expected"),
    [
        ("groups", {"groups": ["sales", "finance"]}, {"sales", "finance"}),
        (
            "realm_access.roles",
            {"realm_access": {"roles": ["admin", "analyst"]}},
            {"admin", "analyst"},
        ),
        ("realm_access.roles", {"groups": ["sales"]}, set()),
        ("https://example.org/roles", {"https://example.org/roles": ["auditor"]}, {"auditor"}),
    ],
    ids=["default", "nested", "nested missing", "namespaced claim with dots"],
)
def test_groups_claim_is_mapped(
    claim_name: str,
    claims: dict[str, Any],
    expected: set[str],
    issuer: Issuer,
    settings: DataproductSettings,
) -> None:
    """The configured (possibly dotted) claim becomes the principal's groups."""
    configured = _oidc_settings(settings, issuer.url, jwt_groups_claim=claim_name)
    principal = verify_token(configured, issuer.sign("ec-1", **claims))
    assert principal.subject == "alice"
    assert principal.groups == frozenset(expected)
    assert principal.scopes == frozenset({"output:read"})


def test_production_with_oidc_needs_no_shared_secret(tmp_path: Path) -> None:
    """An HS256 secret is required in production only when no issuer is configured."""
    plain = DataproductSettings(env="production", data_dir=tmp_path, jwt_secret="")
    with pytest.raises(ConfigurationError):
        plain.require_secret()
    with_oidc = plain.model_copy(update={"oidc_issuer": "http://127.0.0.1:1"})
    assert with_oidc.require_secret() == ""
    with pytest.raises(ConfigurationError):
        with_oidc.model_copy(update={"jwt_secret": "short"}).require_secret()


def test_hs256_without_a_secret_is_refused(issuer: Issuer, settings: DataproductSettings) -> None:
    """With no shared secret, an HMAC token signed with the empty key is not accepted."""
    configured = _oidc_settings(settings, issuer.url, jwt_secret="")
    token = _unsigned({"alg": "HS256", "typ": "JWT"}, issuer.claims(), b"")
    with pytest.raises(AuthenticationError, match="secret"):
        verify_token(configured, token)


def test_only_configured_algorithms_are_accepted(
    issuer: Issuer, settings: DataproductSettings
) -> None:
    """A valid ES256 token from a published key is refused when only RS256 is configured."""
    configured = _oidc_settings(settings, issuer.url, jwt_algorithms=["RS256"])
    assert verify_token(configured, issuer.sign("rsa-1")).subject == "alice"
    with pytest.raises(AuthenticationError, match="not accepted"):
        verify_token(configured, issuer.sign("ec-1"))
