"""The shared rate limiter and the retry policy, on a real Redis."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis

from connector.crm.limits import RetryPolicy, SlidingWindowLimiter, call_with_retry
from connector.errors import RetryLater, StopSync


def _grab(url: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    limiter = SlidingWindowLimiter(redis.Redis.from_url(url), "rl:test", limit=10, window=1.0, margin=0.0)
    stamps = []
    for _ in range(n):
        limiter.acquire()
        stamps.append(time.time())
    out.put(stamps)


def test_four_processes_sharing_a_limiter_never_exceed_it_in_any_window(redis_url: str) -> None:
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_grab, args=(redis_url, 8, out)) for _ in range(4)]
    for p in procs:
        p.start()
    stamps = sorted(s for _ in procs for s in out.get(timeout=30))
    for p in procs:
        p.join(10)
    assert len(stamps) == 32
    # any 11 consecutive grants span more than the window (small slack for clock reads)
    for i in range(len(stamps) - 10):
        assert stamps[i + 10] - stamps[i] > 0.95


def test_a_used_up_daily_budget_stops_instead_of_waiting(redis_client: redis.Redis) -> None:
    limiter = SlidingWindowLimiter(redis_client, "rl:daily", limit=100, window=10, daily_limit=3)
    for _ in range(3):
        limiter.acquire()
    with pytest.raises(StopSync, match="daily API budget of 3 calls"):
        limiter.acquire()


def test_block_for_holds_every_caller_back(redis_client: redis.Redis) -> None:
    limiter = SlidingWindowLimiter(redis_client, "rl:block", limit=5, window=1.0, margin=0.0)
    limiter.block_for(0.5)
    waits: list[float] = []
    limiter.acquire(sleep=waits.append)
    assert sum(waits) >= 0.4


def test_retry_honours_the_servers_wait_and_gives_up_after_the_cap() -> None:
    slept: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        raise RetryLater("429", wait=2.0, status=429)

    with pytest.raises(RetryLater):
        call_with_retry(flaky, RetryPolicy(attempts=3, total_seconds=60), sleep=slept.append)
    assert calls == 3
    assert all(2.0 <= s <= 2.25 for s in slept)


def test_retry_returns_once_the_call_succeeds() -> None:
    attempts = iter([RetryLater("500"), RetryLater("timeout"), "ok"])

    def sometimes() -> str:
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    assert call_with_retry(sometimes, sleep=lambda s: None) == "ok"


def test_a_shorter_block_never_shortens_a_longer_one(redis_client: redis.Redis) -> None:
    limiter = SlidingWindowLimiter(redis_client, "rl:blocks", limit=3, window=1.0, margin=0.0)
    limiter.block_for(0.6)
    limiter.block_for(0.1)
    waits: list[float] = []
    limiter.acquire(sleep=waits.append)
    assert sum(waits) >= 0.5
