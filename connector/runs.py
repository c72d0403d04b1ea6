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
  order of modification moves its cursor then; a run stopped by StopSync moves none;
- a page lost with its worker is sent again within seconds, not after the
  broker's visibility timeout: every pending page has a claim in Redis, a lease
  (connector/leases.py) that whoever is responsible for the page keeps alive
  (see "Lost pages" below).

Lost pages. Each contacts page's successor is only known once the page is read,
so a page held by a dead worker stalls its whole stream until the broker hands
it out again (tasks/app.py: the visibility timeout, 600 s). Instead, a pending
page's claim says who answers for it, and runs out when nobody does:

    queued    set when the page is counted pending (before its message is sent); lives
              QUEUED_LEASE_S: a message waits in the queue a few seconds at most
    held      set by the worker that starts the page, renewed every RENEW_S while it works,
              runs out LEASE_S after the worker dies (kill -9, OOM, a lost machine)
    waiting   set when the page's task retries: lives its countdown + RETRY_GRACE_S
    resent    set when a lost page is sent again; lives QUEUED_LEASE_S like a queued one

`resend_lost` (each worker's watch thread, every few seconds, while that worker has
a free slot: tasks/app.py) finds the pending pages whose claim ran out and, in the
same Lua call, claims them as "resent", so with any number of workers each lost
page is sent again once per lease. This is safe because a page is idempotent (the
markers above): a duplicate that finds the page done, or held by a live worker,
does nothing. While every worker is busy (a first sync's read of the look-back's
web events on a big portal takes the better part of an hour), nobody looks: a page
waiting in the queue behind that work is not lost, and sending it again would only
queue a duplicate behind it.

Only ids and counts are kept: no names or e-mail addresses.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from connector import leases
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

# KEYS: run hash. ARGV: name, n, name, n, ... Adds to a run's counts while the run is kept (not
# recreating the hash of a run that has expired).
_ADD_COUNTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1]))
end
return 1
"""

# KEYS: next marker, run hash, pending pages hash, the page's claim.
# ARGV: ttl, page key, payload (what a task needs to run the page), queued lease in ms.
# Counts a page as pending once, and registers it with a "queued" claim (see "Lost pages").
_ADD_PAGE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'pending', 1)
redis.call('HINCRBY', KEYS[2], 'pages_total', 1)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[1]))
redis.call('SET', KEYS[4], 'queued', 'PX', tonumber(ARGV[4]))
return 1
"""

# KEYS: the page's claim, its done marker. ARGV: token, lease in ms.
# A worker takes a page unless it is done or another worker's lease on it is running.
_CLAIM_PAGE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 2) == 'h:' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""

# KEYS: pending pages hash, lost hash, run hash. ARGV: run key, now, resent lease in ms, lost since.
# Every pending page whose claim ran out is claimed "resent" and returned, once per lease, whoever asks.
_RESEND_LOST = """
local out = {}
local pages = redis.call('HGETALL', KEYS[1])
for i = 1, #pages, 2 do
  local pk = pages[i]
  local claim = ARGV[1] .. ':claim:' .. pk
  if redis.call('EXISTS', ARGV[1] .. ':done:' .. pk) == 1 then
    redis.call('HDEL', KEYS[1], pk)
    redis.call('HDEL', KEYS[2], pk)
    redis.call('DEL', claim)
  elseif redis.call('EXISTS', claim) == 0 then
    redis.call('SET', claim, 'resent:' .. ARGV[2], 'PX', tonumber(ARGV[3]))
    redis.call('HSETNX', KEYS[2], pk, ARGV[4])
    redis.call('EXPIRE', KEYS[2], 86400)
    redis.call('HINCRBY', KEYS[3], 'pages_resent', 1)
    table.insert(out, pages[i + 1])
  end
end
return out
"""


RUN_TTL = 7 * 86400
LOCK_TTL = 900  # refreshed by every page; a run whose workers all died frees its account after this
# A page whose message waits in the queue longer than this, unstarted, is sent again by a worker
# with a free slot. Pages wait seconds: each page enqueues one successor. A queue held up for longer
# by other work on every worker sends nothing (no worker has a free slot to look from).
QUEUED_LEASE_S = 60.0
# A retrying page's claim lives its countdown plus this: the worker holding the retry may be busy
# with another page when the countdown ends.
RETRY_GRACE_S = 30.0
# `sync --wait` says a page's worker is silent once its claim has not been renewed for this long.
SILENT_AFTER_S = 2 * leases.RENEW_S + 1


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
class LostPage:
    """A pending page whose claim ran out: what a task needs to run it again."""

    stream: str
    cursor: str | None
    since: float | None


