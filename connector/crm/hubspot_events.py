"""Web events of every contact, read in bulk from HubSpot's events API and kept per contact in Redis.

The events API (PublicApiSpecs/Events/Events/Rollouts/147897/v3/events.json, GET /events/v3/events)
makes every query parameter optional: with objectType=contact, eventType and occurredAfter/
occurredBefore but no objectId, one query returns the events of every contact in the window, oldest
first, paged by `paging.next.after` (the spec's collection: "To retrieve event data for a specific CRM
record, include the additional objectId"). The spec gives `limit` no maximum (EVENTS_PAGE below).

Read per contact, web activity costs one call per recently active contact (about 540 per 1,000
contacts on the generated sandbox). Read in bulk, it costs one call per EVENTS_PAGE events of the
whole portal in the look-back once, then one call per EVENTS_PAGE new events: the look-back's events
are read into Redis once (all workers share the work in time slices) and kept up to date
incrementally; a page of contacts then takes its web activity from Redis with no call at all.

What Redis holds, under leadscore:hubspot:{account}:web:
    state        hash: from/to (ms) the window fully read; gen/lo/hi/full of a fill under way
    c:{id}       the contact's events as lines [event id, event type, occurredAt ms, {mapped properties}],
                 appended as read (duplicates from overlapping windows are dropped when read); it expires
                 look-back + 1 day after the contact's last event, so nothing older than the look-back
                 stays
    last         sorted set: contact id -> time of its latest event (which contacts' scores may have
                 changed since a moment)
    idle         set for a moment by a worker waiting for others' slices: they split theirs
    fill:{gen}   sorted set of the time slices of a fill still to read, scored by their lease's end
    fill:{gen}:at  hash: slice -> "{newest event read}:{where it ends now}" of the slices being read,
                 for `progress()` (what `leadscore status` shows); it expires with the fill
Only the properties the mapping's event rules read are kept (the mapped attributes and `when` tests),
never names or e-mail addresses: an address inside a kept value (a page URL such as a form's
redirect, `/thanks?email=jane%40example.com`) is replaced by NO_ADDRESS before it is kept, and before
it is scored on the per-contact path too (`without_addresses`), so both paths score the same text.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from connector.crm.limits import in_bulk
from connector.crm.times import parse_time
from connector.domain import Activity
from connector.errors import RetryLater
from connector.mappings.hubspot import EventRule
from connector.redisutil import text

log = logging.getLogger(__name__)

# Events per call. events.json states no maximum for `limit`; 100 is what HubSpot's v3 list endpoints
# allow, the safe choice until a larger page is confirmed (the sandbox accepts up to 1,000).
EVENTS_PAGE = 100
# A fill of the whole look-back is cut into this many time slices, which workers claim and read
# side by side; an incremental fill (new events only) is one slice.
FULL_SLICES = 8
# The window is refreshed when its end is older than this: events newer than that may be missing
# from a page's activities until the next refresh (an incremental sync runs every few minutes).
FRESH_S = 300.0
# Each refresh reads again this far back before the window's end, for events HubSpot records a little
# after they occurred (unverified: HubSpot states no ingestion delay for the events API).
OVERLAP_S = 120.0
MIN_SPLIT_MS = 3_600_000  # a slice is split for idle workers only while more than twice this is left
SLICE_LEASE_S = 120.0  # a slice's claim lasts this long unless its reader renews it (every page)
# Longest a worker waits for other workers' slices, counted from the last slice it read itself, before it
# asks to be retried. Counted from the start of its wait instead, a fill longer than this (1,000,000
# contacts at Professional's rate take about an hour) sent three of four workers' pages back to the
# queue at its end, each to read its list page again, although they had been reading slices all along.
WAIT_S = 3600.0
GEN_LOCK_S = 30.0
READ_CHUNK = 100  # contacts whose stored events one MGET reads (activities())

# Claim a slice of a fill: the first member whose lease ended; it gets a new lease.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], ARGV[2], due[1])
return due[1]
"""

# Finish a fill whose slices are all read: the window becomes [from, hi].
_FINISH = """
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return 0 end
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
local lo = redis.call('HGET', KEYS[1], 'lo')
local hi = redis.call('HGET', KEYS[1], 'hi')
if redis.call('HGET', KEYS[1], 'full') == '1' or not redis.call('HGET', KEYS[1], 'from') then
  redis.call('HSET', KEYS[1], 'from', lo)
end
local to = redis.call('HGET', KEYS[1], 'to')
if to and tonumber(to) > tonumber(hi) then hi = to end
redis.call('HSET', KEYS[1], 'to', hi, 'gen', '')
return 1
"""


