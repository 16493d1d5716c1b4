"""Marketplace benchmark: publish throughput and search latency, SQLite and PostgreSQL.

    .venv/bin/python bench/marketplace.py --products 10000

Generates N products with 10 datasets each (varied areas, owners, tags, words, columns;
deterministic; 1 in 50 restricted to a group), publishes them into a fresh store (a SQLite
file under bench/.data, a fresh PostgreSQL schema in db `test`, dropped after), then times a
few hundred varied searches, with and without filters, as a signed-in reader in one group
(so the visibility rule is part of every search). Progress on stderr, the table on stdout;
exit status 1 when the search p95 target (100 ms) is missed.

`--keep` keeps the database (SQLite file, PostgreSQL schema `mkt_bench_<N>`) and reuses it
when it already holds the products: only the searches run again.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from dataproduct.marketplace.publication import Publication  # noqa: E402
from dataproduct.marketplace.search import SearchFilters, Viewer, search  # noqa: E402
from dataproduct.marketplace.store import MarketplaceStore  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_P95_MS = 100.0
READER = Viewer("bench-reader", frozenset({"analysts", "group-3"}))


def wordlist(text_block: str) -> list[str]:
    """The words of a block of text."""
    return text_block.split()


AREAS = {
    "sales": ["europe", "americas", "asia", "online", "retail", "wholesale"],
    "finance": ["ledger", "treasury", "tax", "billing", "payroll"],
    "logistics": ["shipping", "warehousing", "fleet", "customs"],
    "marketing": ["campaigns", "web", "social", "crm"],
    "hr": ["recruiting", "benefits", "learning"],
    "manufacturing": ["plants", "quality", "maintenance", "planning"],
    "risk": ["credit", "fraud", "compliance"],
    "product": ["catalog", "pricing", "reviews", "search"],
    "support": ["tickets", "chat", "callcenter"],
    "research": ["trials", "lab", "patents"],
}
NOUNS = wordlist(
    """
order invoice payment customer supplier shipment parcel carrier route warehouse stock sku
product price discount campaign click session visitor lead opportunity contract account
ledger journal budget forecast expense revenue margin tax employee candidate salary
benefit course badge machine sensor reading defect batch lot inspection plant shift
downtime claim policy premium loan exposure transaction alert case ticket agent call chat
survey review rating trial patient sample assay patent store region country currency
channel partner vendor return refund subscription churn cohort basket cart delivery
container vessel port truck driver fuel mileage audit control incident risk score segment
household device
"""
)
ADJECTIVES = wordlist(
    """
daily weekly monthly hourly cleansed aggregated raw curated enriched validated historical
current active closed open pending regional global local certified anonymised masked
detailed summarised consolidated harmonised deduplicated late early gross net
"""
)
VERBS = wordlist(
    """
tracks lists counts measures summarises joins records describes estimates ranks flags
groups captures reconciles predicts
"""
)
PEOPLE = wordlist(
    """
ana bo chen dara eli femi gil hana ivan jo kai lea milo nia omar pia quinn rui sara tom
uma vik wen xia yara zoe
"""
)
TYPES = ["VARCHAR", "BIGINT", "DOUBLE", "DATE", "TIMESTAMP", "DECIMAL(18,2)", "BOOLEAN"]
CLASSIFICATIONS = [None] * 6 + ["pii", "confidential", "internal", "restricted"]
TAGS = ["gold", "silver", "bronze", "realtime", "batch", "certified", "experimental", "gdpr",
        "kpi", "finance", "ops", "ml", "reporting", "public", "legacy"]  # fmt: skip


def log(message: str) -> None:
    """Progress on stderr, so stdout is the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sentence(rng: random.Random, words: int) -> str:
    """A plausible description: adjective noun phrases with verbs."""
    parts = [rng.choice(ADJECTIVES), rng.choice(NOUNS)]
    for _ in range(words):
        parts.append(rng.choice(NOUNS if rng.random() < 0.6 else ADJECTIVES + VERBS))
    return " ".join(parts).capitalize() + "."


