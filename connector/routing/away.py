"""Out-of-office marks set from the command line, and the status of every rep.

`leadscore reps away EMAIL --until DATE` calls `set_away`, `leadscore reps back
EMAIL` calls `set_back`, `leadscore reps` calls `list_reps_status`. A mark is
keyed by the rep's e-mail (lower case) or CRM id, whichever was given;
routing looks under both. A date means away through that whole day in the
rep's own time zone (back the next morning); a datetime means away until that
instant. Marks expire by themselves a few days after they end.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from connector.domain import CrmName, Rep
from connector.mappings.routing import RoutingConfig
from connector.redisutil import text as redis_text
from connector.routing.policy import AwayMark, availability, rep_view
from connector.routing.pool import PREFIX, RedisPool


def _ident(rep_email_or_id: str) -> str:
    ident = rep_email_or_id.strip()
    if not ident:
        raise ValueError("give the rep's e-mail or CRM id")
    return ident.lower() if "@" in ident else ident


def _key(ident: str, prefix: str = PREFIX) -> str:
    return f"{prefix}away:{ident}"


def _index(prefix: str) -> str:
    return f"{prefix}away"


def set_away(
    store: redis.Redis,
    rep_email_or_id: str,
    until: dt.date | dt.datetime,
    *,
    now: float | None = None,
    prefix: str = PREFIX,
) -> AwayMark:
    """Mark a rep away until `until` (a date: through that day, rep-local; an aware datetime: that instant).

    The mark is kept until a few days after it ends (counted from `now`), then Redis drops it.
    """
    ident = _ident(rep_email_or_id)
    if isinstance(until, dt.datetime):
        if until.tzinfo is None:
            raise ValueError("give a time zone with the time, or just a date")
        end = until.timestamp()
        kind = "datetime"
    else:
        end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
        kind = "date"
    now = time.time() if now is None else now
    ttl = max(int(end - now) + 3 * 86400, 86400)
    payload = json.dumps({"until": until.isoformat(), "kind": kind})
    pipe = store.pipeline(transaction=True)
    pipe.set(_key(ident, prefix), payload, ex=ttl)
    pipe.sadd(_index(prefix), ident)
    pipe.execute()
    return AwayMark(until)


def set_back(store: redis.Redis, rep_email_or_id: str, reps: Sequence[Rep] = (), *, prefix: str = PREFIX) -> bool:
    """Clear the away mark (under the identifier given, and under the rep's other one when `reps` has them)."""
    ident = _ident(rep_email_or_id)
    idents = {ident}
    for rep in reps:
        if ident in (rep.id, rep.email.lower()):
            idents |= {rep.id, rep.email.lower()}
    removed = store.delete(*[_key(i, prefix) for i in idents])
    store.srem(_index(prefix), *idents)
    return bool(removed)


def _parse(raw: str | bytes | None) -> AwayMark | None:
    if raw is None:
        return None
    data = json.loads(raw)
    if data.get("kind") == "datetime":
        return AwayMark(dt.datetime.fromisoformat(data["until"]))
    return AwayMark(dt.date.fromisoformat(data["until"]))


def away_marks(store: redis.Redis, reps: Sequence[Rep], prefix: str = PREFIX) -> dict[str, list[AwayMark]]:
    """rep id -> the marks set for them (by id or by e-mail)."""
    if not reps:
        return {}
    keys: list[str] = []
    for rep in reps:
        keys += [_key(rep.id, prefix), _key(rep.email.lower() if rep.email else rep.id, prefix)]
    values = store.mget(keys)
    out: dict[str, list[AwayMark]] = {}
    for i, rep in enumerate(reps):
        marks = [m for m in (_parse(values[2 * i]), _parse(values[2 * i + 1])) if m is not None]
        if marks:
            out[rep.id] = marks[:1] if values[2 * i] == values[2 * i + 1] else marks
    return out


def list_away(store: redis.Redis, prefix: str = PREFIX) -> dict[str, AwayMark]:
    """Every mark that is still stored, by the identifier it was set under."""
    out: dict[str, AwayMark] = {}
    for raw_ident in sorted(store.smembers(_index(prefix))):
        ident = redis_text(raw_ident)
        mark = _parse(store.get(_key(ident, prefix)))
        if mark is None:
            store.srem(_index(prefix), ident)
        else:
            out[ident] = mark
    return out


@dataclass(frozen=True, slots=True)
class RepStatus:
    crm: str
    rep_id: str
    email: str
    name: str
    regions: tuple[str, ...]
    available: bool
    reason: str | None  # inactive, excluded, away, outside hours, at capacity
    detail: str
    local_time: str
    timezone: str
    weight: int
    capacity: int | None
    used_today: int

    def __str__(self) -> str:
        state = "available" if self.available else f"{self.reason} ({self.detail})"
        cap = f"{self.used_today}/{self.capacity}" if self.capacity is not None else f"{self.used_today}/-"
        regions = ",".join(self.regions) or "no region"
        return (
            f"{self.crm} {self.rep_id} {self.email} [{regions}] weight {self.weight}, {cap} today, "
            f"{self.local_time} {self.timezone}: {state}"
        )


def cap_key(crm: CrmName | str, rep_id: str, day: str) -> str:
    return f"{crm}:{rep_id}:{day}"


def list_reps_status(
    store: redis.Redis, config: RoutingConfig, reps: Sequence[Rep], crm: CrmName, now: float, prefix: str = PREFIX
) -> list[RepStatus]:
    """Every CRM rep as routing sees them at `now`: regions, availability and why, capacity used today."""
    pool = RedisPool(store, prefix)
    views = [rep_view(config, rep) for rep in reps]
    marks = away_marks(store, reps, prefix)
    used = pool.used([cap_key(crm, v.id, v.day(now)) for v in views])
    out = []
    for view, used_today in zip(views, used, strict=True):
        why = availability(view, now, marks.get(view.id, ()), used_today)
        out.append(
            RepStatus(
                crm=crm,
                rep_id=view.id,
                email=view.rep.email,
                name=view.rep.name,
                regions=view.regions,
                available=why is None,
                reason=why[0] if why else None,
                detail=why[1] if why else "",
                local_time=view.local(now).strftime("%a %H:%M"),
                timezone=view.tz.key,
                weight=view.weight,
                capacity=view.capacity,
                used_today=used_today,
            )
        )
    return out
