"""Who may call what: open health and discovery; bearer tokens with scopes everywhere else."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable, Iterator

import jwt
import pytest
from fastapi.testclient import TestClient

from dataproduct.security import issue_token
from tests.api import assert_error, serve_example
from tests.conftest import SECRET, TokenFactory

OPEN = ["/health", "/ready", "/discovery", "/discovery/datasets", "/discovery/datasets/daily_sales"]

# (method, path, the scope it needs)
GUARDED = [
    ("GET", "/output/datasets", "output:read"),
    ("GET", "/output/datasets/daily_sales", "output:read"),
    ("POST", "/output/query", "output:read"),
    ("POST", "/input/returns", "input:write"),
    ("POST", "/control/ingest", "control:admin"),
    ("POST", "/control/ingest/orders", "control:admin"),
    ("GET", "/control/ingestions", "control:admin"),
    ("GET", "/control/pipeline", "control:admin"),
    ("PUT", "/control/pipeline", "control:admin"),
    ("GET", "/control/pipeline/versions", "control:admin"),
    ("POST", "/control/pipeline/plan", "control:admin"),
    ("POST", "/control/runs", "control:admin"),
    ("GET", "/control/runs", "control:admin"),
    ("GET", "/control/runs/abc", "control:admin"),
    ("DELETE", "/control/runs/abc", "control:admin"),
]
GUARDED_IDS = [f"{method} {path}" for method, path, _ in GUARDED]


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "mallory", "scope": "output:read control:admin"}
    return {**claims, "iat": now, "exp": now + 600, **extra}


def _hs512_token() -> str:
    """Signed with the right secret, but with an algorithm the product does not accept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(_claims(), SECRET, algorithm="HS512")


def _valid() -> str:
    return issue_token(SECRET, "x", ["output:read", "control:admin"])


BAD_AUTHORIZATION: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "empty": lambda: "",
    "basic scheme": lambda: "Basic dXNlcjpwYXNz",
    "bearer without token": lambda: "Bearer ",
    "token without scheme": _valid,
    "not a jwt": lambda: "Bearer not-a-jwt",
    "bad signature": lambda: "Bearer " + _valid()[:-6] + "AAAAAA",
    "expired beyond leeway": lambda: (
        "Bearer " + issue_token(SECRET, "x", ["output:read", "control:admin"], ttl_s=-100)
    ),
    "alg none": lambda: f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
    "another secret": lambda: (
        "Bearer " + issue_token("another-secret-that-is-long-enough-42", "x", ["output:read"])
    ),
    "other algorithm": lambda: "Bearer " + _hs512_token(),
    "no expiry": lambda: "Bearer " + jwt.encode({"sub": "x", "scope": "output:read"}, SECRET),
    "no subject": lambda: (
        "Bearer " + jwt.encode({"scope": "output:read", "exp": int(time.time()) + 600}, SECRET)
    ),
    "not yet valid": lambda: "Bearer " + jwt.encode(_claims(nbf=int(time.time()) + 3600), SECRET),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started product for the checks that change nothing."""
    with serve_example(tmp_path_factory.mktemp("auth")) as started:
        yield started


@pytest.mark.parametrize("path", OPEN)
def test_health_and_discovery_are_open(path: str, shared: TestClient) -> None:
    """No token is needed to see that the product lives and what it holds."""
    assert shared.get(path).status_code == 200


@pytest.mark.parametrize(("method", "path", "scope"), GUARDED, ids=GUARDED_IDS)
def test_every_guarded_route_needs_a_token(
    method: str, path: str, scope: str, shared: TestClient
) -> None:
    """Without a token: 401 before anything else happens."""
    response = shared.request(method, path)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "scope"), GUARDED, ids=GUARDED_IDS)
def test_every_guarded_route_needs_its_scope(
    method: str, path: str, scope: str, shared: TestClient, token: TokenFactory
) -> None:
    """A valid token holding every other scope is refused with 403 naming the scope."""
    others = [s for s in ("output:read", "input:write", "control:admin") if s != scope]
    response = shared.request(method, path, headers=token(*others))
    error = assert_error(response, 403, "forbidden")
    assert scope in error["message"]


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
def test_bad_credentials_are_refused_with_401(case: str, shared: TestClient) -> None:
    """Missing, malformed, forged, expired or unsigned credentials all give 401 JSON."""
    value = BAD_AUTHORIZATION[case]()
    headers = {} if value is None else {"Authorization": value}
    for path in ("/output/datasets", "/control/runs"):
        response = shared.get(path, headers=headers)
        error = assert_error(response, 401, "unauthenticated")
        assert error["where"] == "Authorization"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_token_message_says_expired(client: TestClient) -> None:
    """An expired token is told apart from a forged one."""
    expired = issue_token(SECRET, "x", ["output:read"], ttl_s=-100)
    response = client.get("/output/datasets", headers={"Authorization": f"Bearer {expired}"})
    assert "expired" in assert_error(response, 401)["message"]


def test_token_just_expired_is_within_leeway(client: TestClient) -> None:
    """Clock skew of a few seconds is tolerated (30 s leeway)."""
    recent = issue_token(SECRET, "x", ["output:read"], ttl_s=-5)
    response = client.get("/output/datasets", headers={"Authorization": f"Bearer {recent}"})
    assert response.status_code == 200


def test_right_scope_is_let_through(client: TestClient, token: TokenFactory) -> None:
    """Each port accepts a token with its own scope."""
    assert client.get("/output/datasets", headers=token("output:read")).status_code == 200
    assert client.get("/control/runs", headers=token("control:admin")).status_code == 200
    pushed = client.post(
        "/input/returns",
        content=b"order_id,reason\n1,late\n",
        headers={"content-type": "text/csv", **token("input:write", groups=["returns-writers"])},
    )
    assert pushed.status_code == 201


def test_scheme_is_case_insensitive(client: TestClient) -> None:
    """`bearer` and `Bearer` are the same scheme."""
    value = issue_token(SECRET, "x", ["output:read"])
    response = client.get("/output/datasets", headers={"Authorization": f"bearer {value}"})
    assert response.status_code == 200


def test_scopes_claim_as_a_list_is_understood(client: TestClient) -> None:
    """`scopes: [...]` works as well as a space-separated `scope`."""
    value = jwt.encode(
        {"sub": "x", "scopes": ["output:read"], "exp": int(time.time()) + 60}, SECRET
    )
    response = client.get("/output/datasets", headers={"Authorization": f"Bearer {value}"})
    assert response.status_code == 200
    forbidden = client.get("/control/runs", headers={"Authorization": f"Bearer {value}"})
    assert_error(forbidden, 403, "forbidden")
