"""A token bucket per principal: a steady rate with a burst, and how long to wait when empty."""

from __future__ import annotations

import math
import threading
import time

from dataproduct.errors import RateLimitedError

MAX_TRACKED = 10_000


class RateLimiter:
    """`rate` requests per second per key, with bursts up to `burst`; rate 0 means unlimited."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one token of `key`'s bucket; RateLimitedError (429) when there is none."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait_s = math.ceil((1 - tokens) / self.rate)
                raise RateLimitedError(
                    f"too many requests for '{key}': the limit is {self.rate:g} per second "
                    f"(bursts of {self.burst}); retry in {wait_s} s",
                    retry_after_s=wait_s,
                )
            if len(self._buckets) >= MAX_TRACKED and key not in self._buckets:
                self._forget_full(now)
            self._buckets[key] = (tokens - 1, now)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold no state worth keeping."""
        refill_s = self.burst / self.rate
        self._buckets = {
            key: value for key, value in self._buckets.items() if now - value[1] < refill_s
        }
