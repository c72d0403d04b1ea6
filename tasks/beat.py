"""The beat schedule, from configuration: per configured CRM an incremental sync every few
minutes and a full sync once a day; the routing SLA sweep every minute; failed rep notifications
retried every 30 s (each with its own backoff); score writes that failed for a passing reason
retried every minute (connector/retry.py); per CRM a backtest of the model in use once a week
(Mondays at BACKTEST_AT UTC), its figures kept in Redis for `leadscore status`; with a model store,
the learned probability retrained on scoring.yaml's `probability.retrain` schedule."""

from __future__ import annotations

from typing import Any

from celery.beat import PersistentScheduler
from celery.schedules import crontab

from connector.bootstrap import Runtime
from connector.domain import CrmName
from connector.mappings.schedule import SyncSchedule
from connector.retry import RETRY_EVERY_SECONDS

# The weekly backtest: Monday early morning UTC, after the night's full syncs.
BACKTEST_DAY = "mon"
BACKTEST_AT = (4, 15)


def schedules(rt: Runtime) -> list[tuple[CrmName, SyncSchedule]]:
    """Each configured CRM with the `schedule:` section of its mapping file."""
    return [(crm, rt.schedule(crm)) for crm in rt.configured_crms]


def beat_schedule(rt: Runtime) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        "routing-sla": {"task": "leadscore.routing.check_sla", "schedule": 60.0},
        "routing-notifications": {"task": "leadscore.routing.send_notifications", "schedule": 30.0},
        "sync-retry": {"task": "leadscore.sync.retry", "schedule": RETRY_EVERY_SECONDS},
    }
    for crm, s in schedules(rt):
        hour, minute = (int(x) for x in s.full_daily_at.split(":"))
        entries[f"{crm}-incremental"] = {
            "task": "leadscore.sync.start", "schedule": s.incremental_every_minutes * 60.0,
            "args": (crm, False),
        }
        entries[f"{crm}-full"] = {
            "task": "leadscore.sync.start", "schedule": crontab(hour=hour, minute=minute),
            "args": (crm, True),
        }
        retrain = rt.model.spec.probability.retrain
        if rt.settings.model_store and retrain.every_days > 0:
            # daily at the stated time; the task trains only when the last training is every_days old
            hour, minute = (int(x) for x in retrain.at.split(":"))
            entries[f"{crm}-retrain"] = {
                "task": "leadscore.learn.retrain", "schedule": crontab(hour=hour, minute=minute), "args": (crm,),
            }
        entries[f"{crm}-backtest"] = {
            "task": "leadscore.learn.backtest",
            "schedule": crontab(day_of_week=BACKTEST_DAY, hour=BACKTEST_AT[0], minute=BACKTEST_AT[1]),
            "args": (crm,),
        }
    return entries


class ConfiguredScheduler(PersistentScheduler):  # type: ignore[misc]  # celery is untyped
    """Celery's persistent scheduler with the entries computed from our configuration at start."""

    def setup_schedule(self) -> None:
        from tasks.runtime import get_runtime

        self.app.conf.beat_schedule = beat_schedule(get_runtime())
        super().setup_schedule()
