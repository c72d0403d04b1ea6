"""Sync runs, cursors and locks, kept in Redis so every worker sees the same.

A run is one sync of one CRM account. It walks each stream page by page; each
page is a Celery task that enqueues the next page before it processes its own,
so workers process pages in parallel. Bookkeeping is idempotent, because a
page task may run more than once (a killed worker's task is delivered again):

- a page is counted once: its counters are added in the same Lua call that sets
  its done marker, and only if the marker was not set;
- the next page is enqueued once per page (a marker set with NX);
- the run finishes when its count of unfinished pages reaches zero, and only
  the call that brought it to zero saves the cursors and releases the lock;
- the incremental cursor of a stream moves only past records that were written,
  settled (unchanged, refused for good) or kept in the retry set (connector/retry.py):
  a page whose processing keeps failing hands its records (held here, by id, while
  its task retries) to the retry set and counts as deferred, not failed; a page
  that cannot be read leaves the pages after it unread, so only a stream read in
  order of modification moves its cursor then; a run stopped by StopSync moves none.

Only ids and counts are kept: no names or e-mail addresses.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from connector.redisutil import UNLOCK
from connector.redisutil import text as _s

COUNTERS: tuple[str, ...] = (
    "read",
    "scored",
    "written",
    "unchanged",
    "failed",
    "hot",
    "assigned",
    "api_calls",
    "retrying",  # records not written this time, kept in the retry set
    "retried",  # records of the retry set this run took up again
)

# KEYS: done marker, run hash, failures list, high-water zset
# ARGV: ttl, stream, high_water ('' for none), ok ('1'/'0'), then counter name/value pairs, then '--', failures
_FINISH_PAGE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return -1
end
local i = 5
while ARGV[i] ~= '--' do
  redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1]))
  i = i + 2
end
i = i + 1
while ARGV[i] ~= nil do
  redis.call('RPUSH', KEYS[3], ARGV[i])
  i = i + 1
end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[1]))
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[4], 'GT', tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[1]))
end
redis.call('HINCRBY', KEYS[2], 'pages_done', 1)
if ARGV[4] ~= '1' then
  redis.call('HINCRBY', KEYS[2], 'pages_failed', 1)
end
return redis.call('HINCRBY', KEYS[2], 'pending', -1)
"""

# KEYS: next marker, run hash. Counts a page as pending once.
_ADD_PAGE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'pending', 1)
redis.call('HINCRBY', KEYS[2], 'pages_total', 1)
return 1
"""


RUN_TTL = 7 * 86400
LOCK_TTL = 900  # refreshed by every page; a run whose workers all died frees its account after this


def page_key(stream: str, cursor: str | None) -> str:
    return hashlib.sha1(f"{stream}\x00{cursor or ''}".encode(), usedforsecurity=False).hexdigest()[:20]


@dataclass
class PageResult:
    """What one page did, for the run's counters and its failure list."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    failures: list[str] = field(default_factory=list)  # "crm:Type:id: why"
    high_water: float | None = None

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


@dataclass(frozen=True)
class RunView:
    id: str
    fields: Mapping[str, str]
    failures: list[str]

    def count(self, name: str) -> int:
        return int(self.fields.get(name, "0") or 0)

    @property
    def status(self) -> str:
        return self.fields.get("status", "unknown")

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "skipped")


