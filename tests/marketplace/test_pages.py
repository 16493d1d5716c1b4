"""The marketplace's pages, served for real, with sign-in through a real (test) OIDC issuer:
the authorization code + PKCE round trip, the session cookie, the pages rendering the
example product's real publication, escaping, and the 404 page."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dataproduct.marketplace.publication import parse_publication
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.settings import DataproductSettings
from ports.marketplace.app import create_marketplace_app
from tests.conftest import SECRET
from tests.marketplace.documents import base_publication_fixture, variant  # noqa: F401
from tests.marketplace.oidc_issuer import TestIssuer, serve_issuer
from tests.server.conftest import serve_in_thread

CLIENT_ID, CLIENT_SECRET = "dataproduct-marketplace", "marketplace-client-secret"


@dataclass
class Site:
    """A served marketplace, its store and the issuer it trusts."""

    url: str
    store: MarketplaceStore
    issuer: TestIssuer

    def publish(self, document: dict[str, Any]) -> None:
        """Store a publication as its product would push it."""
        self.store.publish(parse_publication(document), f"product:{document['product']['name']}")


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    """The test OIDC issuer, with the marketplace as a confidential client."""
    with serve_issuer({CLIENT_ID: CLIENT_SECRET}) as served:
        yield served


@contextmanager
def serve_marketplace(
    tmp_path: Path, issuer: TestIssuer, **settings: Any
) -> Iterator[Site]:  # fmt: skip
    """A marketplace over a SQLite store signing people in through `issuer`."""
    store = MarketplaceStore(f"sqlite:///{tmp_path / 'marketplace.db'}")
    marketplace_settings = MarketplaceSettings(
        oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET,
        session_secret="session-secret-for-tests-0123456789", **settings,
    )  # fmt: skip
    auth = DataproductSettings(
        jwt_secret=SECRET, oidc_issuer=issuer.url, jwt_algorithms=["HS256", "RS256"]
    )
    app = create_marketplace_app(store, marketplace_settings, auth)
    with serve_in_thread(app) as url:
        yield Site(url, store, issuer)
    store.close()


@pytest.fixture
def site(tmp_path: Path, issuer: TestIssuer, base_publication: dict[str, Any]) -> Iterator[Site]:
    """The marketplace holding the example product's real publication."""
    with serve_marketplace(tmp_path, issuer) as served:
        served.publish(base_publication)
        yield served