def make_dataset(rng: random.Random, name: str, at: str) -> dict[str, Any]:
    """One dataset document with 5-15 documented columns."""
    columns = []
    for index in range(rng.randint(5, 15)):
        suffix = rng.choice(["id", "count", "amount", "date", "code", "name", "status", "rate"])
        column = f"{rng.choice(NOUNS)}_{suffix}"
        columns.append(
            {
                "name": f"{column}_{index}" if index else column,
                "type": rng.choice(TYPES),
                "required": rng.random() < 0.3,
                "description": sentence(rng, rng.randint(2, 6)),
                "classification": rng.choice(CLASSIFICATIONS),
            }
        )
    return {
        "name": name,
        "description": sentence(rng, rng.randint(4, 12)),
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "version": rng.randint(1, 3),
        "row_count": rng.randint(0, 10_000_000),
        "updated_at": at,
        "columns": columns,
        "sql": f"SELECT * FROM staging.{name}",
        "quality_status": rng.choice(["pass", "fail", "unknown"]),
    }


def make_publication(index: int) -> Publication:
    """The deterministic publication of product number `index`."""
    rng = random.Random(index)
    area = rng.choice(list(AREAS))
    domain = f"{area}/{rng.choice(AREAS[area])}"
    if rng.random() < 0.3:
        domain += f"/{rng.choice(['north', 'south', 'east', 'west'])}"
    name = f"{area}-{rng.choice(NOUNS)}-{rng.choice(NOUNS)}-{index}"
    person = rng.choice(PEOPLE)
    at = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=index)).isoformat()
    names = {f"{rng.choice(ADJECTIVES)}_{rng.choice(NOUNS)}s_{i}" for i in range(10)}
    datasets = {n: make_dataset(rng, n, at) for n in sorted(names)}
    url = f"http://products.example/{domain}/{name}/v1"
    document = {
        "product": {
            "name": name,
            "domain": domain,
            "version": f"1.{rng.randint(0, 9)}.0",
            "major": 1,
            "description": sentence(rng, rng.randint(8, 20)),
            "owner": {"name": person.title(), "email": f"{person}@example.com"},
            "tags": rng.sample(TAGS, rng.randint(1, 3)),
            "url": url,
            "ports": {"discovery": {"url": f"{url}/discovery", "auth": "none"}},
            "sources": {"orders": {"type": "file", "mode": "replace"}},
            "datasets": [{"name": n, "version": d["version"]} for n, d in datasets.items()],
            "visibility": {"groups": [f"group-{index % 7}"] if index % 50 == 0 else []},
        },
        "datasets": datasets,
        "lineage": {"nodes": [], "edges": []},
        "health": {"ready": True, "problems": []},
        "published_at": at,
    }
    return Publication.model_validate(document, strict=False)


def make_queries(count: int) -> list[tuple[str, SearchFilters]]:
    """Varied queries: words, two words, prefixes, names; half of them filtered."""
    rng = random.Random(7)
    queries = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            query = rng.choice(NOUNS)
        elif kind == 1:
            query = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        elif kind == 2:
            query = rng.choice(NOUNS)[:4]
        elif kind == 3:
            query = f"{rng.choice(NOUNS)} {rng.choice(NOUNS)} {rng.choice(ADJECTIVES)}"
        else:
            query = f"{rng.choice(NOUNS)}_{rng.choice(['id', 'amount', 'status'])}"
        filters = SearchFilters()
        if index % 2:
            area = rng.choice(list(AREAS))
            filters = rng.choice(
                [
                    SearchFilters(area=area),
                    SearchFilters(area=f"{area}/{rng.choice(AREAS[area])}"),
                    SearchFilters(tag=rng.choice(TAGS)),
                    SearchFilters(classification=rng.choice(["pii", "confidential"])),
                    SearchFilters(owner=f"{rng.choice(PEOPLE)}@example.com"),
                    SearchFilters(area=area, tag=rng.choice(TAGS), kind="dataset"),
                ]
            )
        queries.append((query, filters))
    return queries


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_backend(url: str, label: str, products: int, queries: list[Any]) -> dict[str, Any]:
    """Publish every product (unless a kept store holds them), then time every query (plus
    one unmeasured warm-up pass)."""
    store = MarketplaceStore(url)
    try:
        publish_per_s = float("nan")
        if len(store.products(limit=1, offset=products - 1)) == 0:
            publish_per_s = publish_all(store, label, products)
        for query, filters in queries[:50]:
            search(store, query, filters, viewer=READER)
        timings: dict[bool, list[float]] = {False: [], True: []}
        hits = []
        for query, filters in queries:
            begin = time.perf_counter()
            results = search(store, query, filters, viewer=READER)
            timings[filters != SearchFilters()].append((time.perf_counter() - begin) * 1000)
            hits.append(results.total)
        return {
            "label": label,
            "publish_per_s": publish_per_s,
            "plain": timings[False],
            "filtered": timings[True],
            "all": timings[False] + timings[True],
            "median_total": statistics.median(hits),
        }
    finally:
        store.close()