class RunStore:
    def __init__(self, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.r = client
        self.ns = namespace
        self._finish = client.register_script(_FINISH_PAGE)
        self._add = client.register_script(_ADD_PAGE)
        self._release = client.register_script(UNLOCK)  # release the lock only if we hold it

    # keys
    def _run(self, run_id: str) -> str:
        return f"{self.ns}:run:{run_id}"

    def _lock(self, crm: str) -> str:
        return f"{self.ns}:lock:sync:{crm}"

    def _cursor(self, crm: str, stream: str) -> str:
        return f"{self.ns}:cursor:{crm}:{stream}"

    # runs
    def new_run(self, crm: str, mode: str, streams: tuple[str, ...], now: float | None = None) -> str:
        run_id = f"{crm}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        self.r.hset(
            self._run(run_id),
            mapping={
                "crm": crm,
                "mode": mode,
                "streams": ",".join(streams),
                "status": "queued",
                "created": f"{time.time() if now is None else now:.3f}",
                "pending": 0,
                "pages_total": 0,
                "pages_done": 0,
                "pages_failed": 0,
                "pages_deferred": 0,
                **dict.fromkeys(COUNTERS, 0),
            },
        )
        self.r.expire(self._run(run_id), RUN_TTL)
        self.r.lpush(f"{self.ns}:runs:{crm}", run_id)
        self.r.ltrim(f"{self.ns}:runs:{crm}", 0, 49)
        return run_id

    def set(self, run_id: str, **values: str | float | int) -> None:
        self.r.hset(self._run(run_id), mapping={k: str(v) for k, v in values.items()})

    def get(self, run_id: str) -> RunView | None:
        raw: dict[Any, Any] = self.r.hgetall(self._run(run_id))  # type: ignore[assignment]
        if not raw:
            return None
        fields = {_s(k): _s(v) for k, v in raw.items()}
        failures = [_s(x) for x in self.r.lrange(f"{self._run(run_id)}:failures", 0, 999)]  # type: ignore[union-attr]
        return RunView(run_id, fields, failures)

    def status(self, run_id: str) -> str | None:
        """The run's status alone (a page checks it before working; no need for the failure list)."""
        value = self.r.hget(self._run(run_id), "status")
        return _s(value) if value is not None else None

    def recent(self, crm: str, n: int = 10) -> list[str]:
        return [_s(x) for x in self.r.lrange(f"{self.ns}:runs:{crm}", 0, n - 1)]  # type: ignore[union-attr]

    def add_page(self, run_id: str, stream: str, cursor: str | None) -> bool:
        """Count a page as pending, once. False when it was already counted (a redelivered task)."""
        marker = f"{self._run(run_id)}:next:{page_key(stream, cursor)}"
        return bool(self._add(keys=[marker, self._run(run_id)], args=[RUN_TTL]))

    def page_done(self, run_id: str, stream: str, cursor: str | None) -> bool:
        return bool(self.r.exists(f"{self._run(run_id)}:done:{page_key(stream, cursor)}"))

    def finish_page(
        self, run_id: str, stream: str, cursor: str | None, result: PageResult, ok: bool = True
    ) -> int | None:
        """Record a page's outcome once. Returns the pages still pending, or None if already recorded."""
        args: list[str | int | float] = [
            RUN_TTL,
            stream,
            "" if result.high_water is None else repr(result.high_water),
            "1" if ok else "0",
        ]
        for name, n in result.counts.items():
            if n:
                args += [name, n]
        args.append("--")
        args += result.failures[:500]
        base = self._run(run_id)
        left = int(
            self._finish(
                keys=[f"{base}:done:{page_key(stream, cursor)}", base, f"{base}:failures", f"{base}:hw"],
                args=args,
            )
        )
        return None if left < 0 else left

    def hold(self, run_id: str, stream: str, cursor: str | None, ids: list[str]) -> None:
        """Remember a page's record ids while its processing fails and its task retries."""
        if ids:
            key = f"{self._run(run_id)}:held:{page_key(stream, cursor)}"
            pipe = self.r.pipeline(transaction=True)
            pipe.sadd(key, *ids)
            pipe.expire(key, RUN_TTL)
            pipe.execute()

    def take_held(self, run_id: str, stream: str, cursor: str | None) -> list[str]:
        """The ids `hold` kept for a page (empty when the page was never read), removed."""
        key = f"{self._run(run_id)}:held:{page_key(stream, cursor)}"
        pipe = self.r.pipeline(transaction=True)
        pipe.smembers(key)
        pipe.delete(key)
        members, _ = pipe.execute()
        return sorted(_s(m) for m in members)

    def high_waters(self, run_id: str) -> dict[str, float]:
        raw: list[tuple[Any, float]] = self.r.zrange(  # type: ignore[assignment]
            f"{self._run(run_id)}:hw", 0, -1, withscores=True
        )
        return {_s(k): float(v) for k, v in raw}

    # cursors
    def cursor(self, crm: str, stream: str) -> float | None:
        value = self.r.get(self._cursor(crm, stream))
        return float(_s(value)) if value is not None else None

    def save_cursor(self, crm: str, stream: str, value: float) -> None:
        self.r.set(self._cursor(crm, stream), repr(value))

    # locks
    def try_lock(self, crm: str, run_id: str) -> str | None:
        """Take the account's sync lock. Returns None when taken, else the run holding it."""
        if self.r.set(self._lock(crm), run_id, nx=True, ex=LOCK_TTL):
            return None
        holder = self.r.get(self._lock(crm))
        return _s(holder) if holder is not None else self.try_lock(crm, run_id)

    def refresh_lock(self, crm: str, run_id: str) -> None:
        if _s(self.r.get(self._lock(crm)) or b"") == run_id:
            self.r.expire(self._lock(crm), LOCK_TTL)

    def release_lock(self, crm: str, run_id: str) -> None:
        self._release(keys=[self._lock(crm)], args=[run_id])

    def lock_holder(self, crm: str) -> str | None:
        value = self.r.get(self._lock(crm))
        return _s(value) if value is not None else None


