"""Out-of-office marks set from the command line, and the status of every rep.

`leadscore reps away EMAIL --until DATE` calls `set_away`, `leadscore reps back
EMAIL` calls `set_back`, `leadscore reps` calls `list_reps_status`. In Redis a
mark is kept under the rep's CRM ids (an e-mail given on the command line is
looked up among the CRMs' reps): Redis holds ids, never e-mails. A date means
away through that whole day in the rep's own time zone (back the next
morning); a datetime means away until that instant. Marks expire by
themselves a few days after they end.

Redis alone would forget them in a restart without persistence, so the command
line also writes each mark to mappings/away.yaml (`record_away`, `record_back`),
a file the admin owns, in routing.yaml's `reps: EMAIL: away:` format. The
router reads it as it routes (`FileMarks`: re-read when the file changes), so a
mark outlives Redis on every machine that has the file; keep it with the other
mapping files. Redis carries a new mark to every worker at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

from connector.domain import CrmName, Rep
from connector.errors import UserError
from connector.mappings.routing import AwayPeriod, RoutingConfig, load_away
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


def rep_ids(rep_email_or_id: str, reps: Sequence[Rep]) -> list[str]:
    """The CRM ids a mark is kept under: the id given, or the ids of every rep (any CRM) with that e-mail."""
    ident = _ident(rep_email_or_id)
    if "@" not in ident:
        return [ident]
    return sorted({r.id for r in reps if r.email and r.email.lower() == ident})


def set_away(
    store: redis.Redis,
    rep_email_or_id: str,
    until: dt.date | dt.datetime,
    *,
    reps: Sequence[Rep] = (),
    now: float | None = None,
    prefix: str = PREFIX,
) -> AwayMark:
    """Mark a rep away until `until` (a date: through that day, rep-local; an aware datetime: that instant).

    Redis keeps the mark under the rep's CRM ids (an e-mail is looked up in `reps`), never
    under the e-mail. It is kept until a few days after it ends (counted from `now`).
    """
    ids = rep_ids(rep_email_or_id, reps)
    if not ids:
        raise ValueError(f"no CRM rep has the e-mail {_ident(rep_email_or_id)}")
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
    for rep_id in ids:
        pipe.set(_key(rep_id, prefix), payload, ex=ttl)
    pipe.sadd(_index(prefix), *ids)
    pipe.execute()
    return AwayMark(until)


def set_back(store: redis.Redis, rep_email_or_id: str, reps: Sequence[Rep] = (), *, prefix: str = PREFIX) -> bool:
    """Clear the away mark of the rep (every CRM id with that e-mail, and a mark an older version kept by e-mail)."""
    ident = _ident(rep_email_or_id)
    idents = {ident, *rep_ids(ident, reps)}
    for rep in reps:
        if ident == rep.id and rep.email:
            idents |= {rep.email.lower(), *rep_ids(rep.email, reps)}
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
    """rep id -> the marks set for them.

    Older versions kept a mark set by e-mail under the e-mail: such a mark still counts,
    and is moved under the rep's id (same payload, same expiry) the first time it is seen.
    """
    if not reps:
        return {}
    keys: list[str] = []
    for rep in reps:
        keys += [_key(rep.id, prefix), _key(rep.email.lower() if rep.email else rep.id, prefix)]
    values = store.mget(keys)
    out: dict[str, list[AwayMark]] = {}
    legacy: list[tuple[Rep, Any]] = []
    for i, rep in enumerate(reps):
        by_id, by_email = values[2 * i], values[2 * i + 1]
        if rep.email and by_email is not None and keys[2 * i] != keys[2 * i + 1]:
            legacy.append((rep, by_email))
        marks = [m for m in (_parse(by_id), _parse(by_email)) if m is not None]
        if marks:
            out[rep.id] = marks[:1] if by_id == by_email else marks
    if legacy:
        _move_to_ids(store, legacy, reps, prefix)
    return out


def _move_to_ids(store: redis.Redis, legacy: Sequence[tuple[Rep, Any]], reps: Sequence[Rep], prefix: str) -> None:
    for rep, payload in legacy:
        email = rep.email.lower()
        ttl = int(store.ttl(_key(email, prefix)))
        pipe = store.pipeline(transaction=True)
        for rep_id in rep_ids(email, reps):
            pipe.set(_key(rep_id, prefix), payload, ex=ttl if ttl > 0 else 86400, nx=True)
            pipe.sadd(_index(prefix), rep_id)
        pipe.delete(_key(email, prefix))
        pipe.srem(_index(prefix), email)
        pipe.execute()


def list_away(store: redis.Redis, prefix: str = PREFIX) -> dict[str, AwayMark]:
    """Every mark that is still stored, by the CRM id (or, until moved, the e-mail) it is kept under."""
    out: dict[str, AwayMark] = {}
    for raw_ident in sorted(store.smembers(_index(prefix))):
        ident = raw_ident.decode() if isinstance(raw_ident, bytes) else str(raw_ident)
        mark = _parse(store.get(_key(ident, prefix)))
        if mark is None:
            store.srem(_index(prefix), ident)
        else:
            out[ident] = mark
    return out


# --------------------------------------------------------------------------- mappings/away.yaml

AWAY_HEADER = """\
# Out-of-office periods set with `leadscore reps away` and cleared with `leadscore reps back`.
# The same format as `away:` under `reps:` in routing.yaml (from/until in the rep's time zone;
# until a date: through that day; until a date and time with its zone: until that instant).
# The router reads this file as it routes, so these marks outlive a Redis restart: keep it
# with the other mapping files (version control, deployment). You may edit it by hand.
"""
KEEP_ENDED_DAYS = 7  # ended periods are dropped from the file this long after they end


def earliest_today(now: float) -> dt.date:
    """Today's date where the day began last (UTC-12): from then on a mark set now is in force in every zone."""
    return dt.datetime.fromtimestamp(now - 12 * 3600, dt.UTC).date()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (two admins, or a script marking several reps at once)."""
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Dumper(yaml.SafeDumper):
    """Writes an instant as 2026-12-24T17:00:00Z, which YAML reads back as the same aware time."""


def _instant(dumper: yaml.SafeDumper, value: dt.datetime) -> yaml.ScalarNode:
    text = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return dumper.represent_scalar("tag:yaml.org,2002:timestamp", text)


_Dumper.add_representer(dt.datetime, _instant)


def _write(path: Path, periods: Mapping[str, Sequence[AwayPeriod]]) -> None:
    body = {
        "version": 1,
        "reps": {email: {"away": [p.as_yaml() for p in ps]} for email, ps in sorted(periods.items()) if ps},
    }
    text = AWAY_HEADER + "\n" + yaml.dump(
        body, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _change(path: Path, email: str, change: Any) -> Any:
    try:
        with _locked(path):
            periods = load_away(path)
            result = change(periods)
            _write(path, periods)
            return result
    except OSError as exc:
        raise UserError(
            f"cannot write {path} ({exc.strerror or exc}): the mark must outlive a Redis restart, so make the "
            "mappings folder writable for this command."
        ) from None


def record_away(path: Path, email: str, start: dt.date, until: dt.date | dt.datetime) -> None:
    """Write one period to away.yaml: it replaces the rep's periods that have begun; planned ones stay."""
    email = email.strip().lower()
    period = AwayPeriod.model_validate({"from": start, "until": until})

    def change(periods: dict[str, list[AwayPeriod]]) -> None:
        kept = [p for p in periods.get(email, []) if p.start > start and not p.ended_before(start)]
        periods[email] = sorted([*kept, period], key=lambda p: p.start)
        _drop_ended(periods, start)

    _change(path, email, change)