def publish_all(store: MarketplaceStore, label: str, products: int) -> float:
    """Publish the `products` generated products; the rate per second (generation aside)."""
    log(f"{label}: publishing {products:,} products")
    started = time.perf_counter()
    batch_start, parse_s = started, 0.0
    for index in range(products):
        begin = time.perf_counter()
        publication = make_publication(index)
        parse_s += time.perf_counter() - begin
        store.publish(publication, f"svc-{index}")
        if (index + 1) % 2000 == 0:
            rate = 2000 / (time.perf_counter() - batch_start)
            log(f"{label}: {index + 1} published ({rate:.0f}/s)")
            batch_start = time.perf_counter()
    publish_s = time.perf_counter() - started - parse_s
    if store.dialect == "postgresql":
        with store.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    return products / publish_s


def with_postgres_schema(
    action: Callable[[str], dict[str, Any]], keep: str | None = None
) -> dict[str, Any]:
    """Run `action` on a fresh PostgreSQL schema, dropped afterwards (or on the schema
    `keep`, created when missing and kept)."""
    schema = keep or f"mkt_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    try:
        return action(f"{PG_URL}?options=-csearch_path%3D{schema}")
    finally:
        if keep is None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def report(results: list[dict[str, Any]], products: int, queries: int) -> bool:
    """Print the table; True when every backend meets the p95 target."""
    print(f"\nmarketplace: {products:,} products x 10 datasets, {queries} queries")
    print(f"{'backend':<11}{'publish/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p50 filt':>10}"
          f"{'p95 filt':>10}{'p95 all':>9}{'median hits':>13}  target p95<100ms")  # fmt: skip
    passed = True
    for r in results:
        p95 = percentile(r["all"], 0.95)
        ok = p95 < TARGET_P95_MS
        passed &= ok
        print(
            f"{r['label']:<11}{r['publish_per_s']:>10.0f}"
            f"{percentile(r['plain'], 0.5):>9.1f}{percentile(r['plain'], 0.95):>9.1f}"
            f"{percentile(r['filtered'], 0.5):>10.1f}{percentile(r['filtered'], 0.95):>10.1f}"
            f"{p95:>9.1f}{r['median_total']:>13.0f}  {'PASS' if ok else 'FAIL'}"
        )
    return passed


def main() -> int:
    """Parse arguments, run both backends, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / ".data")
    parser.add_argument("--keep", action="store_true", help="keep and reuse the database")
    args = parser.parse_args()
    queries = make_queries(args.queries)
    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            args.data_dir.mkdir(parents=True, exist_ok=True)
            path = args.data_dir / f"marketplace_{args.products}.db"
            for suffix in ("", "-wal", "-shm") if not args.keep else ():
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            results.append(run_backend(f"sqlite:///{path}", "sqlite", args.products, queries))
        else:
            results.append(
                with_postgres_schema(
                    lambda url: run_backend(url, "postgresql", args.products, queries),
                    f"mkt_bench_{args.products}" if args.keep else None,
                )
            )
    return 0 if report(results, args.products, args.queries) else 1


if __name__ == "__main__":
    sys.exit(main())