Emit = Callable[[Sequence[EventRule], Mapping[str, Any], float], list[Activity]]


# An e-mail address, plain or percent-encoded as URLs carry it (jane.doe%40example.com), with the
# characters a URL may hold around its name (%2B for a +).
_ADDRESS = re.compile(r"[\w.%+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
NO_ADDRESS = "(e-mail)"


def without_addresses(props: Mapping[str, Any]) -> Mapping[str, Any]:
    """An event's properties with every e-mail address in a text value replaced by NO_ADDRESS: `props`
    itself when none holds one (most events: no copy of each), else a copy."""
    out: dict[str, Any] | None = None
    for key, value in props.items():
        if type(value) is str and ("@" in value or "%40" in value):
            if out is None:
                out = dict(props)
            out[key] = _ADDRESS.sub(NO_ADDRESS, value)
    return props if out is None else out


def iso_ms(ms: int) -> str:
    seconds, rest = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


class EventsRefused(Exception):
    """HubSpot refused the events API (403: the portal's tier has none)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class FillProgress:
    """A read of web events under way: all of the look-back (`full`, a first sync's) or its new part."""

    full: bool
    lo_ms: int
    hi_ms: int
    done: float  # share of the time window read, 0..1

    def text(self) -> str:
        if self.full:
            days = (self.hi_ms - self.lo_ms) / 86_400_000
            return (f"reading the web events of the last {days:.0f} days before scoring "
                    f"(once; later syncs read only new ones): {100 * self.done:.0f} % done")  # fmt: skip
        return f"reading new web events: {100 * self.done:.0f} % done"


class WebEventStore:
    """The look-back's web events of every contact, read in bulk and shared by the workers through Redis.

    `read_window(after_ms, before_ms, after_token)` is the one HubSpot call: it returns the events
    API's answer body (results, paging) for every contact, raising EventsRefused on a 403.
    """

    def __init__(
        self,
        client: redis.Redis,
        account: str,
        rules: Sequence[EventRule],
        lookback_s: float,
        read_window: Callable[[int, int, str | None, str | None], Mapping[str, Any]],
    ) -> None:
        self.redis = client
        self.prefix = f"leadscore:hubspot:{account}:web"
        self.rules_by_type: dict[str, list[EventRule]] = {}
        for rule in rules:
            self.rules_by_type.setdefault(rule.type, []).append(rule)
        self.only_type = next(iter(self.rules_by_type)) if len(self.rules_by_type) == 1 else None
        self.kept_props = sorted({p for r in rules for p in (*r.attrs.values(), *r.when)})
        self.lookback_s = lookback_s
        self.read_window = read_window
        self.ttl_s = int(lookback_s + 86400)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    # -- the window

    def _state(self) -> dict[str, str]:
        raw = self.redis.hgetall(f"{self.prefix}:state")
        return {text(k): text(v) for k, v in raw.items()}

    def covers(self, now: float, fresh_s: float = FRESH_S) -> tuple[bool, bool]:
        """(the window reaches back over the whole look-back, and it ends at most `fresh_s` before `now`)."""
        st = self._state()
        if not st.get("from") or not st.get("to"):
            return False, False
        cutoff_ms = math.floor((now - self.lookback_s) * 1000)
        covered = int(st["from"]) <= cutoff_ms
        return covered, covered and int(st["to"]) >= math.floor((now - fresh_s) * 1000)

    def ensure(self, now: float, fresh_s: float = FRESH_S) -> None:
        """Read whatever the window lacks up to `now` (when it ends more than `fresh_s` before), sharing
        the slices with other workers; returns when done.

        Raises EventsRefused (403) and RetryLater (HubSpot unreachable, or this worker has waited WAIT_S
        for other workers' slices since it last read one itself).
        """
        deadline = time.monotonic() + WAIT_S
        while True:
            covered, fresh = self.covers(now, fresh_s)
            if fresh:
                return
            gen = self._state().get("gen") or self._start(now, covered)
            if gen is None:
                time.sleep(0.1)  # another worker is starting a fill this moment
                continue
            if self._work(gen):
                deadline = time.monotonic() + WAIT_S  # it was reading, not waiting
            if self._finish(keys=[f"{self.prefix}:state", f"{self.prefix}:fill:{gen}"], args=[gen]):
                self.redis.zremrangebyscore(f"{self.prefix}:last", "-inf", math.floor((now - self.lookback_s) * 1000))
            elif (st := self._state()).get("gen") == gen:  # its last slices are being read by other workers
                if covered and st.get("to") and not in_bulk():
                    # Real-time work does not wait for them: their reader may be a sync page, whose calls
                    # wait for the rate window while real-time calls go first. It reads what is new itself
                    # (a call or two); the fill reads the same events, and duplicates are dropped when read.
                    self._read_slice(int(st["to"]) - int(OVERLAP_S * 1000), math.floor(now * 1000), None, "")
                    return
                if time.monotonic() > deadline:
                    raise RetryLater("web events are still being read by other workers", wait=30.0)
                self.redis.set(f"{self.prefix}:idle", "1", px=2000)  # they hand this worker part of theirs
                time.sleep(0.25)
            # then as from the start: a fill another worker began before `now` may leave a rest to read

    def _start(self, now: float, covered: bool) -> str | None:
        lock = f"{self.prefix}:gen-lock"
        if not self.redis.set(lock, "1", nx=True, px=int(GEN_LOCK_S * 1000)):
            return None
        try:
            st = self._state()
            if st.get("gen"):
                return st["gen"]
            hi = math.floor(now * 1000)
            if covered and st.get("to"):
                lo, slices, full = int(st["to"]) - int(OVERLAP_S * 1000), 1, "0"
            else:
                lo, slices, full = math.floor((now - self.lookback_s) * 1000), FULL_SLICES, "1"
            lo = min(lo, hi)
            gen = uuid.uuid4().hex[:12]
            bounds = [lo + (hi - lo) * k // slices for k in range(slices + 1)]
            pipe = self.redis.pipeline(transaction=True)
            # No expiry: the set lives as long as the state names its fill. An expired set would read as a
            # fill whose slices are all read (_FINISH), and the window would be taken as read with slices
            # nobody read (a fill that outlived the expiry, or one whose workers all stopped): instead a
            # fill left off is taken up where it stopped, its slices' leases having run out.
            pipe.zadd(f"{self.prefix}:fill:{gen}",
                      {f"{bounds[k]}:{bounds[k + 1]}": 0 for k in range(slices) if bounds[k + 1] >= bounds[k]})
            pipe.hset(f"{self.prefix}:state", mapping={"gen": gen, "lo": lo, "hi": hi, "full": full})
            pipe.execute()
            log.info("hubspot web events: reading %s window %s..%s in %s slice(s)",
                     "the whole" if full == "1" else "the new part of the", iso_ms(lo), iso_ms(hi), slices)
            return gen
        finally:
            self.redis.delete(lock)

    def _work(self, gen: str) -> int:
        """Claim and read slices of the fill until none is left to claim; returns how many it read."""
        key = f"{self.prefix}:fill:{gen}"
        done = 0
        while True:
            now = time.time()
            member = self._claim(keys=[key], args=[repr(now), repr(now + SLICE_LEASE_S)])
            if not member:
                return done
            name = text(member)
            a, b = (int(x) for x in name.split(":"))
            self._read_slice(a, b, key, name)
            self.redis.zrem(key, name)
            done += 1

    def _read_slice(self, lo: int, hi: int, fill_key: str | None, member: str) -> None:
        """Read one time slice; while no other slice is left to claim, hand the second half of what is
        left of this one back to the fill (other workers would otherwise wait for this one to end).
        Without `fill_key`, a read of this caller's own, outside any fill."""
        after: str | None = None
        while True:
            body = self.read_window(lo, hi, self.only_type, after)
            results = body.get("results") or []
            self._keep(results)
            last = max((round((parse_time(e.get("occurredAt")) or 0) * 1000) for e in results), default=lo)
            if fill_key is not None:
                pipe = self.redis.pipeline(transaction=False)
                pipe.zadd(fill_key, {member: time.time() + SLICE_LEASE_S}, xx=True)  # the lease renewed
                pipe.hset(f"{fill_key}:at", member, f"{max(last, lo)}:{hi}")  # how far it is read (progress())
                pipe.expire(f"{fill_key}:at", int(WAIT_S * 2))
                pipe.execute()
            nxt = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not nxt or nxt == after:
                return
            after = str(nxt)
            if (
                fill_key is not None
                and lo <= last and hi - last > 2 * MIN_SPLIT_MS and self.redis.exists(f"{self.prefix}:idle")
                and not self.redis.zcount(fill_key, "-inf", time.time())
            ):  # fmt: skip
                mid = (last + hi) // 2
                self.redis.zadd(fill_key, {f"{mid}:{hi}": 0})
                lo, hi, after = last, mid, None  # the query again from the last event read (ids dedupe)

    def _keep(self, events: Iterable[Mapping[str, Any]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        latest: dict[str, int] = {}
        n = 0
        for event in events:
            etype = str(event.get("eventType") or "")
            if etype not in self.rules_by_type or event.get("objectId") is None:
                continue
            ts = parse_time(event.get("occurredAt"))
            if ts is None:
                continue
            ms = round(ts * 1000)
            props = event.get("properties") or {}
            kept = without_addresses({p: props[p] for p in self.kept_props if props.get(p) is not None})
            cid = str(event["objectId"])
            line = orjson.dumps([str(event.get("id") or f"{cid}:{etype}:{ms}"), etype, ms, kept]) + b"\n"
            ckey = f"{self.prefix}:c:{cid}"
            pipe.append(ckey, line)
            pipe.expire(ckey, self.ttl_s)
            latest[cid] = max(ms, latest.get(cid, 0))
            n += 1
        if latest:
            pipe.zadd(f"{self.prefix}:last", latest, gt=True)
        if n:
            pipe.execute()

    def progress(self) -> FillProgress | None:
        """The fill under way, how much of its time window is read (None: none is under way).

        A slice not claimed yet counts whole; one being read counts from the newest event read in it
        to where it ends now (a split hands its second half to a slice of its own)."""
        st = self._state()
        gen = st.get("gen")
        if not gen or not st.get("lo") or not st.get("hi"):
            return None
        lo, hi = int(st["lo"]), int(st["hi"])
        fill = f"{self.prefix}:fill:{gen}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(fill, 0, -1)
        pipe.hgetall(f"{fill}:at")
        members, at = pipe.execute()
        reached = {text(k): text(v) for k, v in at.items()}
        left = 0
        for raw in members:
            member = text(raw)
            a, b = (int(x) for x in (reached.get(member) or member).split(":"))
            left += max(0, b - a)
        span = max(1, hi - lo)
        return FillProgress(full=st.get("full") == "1", lo_ms=lo, hi_ms=hi,
                            done=min(1.0, max(0.0, 1 - left / span)))  # fmt: skip

    # -- reading

    def activities(
        self, ids: Sequence[str], cutoff: float, now: float, emit: Emit
    ) -> dict[str, list[Activity]]:
        """Each contact's web activities since `cutoff`, from Redis (no HubSpot call).

        Read READ_CHUNK contacts at a time: a page's events in one reply would all be held at once."""
        out: dict[str, list[Activity]] = {}
        cutoff_ms = cutoff * 1000
        for k in range(0, len(ids), READ_CHUNK):
            chunk = ids[k : k + READ_CHUNK]
            raw = self.redis.mget([f"{self.prefix}:c:{i}" for i in chunk])
            for cid, blob in zip(chunk, raw, strict=True):
                out[cid] = self._parse(blob, cutoff_ms, now, emit)
        return out

    def _parse(self, blob: bytes | str | None, cutoff_ms: float, now: float, emit: Emit) -> list[Activity]:
        """One contact's stored events (JSON lines, duplicates by event id dropped) as activities."""
        found: list[Activity] = []
        if blob:
            seen: set[str] = set()
            for line in (blob.encode() if isinstance(blob, str) else blob).splitlines():
                try:
                    event_id, etype, ms, props = orjson.loads(line)
                except (orjson.JSONDecodeError, ValueError):
                    continue
                if event_id in seen or ms < cutoff_ms:
                    continue
                seen.add(event_id)
                rules = self.rules_by_type.get(etype)
                if rules:
                    found += emit(rules, props, min(ms / 1000, now))
        return found

    def changed_since(
        self, since_ms: int, after: tuple[int, Sequence[str]] | None, limit: int
    ) -> list[tuple[str, int]]:
        """Contacts whose latest event is at or after `since_ms`, oldest first, after the (time, ids) cursor."""
        lo = since_ms if after is None else after[0]
        skip = set(after[1]) if after is not None else set()
        rows: Any = self.redis.zrangebyscore(
            f"{self.prefix}:last", lo, "+inf", start=0, num=limit + len(skip), withscores=True
        )
        out: list[tuple[str, int]] = []
        for member, score in rows:
            cid = member.decode() if isinstance(member, bytes) else str(member)
            if int(score) == lo and cid in skip:
                continue
            out.append((cid, int(score)))
            if len(out) == limit:
                break
        return out
