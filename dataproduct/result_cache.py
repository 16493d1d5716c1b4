"""Small results kept in memory: a JSON page or query answer over published data is the same
until the next commit, so a repeated request is served without running SQL.

Keys carry the storage generation (and the caller's view), so a publish or a grant change
makes old entries unreachable; the least recently used ones go first when the cache is full.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from sqlglot import exp

from dataproduct.sqlguard import function_name

MAX_ENTRY_FRACTION = 16  # one entry may take at most this share of the cache
_VOLATILE = ("rand", "setseed", "uuid", "gen_random_uuid", "now", "current_", "today",
             "get_current_", "transaction_timestamp", "nextval")  # fmt: skip


@dataclass(frozen=True)
class CachedResult:
    """A response body and the rows it holds (for the audit log and metrics)."""

    body: bytes
    rows: int


class ResultCache:
    """A byte-bounded LRU of response bodies; 0 bytes turns it off."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, CachedResult] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> CachedResult | None:
        """The cached result, freshly used, or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Hashable, result: CachedResult) -> None:
        """Keep a result unless it is too large for the cache."""
        size = len(result.body)
        if size > self.max_bytes // MAX_ENTRY_FRACTION:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._size -= len(previous.body)
            self._entries[key] = result
            self._size += size
            while self._size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted.body)


def deterministic(query: exp.Expr) -> bool:
    """Whether a query gives the same rows each time over the same data (no random(),
    now(), uuid()...): only those may be cached."""
    return not any(function_name(node).startswith(_VOLATILE) for node in query.find_all(exp.Func))
