"""The shared rate limiter and the retry policy, on a real Redis."""

from __future__ import annotations

import gc
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import pytest
import redis

from connector.crm import limits
from connector.crm.limits import (
    RetryPolicy,
    SlidingWindowLimiter,
    bulk_calls,
    bulk_keeps_free,
    call_with_retry,
    day_in,
    keeping_priority,
)
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


def test_the_daily_budget_follows_the_accounts_own_day_and_asks_for_it_only_near_the_end(
    redis_client: redis.Redis,
) -> None:
    new_york = ZoneInfo("America/New_York")
    asked: list[float] = []

    def portal_day(now: float) -> tuple[float, float]:
        asked.append(now)  # in the adapter: one call to the account details API
        return day_in(new_york)(now)

    limiter = SlidingWindowLimiter(redis_client, "rl:ny", limit=100, window=10, daily_limit=20, day=portal_day,
                                   zone=new_york)  # fmt: skip
    for _ in range(17):
        limiter.acquire()
    assert asked == []  # far from the budget, nobody needs to know when the day ends
    for _ in range(3):
        limiter.acquire()
    assert len(asked) == 1  # near it, once
    with pytest.raises(StopSync) as info:
        limiter.acquire()
    midnight = day_in(new_york)(time.time())[1]
    assert info.value.resume_at == pytest.approx(midnight, abs=5)
    assert "daily API budget of 20 calls" in str(info.value)
    assert "00:00 America/New_York" in str(info.value)
    assert limiter.used_today() == 20

    # the same grants seen by an account whose day began after them: its budget is whole again
    later = SlidingWindowLimiter(redis_client, "rl:ny", limit=100, window=10, daily_limit=20,
                                 day=lambda now: (now + 3600, now + 90_000))  # fmt: skip
    for _ in range(19):
        later.acquire()  # no StopSync: none of the 20 grants above fall in this new day


def test_the_servers_word_that_the_day_is_over_stops_every_caller_until_then(redis_client: redis.Redis) -> None:
    limiter = SlidingWindowLimiter(redis_client, "rl:stop", limit=100, window=10)
    other = SlidingWindowLimiter(redis_client, "rl:stop", limit=100, window=10)
    limiter.stop_until(time.time() + 3600)
    with pytest.raises(StopSync, match="the server said the daily API limit") as info:
        other.acquire()
    assert info.value.resume_at == pytest.approx(time.time() + 3600, abs=5)
    other.acquire(count_daily=False)  # what finds out when the day ends still goes through


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


