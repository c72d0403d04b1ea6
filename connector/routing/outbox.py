"""The notification outbox: every rep message is recorded, then sent, then marked sent; failures retry.

One entry per (notification key, channel), in Redis, shared by all workers:

    outbox:<id>   hash: state, attempts, due, lease, token, detail, and what routing needs to
                  rebuild the message (pending key, round, notification key, channel)
    outbox        sorted set of entries to look at, scored by when (next attempt, lease end)

States: pending -> sending -> sent; a failed attempt goes back to pending with a later `due`
(backoff: 30 s, doubling, at most 30 min between attempts) until `GIVE_UP_AFTER_S`, then
failed. An entry is claimed for sending atomically (Lua), so two workers never send the same
message; once sent it is never sent again. A worker that dies while sending leaves the entry
in "sending": when its lease runs out the entry becomes "unknown" and is NOT sent again (the
message may have gone out; at most once wins over at least once).

Only ids live here (lead key, rep id, pending key); the message text is rebuilt from the
routing state and the CRM when a retry is due, so no personal data is kept in Redis (a
channel's answer kept as `detail` names the rep by id, never by address). Each entry is
listed in the lead's key index (connector.routing.keys), so a deletion of the lead finds it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from connector.notify import Channel, ChannelResult, Notification, NotifierLike, without_address
from connector.routing.keys import remember

log = logging.getLogger("leadscore.routing.outbox")

FIRST_RETRY_S = 30.0
MAX_RETRY_GAP_S = 30 * 60.0
GIVE_UP_AFTER_S = 24 * 3600.0  # like the CRMs' own webhook retries: a day, then the message is given up
LEASE_S = 120.0  # longer than one SMTP or chat attempt (10 s timeout) takes
ENTRY_TTL_S = 7 * 24 * 3600

_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: entry, zset. ARGV: id, now, lease end, token.
_CLAIM = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
local now = tonumber(ARGV[2])
if st == 'pending' then
  if tonumber(redis.call('HGET', KEYS[1], 'due') or '0') > now then return 'later' end
  redis.call('HSET', KEYS[1], 'state', 'sending', 'lease', ARGV[3], 'token', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
  return 'claimed'
end
if st == 'sending' and tonumber(redis.call('HGET', KEYS[1], 'lease') or '0') <= now then
  redis.call('HSET', KEYS[1], 'state', 'unknown', 'detail', 'the worker sending it stopped; not sent again')
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'unknown'
end
if st ~= 'sending' then redis.call('ZREM', KEYS[2], ARGV[1]) end
return st
"""

