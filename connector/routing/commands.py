"""`leadscore reps away` and `leadscore reps back`: the mark in mappings/away.yaml first, then in Redis.

The file is written first: if it cannot be written, nothing is marked and the admin is
told, because a mark kept only in Redis would vanish in a restart without persistence.
Redis then carries the mark to every running worker at once (they also re-read the
file when it changes, on the machines that have it).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from connector.errors import UserError
from connector.mappings.routing import AWAY_FILE
from connector.routing import away, service

if TYPE_CHECKING:
    from connector.bootstrap import Runtime
    from connector.domain import Rep


def _reps(rt: Runtime) -> list[Rep]:
    router = rt.router
    return [r for crm in service._configured(router) for r in router.reps(crm)]


def _email_of(who: str, reps: list[Rep]) -> str:
    wanted = who.strip()
    if "@" in wanted:
        return wanted.lower()
    for rep in reps:
        if rep.id == wanted and rep.email:
            return rep.email.lower()
    raise UserError(f"the CRM gives no e-mail for rep {wanted}: mark the rep by e-mail.")


def reps_away(rt: Runtime, who: str, until: dt.date | dt.datetime, now: float | None = None) -> str:
    """Mark a rep away until `until`; returns the line to print."""
    now = time.time() if now is None else now
    reps = _reps(rt)
    email = _email_of(who, reps)
    path = rt.mappings_dir / AWAY_FILE
    away.record_away(path, email, away.earliest_today(now), until)
    if away.rep_ids(email, reps):
        service.set_away(rt.router, email, until, now=now)
    return f"kept in {path}: keep that file with your mappings so the mark outlives a Redis restart"


def reps_back(rt: Runtime, who: str, now: float | None = None) -> list[str]:
    """Clear a rep's away marks that have begun (planned ones in away.yaml stay); returns lines to print."""
    now = time.time() if now is None else now
    reps = _reps(rt)
    email = _email_of(who, reps)
    latest_today = dt.datetime.fromtimestamp(now + 14 * 3600, dt.UTC).date()  # UTC+14: where the day began first
    away.record_back(rt.mappings_dir / AWAY_FILE, email, latest_today)
    service.set_back(rt.router, email)
    lines = []
    override = rt.router.config.override_for(email)
    for period in override.away if override is not None else ():
        if not period.ended_before(dt.datetime.fromtimestamp(now, dt.UTC).date()):
            lines.append(
                f"note: routing.yaml still lists {email} away from {period.start} until {period.until}; "
                "remove that period there if it no longer holds"
            )
    return lines
