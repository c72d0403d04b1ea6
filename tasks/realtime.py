"""Real-time tasks: drain the pending ids of one (crm, stream), purge a deleted record.

Thin like the sync tasks: ids come from Redis (connector.webhooks), one service
call rescores them (connector.sync.rescore through connector.webhooks.drain),
and the retry decision is made here. The task id names the drain's in-flight
set, so a retried or redelivered drain rescores the same ids again.

`CeleryDispatcher` is how the web process (connector/web.py) schedules these.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery.signals import task_postrun, task_prerun
from kombu.connection import Connection

from connector import webhooks
from connector.domain import CrmName
from connector.errors import RetryLater, StopSync
from connector.metrics import Metrics
from tasks.app import app, countdown, house_task
from tasks.runtime import get_runtime

log = logging.getLogger("leadscore.tasks")


@house_task(name="leadscore.realtime.rescore_pending", max_retries=6)  # type: ignore[untyped-decorator]
def rescore_pending(self: Any, crm: CrmName, stream: str) -> int:
    rt = get_runtime()
    token = str(self.request.id or f"local-{time.time_ns()}")

    def schedule(crm_: CrmName, stream_: str, delay: float) -> None:
        rescore_pending.apply_async((crm_, stream_), countdown=delay or None)

    try:
        return webhooks.drain(rt, crm, stream, token, schedule).taken
    except RetryLater as exc:
        if self.request.retries >= self.max_retries:
            webhooks.give_up(rt, crm, stream, token, put_back=True, why=f"gave up after retries: {exc}")
            return 0
        raise self.retry(countdown=countdown(self, exc.wait), exc=exc) from None
    except StopSync as exc:
        # Nothing will work until an admin acts: keep the ids for the drain after the fix.
        webhooks.give_up(rt, crm, stream, token, put_back=True, why=str(exc))
        return 0
    except Exception as exc:
        log.exception("drain crashed", extra={"event": "realtime_crashed", "crm": crm, "stream": stream})
        if self.request.retries >= self.max_retries:
            webhooks.give_up(rt, crm, stream, token, put_back=False, why=f"internal error: {type(exc).__name__}")
            return 0
        raise self.retry(countdown=countdown(self, None), exc=exc) from None


@house_task(name="leadscore.realtime.purge")  # type: ignore[untyped-decorator]
def purge(self: Any, lead_keys: list[str]) -> int:
    rt = get_runtime()
    touched = 0
    for key in lead_keys:
        touched += webhooks.purge_record(rt, key)
        Metrics(rt.redis, rt.namespace).incr("purges", crm=key.partition(":")[0])
    return touched


class CeleryDispatcher:
    """Sends the real-time tasks to the broker at `broker_url` (the web process's REDIS_URL)."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = app.connection_for_write(self.broker_url)
        return self._conn

    def _send(self, task: Any, args: tuple[Any, ...], delay: float | None) -> None:
        with self._lock:
            try:
                task.apply_async(
                    args,
                    countdown=delay or None,
                    connection=self._connection(),
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.05, "interval_step": 0.2},
                )
            except Exception:
                self.close()  # start from a fresh connection next time
                raise

    def schedule_drain(self, crm: CrmName, stream: str, delay: float) -> None:
        self._send(rescore_pending, (crm, stream), delay)

    def purge(self, lead_keys: Iterable[str]) -> None:
        self._send(purge, (list(lead_keys),), None)

    def check(self) -> str | None:
        """None when the broker answers, else why not (for /readyz). Uses a fresh connection each time."""
        conn = app.connection_for_write(self.broker_url)
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)  # type: ignore[no-untyped-call]
            client = getattr(conn.default_channel, "client", None)  # the Redis transport connects lazily: ping it
            if client is not None:
                client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            return f"broker unreachable ({type(exc).__name__})"
        finally:
            conn.release()  # type: ignore[no-untyped-call]
        return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()  # type: ignore[no-untyped-call]
            finally:
                self._conn = None


# Task latency for every task of the worker, into the shared metrics (read by the web process's /metrics).
_started: dict[str, float] = {}


@task_prerun.connect  # type: ignore[untyped-decorator]
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    began = _started.pop(task_id, None) if task_id else None
    if began is None or task is None:
        return
    try:
        rt = get_runtime()
    except Exception:  # noqa: BLE001 - a metric never breaks a worker
        return
    Metrics(rt.redis, rt.namespace).observe("task_seconds", time.monotonic() - began, task=str(task.name))


__all__ = ["CeleryDispatcher", "purge", "rescore_pending"]
