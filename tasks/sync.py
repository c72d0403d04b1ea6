"""Sync tasks: thin wrappers that call connector.sync and decide about retries."""

from __future__ import annotations

import logging
from typing import Any

from connector import sync
from connector.domain import CRMS, CrmName
from connector.errors import RetryLater, StopSync
from tasks.app import countdown, house_task
from tasks.runtime import get_runtime

log = logging.getLogger("leadscore.tasks")


def enqueue_run(crm: CrmName, full: bool) -> sync.Started:
    """Start a run and enqueue its first pages; used by the beat task and by `leadscore sync`."""
    rt = get_runtime()
    started, firsts = sync.start_run(rt, crm, full=full)
    for stream, since in firsts:
        sync_page.delay(started.run_id, crm, stream, None, since)
    return started


@house_task(name="leadscore.sync.start")
def start_sync(self: Any, crm: CrmName, full: bool = False) -> str:
    started = enqueue_run(crm, full)
    if started.skipped_for:
        log.info("sync skipped", extra={"event": "run_skipped", "crm": crm, "holder": started.skipped_for})
    return started.run_id


@house_task(name="leadscore.sync.page")
def sync_page(self: Any, run_id: str, crm: CrmName, stream: str, cursor: str | None, since: float | None) -> None:
    rt = get_runtime()

    def enqueue_next(next_cursor: str) -> None:
        sync_page.delay(run_id, crm, stream, next_cursor, since)

    # The page's claim, renewed while this worker lives: if it dies, another worker's watch
    # (resend_lost_pages) sends the page again within seconds (connector/runs.py, "Lost pages").
    lease = rt.runs.claim_page(run_id, stream, cursor, holder=str(self.request.hostname or "worker"))
    if lease is None:
        return  # done already, or a live worker is on it: this is a duplicate of a page sent again
    try:
        sync.run_page(rt, run_id, crm, stream, cursor, since, enqueue_next)
    except RetryLater as exc:
        if self.request.retries >= self.max_retries:
            sync.fail_page(rt, run_id, crm, stream, cursor, f"gave up after {self.request.retries} retries: {exc}",
                           stop=False)
            return
        wait = countdown(self, exc.wait)
        rt.runs.wait_page(run_id, stream, cursor, wait)  # whoever holds the retry answers for the page
        raise self.retry(countdown=wait, exc=exc) from None
    except StopSync as exc:
        sync.fail_page(rt, run_id, crm, stream, cursor, str(exc), stop=True)
    except Exception as exc:
        log.exception("page crashed", extra={"event": "page_crashed", "run": run_id, "crm": crm})
        sync.fail_page(rt, run_id, crm, stream, cursor, f"internal error: {type(exc).__name__}", stop=False)
    finally:
        rt.runs.release_page(lease)


def resend_lost_pages(now: float | None = None) -> int:
    """Send again each page of a running sync whose claim ran out (its worker died); returns how many.

    Every worker calls this every few seconds (tasks/app.py); RunStore.resend_lost hands each lost
    page to one caller only.
    """
    rt = get_runtime()
    sent = 0
    for crm in CRMS:
        run_id = rt.runs.lock_holder(crm)
        if run_id is None:
            continue
        for page in rt.runs.resend_lost(run_id, now):
            sync_page.delay(run_id, crm, page.stream, page.cursor, page.since)
            log.warning("lost page sent again", extra={"event": "page_resent", "run": run_id, "crm": crm,
                                                       "stream": page.stream})  # fmt: skip
            sent += 1
    return sent


@house_task(name="leadscore.sync.retry")
def retry_records(self: Any, crm: CrmName | None = None) -> int:
    """The periodic retry (beat): write again the due records of each stream's retry set.

    Skipped for an account whose sync runs: its first pages take the retry set up first.
    """
    rt = get_runtime()
    taken = 0
    for name in [crm] if crm else rt.configured_crms:
        if rt.runs.lock_holder(name) is not None:
            continue
        for stream in rt.adapter(name).streams:
            try:
                result = sync.retry_due(rt, name, stream, batches=sync.RUN_RETRY_BATCHES)
            except StopSync as exc:
                log.warning("retry stopped", extra={"event": "retry_stopped", "crm": name, "why": str(exc)})
                break
            taken += result.counts.get("retried", 0)
            rt.metrics.incr("records_written", result.counts.get("written", 0), crm=name, path="retry")
    return taken
