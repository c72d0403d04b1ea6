"""The Celery app. Ack policy and serialization are set once, here.

Tasks are idempotent (see connector/runs.py), so they are acknowledged late
and a task whose worker died is delivered again. Retry countdowns stay well
under the broker's visibility timeout, or a waiting task would be delivered
twice. A sync page whose worker died does not wait for that redelivery: each
worker watches for pages whose claim ran out and sends them again at once
(`resend_lost_pages`, every PAGE_WATCH_S).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from billiard.compat import mem_rss
from celery import Celery, Task
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from celery.worker import state as worker_state

from connector.bootstrap import settle_collector
from connector.config import load_settings
from connector.domain import CrmName
from connector.logs import configure as configure_logs

_settings = load_settings()
# A page task takes seconds and a retry waits at most MAX_COUNTDOWN, both well under this.
# A worker that dies does not make a sync wait this long: its page's claim (connector/runs.py,
# "Lost pages") runs out within seconds and another worker's watch sends the page again. The
# broker's own redelivery, later, finds the page done. The timeout stays long because a shorter one
# would hand out live work too: an ETA task (a retry waiting out its countdown) and a page slowed
# by the rate limiter stay unacknowledged, and kombu redelivers anything older than the timeout.
VISIBILITY_TIMEOUT = _settings.visibility_timeout
# How often each worker looks for pages whose claim ran out (well under connector.leases.LEASE_S).
PAGE_WATCH_S = 3.0
# a task waiting out its countdown is unacknowledged: it must never outlast the visibility timeout
MAX_COUNTDOWN = min(120, VISIBILITY_TIMEOUT // 2)
# How far a pool process may grow past the worker's size at start before it is replaced, after the
# task it is running (_bound_pool), by the CRM it works for: what a pool process settles at after a
# few sync pages, with room to spare (bench/sync.py, 10,000 contacts, 2026-12-05: HubSpot 13-14 MB
# past the start, Salesforce 29-32 MB). A worker configured for both takes the larger.
POOL_GROWTH_MB: dict[CrmName, int] = {"hubspot": 16, "salesforce": 40}

app = Celery("leadscore", include=["tasks.sync", "tasks.routing", "tasks.realtime", "tasks.learn"])
app.conf.update(
    broker_url=_settings.redis_url,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    worker_hijack_root_logger=False,
    task_default_queue="leadscore",
    beat_scheduler="tasks.beat:ConfiguredScheduler",
)


def house_task(**options: Any) -> Any:
    """Our tasks: bound, late-acked, redelivered when a worker dies, a bounded number of retries."""
    defaults: dict[str, Any] = {
        "bind": True,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "max_retries": 8,
    }
    defaults.update(options)
    return app.task(**defaults)


def countdown(task: Task, wait: float | None) -> float:
    """The server's wait when it gave one, else exponential backoff; capped under the visibility timeout."""
    backoff = 2.0 * 2 ** task.request.retries
    return float(min(MAX_COUNTDOWN, wait if wait is not None else backoff))


@worker_init.connect
def _bound_pool(sender: Any = None, **_: Any) -> None:
    """Replace a pool process once it has grown POOL_GROWTH_MB past the worker's size at start.

    CPython gives its small-object arenas back to the system only when they are wholly empty, so a
    process keeps about the most memory it ever needed, and what a long first sync left in it. Without
    this a HubSpot worker's pool process ended 100.3-101.1 MB after 10,000 contacts and up to 110.7 MB
    after 1,000,000 at Professional's rate (bench/sync.py). The bound is Celery's
    worker_max_memory_per_child, which the pool process checks against its peak RSS after each task
    and leaves when past it; the pool starts a fresh one. So nothing is lost or done twice. An
    admin's own `--max-memory-per-child` (or the setting) is left as it is; 0 turns it off.
    """
    if sender is None or getattr(sender, "max_memory_per_child", 0) is not None or not _prefork(sender):
        return
    crms = _settings.configured_crms or list(POOL_GROWTH_MB)
    start_kb = mem_rss()  # the most this process has held so far: its modules loaded
    sender.max_memory_per_child = start_kb + max(POOL_GROWTH_MB[crm] for crm in crms) * 1024
    _pool_bound.update(start_mb=start_kb // 1024, limit_mb=sender.max_memory_per_child // 1024)


def _prefork(worker: Any) -> bool:
    """Whether the worker's pool is of processes (a pool of threads, as the demo runs, has no process to replace)."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    try:
        pool = get_implementation(getattr(worker, "pool_cls", None) or app.conf.worker_pool)
    except Exception:  # noqa: BLE001 - an unknown pool is Celery's to report, not ours
        return False
    return isinstance(pool, type) and issubclass(pool, TaskPool)


_pool_bound: dict[str, int] = {}  # said once logging is set up (worker_ready), which it is not at worker_init


@worker_ready.connect
def _say_pool_bound(**_: Any) -> None:
    if _pool_bound:
        logging.getLogger("leadscore.tasks").info(
            "a pool process is replaced after its task once it holds more than %d MB", _pool_bound["limit_mb"],
            extra={"event": "pool_bounded", **_pool_bound},
        )


@setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery's own records too go through connector/logs.py (JSON in production, redacted)."""
    level = loglevel if isinstance(loglevel, str) else (logging.getLevelName(loglevel) if loglevel else None)
    configure_logs(level=level, settings=_settings)


@worker_process_init.connect
def _init_worker(**_: Any) -> None:
    configure_logs(settings=_settings)
    settle_collector()


_heartbeat_stop = threading.Event()


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Tell `leadscore status` this worker is alive: its name in Redis every WORKER_HEARTBEAT_S."""
    from connector.status import WORKER_HEARTBEAT_S, Recorder
    from tasks.runtime import get_runtime

    name = str(getattr(sender, "hostname", None) or "worker")

    def beat() -> None:
        while True:
            try:
                rt = get_runtime()
                Recorder(rt.redis, rt.namespace).worker_seen(name, time.time())
            except Exception:  # noqa: BLE001, S110 - a heartbeat never stops a worker; the next one tries again
                pass
            if _heartbeat_stop.wait(WORKER_HEARTBEAT_S):
                return

    slots = int(getattr(getattr(sender, "controller", None), "concurrency", None) or 1)

    def watch() -> None:
        from tasks.sync import resend_lost_pages

        failing = False
        while not _heartbeat_stop.wait(PAGE_WATCH_S):
            if len(worker_state.active_requests) >= slots:
                # Every slot of this worker is taken: a page sent again now would only wait in the
                # queue behind the work it is waiting for already (a first sync's hour of web events
                # on a big portal), and be reported lost when nothing is. A worker with a free slot
                # sends it, and takes it itself.
                continue
            try:
                resend_lost_pages()
                failing = False
            except Exception:  # the watch never stops a worker; the next round tries again
                if not failing:  # said once, not every few seconds while Redis is away
                    logging.getLogger("leadscore.tasks").warning("lost-page watch failed", exc_info=True)
                failing = True

    _heartbeat_stop.clear()
    threading.Thread(target=beat, name="leadscore-heartbeat", daemon=True).start()
    threading.Thread(target=watch, name="leadscore-page-watch", daemon=True).start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _heartbeat_stop.set()


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    from tasks.runtime import close_runtime

    close_runtime()
