"""The peer of bench/gateway.py: a bare FastAPI app serving a precomputed 10-row JSON page.

No auth, no database, no middleware. The page is the product's own response to the same
request, read once at start from the file named by `BENCH_BARE_BODY`. Two endpoints:

- `GET /rows`: returns the page as a dict, so FastAPI validates and serializes it on every
  request, as an ordinary FastAPI endpoint does;
- `GET /rows/raw`: returns the page's bytes as they are (no serialization at all).

Run by bench/gateway.py as `uvicorn bare_app:app --app-dir bench`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI  # noqa: TID251 (a benchmark peer, not the product)
from fastapi.responses import Response  # noqa: TID251

_BODY = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
_PAGE: dict[str, Any] = json.loads(_BODY)

app = FastAPI(title="bare peer")


@app.get("/rows")
async def rows() -> dict[str, Any]:
    """The page, serialized by FastAPI on every request."""
    return _PAGE


@app.get("/rows/raw")
async def rows_raw() -> Response:
    """The page's bytes, precomputed."""
    return Response(_BODY, media_type="application/json")


@app.get("/ready")
async def ready() -> dict[str, str]:
    """Up and serving."""
    return {"status": "ready"}
