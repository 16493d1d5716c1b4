"""The token bucket: a burst, then one request per 1/rate seconds, per key."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from dataproduct import ratelimit
from dataproduct.errors import RateLimitedError
from dataproduct.ratelimit import RateLimiter


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The limiter reads this clock instead of `time.monotonic` (no other code is touched)."""
    fake = FakeClock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _allowed(limiter: RateLimiter, key: str, attempts: int) -> int:
    """How many of `attempts` immediate requests of `key` were let through."""
    allowed = 0
    for _ in range(attempts):
        try:
            limiter.take(key)
        except RateLimitedError:
            continue
        allowed += 1
    return allowed


def test_a_burst_is_let_through_then_refused(clock: FakeClock) -> None:
    """A full bucket allows `burst` requests at once, and not one more."""
    limiter = RateLimiter(rate=1, burst=5)
    assert _allowed(limiter, "alice", 5) == 5
    with pytest.raises(RateLimitedError):
        limiter.take("alice")


def test_a_refusal_is_429_rate_limited_with_a_whole_retry_after(clock: FakeClock) -> None:
    """The error carries the status, the code and whole seconds to wait (at least 1)."""
    limiter = RateLimiter(rate=100, burst=1)
    limiter.take("alice")
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("alice")
    error = refused.value
    assert (error.status, error.code) == (429, "rate_limited")
    assert isinstance(error.retry_after_s, int)
    assert error.retry_after_s == 1  # 10 ms rounded up, never 0
    assert "alice" in error.message


def test_retry_after_is_the_time_to_the_next_token(clock: FakeClock) -> None:
    """At one request every 4 s, an empty bucket says 4; half-way through it says 2."""
    limiter = RateLimiter(rate=0.25, burst=1)
    limiter.take("alice")
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("alice")
    assert refused.value.retry_after_s == 4
    clock.advance(2)
    with pytest.raises(RateLimitedError) as refused_later:
        limiter.take("alice")
    assert refused_later.value.retry_after_s == 2


def test_tokens_come_back_at_the_rate(clock: FakeClock) -> None:
    """After an empty bucket, one request per 1/rate seconds goes through."""
    limiter = RateLimiter(rate=2, burst=2)
    assert _allowed(limiter, "alice", 2) == 2
    clock.advance(0.49)
    assert _allowed(limiter, "alice", 1) == 0
    clock.advance(0.01)
    assert _allowed(limiter, "alice", 2) == 1
    clock.advance(1.0)
    assert _allowed(limiter, "alice", 3) == 2


def test_refusals_do_not_push_the_next_token_further(clock: FakeClock) -> None:
    """Knocking on an empty bucket costs nothing: the token still comes at its time."""
    limiter = RateLimiter(rate=1, burst=1)
    limiter.take("alice")
    for _ in range(10):
        clock.advance(0.09)
        assert _allowed(limiter, "alice", 1) == 0
    clock.advance(0.1)
    assert _allowed(limiter, "alice", 1) == 1


def test_an_idle_bucket_refills_only_up_to_the_burst(clock: FakeClock) -> None:
    """An hour of silence does not bank an hour of requests."""
    limiter = RateLimiter(rate=10, burst=3)
    limiter.take("alice")
    clock.advance(3600)
    assert _allowed(limiter, "alice", 10) == 3


def test_each_key_has_its_own_bucket(clock: FakeClock) -> None:
    """One caller's empty bucket leaves another's full."""
    limiter = RateLimiter(rate=1, burst=2)
    assert _allowed(limiter, "alice", 5) == 2
    assert _allowed(limiter, "bob", 5) == 2
    assert _allowed(limiter, "client:10.0.0.1", 5) == 2


def test_rate_zero_means_unlimited(clock: FakeClock) -> None:
    """`rate_limit_per_s = 0` turns the limit off, whatever the burst."""
    limiter = RateLimiter(rate=0, burst=1)
    assert _allowed(limiter, "alice", 1000) == 1000


def test_refilled_buckets_are_forgotten_when_too_many_are_tracked(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded: full buckets hold no state and are dropped first."""
    monkeypatch.setattr(ratelimit, "MAX_TRACKED", 3)
    limiter = RateLimiter(rate=1, burst=2)
    for key in ("a", "b", "c"):
        limiter.take(key)
    clock.advance(1.5)
    limiter.take("c")
    clock.advance(1.0)  # a and b idle for 2.5 s: full again (2 tokens at 1/s); c is not
    limiter.take("d")
    assert set(limiter._buckets) == {"c", "d"}
    # the forgotten keys start again with a full bucket: nothing was lost
    assert _allowed(limiter, "a", 5) == 2


def test_the_real_clock_refills_the_bucket() -> None:
    """Without any fake clock: refused at once, allowed a moment later."""
    limiter = RateLimiter(rate=20, burst=1)
    limiter.take("alice")
    with pytest.raises(RateLimitedError):
        limiter.take("alice")
    time.sleep(0.06)
    limiter.take("alice")


def test_concurrent_callers_share_one_bucket_exactly(clock: FakeClock) -> None:
    """Under contention the bucket gives exactly its burst, no more."""
    limiter = RateLimiter(rate=1, burst=100)
    allowed: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        allowed.append(_allowed(limiter, "alice", 50))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 100
