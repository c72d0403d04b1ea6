"""Records not written yet: a retry set per stream, in Redis, shared by every worker.

A score write that failed for a reason that passes (a row lock, a server error for one
record inside a 207, rows a bulk job left unprocessed, a page whose processing kept
failing) leaves its record ids here instead of dropping them. The sync may then move its
incremental cursor past them: the next run takes them up first, and a periodic retry
(beat, every RETRY_EVERY_SECONDS) between runs. A record leaves the set when a write of
it succeeds (or finds nothing to change, or the record is gone) or fails for good.

Per (crm, stream), only ids, times and a short reason are kept:
- `retry:{crm}:{stream}`        zset id -> when it is next due (epoch seconds); a claim
                                moves it LEASE_SECONDS ahead, so two workers never take the
                                same id, and a claim whose worker died comes due again;
- `retry:{crm}:{stream}:since`  zset id -> when it first failed (how far the stream is behind);
- `retry:{crm}:{stream}:tries`  hash id -> attempts so far;
- `retry:{crm}:{stream}:why`    hash id -> the last reason, for `leadscore check`;
- `retry:streams`               set of "crm\\x1fstream" holding ids (no keyspace scans; a scrape of
                                /metrics reads only this set while nothing waits).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from connector.redisutil import text as _s

LEASE_SECONDS = 300.0  # a claimed id is not handed out again for this long (the retry of a batch takes seconds)
RETRY_EVERY_SECONDS = 60.0  # the beat's periodic retry
BACKOFF_BASE = 60.0  # a record that failed again waits 1, 2, 4 ... minutes
BACKOFF_CAP = 3600.0  # ... at most an hour: it is never given up on while it fails for a passing reason
CLAIM_MAX = 100  # ids per claim: one page's worth
WHY_CHARS = 200

# KEYS: due zset, since zset, tries hash, why hash, streams set.
# ARGV: now, member of streams, backoff cap, backoff base, then id/why pairs.
_ADD = """
local now = tonumber(ARGV[1])
redis.call('SADD', KEYS[5], ARGV[2])
local i = 5
while ARGV[i] ~= nil do
  local id = ARGV[i]
  redis.call('ZADD', KEYS[2], 'NX', now, id)
  local tries = redis.call('HINCRBY', KEYS[3], id, 1)
  redis.call('HSET', KEYS[4], id, ARGV[i + 1])
  local wait = 0
  if tries > 1 then
    wait = math.min(tonumber(ARGV[3]), tonumber(ARGV[4]) * 2 ^ (tries - 2))
  end
  redis.call('ZADD', KEYS[1], now + wait, id)
  i = i + 2
end
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: due zset, since zset, tries hash, why hash, streams set. ARGV: member of streams, then ids.
# The stream leaves the index when its last id goes, in the same step (no add can slip between).
_DONE = """
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[5], ARGV[1])
end
return 0
"""

# KEYS: due zset. ARGV: now, lease until, limit. Takes the due ids and moves them a lease ahead.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), id)
end
return ids
"""


@dataclass(frozen=True, slots=True)
class Behind:
    """What a stream still owes: records waiting to be written again, since when, and the last reason."""

    crm: str
    stream: str
    waiting: int
    since: float | None  # when the oldest waiting record first failed
    why: str | None  # the last reason of the oldest one

    def seconds(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, now - self.since)


class RetrySet:
    def __init__(self, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.r = client
        self.ns = namespace
        self._add = client.register_script(_ADD)
        self._claim = client.register_script(_CLAIM)
        self._done = client.register_script(_DONE)

    def _keys(self, crm: str, stream: str) -> list[str]:
        base = f"{self.ns}:retry:{crm}:{stream}"
        return [base, f"{base}:since", f"{base}:tries", f"{base}:why", f"{self.ns}:retry:streams"]

    def add(self, crm: str, stream: str, items: Iterable[tuple[str, str]], now: float | None = None) -> int:
        """Keep these (id, reason) for a later write; an id already kept counts one more attempt. Returns the size."""
        args: list[str | float] = [time.time() if now is None else now, f"{crm}\x1f{stream}", BACKOFF_CAP, BACKOFF_BASE]
        for record_id, why in items:
            args += [record_id, why[:WHY_CHARS]]
        if len(args) == 4:
            return int(self.r.zcard(self._keys(crm, stream)[0]))  # type: ignore[arg-type]
        return int(self._add(keys=self._keys(crm, stream), args=args))

    def claim(self, crm: str, stream: str, now: float | None = None, limit: int = CLAIM_MAX) -> list[str]:
        """The ids due now (at most `limit`), each leased to the caller for LEASE_SECONDS."""
        now = time.time() if now is None else now
        raw = self._claim(keys=[self._keys(crm, stream)[0]], args=[now, now + LEASE_SECONDS, limit])
        return [_s(x) for x in raw]

    def done(self, crm: str, stream: str, ids: Sequence[str]) -> None:
        """These ids need nothing more (written, unchanged, gone, or failed for good)."""
        if not ids:
            return
        self._done(keys=self._keys(crm, stream), args=[f"{crm}\x1f{stream}", *ids])

    def waiting(self, crm: str, stream: str) -> int:
        return int(self.r.zcard(self._keys(crm, stream)[0]))  # type: ignore[arg-type]

    def ids(self, crm: str, stream: str) -> list[str]:
        return [_s(x) for x in self.r.zrange(self._keys(crm, stream)[0], 0, -1)]  # type: ignore[union-attr]

    def behind(self, crm: str, stream: str) -> Behind:
        due, since, _, why, _ = self._keys(crm, stream)
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(due)
        pipe.zrange(since, 0, 0, withscores=True)
        n, oldest = pipe.execute()
        if not n or not oldest:
            return Behind(crm, stream, int(n or 0), None, None)
        first, ts = oldest[0]
        reason = self.r.hget(why, first)
        return Behind(crm, stream, int(n), float(ts), _s(reason) if reason is not None else None)

    def streams(self) -> list[tuple[str, str]]:
        """Every (crm, stream) that holds ids, from the index set (one read)."""
        members = self.r.smembers(f"{self.ns}:retry:streams")
        out = []
        for m in members:  # type: ignore[union-attr]
            crm, _, stream = _s(m).partition("\x1f")
            out.append((crm, stream))
        return sorted(out)

    def all_behind(self) -> list[Behind]:
        return [self.behind(crm, stream) for crm, stream in self.streams()]


__all__ = ["LEASE_SECONDS", "RETRY_EVERY_SECONDS", "Behind", "RetrySet"]
