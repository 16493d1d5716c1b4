"""API keys: created by an administrator (or the CLI), shown once, stored hashed, revocable."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from dataproduct import apikeys
from dataproduct.cli import main
from dataproduct.settings import DataproductSettings, get_settings
from tests.api import assert_error, serve
from tests.conftest import SECRET, TokenFactory
from tests.server.conftest import Launcher, Server, free_port

KEY_PATTERN = re.compile(r"^dpk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
KEYS = "/control/api-keys"
RESTRICTED = "/output/datasets/customer_revenue"
PUBLIC = "/output/datasets/daily_sales"


@pytest.fixture
def admin(token: TokenFactory) -> dict[str, str]:
    """Headers of the product's administrator."""
    return token("control:admin", subject="admin")


def create_key(client: TestClient, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    """POST /control/api-keys (name `robot` unless given); the answer, key included."""
    response = client.post(KEYS, json={"name": "robot", **body}, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def key_parts(key: str) -> tuple[str, str]:
    """The id and the secret of a well-formed key (the test fails on any other text)."""
    match = KEY_PATTERN.match(key)
    assert match is not None, key
    return match.group(1), match.group(2)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def x_api_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def audited_principals(client: TestClient, admin: dict[str, str], path: str) -> list[str]:
    """Who the audit log says called `path`, newest first."""
    records = client.get("/control/audit", headers=admin).json()["records"]
    return [r["principal"] for r in records if r["path"] == path]


def test_a_created_key_is_shown_once_and_works_in_both_headers(
    client: TestClient, admin: dict[str, str]
) -> None:
    """201 with the key; it then reads as `Authorization: Bearer` and as `X-API-Key`."""
    created = create_key(client, admin)
    assert key_parts(created["key"])[0] == created["id"]
    assert created["scopes"] == ["output:read"]
    assert created["subject"] == "apikey:robot"
    assert created["created_by"] == "admin"
    assert created["expires_at"] is None and created["revoked_at"] is None
    for headers in (bearer(created["key"]), x_api_key(created["key"])):
        assert client.get(PUBLIC, headers=headers).status_code == 200
    assert audited_principals(client, admin, PUBLIC) == ["apikey:robot", "apikey:robot"]


def test_listing_never_shows_the_secret_or_its_digest(
    client: TestClient, admin: dict[str, str]
) -> None:
    """GET /control/api-keys describes each key without anything that could rebuild it."""
    created = create_key(client, admin)
    secret = key_parts(created["key"])[1]
    response = client.get(KEYS, headers=admin)
    assert response.status_code == 200
    listed = response.json()["api_keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert set(listed[0]) == set(created) - {"key"}
    assert secret not in response.text
    assert hashlib.sha256(secret.encode()).hexdigest() not in response.text
    assert "digest" not in response.text


def test_keys_are_listed_newest_first(client: TestClient, admin: dict[str, str]) -> None:
    """Several keys: the latest at the top."""
    names = ["first", "second", "third"]
    for name in names:
        create_key(client, admin, name=name)
    listed = client.get(KEYS, headers=admin).json()["api_keys"]
    assert [k["name"] for k in listed] == list(reversed(names))


def test_a_revoked_key_is_refused_at_once(client: TestClient, admin: dict[str, str]) -> None:
    """DELETE revokes: the very next request with the key is 401, in either header."""
    created = create_key(client, admin)
    assert client.get(PUBLIC, headers=x_api_key(created["key"])).status_code == 200
    revoked = client.delete(f"{KEYS}/{created['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    for headers in (bearer(created["key"]), x_api_key(created["key"])):
        error = assert_error(client.get(PUBLIC, headers=headers), 401, "unauthenticated")
        assert "revoked" in error["message"]
    listed = client.get(KEYS, headers=admin).json()["api_keys"]
    assert listed[0]["revoked_at"] == revoked.json()["revoked_at"]


def test_revoking_twice_keeps_the_first_revocation(
    client: TestClient, admin: dict[str, str]
) -> None:
    """Revoking again is harmless and does not move the revocation time."""
    created = create_key(client, admin)
    first = client.delete(f"{KEYS}/{created['id']}", headers=admin).json()
    second = client.delete(f"{KEYS}/{created['id']}", headers=admin)
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first["revoked_at"]


def test_revoking_an_unknown_key_is_404(client: TestClient, admin: dict[str, str]) -> None:
    """A key id that does not exist is named in a 404."""
    error = assert_error(client.delete(f"{KEYS}/0123456789abcdef", headers=admin), 404)
    assert "0123456789abcdef" in error["message"]


class _TwoDaysLater(datetime):
    """`datetime` whose `now` is two days ahead (the key store's clock in one test)."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _TwoDaysLater:
        later = datetime.now(tz) + timedelta(days=2)
        return cls.fromtimestamp(later.timestamp(), tz)


def test_an_expired_key_is_refused(
    client: TestClient, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key made for one day works now and is 401 'expired' two days later."""
    created = create_key(client, admin, ttl_days=1)
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    assert client.get(PUBLIC, headers=x_api_key(created["key"])).status_code == 200
    monkeypatch.setattr(apikeys, "datetime", _TwoDaysLater)
    error = assert_error(client.get(PUBLIC, headers=x_api_key(created["key"])), 401)
    assert "expired" in error["message"]


def _tampered(key: str) -> dict[str, str]:
    """Variants of a valid key that must all be refused."""
    prefix, key_id, secret = key[:4], key[4:20], key[21:]
    upper = key_id.upper()
    swap = dict(zip("abcdefABCDEF0123456789-_", "bcdefaBCDEFA1234567890_-", strict=True))

    def flip(text: str, index: int) -> str:
        return text[:index] + swap.get(text[index], "a") + text[index + 1 :]

    return {
        "secret first char": f"{prefix}{key_id}_{flip(secret, 0)}",
        "secret last char": f"{prefix}{key_id}_{flip(secret, len(secret) - 1)}",
        "id one char": f"{prefix}{flip(key_id, 5)}_{secret}",
        "secret truncated": key[:-1],
        "secret extended": key + "A",
        "other prefix": "dpx_" + key[4:],
        # an id of digits only has no letter to raise: an upper-case letter goes in front
        "upper-case id": f"{prefix}{upper if upper != key_id else 'A' + key_id[1:]}_{secret}",
        "prefix only": "dpk_",
    }


TAMPERINGS = list(_tampered("dpk_0123456789abcdef_" + "A" * 43))


@pytest.mark.parametrize("case", TAMPERINGS)
def test_a_tampered_key_is_refused(client: TestClient, admin: dict[str, str], case: str) -> None:
    """Changing one character anywhere, cutting or extending the key: 401 JSON."""
    key = create_key(client, admin)["key"]
    forged = _tampered(key)[case]
    assert forged != key
    for headers in (bearer(forged), x_api_key(forged)):
        response = client.get(PUBLIC, headers=headers)
        error = assert_error(response, 401, "unauthenticated")
        assert error["where"] == "Authorization"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get(PUBLIC, headers=x_api_key(key)).status_code == 200


def test_the_groups_of_a_key_give_it_their_grants(
    client: TestClient, admin: dict[str, str]
) -> None:
    """A key in sales-analysts reads customer_revenue (unmasked); one without is 403."""
    analyst = create_key(client, admin, name="analyst", groups=["sales-analysts"])
    outsider = create_key(client, admin, name="outsider")
    response = client.get(RESTRICTED, headers=x_api_key(analyst["key"]))
    assert response.status_code == 200
    assert any(row["name"] is not None for row in response.json()["data"])
    refused = client.get(RESTRICTED, headers=x_api_key(outsider["key"]))
    error = assert_error(refused, 403, "forbidden")
    assert "apikey:outsider" in error["message"]
    assert client.get(PUBLIC, headers=x_api_key(outsider["key"])).status_code == 200


def test_the_scopes_of_a_key_limit_it(client: TestClient, admin: dict[str, str]) -> None:
    """A read-only key (even in a writers' group) cannot push or administer."""
    key = create_key(client, admin, groups=["returns-writers"])["key"]
    pushed = client.post(
        "/input/returns",
        content=b"order_id,reason\n1,late\n",
        headers={"content-type": "text/csv", **x_api_key(key)},
    )
    assert_error(pushed, 403, "forbidden")
    assert_error(client.get("/control/runs", headers=x_api_key(key)), 403, "forbidden")


def test_a_writer_key_pushes_to_its_source(client: TestClient, admin: dict[str, str]) -> None:
    """scope input:write and group returns-writers: the push is accepted."""
    key = create_key(client, admin, scopes=["input:write"], groups=["returns-writers"])["key"]
    pushed = client.post(
        "/input/returns",
        content=b"order_id,reason\n1,late\n",
        headers={"content-type": "text/csv", **bearer(key)},
    )
    assert pushed.status_code == 201, pushed.text


def test_an_admin_role_makes_an_unscoped_key_an_administrator(
    client: TestClient, admin: dict[str, str]
) -> None:
    """Role dataproduct-admin administers, unless the key is limited to other scopes."""
    unscoped = create_key(client, admin, name="ops", scopes=[], roles=["dataproduct-admin"])
    limited = create_key(client, admin, name="viewer", roles=["dataproduct-admin"])
    assert client.get("/control/runs", headers=x_api_key(unscoped["key"])).status_code == 200
    assert client.get(KEYS, headers=x_api_key(unscoped["key"])).status_code == 200
    refused = client.get("/control/runs", headers=x_api_key(limited["key"]))
    assert_error(refused, 403, "forbidden")


def test_a_key_acts_as_its_subject(client: TestClient, admin: dict[str, str]) -> None:
    """`subject` names the principal the key acts as (audit, grants); else apikey:<name>."""
    key = create_key(client, admin, subject="svc-reporting")["key"]
    assert client.get(PUBLIC, headers=x_api_key(key)).status_code == 200
    assert audited_principals(client, admin, PUBLIC) == ["svc-reporting"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", KEYS), ("POST", KEYS), ("DELETE", f"{KEYS}/0123456789abcdef")]
)
def test_only_administrators_manage_keys(
    client: TestClient, token: TokenFactory, method: str, path: str
) -> None:
    """No credential: 401; a reader, or an API key with output:read: 403."""
    body = {"name": "sneaky"} if method == "POST" else None
    assert_error(client.request(method, path, json=body), 401, "unauthenticated")
    reader = token("output:read", "input:write", "metrics:read")
    assert_error(client.request(method, path, json=body, headers=reader), 403, "forbidden")


def test_a_key_cannot_create_more_powerful_keys(client: TestClient, admin: dict[str, str]) -> None:
    """A read key asking for an admin key is refused; nothing is created."""
    key = create_key(client, admin)["key"]
    response = client.post(
        KEYS, json={"name": "escalate", "scopes": ["control:admin"]}, headers=x_api_key(key)
    )
    assert_error(response, 403, "forbidden")
    names = [k["name"] for k in client.get(KEYS, headers=admin).json()["api_keys"]]
    assert names == ["robot"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "robot", "scopes": ["output:write"]}, "scopes"),
        ({"name": "two words"}, "body.name"),
        ({"name": ""}, "body.name"),
        ({"name": "robot", "ttl_days": 0}, "body.ttl_days"),
        ({"name": "robot", "secret": "mine"}, "body.secret"),
        ({}, "body.name"),
    ],
    ids=["unknown scope", "space in name", "empty name", "zero ttl", "extra field", "no name"],
)
def test_a_bad_key_request_is_422_and_creates_nothing(
    client: TestClient, admin: dict[str, str], body: dict[str, Any], where: str
) -> None:
    """Each problem is named; the key list stays empty."""
    error = assert_error(client.post(KEYS, json=body, headers=admin), 422, "invalid_input")
    assert error["where"] == where
    assert client.get(KEYS, headers=admin).json()["api_keys"] == []


def test_keys_survive_a_restart(
    example_product: Path, settings: DataproductSettings, token: TokenFactory
) -> None:
    """Keys live in the product database: still valid, and still revoked, after a restart."""
    admin = token("control:admin", subject="admin")
    with serve(example_product, settings) as client:
        kept = create_key(client, admin, name="kept")
        gone = create_key(client, admin, name="gone")
        client.delete(f"{KEYS}/{gone['id']}", headers=admin)
    with serve(example_product, settings) as client:
        assert client.get(PUBLIC, headers=x_api_key(kept["key"])).status_code == 200
        assert_error(client.get(PUBLIC, headers=x_api_key(gone["key"])), 401)


# --- the `dataproduct apikey` command ---------------------------------------------------


@pytest.fixture
def cli_environment(
    monkeypatch: pytest.MonkeyPatch, settings: DataproductSettings
) -> Iterator[None]:
    """The command reads DATAPRODUCT_* like the product: the same data folder and secret."""
    for name in list(os.environ):
        if name.startswith("DATAPRODUCT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATAPRODUCT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DATAPRODUCT_JWT_SECRET", SECRET)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """`dataproduct apikey ...` in-process: exit code, parsed stdout (or None), stderr."""
    code = main(["apikey", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


@pytest.mark.usefixtures("cli_environment")
def test_cli_create_offline_then_the_served_product_accepts_the_key(
    example_product: Path, settings: DataproductSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the product stopped, the command writes the key into its database."""
    code, created, err = run_cli(
        capsys, "create", "etl", "--dir", str(example_product), "--group", "sales-analysts"
    )
    assert code == 0, err
    assert "not shown again" in err
    assert KEY_PATTERN.match(created["key"])
    assert (created["name"], created["groups"], created["created_by"]) == (
        "etl", ["sales-analysts"], "cli",
    )  # fmt: skip
    assert created["scopes"] == ["output:read"]
    with serve(example_product, settings) as client:
        assert client.get(RESTRICTED, headers=x_api_key(created["key"])).status_code == 200
        assert client.get(RESTRICTED, headers=bearer(created["key"])).status_code == 200


@pytest.mark.usefixtures("cli_environment")
def test_cli_options_reach_the_key(
    example_product: Path, settings: DataproductSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scope (repeatable), --role, --subject and --ttl-days are stored as given."""
    code, created, err = run_cli(
        capsys, "create", "ops", "--dir", str(example_product), "--scope", "control:admin",
        "--scope", "metrics:read", "--role", "auditor", "--subject", "svc-ops", "--ttl-days", "7",
    )  # fmt: skip
    assert code == 0, err
    assert created["scopes"] == ["control:admin", "metrics:read"]
    assert (created["roles"], created["subject"]) == (["auditor"], "svc-ops")
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    with serve(example_product, settings) as client:
        assert client.get("/metrics", headers=x_api_key(created["key"])).status_code == 200
        assert client.get("/control/runs", headers=x_api_key(created["key"])).status_code == 200


@pytest.mark.usefixtures("cli_environment")
def test_cli_takes_the_folder_after_the_options(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`apikey create NAME --group G --dir DIR`: the folder may come after the options."""
    code, created, err = run_cli(
        capsys, "create", "etl", "--group", "sales-analysts", "--dir", str(example_product)
    )
    assert code == 0, err
    assert created["groups"] == ["sales-analysts"]


@pytest.mark.parametrize("days", ["0", "-1"])
@pytest.mark.usefixtures("cli_environment")
def test_cli_refuses_a_ttl_below_one_day(
    example_product: Path, capsys: pytest.CaptureFixture[str], days: str
) -> None:
    """Like POST /control/api-keys (ttl_days >= 1): no key is made."""
    try:
        code, _, _ = run_cli(
            capsys, "create", "etl", "--dir", str(example_product), "--ttl-days", days
        )
    except SystemExit as exit_:  # an argparse refusal is fine too
        code = int(exit_.code or 0)
    assert code == 2
    _, listed, _ = run_cli(capsys, "list", "--dir", str(example_product))
    assert listed["api_keys"] == []


@pytest.mark.usefixtures("cli_environment")
def test_cli_list_offline_never_shows_secrets(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`apikey list` prints every key without its secret or digest."""
    _, created, _ = run_cli(capsys, "create", "etl", "--dir", str(example_product))
    code, listed, _ = run_cli(capsys, "list", "--dir", str(example_product))
    assert code == 0
    assert [k["id"] for k in listed["api_keys"]] == [created["id"]]
    text = json.dumps(listed)
    secret = key_parts(created["key"])[1]
    assert secret not in text
    assert hashlib.sha256(secret.encode()).hexdigest() not in text


@pytest.mark.usefixtures("cli_environment")
def test_cli_revoke_offline_then_the_key_is_refused(
    example_product: Path, settings: DataproductSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key revoked while the product is stopped is 401 once it is served."""
    _, created, _ = run_cli(capsys, "create", "etl", "--dir", str(example_product))
    code, revoked, _ = run_cli(capsys, "revoke", created["id"], "--dir", str(example_product))
    assert code == 0
    assert revoked["revoked_at"] is not None
    with serve(example_product, settings) as client:
        assert_error(client.get(PUBLIC, headers=x_api_key(created["key"])), 401)


@pytest.mark.usefixtures("cli_environment")
def test_cli_revoke_of_an_unknown_key_fails_with_a_message(
    example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit code 2 and the id in the message; no traceback."""
    code, out, err = run_cli(capsys, "revoke", "0123456789abcdef", "--dir", str(example_product))
    assert code == 2
    assert out is None
    assert "0123456789abcdef" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("cli_environment")
def test_cli_url_mode_goes_through_the_control_port(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --url the command calls the running product (here in-process) with a token.

    The command's HTTP client is pointed at the in-process app; everything else (paths,
    bodies, the admin token it signs from DATAPRODUCT_JWT_SECRET) is the command's own.
    """
    real_client = httpx.Client

    def in_process(**options: Any) -> httpx.Client:
        return real_client(transport=client._transport, **options)

    monkeypatch.setattr("dataproduct.cli_apikeys.httpx.Client", in_process)
    url = "http://testserver"
    code, created, err = run_cli(capsys, "create", "remote", "--group", "g1", "--url", url)
    assert code == 0, err
    assert created["created_by"] == "cli"
    assert client.get(PUBLIC, headers=x_api_key(created["key"])).status_code == 200
    code, listed, _ = run_cli(capsys, "list", "--url", url)
    assert [k["name"] for k in listed["api_keys"]] == ["remote"]
    assert "key" not in listed["api_keys"][0]
    code, revoked, _ = run_cli(capsys, "revoke", created["id"], "--url", url)
    assert code == 0 and revoked["revoked_at"] is not None
    assert_error(client.get(PUBLIC, headers=x_api_key(created["key"])), 401)
    code, _, err = run_cli(capsys, "list", "--url", url, "--token", "not-a-token")
    assert code == 2
    assert "401" in err


@pytest.fixture
def running(
    example_product: Path, settings: DataproductSettings, tmp_path: Path
) -> Iterator[Server]:
    """`dataproduct serve` of the example in its own process, on this test's data folder."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher(example_product, settings.data_dir, secret=SECRET)
    finally:
        launcher.close()


@pytest.mark.server
@pytest.mark.usefixtures("cli_environment")
def test_cli_url_mode_against_a_real_server(
    running: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over real HTTP: --url creates a key (with a token it signs) that works at once."""
    code, created, err = run_cli(capsys, "create", "remote", "--url", running.base)
    assert code == 0, err
    response = httpx.get(f"{running.base}{PUBLIC}", headers=x_api_key(created["key"]))
    assert response.status_code == 200
    code, listed, _ = run_cli(capsys, "list", "--url", running.base)
    assert [k["id"] for k in listed["api_keys"]] == [created["id"]]


@pytest.mark.server
@pytest.mark.usefixtures("cli_environment")
def test_cli_offline_mode_says_to_use_url_while_the_product_runs(
    running: Server, example_product: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The database is held by the server: exit 2 with a hint to pass --url."""
    code, out, err = run_cli(capsys, "list", "--dir", str(example_product))
    assert (code, out) == (2, None)
    assert "--url" in err


@pytest.mark.usefixtures("cli_environment")
def test_cli_url_mode_reports_an_unreachable_product(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens at --url: exit 2 and a message naming the address."""
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run_cli(capsys, "list", "--url", url)
    assert (code, out) == (2, None)
    assert url in err