def sign_in(
    client: httpx.Client, site: Site, path: str, user: str, groups: str = ""
) -> httpx.Response:
    """Open `path`, follow the redirect through the issuer's login form, come back."""
    page = client.get(f"{site.url}{path}")
    assert page.status_code == 303, page.text
    signin = client.get(f"{site.url}{page.headers['location']}")
    assert signin.status_code == 302
    authorize = signin.headers["location"]
    assert authorize.startswith(f"{site.issuer.url}/authorize?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert (params["code_challenge_method"], params["client_id"]) == ("S256", CLIENT_ID)
    form = client.get(authorize)
    assert "name='username'" in form.text
    login = client.post(
        f"{site.issuer.url}/authorize",
        data={**params, "username": user, "email": f"{user}@example.com", "groups": groups},
    )
    assert login.status_code == 302
    callback = client.get(login.headers["location"])
    assert callback.status_code == 303, callback.text
    assert callback.headers["location"] == path
    return client.get(f"{site.url}{path}")


def text_of(html: str) -> str:
    """The visible text of a page, tags removed and entities decoded."""
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_sign_in_round_trip_sets_a_safe_session_and_sign_out_ends_it(site: Site) -> None:
    """Redirect to the issuer with PKCE, back with a code, a signed HttpOnly SameSite=Lax
    session cookie with the principal; a tampered cookie is no session; sign-out needs the
    form token and clears the cookie."""
    with httpx.Client() as client:
        page = sign_in(client, site, "/search?q=revenue", "carol", "analysts,sales")
        assert page.status_code == 200
        assert "carol@example.com" in page.text
        cookie = next(c for c in client.cookies.jar if c.name == "marketplace_session")
        raw = page.request.headers["cookie"]
        assert "marketplace_session=" in raw
        assert cookie.has_nonstandard_attr("HttpOnly")
        set_cookie = [h for h in _session_headers(client, site)]
        assert any("samesite=lax" in h.lower() and "httponly" in h.lower() for h in set_cookie)
        assert site.issuer.redemptions >= 1
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        refused = client.post(f"{site.url}/signout", data={"csrf": "forged"})
        assert refused.status_code == 403
        assert client.get(f"{site.url}/").status_code == 200  # still signed in
        out = client.post(f"{site.url}/signout", data={"csrf": csrf.group(1)})
        assert out.status_code == 303
        assert client.get(f"{site.url}/").status_code == 303  # back to sign-in
    tampered = httpx.get(f"{site.url}/", cookies={"marketplace_session": cookie.value + "x"})
    assert tampered.status_code == 303
    assert tampered.headers["location"].startswith("/signin")


def _session_headers(client: httpx.Client, site: Site) -> list[str]:
    """The Set-Cookie header of a fresh sign-in's callback."""
    with httpx.Client() as other:
        page = other.get(f"{site.url}/signin?next=/")
        params = {k: v[0] for k, v in parse_qs(urlsplit(page.headers["location"]).query).items()}
        login = other.post(f"{site.issuer.url}/authorize", data={**params, "username": "x"})
        callback = other.get(login.headers["location"])
        return callback.headers.get_list("set-cookie")


def test_callback_refuses_a_wrong_state_and_a_replayed_code(site: Site) -> None:
    """A callback whose state is not the one sent is refused; a code works only once."""
    with httpx.Client() as client:
        start = client.get(f"{site.url}/signin?next=/")
        params = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
        login = client.post(f"{site.issuer.url}/authorize", data={**params, "username": "eve"})
        code = parse_qs(urlsplit(login.headers["location"]).query)["code"][0]
        wrong = client.get(f"{site.url}/signin/callback", params={"code": code, "state": "x"})
        assert wrong.status_code == 400
        assert "state does not match" in text_of(wrong.text)
        good = client.get(login.headers["location"])
        assert good.status_code == 303
        client.cookies.clear()
        replay = client.get(login.headers["location"])
        assert replay.status_code == 400  # no sign-in was started by this browser
    assert "marketplace_session" not in replay.headers.get("set-cookie", "")


def test_pages_show_the_published_example_product(site: Site, issuer: TestIssuer) -> None:
    """Home (area tree, recent), search with filters, product page and dataset page (schema,
    rows, freshness, quality, SQL, lineage picture, snippets with the real output URL)."""
    with httpx.Client() as client:
        home = sign_in(client, site, "/", "dana")
        assert re.search(r'href="/search\?area=sales">sales<', home.text)
        assert 'href="/search?area=sales%2Feurope">europe<' in home.text
        assert 'href="/products/sales-eu">sales-eu</a>' in home.text
        found = client.get(f"{site.url}/search", params={"q": "revenue"})
        assert "/products/sales-eu/datasets/customer_revenue" in found.text
        pii = client.get(f"{site.url}/search", params={"classification": "pii", "kind": "dataset"})
        assert "customer_revenue" in pii.text and "daily_sales" not in pii.text
        nothing = client.get(f"{site.url}/search", params={"q": "revenue", "area": "finance"})
        assert "0 result(s)" in nothing.text
        product = client.get(f"{site.url}/products/sales-eu")
        assert "Ana Silva" in product.text and "sales/europe" in product.text
        assert 'href="/products/sales-eu/datasets/daily_sales"' in product.text
        page = client.get(f"{site.url}/products/sales-eu/datasets/customer_revenue")
    assert page.status_code == 200
    html = page.text
    schema = re.search(r'<table id="schema">(.*?)</table>', html, re.S)
    assert schema is not None
    cells = re.findall(r"<tr><td><code>([^<]+)</code></td><td>([^<]*)</td>", schema.group(1))
    assert cells[0] == ("customer_id", "VARCHAR")
    assert ("revenue", "DECIMAL(38,2)") in cells
    assert "<td>pii</td>" in schema.group(1)
    assert "<span id='rows'>300</span>" in html
    assert re.search(r"<span id='freshness'>\d{4}-\d\d-\d\dT", html)
    assert '<span class="status pass">pass</span>' in html
    assert "FROM staging.orders_clean AS o" in unescape(html)
    svg = re.search(r"<svg id=\"lineage\".*?</svg>", html, re.S)
    assert svg is not None
    for label in ("orders (file)", "customers (file)", "staging.orders_clean",
                  "sales-eu / customer_revenue"):  # fmt: skip
        assert f"<title>{label}</title>" in svg.group(0)
    rows_url = "http://127.0.0.1:8080/output/datasets/customer_revenue"
    snippets = unescape(html)
    assert f"'{rows_url}?format=csv'" in snippets
    assert f"\"{rows_url}\",\n    params={{'format': 'arrow'}}" in snippets
    assert f"read_csv('{rows_url}?format=csv')" in snippets


def test_lineage_links_upstream_and_downstream_products(
    site: Site, base_publication: dict[str, Any]
) -> None:
    """A product reading sales-eu's customer_revenue shows as downstream on its page, and
    sales-eu as a linked upstream product on the reader's dataset page."""
    reader = variant(base_publication, "sales-global", domain="sales/global")
    reader["product"]["url"] = "http://127.0.0.1:9090"
    reader["product"]["sources"]["orders"] = {
        "type": "product", "mode": "replace",
        "url": "http://127.0.0.1:8080/output/datasets/customer_revenue",
        "dataset": "customer_revenue",
    }  # fmt: skip
    site.publish(reader)
    with httpx.Client() as client:
        page = sign_in(client, site, "/products/sales-eu/datasets/customer_revenue", "fay")
        assert "<title>sales-global / customer_revenue</title>" in page.text
        assert 'href="/products/sales-global"' in page.text
        upstream = client.get(f"{site.url}/products/sales-global/datasets/customer_revenue")
    assert 'href="/products/sales-eu/datasets/customer_revenue"' in upstream.text


def test_everything_published_is_escaped(site: Site, base_publication: dict[str, Any]) -> None:
    """A description, a tag and a column description with markup show as text."""
    evil = variant(base_publication, "evil", description="<script>alert('x')</script>",
                   tags=['"><img src=x onerror=alert(1)>'])  # fmt: skip
    evil["product"]["url"] = "javascript:alert(1)"
    dataset = evil["datasets"]["customer_revenue"]
    dataset["description"] = "<b onmouseover=alert(2)>bold</b>"
    dataset["columns"][0]["description"] = "</td><script>alert(3)</script>"
    site.publish(evil)
    with httpx.Client() as client:
        product = sign_in(client, site, "/products/evil", "gus")
        page = client.get(f"{site.url}/products/evil/datasets/customer_revenue")
        found = client.get(f"{site.url}/search", params={"q": "evil"})
    for html in (product.text, page.text, found.text):
        assert "<script>" not in html and "<img" not in html and "<b onmouseover" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in product.text
    assert 'href="javascript:' not in product.text
    assert "&lt;/td&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in page.text
    assert "&lt;b onmouseover=alert(2)&gt;bold&lt;/b&gt;" in page.text


def test_unknown_product_and_dataset_get_a_404_page(site: Site) -> None:
    """HTML 404 pages, not JSON, for an unknown product and an unknown dataset."""
    with httpx.Client() as client:
        missing = sign_in(client, site, "/products/nope", "hal")
        dataset = client.get(f"{site.url}/products/sales-eu/datasets/nope")
    for response in (missing, dataset):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in response.text
    assert "no product &#x27;nope&#x27;" in missing.text


def test_public_read_pages_need_no_sign_in(
    tmp_path: Path, issuer: TestIssuer, base_publication: dict[str, Any]
) -> None:
    """With `public_read` the pages render for an anonymous visitor, offering sign-in."""
    with serve_marketplace(tmp_path, issuer, public_read=True) as site:
        site.publish(copy.deepcopy(base_publication))
        page = httpx.get(f"{site.url}/products/sales-eu")
        assert page.status_code == 200
        assert '<a href="/signin">Sign in</a>' in page.text


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_request_access_then_the_owner_denies_with_a_note(site: Site) -> None:
    """A consumer asks through the dataset page's form (a post without the form token
    changes nothing); the owner sees it under approvals and denies it with a note; the
    consumer sees the decision and the note under my requests."""
    path = "/products/sales-eu/datasets/customer_revenue"
    with httpx.Client() as consumer:
        page = sign_in(consumer, site, path, "ivy", "analysts")
        assert 'id="request-access"' in page.text
        form = {"justification": "churn <model>", "duration_days": "30"}
        forged = consumer.post(f"{site.url}{path}/request", data=form)
        assert forged.status_code == 403
        assert "You have not asked" in consumer.get(f"{site.url}/requests").text
        asked = consumer.post(f"{site.url}{path}/request", data={**form, "csrf": _csrf(page.text)})
        assert (asked.status_code, asked.headers["location"]) == (303, "/requests?done=requested")
        again = consumer.post(f"{site.url}{path}/request", data={**form, "csrf": _csrf(page.text)})
        assert again.status_code == 409
        mine = consumer.get(f"{site.url}/requests").text
        assert '<span class="status pending">pending</span>' in mine
    with httpx.Client() as owner:
        approvals = sign_in(owner, site, "/approvals", "ana.silva@example.com")
        assert "ivy asks for" in approvals.text and "churn &lt;model&gt;" in approvals.text
        request_id = re.search(r'action="/approvals/(\d+)"', approvals.text)
        assert request_id is not None
        decided = owner.post(
            f"{site.url}/approvals/{request_id.group(1)}",
            data={"decision": "deny", "note": "use daily_sales", "csrf": _csrf(approvals.text)},
        )
        assert decided.status_code == 303
        assert "Nothing waits" in owner.get(f"{site.url}/approvals").text
    with httpx.Client() as consumer:
        mine = sign_in(consumer, site, "/requests", "ivy").text
    assert '<span class="status denied">denied</span>' in mine
    assert "denied by ana.silva@example.com: use daily_sales" in mine


def test_a_restricted_product_is_invisible_to_outsiders_in_the_pages(
    site: Site, base_publication: dict[str, Any]
) -> None:
    """Visible only to its group: an outsider finds it nowhere and gets 404 on its pages;
    a member sees it on the home page, in search and on its pages."""
    secret = variant(base_publication, "secret-sales", description="quarterly secrets")
    secret["product"]["visibility"] = {"groups": ["finance"]}
    site.publish(secret)
    with httpx.Client() as outsider:
        home = sign_in(outsider, site, "/", "ivy")
        found = outsider.get(f"{site.url}/search", params={"q": "quarterly"})
        product = outsider.get(f"{site.url}/products/secret-sales")
        dataset = outsider.get(f"{site.url}/products/secret-sales/datasets/customer_revenue")
    assert "secret-sales" not in home.text and "secret-sales" not in found.text
    assert (product.status_code, dataset.status_code) == (404, 404)
    with httpx.Client() as member:
        home = sign_in(member, site, "/", "fay", groups="finance")
        found = member.get(f"{site.url}/search", params={"q": "quarterly"})
        product = member.get(f"{site.url}/products/secret-sales")
    assert "secret-sales" in home.text and "secret-sales" in found.text
    assert product.status_code == 200