def test_a_retried_call_leaves_no_garbage_for_the_collector() -> None:
    """Every CRM call goes through call_with_retry: a reference cycle left by each (tenacity's state on
    its Retrying) waited for a full collection and added to a worker's peak memory as it held more."""

    def succeed() -> str:
        return "ok"

    calls = iter(range(1_000))

    def fail_every_other() -> str:
        if next(calls) % 2 == 0:
            raise RetryLater("503")
        return "ok"

    call_with_retry(succeed)  # tenacity's own first-use objects are not the calls' garbage
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(50):
            assert call_with_retry(succeed) == "ok"
            assert call_with_retry(fail_every_other, sleep=lambda s: None) == "ok"
        gc.collect()
        # tenacity's objects only: another thread of this test process may leave garbage of its own
        left = [type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("tenacity")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert left == []


def test_a_shorter_block_never_shortens_a_longer_one(redis_client: redis.Redis) -> None:
    limiter = SlidingWindowLimiter(redis_client, "rl:blocks", limit=3, window=1.0, margin=0.0)
    limiter.block_for(0.6)
    limiter.block_for(0.1)
    waits: list[float] = []
    limiter.acquire(sleep=waits.append)
    assert sum(waits) >= 0.5


def no_waiting(seconds: float) -> None:
    raise TimeoutError(f"asked to wait {seconds:.2f} s")


def test_bulk_work_leaves_the_last_slots_of_a_window_to_real_time_work_while_there_is_some(
    redis_client: redis.Redis,
) -> None:
    # two workers of one portal: one on a sync page (bulk), one rescoring webhooks' contacts
    sync = SlidingWindowLimiter(redis_client, "rl:shared", limit=100, window=10, margin=0.0)
    webhook = SlidingWindowLimiter(redis_client, "rl:shared", limit=100, window=10, margin=0.0)
    free = bulk_keeps_free(100)
    assert free >= 1
    webhook.acquire(sleep=no_waiting)  # a rescore a moment ago: real-time work is about

    with bulk_calls():
        for _ in range(100 - free - 1):
            sync.acquire(sleep=no_waiting)
        with pytest.raises(TimeoutError):
            sync.acquire(sleep=no_waiting)  # the sync waits for the window to move on...
        # ...also on its adapter's pool threads
        with ThreadPoolExecutor(1) as pool, pytest.raises(TimeoutError):
            list(pool.map(keeping_priority(lambda _: sync.acquire(sleep=no_waiting)), [0]))
    for _ in range(free):
        assert webhook.acquire(sleep=no_waiting) == 0.0  # ...while a webhook's rescore goes ahead at once
    with pytest.raises(TimeoutError):
        webhook.acquire(sleep=no_waiting)  # the window's limit holds for everyone


def test_with_no_real_time_work_about_a_sync_takes_the_whole_window(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "REALTIME_RECENT_S", 1.0)
    free = bulk_keeps_free(100)
    # a nightly sync, no webhook about: every slot of the window
    alone = SlidingWindowLimiter(redis_client, "rl:alone", limit=100, window=10, margin=0.0)
    with bulk_calls():
        for _ in range(100):
            alone.acquire(sleep=no_waiting)
        with pytest.raises(TimeoutError):
            alone.acquire(sleep=no_waiting)

    # a webhook's rescore comes: the last slots are left to real-time work...
    sync = SlidingWindowLimiter(redis_client, "rl:then", limit=100, window=10, margin=0.0)
    webhook = SlidingWindowLimiter(redis_client, "rl:then", limit=100, window=10, margin=0.0)
    webhook.acquire(sleep=no_waiting)
    with bulk_calls():
        for _ in range(100 - free - 1):
            sync.acquire(sleep=no_waiting)
        with pytest.raises(TimeoutError):
            sync.acquire(sleep=no_waiting)
        time.sleep(1.1)
        for _ in range(free):
            sync.acquire(sleep=no_waiting)  # ...until REALTIME_RECENT_S after the last of it
        with pytest.raises(TimeoutError):
            sync.acquire(sleep=no_waiting)  # the window's limit itself holds


def test_bulk_work_takes_no_slot_while_real_time_work_waits_for_one(redis_client: redis.Redis) -> None:
    sync = SlidingWindowLimiter(redis_client, "rl:waiting", limit=5, window=1.0, margin=0.0)
    webhook = SlidingWindowLimiter(redis_client, "rl:waiting", limit=5, window=1.0, margin=0.0)
    assert bulk_keeps_free(5) == 0  # so only the waiting rule holds the sync back below

    held_back: list[bool] = []

    def webhook_waits(seconds: float) -> None:
        time.sleep(seconds)  # slots of the window come free...
        with bulk_calls():
            try:
                sync.acquire(sleep=no_waiting)
                held_back.append(False)
            except TimeoutError:
                held_back.append(True)  # ...but not for the sync while the webhook's rescore waits

    for _ in range(5):
        webhook.acquire(sleep=no_waiting)
    webhook.acquire(sleep=webhook_waits)  # the window is full: it waits, then gets its slot
    assert held_back
    assert all(held_back)
    with bulk_calls():
        assert sync.acquire(sleep=no_waiting) == 0.0  # nobody waits any more: the sync goes on
