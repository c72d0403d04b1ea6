"""Quotas shared by every worker, and the one retry policy.

`SlidingWindowLimiter` is an exact rolling window kept in Redis (a sorted set
of grant times, trimmed and checked in one Lua script, on Redis's own clock),
so any number of worker processes on any number of machines together stay
under an account-wide limit. Celery's own `rate_limit` counts per worker
process and cannot do this.

`call_with_retry` is the single retry policy: `RetryLater` (429, 5xx,
timeouts, connection errors, as the adapters classify them) is retried with
exponential backoff and full jitter, honouring the server's own wait when it
gives one, capped in attempts and in total time. Everything else propagates at
once.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from connector.errors import RetryLater, StopSync
from connector.redisutil import text as redis_text

T = TypeVar("T")

# KEYS[1] the window's sorted set, KEYS[2] the daily counter (may be "").
# ARGV: limit, window_ms, member, daily_limit (0 = none), daily_ttl_s
# Returns {granted (1/0), wait_ms, reason}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local daily_limit = tonumber(ARGV[4])
if daily_limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= daily_limit then
    return {0, redis.call('PTTL', KEYS[2]), 'daily'}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  if daily_limit > 0 then
    local v = redis.call('INCR', KEYS[2])
    if v == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5])) end
  end
  return {1, 0, 'ok'}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
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


@dataclass
class SlidingWindowLimiter:
    """At most `limit` grants in any `window` seconds, across all processes sharing `key`.

    `margin` widens the window a little so that requests granted just inside
    it do not reach the server just inside its own window after uneven
    network delay.
    """

    client: redis.Redis
    key: str
    limit: int
    window: float
    daily_limit: int = 0
    margin: float = 0.1
    max_wait: float = 120.0

    def __post_init__(self) -> None:
        self._acquire = self.client.register_script(_ACQUIRE)
        self._block = self.client.register_script(_BLOCK)

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> float:
        """Block until a slot is granted; returns the seconds waited.

        Raises StopSync when the daily budget is used up (waiting would take hours).
        """
        waited = 0.0
        window_ms = int((self.window + self.margin) * 1000)
        daily_key = f"{self.key}:daily"
        while True:
            granted, wait_ms, reason = self._acquire(
                keys=[self.key, daily_key],
                args=[self.limit, window_ms, uuid.uuid4().hex, self.daily_limit, seconds_to_utc_midnight()],
            )
            if int(granted):
                return waited
            reason_s = redis_text(reason)
            if reason_s == "daily":
                resume = time.time() + max(0, int(wait_ms)) / 1000
                raise StopSync(
                    f"the daily API budget of {self.daily_limit} calls for {self.key} is used up; "
                    f"syncing resumes after the daily reset at "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(resume))}",
                    resume_at=resume,
                )
            pause = min(int(wait_ms) / 1000 + random.uniform(0, 0.02), self.max_wait)
            sleep(pause)
            waited += pause

    def block_for(self, seconds: float) -> None:
        """Grant nothing to anyone for `seconds` (the server told us to wait)."""
        window_ms = int((self.window + self.margin) * 1000)
        self._block(keys=[self.key], args=[self.limit, int(seconds * 1000), window_ms])

    def used_today(self) -> int:
        value = self.client.get(f"{self.key}:daily")
        return int(value) if value is not None else 0


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


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run fn, retrying RetryLater per the policy; the last RetryLater propagates when exhausted."""
    retrying = Retrying(
        retry=retry_if_exception_type(RetryLater),
        wait=_wait(policy),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_seconds),
        sleep=sleep,
        reraise=True,
    )
    return retrying(fn)