@dataclass(frozen=True)
class Stall:
    """A stream waiting for one of its pages: `state` "silent" (its worker stopped renewing its claim,
    not yet given up) or "resent" (given up on and sent to another worker); `seconds` since the worker
    was last heard of, about."""

    stream: str
    state: str
    seconds: float


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
        self._add_counts = client.register_script(_ADD_COUNTS)
        self._claim = client.register_script(_CLAIM_PAGE)
        self._resend = client.register_script(_RESEND_LOST)
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

    def add_page(self, run_id: str, stream: str, cursor: str | None, since: float | None = None) -> bool:
        """Count a page as pending, once. False when it was already counted (a redelivered task).

        The page is registered with a "queued" claim, so that it is sent again if its message is lost.
        """
        base, pk = self._run(run_id), page_key(stream, cursor)
        payload = json.dumps({"stream": stream, "cursor": cursor, "since": since})
        return bool(
            self._add(
                keys=[f"{base}:next:{pk}", base, f"{base}:pages", f"{base}:claim:{pk}"],
                args=[RUN_TTL, pk, payload, int(QUEUED_LEASE_S * 1000)],
            )
        )

    # page claims (see "Lost pages" in the module's docstring)
    def claim_page(self, run_id: str, stream: str, cursor: str | None, holder: str) -> leases.Lease | None:
        """Take a page for this worker, renewed until released. None: the page is done, or another
        worker's claim on it is alive (a duplicate message), and there is nothing to do."""
        base, pk = self._run(run_id), page_key(stream, cursor)
        token = f"h:{holder}:{leases.token()}"
        key = f"{base}:claim:{pk}"
        if self._claim(keys=[key, f"{base}:done:{pk}"], args=[token, int(leases.LEASE_S * 1000)]) != 1:
            return None
        return leases.keep(self.r, key, token)

    def release_page(self, lease: leases.Lease) -> None:
        """Stop renewing a page's claim; what becomes of the claim is up to finish_page or wait_page."""
        leases.release(lease, delete=False)

    def wait_page(self, run_id: str, stream: str, cursor: str | None, seconds: float) -> None:
        """The page's task retries in `seconds`: its claim lives that long plus RETRY_GRACE_S."""
        key = f"{self._run(run_id)}:claim:{page_key(stream, cursor)}"
        self.r.set(key, f"waiting:{time.time():.0f}", px=int((seconds + RETRY_GRACE_S) * 1000))

    def resend_lost(self, run_id: str, now: float | None = None) -> list[LostPage]:
        """The run's pending pages whose claim ran out, each claimed "resent" for the caller to send again.

        Atomic: of many workers asking at once, one gets each lost page.
        """
        now = time.time() if now is None else now
        base = self._run(run_id)
        raw = self._resend(
            keys=[f"{base}:pages", f"{base}:lost", base],
            args=[base, f"{now:.3f}", int(QUEUED_LEASE_S * 1000), f"{now - leases.LEASE_S:.3f}"],
        )
        out = []
        for item in raw:
            page = json.loads(_s(item))
            out.append(LostPage(page["stream"], page["cursor"], page["since"]))
        return out

    def stalled(self, run_id: str, now: float | None = None) -> list[Stall]:
        """The run's streams that wait for a page its worker stopped answering for, and for how long."""
        now = time.time() if now is None else now
        base = self._run(run_id)
        raw: dict[Any, Any] = self.r.hgetall(f"{base}:pages")  # type: ignore[assignment]
        pages = {_s(k): _s(v) for k, v in raw.items()}
        if not pages:
            return []
        lost: dict[Any, Any] = self.r.hgetall(f"{base}:lost")  # type: ignore[assignment]
        lost_at = {_s(k): float(_s(v)) for k, v in lost.items()}
        keys = list(pages)
        pipe = self.r.pipeline(transaction=False)
        for pk in keys:
            pipe.get(f"{base}:claim:{pk}")
            pipe.pttl(f"{base}:claim:{pk}")
            pipe.exists(f"{base}:done:{pk}")
        replies = pipe.execute()
        out: list[Stall] = []
        for i, pk in enumerate(keys):
            claim, pttl, done = replies[3 * i : 3 * i + 3]
            if done:
                continue
            stream = str(json.loads(pages[pk])["stream"])
            if pk in lost_at:
                out.append(Stall(stream, "resent", max(0.0, now - lost_at[pk])))
            elif claim is not None and _s(claim).startswith("h:") and pttl > 0:
                silent = leases.LEASE_S - pttl / 1000
                if silent >= SILENT_AFTER_S:
                    out.append(Stall(stream, "silent", silent))
        return sorted(out, key=lambda s: -s.seconds)

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
        # no longer pending: nothing to watch (were this lost, resend_lost finds the done marker and cleans up)
        pk = page_key(stream, cursor)
        lost_at = self.r.hget(f"{base}:lost", pk)
        if lost_at is not None and left >= 0:  # counted by this call: what the lost page cost the run, once
            self.r.hincrbyfloat(base, "lost_wait_s", round(max(0.0, time.time() - float(_s(lost_at))), 1))
        pipe = self.r.pipeline(transaction=False)
        pipe.hdel(f"{base}:pages", pk)
        pipe.hdel(f"{base}:lost", pk)
        pipe.delete(f"{base}:claim:{pk}")
        pipe.execute()
        return None if left < 0 else left

    def add_spent(self, run_id: str, counts: dict[str, int]) -> None:
        """Add the API calls of a page's attempt that did not finish (its task retries, or the page
        fails) to the run's counts: they were made, though finish_page will not count them."""
        args: list[str | int] = [x for name, n in counts.items() if n for x in (name, n)]
        if args:
            self._add_counts(keys=[self._run(run_id)], args=args)

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