# KEYS: entry, zset. ARGV: id, token, state, detail, due ('' when done).
_FINISH = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'state') ~= 'sending' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'detail', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'due', ARGV[5])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def retry_gap(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 30 s, 1, 2, 4 ... min, at most 30 min."""
    return float(min(MAX_RETRY_GAP_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    pending_key: str
    round: int
    note_key: str
    channel: Channel
    state: str
    attempts: int
    created: float


Rebuild = Callable[[Entry], "Notification | str"]


class Outbox:
    def __init__(self, client: redis.Redis, prefix: str, notifier: NotifierLike) -> None:
        self.redis = client
        self.zkey = f"{prefix}outbox"
        self.prefix = f"{prefix}outbox:"
        self.notifier = notifier
        self._record = client.register_script(_RECORD)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    def _key(self, entry_id: str) -> str:
        return self.prefix + entry_id

    def send(self, note: Notification, *, pending_key: str, round_: int, now: float) -> list[ChannelResult]:
        """Record the note on each configured channel, then make the first attempt at once.

        A channel already recorded for this note (a rerun) is not attempted again here: its
        result says "duplicate" when it went out, and the sweep (`send_due`) owns its retries.
        """
        results: list[ChannelResult] = []
        for channel in self.notifier.channels:
            why = self.notifier.skip_reason(note, channel)
            if why is not None:
                results.append(ChannelResult(channel, "skipped", why))
                continue
            entry_id = f"{note.key}|{channel}"
            fields: dict[str, str] = {
                "state": "pending",
                "attempts": "0",
                "due": repr(now),
                "created": repr(now),
                "pending_key": pending_key,
                "round": str(round_),
                "note_key": note.key,
                "channel": channel,
            }
            flat = [x for kv in fields.items() for x in kv]
            if note.index is not None:  # listed first, so a deletion of the lead finds the entry
                pipe = self.redis.pipeline(transaction=False)
                remember(pipe, note.index, [self._key(entry_id)])
                pipe.execute()
            new = self._record(keys=[self._key(entry_id), self.zkey], args=[entry_id, repr(now), ENTRY_TTL_S, *flat])
            if not new:
                state = _s(self.redis.hget(self._key(entry_id), "state") or "gone")
                results.append(
                    ChannelResult(channel, "duplicate", "already sent for this key")
                    if state == "sent"
                    else ChannelResult(channel, "failed", f"already recorded ({state}); the outbox retries it")
                )
                continue
            results.append(self._attempt(entry_id, note, channel, now))
        return results

    def send_due(self, rebuild: Rebuild, now: float | None = None, *, limit: int = 100) -> dict[str, int]:
        """Retry every entry that is due; `rebuild` gives its message again, or why it is no longer wanted."""
        now = time.time() if now is None else now
        counts: dict[str, int] = {}
        for raw in self.redis.zrangebyscore(self.zkey, "-inf", now, start=0, num=limit):
            entry_id = _s(raw)
            entry = self.entry(entry_id)
            if entry is None:
                self.redis.zrem(self.zkey, entry_id)
                continue
            if entry.state == "pending":
                try:
                    note = rebuild(entry)
                except Exception:  # noqa: BLE001 - the CRM is unreachable a moment: the next sweep tries again
                    log.warning("notification not rebuilt", extra={"event": "notify_deferred", "entry": entry_id})
                    counts["deferred"] = counts.get("deferred", 0) + 1
                    continue
                if isinstance(note, str):
                    self._drop(entry_id, note)
                    counts["dropped"] = counts.get("dropped", 0) + 1
                    continue
                result = self._attempt(entry_id, note, entry.channel, now)
                status: str = result.status if result.status in ("sent", "failed") else "skipped"
            else:  # "sending" past its lease, or a finished entry still listed
                found = _s(self._claim(keys=[self._key(entry_id), self.zkey],
                                       args=[entry_id, repr(now), repr(now), "-"]))  # fmt: skip
                # Only "unknown" (a lease this sweep ended) and "gone" are this sweep's doing; anything
                # else is being sent, or was finished, by another worker since this sweep listed it.
                status = found if found in ("unknown", "gone") else "elsewhere"
            counts[status] = counts.get(status, 0) + 1
        return counts

    def entry(self, entry_id: str) -> Entry | None:
        raw: Mapping[Any, Any] = self.redis.hgetall(self._key(entry_id))
        h = {_s(k): _s(v) for k, v in raw.items()}
        if "state" not in h:
            return None
        channel: Channel = "email" if h.get("channel") == "email" else "chat"
        return Entry(
            id=entry_id,
            pending_key=h.get("pending_key", ""),
            round=int(h.get("round", "0")),
            note_key=h.get("note_key", ""),
            channel=channel,
            state=h["state"],
            attempts=int(h.get("attempts", "0")),
            created=float(h.get("created", "0")),
        )

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, entry_id: str, note: Notification, channel: Channel, now: float) -> ChannelResult:
        token = uuid.uuid4().hex
        key = self._key(entry_id)
        claimed = _s(self._claim(keys=[key, self.zkey], args=[entry_id, repr(now), repr(now + LEASE_S), token]))
        if claimed != "claimed":
            if claimed == "sent":
                return ChannelResult(channel, "duplicate", "already sent for this key")
            return ChannelResult(channel, "skipped", f"not sent now ({claimed})")
        try:
            result = self.notifier.deliver(note, channel)
        except Exception as exc:  # noqa: BLE001 - a channel never fails an assignment
            said = without_address(f"notifier raised {type(exc).__name__}: {exc}", note)
            result = ChannelResult(channel, "failed", said[:300])
        if result.status == "sent":
            self._finish(keys=[key, self.zkey], args=[entry_id, token, "sent", result.detail, ""])
            return result
        if result.status == "skipped":
            self._finish(keys=[key, self.zkey], args=[entry_id, token, "skipped", result.detail, ""])
            return result
        entry = self.entry(entry_id)
        attempts = entry.attempts if entry is not None else 1
        created = entry.created if entry is not None else now
        due = now + retry_gap(attempts)
        if due - created > GIVE_UP_AFTER_S:
            self._finish(keys=[key, self.zkey], args=[entry_id, token, "failed", result.detail, ""])
            log.warning("notification given up", extra={"event": "notify_given_up", "entry": entry_id,
                                                        "attempts": attempts})  # fmt: skip
            return ChannelResult(channel, "failed", f"{result.detail}; given up after {attempts} attempts")
        self._finish(keys=[key, self.zkey], args=[entry_id, token, "pending", result.detail, repr(due)])
        return ChannelResult(channel, "failed", f"{result.detail}; retrying in {retry_gap(attempts):.0f} s")

    def _drop(self, entry_id: str, why: str) -> None:
        self.redis.hset(self._key(entry_id), mapping={"state": "dropped", "detail": why})
        self.redis.zrem(self.zkey, entry_id)
