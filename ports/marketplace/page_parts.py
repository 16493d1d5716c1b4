"""Pieces of the marketplace's pages: the frame, links, tags, tables, the reading snippets.

Everything a publication or a visitor supplies goes through `html.escape`; links taken from
publications must be http(s) URLs, anything else becomes an inert `#`.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ports.marketplace.session import Visitor

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b5a;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff;text-decoration:none} header form{margin:0}
header .who{margin-left:auto;font-size:.9rem}
main{max-width:64rem;margin:1.5rem auto;padding:0 1rem}
h1{margin-bottom:.2rem} .meta{color:#555} code,pre{background:#f0f0f0;padding:.1rem .3rem}
pre{padding:.6rem;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;width:100%;margin:.5rem 0;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
.tag{display:inline-block;background:#e8eef8;border-radius:.6rem;padding:0 .5rem;margin:0 .2rem}
.status{font-weight:bold} .pass{color:#1a7f37} .fail,.error{color:#b42318} .warn{color:#9a6700}
section{margin-top:2rem} ul.tree{list-style:none;padding-left:1.2rem}
.hit{background:#fff;border:1px solid #e3e3e3;border-radius:.4rem;padding:.6rem;margin:.5rem 0}
form.filters input,form.filters select{margin:.2rem} svg text{font-size:12px}
.flash{background:#fff6d5;border:1px solid #e8d48a;padding:.5rem;border-radius:.3rem}
"""


def href(url: object) -> str:
    """An escaped http(s) URL for an attribute; anything else (javascript:, data:) is `#`."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return escape(url)
    return "#"


def path_to(*parts: str, **params: str | None) -> str:
    """An escaped local path of URL-quoted parts with a query of the non-empty params."""
    path = "/" + "/".join(quote(part, safe="") for part in parts)
    query = urlencode({k: v for k, v in params.items() if v})
    return escape(f"{path}?{query}" if query else path)


def product_link(name: str) -> str:
    """A link to a product's page."""
    return f'<a href="{path_to("products", name)}">{escape(name)}</a>'


def dataset_link(product: str, dataset: str) -> str:
    """A link to a dataset's page."""
    return f'<a href="{path_to("products", product, "datasets", dataset)}">{escape(dataset)}</a>'


def tags(values: list[str] | None) -> str:
    """Tags as chips, each a link to the search by that tag."""
    return "".join(
        f'<a class="tag" href="{path_to("search", tag=t)}">{escape(t)}</a>' for t in values or []
    )


def status(value: str | None) -> str:
    """A status word, coloured by its meaning."""
    word = value or "unknown"
    return f'<span class="status {escape(word)}">{escape(word)}</span>'


def when(value: object) -> str:
    """A timestamp as text (ISO), or a dash."""
    if value is None:
        return "-"
    text = value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value)
    return escape(text)


def csrf_field(visitor: Visitor | None) -> str:
    """The hidden form field carrying the visitor's form token."""
    return f'<input type="hidden" name="csrf" value="{escape(visitor.csrf) if visitor else ""}">'


def page(title: str, body: str, visitor: Visitor | None, query: str = "") -> str:
    """A whole page: the header (search box, navigation, who is signed in) and `body`."""
    if visitor is None:
        who = '<a href="/signin">Sign in</a>'
    else:
        who = (
            f"<span>{escape(visitor.label)}</span> "
            '<form method="post" action="/signout" style="display:inline">'
            f'{csrf_field(visitor)}<button type="submit">Sign out</button></form>'
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)} · data marketplace</title><style>{STYLE}</style></head><body>"
        "<header><a href='/'><strong>Data marketplace</strong></a>"
        '<form method="get" action="/search"><input type="search" name="q" '
        f'aria-label="search" placeholder="Search products, datasets, columns" '
        f'value="{escape(query)}" size="36"> <button type="submit">Search</button></form>'
        '<a href="/requests">My requests</a><a href="/approvals">Approvals</a>'
        f'<span class="who">{who}</span></header><main>{body}</main></body></html>'
    )


def message_page(title: str, message: str, visitor: Visitor | None) -> str:
    """A page saying one thing (not found, refused, failed)."""
    return page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", visitor)


def columns_table(columns: list[dict[str, Any]]) -> str:
    """The schema: name, type, required, classification, description."""
    rows = "".join(
        "<tr>"
        f"<td><code>{escape(str(c.get('name', '')))}</code></td>"
        f"<td>{escape(str(c.get('type', '')))}</td>"
        f"<td>{'yes' if c.get('required') else ''}</td>"
        f"<td>{escape(str(c.get('classification') or ''))}</td>"
        f"<td>{escape(str(c.get('description') or ''))}</td></tr>"
        for c in columns
    )
    return (
        '<table id="schema"><thead><tr><th>column</th><th>type</th><th>required</th>'
        f"<th>classification</th><th>description</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def quality_table(results: list[dict[str, Any]]) -> str:
    """The latest quality results of a dataset."""
    if not results:
        return "<p class='meta'>No quality rule is checked.</p>"
    rows = "".join(
        f"<tr><td>{escape(str(r.get('rule', '')))}</td><td>{status(r.get('status'))}</td>"
        f"<td>{escape(str(r.get('severity', '')))}</td>"
        f"<td>{escape(str(r.get('failing_rows', '')))}</td><td>{when(r.get('checked_at'))}</td>"
        "</tr>"
        for r in results
    )
    return (
        "<table><thead><tr><th>rule</th><th>status</th><th>severity</th><th>failing rows</th>"
        f"<th>checked</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def reading_snippets(rows_url: str) -> str:
    """Ready-to-copy curl, Python (httpx + pyarrow) and DuckDB snippets for `rows_url`."""
    url = json.dumps(rows_url)  # a quoted literal, valid in Python and in the shell
    sql_url = rows_url.replace("'", "''")
    curl = (
        f'curl -H "Authorization: Bearer $TOKEN" \\\n  \'{rows_url.replace(chr(39), "")}'
        "?format=csv'"
    )
    python = (
        "import os\n\nimport httpx\nimport pyarrow as pa\n\n"
        f"response = httpx.get(\n    {url},\n    params={{'format': 'arrow'}},\n"
        "    headers={'Authorization': f\"Bearer {os.environ['TOKEN']}\"},\n    timeout=60,\n)\n"
        "response.raise_for_status()\n"
        "table = pa.ipc.open_stream(response.content).read_all()\nprint(table.num_rows)"
    )
    duckdb = (
        "INSTALL httpfs; LOAD httpfs;\n"
        "CREATE SECRET dataproduct (TYPE http,\n"
        "  EXTRA_HTTP_HEADERS MAP {'Authorization': 'Bearer <your token>'});\n"
        f"SELECT * FROM read_csv('{sql_url}?format=csv');"
    )
    return (
        '<section id="read"><h2>How to read it</h2>'
        f"<p>Output port: <code>{escape(rows_url)}</code> (a bearer token of your "
        "organisation in <code>$TOKEN</code>)</p>"
        f'<h3>curl</h3><pre id="snippet-curl">{escape(curl)}</pre>'
        f'<h3>Python (httpx + pyarrow)</h3><pre id="snippet-python">{escape(python)}</pre>'
        f'<h3>DuckDB</h3><pre id="snippet-duckdb">{escape(duckdb)}</pre></section>'
    )
