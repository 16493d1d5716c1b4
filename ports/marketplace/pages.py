"""The marketplace's pages for people: home, search, product and dataset pages.

Server-rendered HTML, escaped, no scripts. A visitor signs in through the organisation's
OIDC issuer (`signin.py`); without a session every page sends the browser to the sign-in,
unless the marketplace is configured `public_read`.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dataproduct.errors import BadRequestError, NotFoundError
from dataproduct.marketplace.search import SearchFilters, Viewer, search
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from ports.marketplace import access_pages, signin
from ports.marketplace.lineage_svg import build_graph, lineage_svg, reads_from
from ports.marketplace.page_parts import (
    columns_table,
    dataset_link,
    href,
    message_page,
    page,
    path_to,
    product_link,
    quality_table,
    reading_snippets,
    status,
    tags,
    when,
)
from ports.marketplace.session import Visitor, visitor_of

router = APIRouter(include_in_schema=False)
router.include_router(signin.router)
router.include_router(access_pages.router)
PAGE_SIZE = 20
MESH_SCAN_LIMIT = 500


class SignInRequired(Exception):
    """The page needs a signed-in visitor."""


def _store(request: Request) -> MarketplaceStore:
    store: MarketplaceStore = request.app.state.store
    return store


def visitor_or_sign_in(request: Request) -> Visitor | None:
    """The visitor; SignInRequired when there is none and the pages are not public."""
    visitor = visitor_of(request)
    settings: MarketplaceSettings = request.app.state.settings
    if visitor is None and not settings.public_read:
        raise SignInRequired
    return visitor


def render(request: Request, build: Any, *args: Any) -> Response:
    """Run a page builder: sign-in redirect, 404 and 400 pages instead of JSON errors."""
    try:
        visitor = visitor_or_sign_in(request)
    except SignInRequired:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?{_query(next=target)}", 303)
    try:
        title, body, query = build(request, visitor, *args)
    except NotFoundError as error:
        return HTMLResponse(message_page("Not found", error.message, visitor), 404)
    except BadRequestError as error:
        return HTMLResponse(message_page("Bad request", error.message, visitor), 400)
    return HTMLResponse(page(title, body, visitor, query))


def _query(**params: str) -> str:
    return urlencode(params)


def _area_tree(nodes: list[dict[str, Any]]) -> str:
    if not nodes:
        return ""
    items = "".join(
        f'<li><a href="{path_to("search", area=n["path"])}">{escape(n["name"])}</a> '
        f"<span class='meta'>({int(n['products'])})</span>{_area_tree(n['children'])}</li>"
        for n in nodes
    )
    return f'<ul class="tree">{items}</ul>'


def _product_rows(products: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{product_link(p['name'])}</td><td>{escape(p['domain'])}</td>"
        f"<td>{escape(p['description'])}</td><td>{escape(p['owner']['name'])}</td>"
        f"<td>{status(p['status'])}</td><td>{when(p['last_updated'])}</td></tr>"
        for p in products
    )
    return (
        "<table><thead><tr><th>product</th><th>area</th><th>description</th><th>owner</th>"
        f"<th>status</th><th>updated</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def viewer_of(visitor: Visitor | None) -> Viewer:
    """Whom the store shows products to: the signed-in visitor, or an anonymous reader."""
    if visitor is None:
        return Viewer()
    return Viewer(subject=visitor.subject, groups=visitor.groups)


def home(request: Request, visitor: Visitor | None) -> tuple[str, str, str]:
    """The business-area tree and the recently updated products."""
    store = _store(request)
    viewer = viewer_of(visitor)
    areas = store.business_areas(viewer=viewer)
    recent = store.products(order="recent", limit=10, viewer=viewer)
    body = (
        "<h1>Data marketplace</h1><p class='meta'>Find data products, understand their "
        "datasets, ask for access.</p>"
        f'<section id="areas"><h2>Business areas</h2>'
        f"{_area_tree(areas) or '<p>No product is published yet.</p>'}</section>"
        f'<section id="recent"><h2>Recently updated</h2>{_product_rows(recent)}</section>'
    )
    return "Home", body, ""


def _filters_form(q: str, filters: SearchFilters) -> str:
    def field(name: str, label: str) -> str:
        value = escape(getattr(filters, name) or "")
        return f'<label>{label} <input name="{name}" value="{value}" size="14"></label>'

    kinds = "".join(
        f'<option value="{k}"{" selected" if filters.kind == k else ""}>{k or "all"}</option>'
        for k in ("", "product", "dataset")
    )
    return (
        '<form class="filters" method="get" action="/search">'
        f'<input type="search" name="q" value="{escape(q)}" aria-label="words" size="28"> '
        f"{field('area', 'area')}{field('owner', 'owner')}{field('tag', 'tag')}"
        f"{field('classification', 'classification')}"
        f'<label>kind <select name="kind">{kinds}</select></label> '
        '<button type="submit">Search</button></form>'
    )


def _snippet(text: str | None) -> str:
    if not text:
        return ""
    marked = re.sub(r"\[([^\[\]]*)\]", r"<mark>\1</mark>", escape(text))
    return f"<p class='meta'>…{marked}…</p>"


def _hit(hit: Any) -> str:
    link = dataset_link(hit.product, hit.dataset) if hit.dataset else product_link(hit.product)
    kind = f"dataset of {product_link(hit.product)}" if hit.dataset else "product"
    return (
        f'<div class="hit"><strong>{link}</strong> <span class="meta">{kind} · '
        f"{escape(hit.domain)}</span><p>{escape(hit.description)}</p>{_snippet(hit.snippet)}</div>"
    )


def search_page(request: Request, visitor: Visitor | None) -> tuple[str, str, str]:
    """Ranked results of the words and filters in the query string, paginated."""
    params = request.query_params
    q = params.get("q", "")
    kind = params.get("kind") or None
    if kind not in (None, "product", "dataset"):
        raise BadRequestError("kind must be product or dataset", where="kind")
    filters = SearchFilters(
        area=params.get("area") or None,
        owner=params.get("owner") or None,
        tag=params.get("tag") or None,
        classification=params.get("classification") or None,
        kind=kind,  # type: ignore[arg-type]
    )
    offset_text = params.get("offset", "0")
    offset = int(offset_text) if offset_text.isdigit() else 0
    results = search(_store(request), q, filters, PAGE_SIZE, offset, viewer=viewer_of(visitor))
    hits = "".join(_hit(h) for h in results.hits) or "<p>Nothing matches.</p>"
    more = ""
    if results.total > offset + PAGE_SIZE:
        query = {**dict(params), "offset": str(offset + PAGE_SIZE)}
        more = f'<p><a href="/search?{escape(_query(**query))}">next page</a></p>'
    body = (
        f"<h1>Search</h1>{_filters_form(q, filters)}"
        f"<p class='meta' id='total'>{results.total} result(s)</p>"
        f'<div id="results">{hits}</div>{more}'
    )
    return f"Search {q}".strip(), body, q


def _ports(ports: dict[str, Any]) -> str:
    items = "".join(
        f"<li>{escape(str(name))}: <code>{escape(str(port.get('url', '')))}</code> "
        f"({escape(str(port.get('auth', '')))})</li>"
        for name, port in ports.items()
        if isinstance(port, dict)
    )
    return f"<ul>{items}</ul>"


def _datasets_table(product: str, datasets: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{dataset_link(product, d['name'])}</td><td>{escape(d['description'])}</td>"
        f"<td>{d['version']}</td><td>{_count(d['row_count'])}</td>"
        f"<td>{when(d['updated_at'])}</td><td>{status(d['quality_status'])}</td></tr>"
        for d in datasets
    )
    return (
        '<table id="datasets"><thead><tr><th>dataset</th><th>description</th><th>version</th>'
        f"<th>rows</th><th>updated</th><th>quality</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def product_page(request: Request, visitor: Visitor | None, name: str) -> tuple[str, str, str]:
    """One product: identity, owner, ports, datasets, recent publications."""
    store = _store(request)
    product = store.product(name, viewer=viewer_of(visitor))
    owner = product["owner"]
    published = product["publication"].get("product", {})
    history = "".join(
        f"<li>{when(h['received_at'])}: {'changed' if h['changed'] else 'unchanged'}</li>"
        for h in store.history(name, 5)
    )
    body = (
        f"<h1>{escape(product['name'])}</h1>"
        f"<p class='meta'>{escape(product['domain'])} · version {escape(product['version'])} · "
        f"owner {escape(owner['name'])} &lt;{escape(owner['email'])}&gt; · "
        f"{status(product['status'])} · health {status(product['health'])}</p>"
        f"<p>{escape(product['description'])} {tags(product['tags'])}</p>"
        f'<p>Address: <a href="{href(product["url"])}">{escape(product["url"] or "")}</a></p>'
        f"<section><h2>Datasets</h2>{_datasets_table(name, product['datasets'])}</section>"
        f"<section><h2>Ports</h2>{_ports(published.get('ports') or {})}</section>"
        f"<section><h2>Publications</h2><ul>{history}</ul>"
        f"<p class='meta'>Exports: <a href='{path_to('api', 'v1', 'products', name, 'odps')}'>"
        f"ODPS</a> · <a href='{path_to('api', 'v1', 'products', name, 'dcat')}'>DCAT</a></p>"
        "</section>"
    )
    return name, body, ""


def mesh(
    store: MarketplaceStore, product: str, dataset: str, viewer: Viewer
) -> tuple[dict[str, str], list[Any]]:
    """Products by address (those `viewer` may see), and those that read `product`'s
    `dataset`."""
    names = [p["name"] for p in store.products(limit=MESH_SCAN_LIMIT, viewer=viewer)]
    publications = {n: store.product(n)["publication"].get("product", {}) for n in names}
    by_url = {str(p.get("url")): n for n, p in publications.items() if p.get("url")}
    own_url = next((u for u, n in by_url.items() if n == product), None)
    readers: list[tuple[str, str]] = []
    for reader, published in publications.items():
        for source in (published.get("sources") or {}).values():
            if not isinstance(source, dict) or source.get("type") != "product":
                continue
            url, read = str(source.get("url", "")), str(source.get("dataset", ""))
            if own_url and reads_from(url, own_url) and read == dataset:
                readers.append((reader, read))
    return by_url, readers


def dataset_page(
    request: Request, visitor: Visitor | None, product: str, name: str
) -> tuple[str, str, str]:
    """One dataset: schema, size, freshness, quality, SQL, lineage picture, reading snippets."""
    store, viewer = _store(request), viewer_of(visitor)
    dataset = store.dataset(product, name, viewer=viewer)
    publication = store.product(product, viewer=viewer)["publication"]
    by_url, readers = mesh(store, product, name, viewer)
    graph = build_graph(publication, name, by_url, readers)
    rows_url = str((dataset.get("links") or {}).get("rows", ""))
    versions = ", ".join(f"v{v['version']}" for v in dataset.get("versions", []))
    odcs = path_to("api", "v1", "products", product, "datasets", name, "odcs")
    body = (
        f"<p class='meta'>{product_link(product)} / dataset</p><h1>{escape(name)}</h1>"
        f"<p>{escape(dataset.get('description') or '')} {tags(dataset.get('tags'))}</p>"
        f"<p class='meta' id='facts'>version {dataset.get('version')} ({escape(versions)}) · "
        f"<span id='rows'>{_count(dataset.get('row_count'))}</span> rows · updated "
        f"<span id='freshness'>{when(dataset.get('updated_at'))}</span> · quality "
        f"{status(dataset.get('quality_status'))}</p>"
        f"<section><h2>Schema</h2>{columns_table(dataset.get('columns') or [])}</section>"
        f"<section><h2>Quality</h2>{quality_table(dataset.get('quality_results') or [])}"
        "</section>"
        f"<section><h2>Lineage</h2>{lineage_svg(graph)}</section>"
        f"<section><h2>SQL that made it</h2><pre id='sql'>{escape(dataset.get('sql') or '')}</pre>"
        f"</section>{reading_snippets(rows_url)}"
        f"<section id='access'><h2>Request access</h2>"
        f"{access_pages.request_form(product, name, visitor)}</section>"
        f"<p class='meta'><a href='{odcs}'>ODCS contract</a></p>"
    )
    return f"{name} · {product}", body, ""


@router.get("/")
def home_route(request: Request) -> Response:
    """Home: business areas and recent products."""
    return render(request, home)


@router.get("/search")
def search_route(request: Request) -> Response:
    """Search results with filters."""
    return render(request, search_page)


@router.get("/products/{name}")
def product_route(request: Request, name: str) -> Response:
    """A product's page."""
    return render(request, product_page, name)


@router.get("/products/{product}/datasets/{name}")
def dataset_route(request: Request, product: str, name: str) -> Response:
    """A dataset's page."""
    return render(request, dataset_page, product, name)
