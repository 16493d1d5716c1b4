"""A dataset's lineage drawn as an inline SVG, laid out here (no script, no library).

Columns from left to right: the furthest upstream (sources, upstream products), the steps
in between, the dataset itself, then the products that read it downstream. Every label is
escaped; links go only to the marketplace's own pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from ports.marketplace.page_parts import path_to

BOX_W, BOX_H = 190, 36
COLUMN_W, ROW_H = 250, 52
MARGIN = 10
FILL = {
    "source": "#eef6ee",
    "product": "#e8eef8",
    "staging": "#f4f4f4",
    "dataset": "#fff3c4",
    "downstream": "#e8eef8",
}


@dataclass
class Node:
    """One box: what it is, its label, its column, and an optional local link."""

    id: str
    kind: str
    label: str
    link: str | None = None
    column: int = 0
    row: int = 0


@dataclass
class Graph:
    """Boxes and arrows of a dataset's lineage."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)


def reads_from(source_url: str, product_url: str) -> bool:
    """Whether a `product` source's URL is the product at `product_url` (or inside it)."""
    base = product_url.rstrip("/")
    return bool(base) and (source_url.rstrip("/") == base or source_url.startswith(base + "/"))


def upstream_product(source: dict[str, Any], products_by_url: dict[str, str]) -> str | None:
    """The marketplace product a `product` source reads, matched by its URL prefix."""
    url = str(source.get("url", ""))
    for prefix, name in sorted(products_by_url.items(), key=lambda item: -len(item[0])):
        if reads_from(url, prefix):
            return name
    return None


def _ancestors(target: str, edges: list[dict[str, Any]]) -> dict[str, int]:
    """Every upstream node of `target` with its longest distance to it."""
    parents: dict[str, list[str]] = {}
    for edge in edges:
        parents.setdefault(str(edge.get("to")), []).append(str(edge.get("from")))
    depth: dict[str, int] = {target: 0}
    frontier = [target]
    while frontier:
        node = frontier.pop()
        for parent in parents.get(node, []):
            if depth.get(parent, -1) < depth[node] + 1 and depth[node] < 50:
                depth[parent] = depth[node] + 1
                frontier.append(parent)
    return depth


def _source_node(
    node_id: str, name: str, source: dict[str, Any], products_by_url: dict[str, str]
) -> Node:
    kind = str(source.get("type", "source"))
    if kind == "product":
        upstream = upstream_product(source, products_by_url)
        dataset = str(source.get("dataset", ""))
        if upstream:
            return Node(node_id, "product", f"{upstream} / {dataset}",
                        path_to("products", upstream, "datasets", dataset))  # fmt: skip
        return Node(node_id, "product", f"product {name} / {dataset}")
    return Node(node_id, "source", f"{name} ({kind})")


def build_graph(
    publication: dict[str, Any],
    dataset: str,
    products_by_url: dict[str, str],
    downstream: list[tuple[str, str]],
) -> Graph:
    """The lineage of `dataset` from the product's lineage document and the mesh around it."""
    product = publication.get("product", {})
    lineage = publication.get("lineage") or {}
    edges = [e for e in lineage.get("edges", []) if isinstance(e, dict)]
    target = f"output.{dataset}"
    depths = _ancestors(target, edges)
    deepest = max(depths.values())
    sources = product.get("sources") or {}
    graph = Graph()
    for node_id, depth in depths.items():
        layer, _, name = node_id.partition(".")
        if node_id == target:
            node = Node(node_id, "dataset", f"{product.get('name', '')} / {dataset}")
        elif layer == "input" and isinstance(sources.get(name), dict):
            node = _source_node(node_id, name, sources[name], products_by_url)
        else:
            node = Node(node_id, "staging", node_id)
        node.column = deepest - depth
        graph.nodes[node_id] = node
    graph.edges = [
        (str(e["from"]), str(e["to"]))
        for e in edges
        if str(e.get("from")) in graph.nodes and str(e.get("to")) in graph.nodes
    ]
    for reader, read_dataset in downstream:
        node_id = f"downstream:{reader}/{read_dataset}"
        graph.nodes[node_id] = Node(node_id, "downstream", f"{reader} / {read_dataset}",
                                    path_to("products", reader), deepest + 1)  # fmt: skip
        graph.edges.append((target, node_id))
    _assign_rows(graph)
    return graph


def _assign_rows(graph: Graph) -> None:
    rows: dict[int, int] = {}
    for node in sorted(graph.nodes.values(), key=lambda n: (n.column, n.label)):
        node.row = rows.get(node.column, 0)
        rows[node.column] = node.row + 1


def _box(node: Node) -> str:
    x, y = MARGIN + node.column * COLUMN_W, MARGIN + node.row * ROW_H
    label = node.label if len(node.label) <= 28 else node.label[:27] + "…"
    shape = (
        f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" '
        f'fill="{FILL.get(node.kind, "#fff")}" stroke="#567"/>'
        f'<text x="{x + 8}" y="{y + 22}"><title>{escape(node.label)}</title>{escape(label)}</text>'
    )
    if node.link:
        shape = f'<a href="{node.link}">{shape}</a>'
    return f'<g class="node {escape(node.kind)}" data-id="{escape(node.id)}">{shape}</g>'


def _arrow(graph: Graph, start: str, end: str) -> str:
    a, b = graph.nodes[start], graph.nodes[end]
    x1, y1 = MARGIN + a.column * COLUMN_W + BOX_W, MARGIN + a.row * ROW_H + BOX_H // 2
    x2, y2 = MARGIN + b.column * COLUMN_W, MARGIN + b.row * ROW_H + BOX_H // 2
    bend = (x2 - x1) // 2
    return (
        f'<path d="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}" '
        'fill="none" stroke="#789" stroke-width="1.5" marker-end="url(#arrow)"/>'
    )


def lineage_svg(graph: Graph) -> str:
    """The graph as an inline SVG picture."""
    columns = max(n.column for n in graph.nodes.values()) + 1
    rows = max(n.row for n in graph.nodes.values()) + 1
    width = 2 * MARGIN + (columns - 1) * COLUMN_W + BOX_W
    height = 2 * MARGIN + (rows - 1) * ROW_H + BOX_H
    marker = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#789"/></marker></defs>'
    )
    arrows = "".join(_arrow(graph, a, b) for a, b in graph.edges)
    boxes = "".join(_box(n) for n in graph.nodes.values())
    return (
        f'<svg id="lineage" role="img" aria-label="lineage" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"{marker}{arrows}{boxes}</svg>"
    )
