"""Quotas shared by every worker, and the one retry policy.

`SlidingWindowLimiter` is an exact rolling window kept in Redis (a sorted set
of grant times, trimmed and checked in one Lua script, on Redis's own clock),
so any number of worker processes on any number of machines together stay
under an account-wide limit. Celery's own `rate_limit` counts per worker
process and cannot do this.

Real-time work goes first. Bulk work (sync pages, the periodic retry: code run
inside `bulk_calls()`) takes no slot while a real-time caller (a webhook's
rescore) waits for one, and, while real-time work has been seen in the last
`REALTIME_RECENT_S`, never takes the last `BULK_LEAVES_FREE` of a window, so a
rescore is not queued behind a sync that keeps the window full. With no
real-time work about (a nightly sync, a portal without webhooks) a sync takes
the whole window.

`call_with_retry` is the single retry policy: `RetryLater` (429, 5xx,
timeouts, connection errors, as the adapters classify them) is retried with
exponential backoff and full jitter, honouring the server's own wait when it
gives one, capped in attempts and in total time. Everything else propagates at
once.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import redis
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from connector.errors import RetryLater, StopSync
from connector.redisutil import text as redis_text

T = TypeVar("T")
A = TypeVar("A")
P = ParamSpec("P")

# The share of a window that bulk work leaves to real-time work. A webhook's rescore is about a dozen
# calls, one after another (read, activities, write, routing). At HubSpot Professional's 190 requests per
# 10 s with full syncs keeping the window full (bench/realtime.py --with-sync full, 30 changes), from a
# change to the rep's task took p50 2.6 s, p95 5.7 s with the window served first come, first served;
# p50 0.8 s, p95 3.0 s with this priority. With 5 % (9 of the connector's 187) a rescore finds its first
# slots free at once; for the rest, bulk callers step back while it waits (REALTIME_WAITER_MS). The share
# is left free only while real-time work is about (REALTIME_RECENT_S): a sync alone takes the whole window.
BULK_LEAVES_FREE = 0.05
# How long after a real-time caller's last grant bulk work still leaves BULK_LEAVES_FREE to real-time work.
# A portal whose webhooks come more often than this keeps the share free all the time; the first
# real-time call after a quiet spell finds the window full and takes the slots as they come free, bulk
# work stepping back while it waits (at 187 per 10 s, a slot every 50-60 ms in a window kept full).
REALTIME_RECENT_S = 600
# How long past its expected wake-up a waiting real-time caller still holds bulk callers back (one that
# died or gave up stops holding them back this long after), and how often a held-back bulk caller looks again.
REALTIME_WAITER_MS = 500
BULK_RECHECK_MS = 50

_bulk: contextvars.ContextVar[bool] = contextvars.ContextVar("leadscore_bulk_calls", default=False)


@contextlib.contextmanager
def bulk_calls() -> Iterator[None]:
    """Calls made inside are bulk work: they leave the last BULK_LEAVES_FREE of each window to real-time
    work while there is some about (REALTIME_RECENT_S), and take no slot while a real-time caller waits."""
    token = _bulk.set(True)
    try:
        yield
    finally:
        _bulk.reset(token)


def bulk_work(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn`'s calls are bulk work (as if run inside `bulk_calls()`)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with bulk_calls():
            return fn(*args, **kwargs)

    return run


def in_bulk() -> bool:
    """Whether the calls made here are bulk work (inside `bulk_calls()`); else real-time work."""
    return _bulk.get()


def keeping_priority(fn: Callable[[A], T]) -> Callable[[A], T]:
    """`fn` run on another thread (a pool) with the caller's priority: bulk when the caller's calls are."""
    bulk = _bulk.get()

    def run(arg: A) -> T:
        token = _bulk.set(bulk)
        try:
            return fn(arg)
        finally:
            _bulk.reset(token)

    return run


def bulk_keeps_free(limit: int) -> int:
    """Slots of a window of `limit` that bulk work may not take."""
    return int(limit * BULK_LEAVES_FREE)


# KEYS[1] the window's sorted set, KEYS[2] the daily counts (a hash: hour number -> grants in that
# hour), KEYS[3] the stop mark (set until the day's end when the server said the day's budget is gone),
# KEYS[4] the real-time callers waiting for a slot (a sorted set: caller -> until when it holds bulk back),
# KEYS[5] set for recent_ms after each real-time grant (while it is set, bulk work leaves keep_free slots).
# ARGV: limit, window_ms, member, daily_limit (0 = no budget of our own), count_daily (1/0),
#       since_hour (the hour number of the account's last midnight; -1 = not known yet),
#       day_left_ms (until the account's next midnight, with since_hour),
#       keep_free (slots of the window a bulk caller may not take while KEYS[5] is set: left to
#       real-time work), bulk (1/0: a bulk caller takes no slot while a real-time caller waits; a
#       real-time caller that must wait says so in KEYS[4] until its wait plus waiter_ms), waiter_ms,
#       recheck_ms, recent_ms
# ARGV[3] names the caller: the same for every try of one acquire.
# Returns {granted (1/0), wait_ms, reason}; reason 'day?' asks for since_hour (only when the grants of
# the last 25 hours, an upper bound of today's, reach 90% of the budget: the account's day is needed
# rarely, and is known before the budget runs out).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local daily_limit = tonumber(ARGV[4])
local count_daily = tonumber(ARGV[5]) == 1
local hour = math.floor(now / 3600000)
if count_daily then
  local stopped = redis.call('PTTL', KEYS[3])
  if stopped > 0 then
    return {0, stopped, 'daily'}
  end
end
if count_daily and daily_limit > 0 then
  local since_hour = tonumber(ARGV[6])
  local counts = redis.call('HGETALL', KEYS[2])
  local recent, today = 0, 0
  for i = 1, #counts, 2 do
    local h = tonumber(counts[i])
    local c = tonumber(counts[i + 1])
    if h < hour - 26 then
      redis.call('HDEL', KEYS[2], counts[i])
    else
      if h >= hour - 24 then recent = recent + c end
      if since_hour >= 0 and h >= since_hour then today = today + c end
    end
  end
  if since_hour < 0 and recent * 10 >= daily_limit * 9 then return {0, 0, 'day?'} end
  if since_hour >= 0 and today >= daily_limit then return {0, tonumber(ARGV[7]), 'daily'} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local allowed = limit
local bulk = tonumber(ARGV[9]) == 1
if bulk then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) > 0 then
    return {0, tonumber(ARGV[11]), 'realtime'}
  end
  if redis.call('EXISTS', KEYS[5]) == 1 then allowed = limit - tonumber(ARGV[8]) end
end
if n < allowed then
  if not bulk then
    redis.call('ZREM', KEYS[4], ARGV[3])
    redis.call('SET', KEYS[5], '1', 'PX', tonumber(ARGV[12]))
  end
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  if count_daily and daily_limit > 0 then
    redis.call('HINCRBY', KEYS[2], hour, 1)
    redis.call('EXPIRE', KEYS[2], 100000)
  end
  return {1, 0, 'ok'}
end
-- the grant whose end brings the window under `allowed` again
local first = math.max(0, n - allowed)
local oldest = redis.call('ZRANGE', KEYS[1], first, first, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
if not bulk then
  redis.call('ZADD', KEYS[4], now + wait + tonumber(ARGV[10]), ARGV[3])
  redis.call('PEXPIRE', KEYS[4], wait + tonumber(ARGV[10]) + 1000)
end
return {0, wait, 'window'}
"""