def record_back(path: Path, email: str, today: dt.date) -> bool:
    """Remove the rep's periods that have begun by `today` from away.yaml; True when one was there."""
    email = email.strip().lower()

    def change(periods: dict[str, list[AwayPeriod]]) -> bool:
        before = periods.get(email, [])
        after = [p for p in before if p.start > today]
        periods[email] = after
        _drop_ended(periods, today)
        return len(after) != len(before)

    if not path.exists():
        return False
    return bool(_change(path, email, change))


def _drop_ended(periods: dict[str, list[AwayPeriod]], today: dt.date) -> None:
    horizon = today - dt.timedelta(days=KEEP_ENDED_DAYS)
    for email in list(periods):
        periods[email] = [p for p in periods[email] if not p.ended_before(horizon)]
        if not periods[email]:
            del periods[email]


class FileMarks:
    """The marks of mappings/away.yaml by e-mail, re-read when the file changes (one stat per call)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._marks: dict[str, list[AwayMark]] = {}
        self._lock = threading.Lock()

    def get(self) -> dict[str, list[AwayMark]]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._seen:
                self._marks = self._read() if stamp is not None else {}
                self._seen = stamp
            return self._marks

    def _read(self) -> dict[str, list[AwayMark]]:
        assert self.path is not None
        try:
            periods = load_away(self.path)
        except UserError:
            # A broken hand edit: keep routing on the marks read before; `leadscore check` names the problem.
            return self._marks
        return {email: [AwayMark(p.until, p.start) for p in ps] for email, ps in periods.items()}

    def for_reps(self, reps: Sequence[Rep]) -> dict[str, list[AwayMark]]:
        """rep id -> the file's marks for that rep's e-mail."""
        marks = self.get()
        if not marks:
            return {}
        return {r.id: marks[r.email.lower()] for r in reps if r.email and r.email.lower() in marks}


def merge_marks(*sources: Mapping[str, Sequence[AwayMark]]) -> dict[str, list[AwayMark]]:
    out: dict[str, list[AwayMark]] = {}
    for source in sources:
        for rep_id, marks in source.items():
            out.setdefault(rep_id, []).extend(marks)
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
    store: redis.Redis,
    config: RoutingConfig,
    reps: Sequence[Rep],
    crm: CrmName,
    now: float,
    prefix: str = PREFIX,
    file_marks: FileMarks | None = None,
) -> list[RepStatus]:
    """Every CRM rep as routing sees them at `now`: regions, availability and why, capacity used today."""
    pool = RedisPool(store, prefix)
    views = [rep_view(config, rep) for rep in reps]
    marks = merge_marks(away_marks(store, reps, prefix), file_marks.for_reps(reps) if file_marks else {})
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
