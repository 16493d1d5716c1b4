"""The discovery page for people: plain server-rendered HTML, escaped, no scripts."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem} .meta{color:#555} code,pre{background:#f4f4f4;padding:.1rem .3rem}
pre{padding:.6rem;overflow-x:auto} table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
.tag{display:inline-block;background:#e8eef8;border-radius:.6rem;padding:0 .5rem;margin:0 .2rem}
section{margin-top:2rem}
"""


def _tags(tags: list[str]) -> str:
    return "".join(f'<span class="tag">{escape(t)}</span>' for t in tags)


def _columns(columns: list[dict[str, Any]]) -> str:
    rows = "".join(
        "<tr>"
        f"<td><code>{escape(c['name'])}</code></td><td>{escape(c['type'])}</td>"
        f"<td>{'yes' if c['required'] else ''}</td>"
        f"<td>{escape(c['classification'] or '')}</td><td>{escape(c['description'])}</td>"
        "</tr>"
        for c in columns
    )
    return (
        "<table><thead><tr><th>column</th><th>type</th><th>required</th>"
        f"<th>classification</th><th>description</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _older(dataset: dict[str, Any]) -> str:
    older = [v for v in dataset["versions"] if not v["current"]]
    if not older:
        return ""
    links = ", ".join(f'<a href="{escape(v["rows"])}">v{v["version"]}</a>' for v in older)
    return f" · older versions: {links}"


def _restricted(dataset: dict[str, Any]) -> str:
    return (
        f'<section id="{escape(dataset["name"])}"><h2>{escape(dataset["name"])}</h2>'
        f"<p>{escape(dataset['description'])} {_tags(dataset['tags'])}</p>"
        "<p class='meta'>restricted: ask the owner for access to see its schema and rows</p>"
        "</section>"
    )


def _dataset(dataset: dict[str, Any]) -> str:
    if "columns" not in dataset:
        return _restricted(dataset)
    rows_url = escape(dataset["links"]["rows"])
    return (
        f'<section id="{escape(dataset["name"])}"><h2>{escape(dataset["name"])}</h2>'
        f"<p>{escape(dataset['description'])} {_tags(dataset['tags'])}</p>"
        f'<p class="meta">version {dataset["version"]} · {dataset["row_count"]:,} rows, updated '
        f"{escape(dataset['updated_at'])} by run <code>{escape(dataset['run_id'])}</code> · "
        f"quality: <strong>{escape(dataset['quality_status'])}</strong>{_older(dataset)}</p>"
        f"{_columns(dataset['columns'])}"
        f"<p>Read it: <code>curl -H 'Authorization: Bearer $TOKEN' '{rows_url}?format=csv'</code>"
        f"</p><details><summary>SQL that made it</summary><pre>{escape(dataset['sql'])}</pre>"
        "</details></section>"
    )


def product_page(product: dict[str, Any], datasets: list[dict[str, Any]]) -> str:
    """The product and its datasets as one HTML page."""
    owner = product["owner"]
    ports = "".join(
        f"<li>{escape(name)}: <code>{escape(port['url'])}</code> ({escape(port['auth'])})</li>"
        for name, port in product["ports"].items()
    )
    body = "".join(_dataset(d) for d in datasets) or "<p>No dataset is published yet.</p>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(product['name'])} · data product</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(product['name'])}</h1>"
        f"<p class='meta'>{escape(product['domain'])} · version {escape(product['version'])} · "
        f"owner {escape(owner['name'])} &lt;{escape(owner['email'])}&gt;</p>"
        f"<p>{escape(product['description'])} {_tags(product['tags'])}</p>"
        f"<h3>Ports</h3><ul>{ports}</ul>{body}</body></html>"
    )