# Fill the window so that no more grants happen until `ARGV[2]` ms from now
# (used when the server says we are over its limit although we thought not,
# e.g. another integration shares the account).
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local until_ms = now + tonumber(ARGV[2])
local base = until_ms - window
for i = 1, limit do
  -- GT: a shorter block never shortens a longer one already in place
  redis.call('ZADD', KEYS[1], 'GT', base, 'block:' .. i)
end
redis.call('PEXPIRE', KEYS[1], window + tonumber(ARGV[2]))
return 1
"""


def seconds_to_utc_midnight(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, int(86400 - (now % 86400)))


# A calendar day of an account: now (epoch seconds) -> (when the day began, when it ends), epoch seconds.
DayOf = Callable[[float], tuple[float, float]]


def utc_day(now: float) -> tuple[float, float]:
    start = now - now % 86400
    return start, start + 86400


def day_in(zone: dt.tzinfo) -> DayOf:
    """Days that end at midnight in `zone` (a HubSpot portal's daily limit resets at the portal's midnight)."""

    def day(now: float) -> tuple[float, float]:
        local = dt.datetime.fromtimestamp(now, zone).date()
        start = dt.datetime.combine(local, dt.time(0), tzinfo=zone).timestamp()
        end = dt.datetime.combine(local + dt.timedelta(days=1), dt.time(0), tzinfo=zone).timestamp()
        return min(start, now), max(end, now + 1)

    return day


def reset_words(at: float, zone: dt.tzinfo | None) -> str:
    """'2026-12-04 00:00 America/New_York (05:00 UTC)': a reset time as an admin reads it."""
    at = round(at / 60) * 60  # to the minute: a reset computed a few milliseconds early still reads 00:00
    utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
    if zone is None or zone == dt.UTC:
        return utc
    local = dt.datetime.fromtimestamp(at, zone)
    return f"{local:%Y-%m-%d %H:%M} {zone} ({time.strftime('%H:%M UTC', time.gmtime(at))})"


@dataclass
class SlidingWindowLimiter:
    """At most `limit` grants in any `window` seconds, across all processes sharing `key`.

    `margin` widens the window a little so that requests granted just inside
    it do not reach the server just inside its own window after uneven
    network delay.

    With `daily_limit`, at most that many grants per calendar day of the
    account, whose days `day` tells (UTC unless the account says otherwise:
    a HubSpot portal's day ends at midnight in its own time zone). Grants are
    counted per hour; `day` is asked only once the grants of the last 25 hours
    reach the budget, so an account whose day must be looked up (an API call)
    is looked up when it matters, not on every worker's start. In a zone whose
    midnight is not on the hour, the hour holding midnight counts whole toward
    the new day (a few calls early, never late). `stop_until` holds every caller
    back until the day ends, when the server said the day's budget is gone
    although our own count did not.
    """

    client: redis.Redis
    key: str
    limit: int
    window: float
    daily_limit: int = 0
    margin: float = 0.1
    max_wait: float = 120.0
    day: DayOf = utc_day
    zone: dt.tzinfo | None = None  # the zone `day` follows, for messages

    def __post_init__(self) -> None:
        self._acquire = self.client.register_script(_ACQUIRE)
        self._block = self.client.register_script(_BLOCK)
        self._today: tuple[float, float] | None = None  # the account's current day, once asked

    def _day_args(self, now: float, ask: bool) -> tuple[int, int]:
        """(since_hour, ms left in the day) for the script; (-1, 0) while the day need not be known."""
        known = self._today
        if known is None or now >= known[1]:
            if not ask:
                return -1, 0
            known = self._today = self.day(now)
        return int(known[0] // 3600), max(1, int((known[1] - now) * 1000))

    @property
    def _stop_key(self) -> str:
        return f"{self.key}:daily-stop"

    @property
    def _waiting_key(self) -> str:
        return f"{self.key}:realtime-waiting"

    @property
    def _realtime_seen_key(self) -> str:
        return f"{self.key}:realtime-seen"

    @property
    def _daily_key(self) -> str:
        return f"{self.key}:daily-hours"

    def acquire(self, sleep: Callable[[float], None] = time.sleep, *, count_daily: bool = True) -> float:
        """Block until a slot is granted; returns the seconds waited.

        Raises StopSync when the day's budget is used up (waiting would take hours).
        count_daily=False: a call that is not counted against the day (finding out when the day ends).
        Inside `bulk_calls()`, no slot is granted while a caller outside it waits for one, nor the
        last BULK_LEAVES_FREE of the window while one was granted a slot in the last REALTIME_RECENT_S.
        """
        waited = 0.0
        bulk = _bulk.get()
        caller = uuid.uuid4().hex
        window_ms = int((self.window + self.margin) * 1000)
        ask = False
        while True:
            since_hour, left_ms = self._day_args(time.time(), ask) if count_daily and self.daily_limit else (-1, 0)
            granted, wait_ms, reason = self._acquire(
                keys=[self.key, self._daily_key, self._stop_key, self._waiting_key, self._realtime_seen_key],
                args=[self.limit, window_ms, caller, self.daily_limit, 1 if count_daily else 0,
                      since_hour, left_ms, bulk_keeps_free(self.limit) if bulk else 0, 1 if bulk else 0,
                      REALTIME_WAITER_MS, BULK_RECHECK_MS, int(REALTIME_RECENT_S * 1000)],
            )  # fmt: skip
            if int(granted):
                return waited
            reason_s = redis_text(reason)
            if reason_s == "day?":
                ask = True
                continue
            if reason_s == "daily":
                resume = time.time() + max(1, int(wait_ms)) / 1000
                if self._today is not None and abs(resume - self._today[1]) < 5:
                    resume = self._today[1]  # the day's end itself, not a millisecond before it
                ours = self.daily_limit > 0 and since_hour >= 0
                budget = (
                    f"the daily API budget of {self.daily_limit} calls for {self.key} is used up" if ours
                    else f"the server said the daily API limit for {self.key} is used up"
                )  # fmt: skip
                raise StopSync(
                    f"{budget}; syncing resumes after the daily reset at {reset_words(resume, self.zone)}",
                    resume_at=resume,
                )
            pause = min(int(wait_ms) / 1000 + random.uniform(0, 0.02), self.max_wait)
            sleep(pause)
            waited += pause

    def stop_until(self, resume: float) -> None:
        """Grant nothing to anyone until `resume` (the server said the day's budget is gone)."""
        self.client.set(self._stop_key, "1", px=max(1, int((resume - time.time()) * 1000)))

    def block_for(self, seconds: float) -> None:
        """Grant nothing to anyone for `seconds` (the server told us to wait)."""
        window_ms = int((self.window + self.margin) * 1000)
        self._block(keys=[self.key], args=[self.limit, int(seconds * 1000), window_ms])

    def used_today(self) -> int:
        """Grants since the account's last midnight (asks `day`)."""
        since = int(self.day(time.time())[0] // 3600)
        counts = self.client.hgetall(self._daily_key)
        return sum(int(c) for h, c in counts.items() if int(h) >= since)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    total_seconds: float = 120.0
    base: float = 0.5
    cap: float = 30.0


DEFAULT_POLICY = RetryPolicy()


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = random.uniform(0, min(policy.cap, policy.base * 2 ** (state.attempt_number - 1)))
        if isinstance(exc, RetryLater) and exc.wait is not None:
            return min(policy.cap, exc.wait) + random.uniform(0, 0.25)
        return backoff

    return wait


# Built once: tenacity's condition holds a bound method of itself (a reference cycle), and it has no state.
_RETRY_LATER = retry_if_exception_type(RetryLater)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run fn, retrying RetryLater per the policy; the last RetryLater propagates when exhausted."""
    retrying = Retrying(
        retry=_RETRY_LATER,
        wait=_wait(policy),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_seconds),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    finally:
        # tenacity keeps a call's progress on the Retrying itself (in a thread-local IterState holding
        # bound methods of it): a reference cycle for every CRM call, which only the garbage collector
        # frees. Garbage that waits for a full collection builds up with what a worker holds (a full
        # collection comes once the long-lived objects grew by a quarter): emptied here, reference
        # counting frees it at once. Measured: 1.2 MB of a worker's peak RSS at 100,000 contacts.
        retrying.iter_state.reset()
