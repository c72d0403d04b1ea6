"""A whole sync run in the test's own process: every page through connector.sync, one after another,
in the order one worker would take them (what the Celery tasks do, without a broker)."""

from __future__ import annotations

import collections

from connector import sync
from connector.bootstrap import Runtime
from connector.domain import CrmName
from connector.errors import RetryLater
from connector.runs import RunView


def run_in_process(
    rt: Runtime,
    crm: CrmName,
    *,
    full: bool = True,
    now: float | None = None,
    started_at: float | None = None,
    page_retries: int = 0,
) -> RunView:
    """Start a run and process its pages until none is left; the run as it then stands.

    `now`: the pages score as at that moment; `started_at`: the run starts then (its cursors follow it);
    both the real time when None. `page_retries`: how often a page that asks to be retried (RetryLater)
    is run again, as a worker's task would be, before the error is let through.
    """
    started, firsts = sync.start_run(rt, crm, full=full, now=started_at)
    assert started.skipped_for is None
    queue: collections.deque[tuple[str, str | None, float | None]] = collections.deque(
        (stream, None, since) for stream, since in firsts
    )
    while queue:
        stream, cursor, since = queue.popleft()

        def enqueue(nxt: str, s: str = stream, si: float | None = since) -> None:
            queue.append((s, nxt, si))

        for attempt in range(page_retries + 1):
            try:
                sync.run_page(rt, started.run_id, crm, stream, cursor, since, enqueue, now=now)
                break
            except RetryLater:
                if attempt == page_retries:
                    raise
    view = rt.runs.get(started.run_id)
    assert view is not None
    return view
