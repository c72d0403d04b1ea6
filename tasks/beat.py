"""The beat schedule, from configuration: per configured CRM an incremental sync every few
minutes and a full sync once a day; the routing SLA sweep every minute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery.beat import PersistentScheduler
from celery.schedules import crontab

from connector.bootstrap import Runtime


@dataclass(frozen=True)
class Schedule:
    crm: str
    incremental_every_minutes: int
    full_daily_at: str  # "HH:MM" UTC

    def describe(self) -> str:
        return (f"{self.crm}: incremental sync every {self.incremental_every_minutes} min, "
                f"full sync daily at {self.full_daily_at} UTC")


def schedules(rt: Runtime) -> list[Schedule]:
    out = []
    for crm in rt.configured_crms:
        sched = getattr(rt.adapter(crm), "schedule", None)
        every = getattr(sched, "incremental_every_minutes", 5)
        at = getattr(sched, "full_daily_at", "02:30")
        out.append(Schedule(crm, int(every), str(at)))
    return out


def beat_schedule(rt: Runtime) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        "routing-sla": {"task": "leadscore.routing.check_sla", "schedule": 60.0},
    }
    for s in schedules(rt):
        hour, minute = (int(x) for x in s.full_daily_at.split(":"))
        entries[f"{s.crm}-incremental"] = {
            "task": "leadscore.sync.start", "schedule": s.incremental_every_minutes * 60.0,
            "args": (s.crm, False),
        }
        entries[f"{s.crm}-full"] = {
            "task": "leadscore.sync.start", "schedule": crontab(hour=hour, minute=minute),
            "args": (s.crm, True),
        }
    return entries


class ConfiguredScheduler(PersistentScheduler):  # type: ignore[misc]  # celery is untyped
    """Celery's persistent scheduler with the entries computed from our configuration at start."""

    def setup_schedule(self) -> None:
        from tasks.runtime import get_runtime

        self.app.conf.beat_schedule = beat_schedule(get_runtime())
        super().setup_schedule()
