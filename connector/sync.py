"""The sync service: read a page, score it, write back what changed, route new hot leads.

Celery tasks call these functions and nothing else; the same functions serve
the batch sync, the on-demand sync and the webhook rescore, so there is one
implementation of "what happens to a record".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connector.bootstrap import Runtime
from connector.crm.limits import bulk_work
from connector.domain import CrmName, Lead
from connector.engine import ScoreResult, must_write
from connector.errors import RecordError, RetryLater, StopSync
from connector.routing.service import HotLead
from connector.runs import PageResult
from connector.status import Recorder

log = logging.getLogger("leadscore.sync")

# Search indexes lag writes by a few moments: an incremental cursor is never
# moved closer than this to the time its run started, so a record changed just
# before the run but not yet searchable is read by the next run.
SEARCH_LAG_SECONDS = 60.0
# The first page of each stream of a run writes again up to this many claims of the retry set
# (connector/retry.py CLAIM_MAX ids each) before its own records; the periodic retry does the rest.
RUN_RETRY_BATCHES = 5


@dataclass(frozen=True)
class Started:
    run_id: str
    skipped_for: str | None  # the run already holding the account's lock, when this one was skipped


def start_run(
    rt: Runtime, crm: CrmName, *, full: bool, now: float | None = None
) -> tuple[Started, list[tuple[str, float | None]]]:
    """Create a run and take the account's lock.

    Returns the run and the first page of each stream to enqueue as (stream, since).
    A second sync of the same account while one runs is skipped and says which run holds it.
    """
    now = time.time() if now is None else now
    adapter = rt.adapter(crm)
    runs = rt.runs
    run_id = runs.new_run(crm, "full" if full else "incremental", adapter.streams, now)
    holder = runs.try_lock(crm, run_id)
    if holder is not None:
        runs.set(run_id, status="skipped", message=f"skipped: sync {holder} of {crm} is still running",
                 finished=f"{time.time():.3f}")
        rt.metrics.incr("syncs", crm=crm, status="skipped")
        return Started(run_id, holder), []
    runs.set(run_id, status="running", started=f"{now:.3f}")
    firsts: list[tuple[str, float | None]] = []
    for stream in adapter.streams:
        since = None if full else runs.cursor(crm, stream)
        runs.add_page(run_id, stream, None, since)
        firsts.append((stream, since))
    # Whether each stream is read in order of modification (since set) or not (a full read): see finish_run.
    if firsts:
        runs.set(run_id, **{f"since:{stream}": "" if since is None else repr(since) for stream, since in firsts})
    log.info("run started", extra={"event": "run_started", "run": run_id, "crm": crm, "full": full})
    return Started(run_id, None), firsts


def score_leads(rt: Runtime, crm: CrmName, stream: str, leads: Sequence[Lead], now: float, result: PageResult) -> None:
    """Score leads (activities already loaded), route new hot leads, write back the changed ones.

    The leads' activities are emptied once scored (they are not needed after, and are a page's largest part).
    """
    adapter = rt.adapter(crm)
    model = rt.model
    updates: dict[str, dict[str, str]] = {}
    hot: list[tuple[Lead, ScoreResult, bool]] = []
    cooled: list[str] = []
    scored_ids: set[str] = set()
    page: list[tuple[Lead, ScoreResult]] = []
    for lead in leads:
        try:
            page.append((lead, model.score(lead.profile, lead.activities, now)))
        except Exception as exc:
            result.add("failed")
            result.failures.append(f"{lead.key}: could not be scored ({type(exc).__name__})")
            log.exception("scoring failed", extra={"event": "score_failed", "record": lead.key})
            continue
    learned = _probabilities(rt, crm, page, now, result)
    # Scoring has read the activities; routing and the writes need the scores only. Dropped here, the
    # page's largest part (some 10 activities a lead) is not held through them, which lowers a
    # worker's peak memory per page (bench/sync.py, issue 16).
    for lead in leads:
        lead.activities = []
    band_from = model.spec.probability
    for i, (lead, scored) in enumerate(page):
        result.add("scored")
        scored_ids.add(lead.id)
        extra: dict[str, str] = {}
        if learned is not None:
            percent, factors = learned[i]
            extra = {"probability": str(percent), "factors": factors}
            if band_from.band_from == "probability":
                scored = scored._replace(band=band_from.bands.band(percent))
        result.add(f"band:{scored.band}")
        values = scored.write_values(now)
        values.update(extra)
        if must_write(values, lead.written):  # reasons: by their evidence, not a decayed rule's points
            updates[lead.id] = values
        else:
            result.add("unchanged")
        if scored.band == "hot":
            result.add("hot")
            hot.append((lead, scored, lead.written.get("band") != "hot"))
        elif lead.written.get("band") == "hot":
            cooled.append(lead.key)
    if crm == "salesforce" and rt.echo_filter is not None:
        # What scoring read, so the Outbound Messages our own writes fire are known as echoes: kept
        # before routing, whose owner write (the first of them) fires one too.
        rt.echo_filter.remember(stream, [lead for lead in leads if lead.id in scored_ids])
    # Route before writing: until the band "hot" is in the CRM, a rerun of this page (a worker
    # killed, Redis lost) still sees these leads as newly hot, and the router resumes or
    # redoes their routing instead of skipping them as "owned and already hot".
    # Routing decides by its own clock (the real time, or LEADSCORE_ROUTING_AT), scoring by `now`.
    today = Recorder(rt.redis, rt.namespace)
    # owned and already hot last time: nothing new for routing
    routed = [(lead, scored, became_hot) for lead, scored, became_hot in hot
              if lead.owner_id is None or became_hot]  # fmt: skip
    # the page's hot leads at once: owners, tasks and re-reads in a few batch calls, not a few per lead
    calls_before = adapter.calls.this_thread
    outcomes = rt.router.assign_hot_leads(
        [HotLead(lead, stream, scored, became_hot=became_hot) for lead, scored, became_hot in routed],
        rt.router.clock(),
    ) if routed else []  # fmt: skip
    for (lead, _, became_hot), decision in zip(routed, outcomes, strict=True):
        if isinstance(decision, RecordError):
            result.add("failed")
            result.failures.append(f"{lead.key}: not assigned: {decision.message}")
            continue
        if became_hot:
            today.hot_lead(crm, decision.region, time.time())
        if decision.assigned_now:
            today.assigned(crm, decision.region, decision.rep_id or "", time.time())
            result.add("assigned")
            rt.metrics.incr("assignments", crm=crm, region=decision.region or "")
            # lead's region > where it went (another region on fallback, "queue" for the fallback owner) : rep id
            went = "queue" if decision.outcome == "fallback_owner" else (decision.chosen_region or decision.region)
            result.add(f"assigned:{decision.region}>{went}:{decision.rep_id}")
        elif decision.outcome == "unassigned":
            result.add("unassigned")
    result.add("calls:routing", adapter.calls.this_thread - calls_before)
    # Before the write, like routing: while the CRM still says hot, a rerun closes the episode again.
    for key in cooled:
        rt.router.lead_cooled(key)
        result.add("cooled")
    settled = [lead.id for lead in leads if lead.id not in updates]  # unchanged, or could not be scored
    if updates:
        calls_before = adapter.calls.this_thread
        report = adapter.write_scores(stream, updates)
        result.add("calls:writes", adapter.calls.this_thread - calls_before)
        result.add("written", len(report.written))
        settled += report.written
        for record_id, message in report.failed:
            result.add("failed")
            result.failures.append(f"{crm}:{stream}:{record_id}: {message}")
            settled.append(record_id)
        if report.retry:
            # Not written for a reason that passes: kept for the next run and the periodic retry,
            # so the cursor may move on without losing them.
            rt.retries.add(crm, stream, report.retry, time.time())
            result.add("retrying", len(report.retry))
            for record_id, message in report.retry[:50]:
                result.failures.append(f"{crm}:{stream}:{record_id}: will be retried: {message}")
    # Whatever is settled now needs no retry any more (a no-op for ids the set does not hold).
    rt.retries.done(crm, stream, settled)


def _probabilities(
    rt: Runtime, crm: CrmName, page: Sequence[tuple[Lead, ScoreResult]], now: float, result: PageResult
) -> list[tuple[int, str]] | None:
    """The learned probability and factors of each scored lead, in the same pass; None without an active model.

    A model that fails on this page costs the page its probabilities, not its scores.
    """
    if not page or rt.predictors is None:
        return None
    predictor = rt.predictors.get(crm)
    if predictor is None:
        return None
    try:
        out: list[tuple[int, str]] = predictor.apply([(lead.profile, lead.activities, s) for lead, s in page], now)
    except Exception as exc:
        result.add("probability_failed", len(page))
        log.exception("probability failed", extra={"event": "probability_failed", "crm": crm,
                                                   "model": predictor.version, "why": type(exc).__name__})
        return None
    result.add("probability", len(out))
    return out


@bulk_work
def run_page(
    rt: Runtime,
    run_id: str,
    crm: CrmName,
    stream: str,
    cursor: str | None,
    since: float | None,
    enqueue_next: Callable[[str], None],
    now: float | None = None,
) -> int | None:
    """Process one page of a run. Returns the pages still pending after it, None if it was done before.

    Raises RetryLater for the task to retry, StopSync to stop the run. Its calls are bulk work: they
    leave the last slots of each rate window to webhook rescores (connector/crm/limits.py).
    """
    runs = rt.runs
    if runs.page_done(run_id, stream, cursor):
        return None
    if runs.status(run_id) == "failed":
        # the run was stopped (StopSync on another page): count this page out without work
        left = runs.finish_page(run_id, stream, cursor, PageResult(), ok=False)
        if left == 0:
            finish_run(rt, run_id)
        return left
    page_began = time.time()
    now = page_began if now is None else now
    started = time.perf_counter()
    adapter = rt.adapter(crm)
    calls_before = adapter.calls.this_thread
    try:
        page = adapter.read_page(stream, cursor, since=since)
    except Exception:
        spent = adapter.calls.this_thread - calls_before
        runs.add_spent(run_id, {"api_calls": spent, "calls:list": spent})
        raise
    calls_read = adapter.calls.this_thread - calls_before
    if page.next_cursor is not None and runs.add_page(run_id, stream, page.next_cursor, since):
        # enqueue the next page before working on this one, so other workers read ahead
        enqueue_next(page.next_cursor)
    if cursor is None and page.total is not None:
        runs.set(run_id, **{f"expected:{stream}": page.total})  # for the time left in `sync --wait`
    result = PageResult(high_water=page.high_water)
    result.add("read", len(page.leads))
    for record_id, why in page.problems:
        result.add("failed")
        result.failures.append(f"{crm}:{stream}:{record_id}: {why}")
    # calls by part (list, activities, routing, writes) for the benchmarks' calls per 1,000 records
    result.add("calls:list", calls_read)
    if page.leads:
        try:
            before_activities = adapter.calls.this_thread
            adapter.load_activities(page.leads, now)
            result.add("calls:activities", adapter.calls.this_thread - before_activities)
            score_leads(rt, crm, stream, page.leads, now, result)
        except StopSync:
            raise
        except Exception:
            # If this keeps failing, the page's records go to the retry set (fail_page), so
            # the rest of the run can finish and move the cursor without losing them.
            runs.hold(run_id, stream, cursor, [lead.id for lead in page.leads])
            runs.add_spent(run_id, _spent(result, adapter.calls.this_thread - calls_before))
            raise
    if cursor is None:
        # A run takes up first what earlier runs could not write (connector/retry.py).
        # Only what was due when this page began: not what the page itself just put there.
        before_retry = adapter.calls.this_thread
        counted = result.counts.get("calls:routing", 0) + result.counts.get("calls:writes", 0)
        retry_due(rt, crm, stream, now, result, batches=RUN_RETRY_BATCHES, due_by=page_began)
        # re-reading the retried records counts as writing them (score_leads counted the rest)
        counted = result.counts.get("calls:routing", 0) + result.counts.get("calls:writes", 0) - counted
        result.add("calls:writes", adapter.calls.this_thread - before_retry - counted)
    result.add("api_calls", adapter.calls.this_thread - calls_before)
    runs.refresh_lock(crm, run_id)
    left = runs.finish_page(run_id, stream, cursor, result)
    if left is not None:  # counted once, like the run's own figures
        _page_metrics(rt, crm, stream, result, ok=True)
    log.info(
        "page done",
        extra={
            "event": "page",
            "run": run_id,
            "crm": crm,
            "stream": stream,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            **result.counts,
        },
    )
    if left == 0:
        finish_run(rt, run_id)
    return left


def _spent(result: PageResult, spent: int) -> dict[str, int]:
    """The calls of a page's attempt that raised, by part: those its result counted, the rest to the
    part under way (activities, else routing, else the writes). A page that waits for the look-back's
    web events (connector/crm/hubspot_events.py) reads many of them before it is retried."""
    parts = {k: n for k, n in result.counts.items() if k.startswith("calls:")}
    rest = spent - sum(parts.values())
    under_way = next((k for k in ("calls:activities", "calls:routing", "calls:writes") if k not in parts),
                     "calls:writes")  # fmt: skip
    parts[under_way] = parts.get(under_way, 0) + max(0, rest)
    return {"api_calls": spent, **parts}


def _page_metrics(
    rt: Runtime, crm: CrmName, stream: str, result: PageResult, ok: bool, outcome: str | None = None
) -> None:
    m = rt.metrics
    m.incr("api_rate_limited", rt.adapter(crm).calls.take_limited(), crm=crm)
    # outcome "deferred": a page that kept failing and handed its records to the retry set
    m.incr("pages", crm=crm, stream=stream, outcome=outcome or ("ok" if ok else "failed"))
    m.incr("records_scored", result.counts.get("scored", 0), crm=crm, path="sync")
    m.incr("records_written", result.counts.get("written", 0), crm=crm, path="sync")
    m.incr("api_calls", result.counts.get("api_calls", 0), crm=crm)


def fail_page(rt: Runtime, run_id: str, crm: CrmName, stream: str, cursor: str | None, why: str, stop: bool) -> None:
    """A page failed for good: count it, and stop the run when the failure says nothing more will work.

    A page that was read but whose processing kept failing is not a failure of the run: its
    records go to the retry set, to be retried on their own, and the run may finish and move
    the cursor. A page that could not even be read fails the run; the cursor still moves up to
    the pages read before it (the pages of a stream are read one after another, so none after
    it was read), so the window the next run reads does not keep growing.
    """
    runs = rt.runs
    result = PageResult()
    held = [] if stop else runs.take_held(run_id, stream, cursor)
    if held:
        rt.retries.add(crm, stream, [(i, f"its page kept failing: {why}") for i in held], time.time())
        result.add("retrying", len(held))
        result.failures.append(f"{crm}:{stream}: {len(held)} record(s) of a page that kept failing will be "
                               f"retried on their own: {why}")
    else:
        result.failures.append(f"{crm}:{stream}: page failed: {why}")
        result.add(f"unread:{stream}")  # the pages after it were never read (see finish_run)
    if stop:
        runs.set(run_id, status="failed", message=why)
    if held:
        result.add("pages_deferred")
    left = runs.finish_page(run_id, stream, cursor, result, ok=bool(held))
    if left is not None:
        _page_metrics(rt, crm, stream, result, ok=False, outcome="deferred" if held else "failed")
    log.warning("page failed", extra={"event": "page_failed", "run": run_id, "crm": crm, "stream": stream, "why": why,
                                      "retrying": len(held)})
    if left == 0:
        finish_run(rt, run_id)


def finish_run(rt: Runtime, run_id: str) -> None:
    runs = rt.runs
    view = runs.get(run_id)
    if view is None:
        return
    crm = view.fields["crm"]
    ok = view.count("pages_failed") == 0 and view.status != "failed"
    if view.status != "failed":
        # Every record of every page read is written, settled, or in the retry set: the cursor
        # may move past them all. When a page could not be read, none after it was; that is
        # safe for a read in order of modification (every unread record is newer than the
        # cursor), not for a full read (the list comes in id order): such a stream keeps its cursor.
        # A stopped run (StopSync) moves nothing: a page read before the stop may have been
        # dropped unprocessed while a later one finished.
        started = float(view.fields.get("started") or view.fields.get("created") or time.time())
        highs = runs.high_waters(run_id)
        # A stream read whole (list, not search) saw every record after the run started: whatever
        # changed before that is scored, even when the newest modification it saw is older. The next
        # incremental run, and its web events part, start there instead of re-reading what this one scored.
        streams = [s for s in view.fields.get("streams", "").split(",") if s]
        highs |= {stream: started for stream in streams if view.fields.get(f"since:{stream}") == ""}
        for stream, high in highs.items():
            if view.count(f"unread:{stream}") and not view.fields.get(f"since:{stream}"):
                continue
            runs.save_cursor(crm, stream, min(high, started - SEARCH_LAG_SECONDS))
    message: dict[str, str] = {}
    if not ok and not view.fields.get("message"):
        message = {"message": f"{view.count('pages_failed')} page(s) failed"}
    elif ok and view.count("retrying"):
        message = {"message": f"{view.count('retrying')} record(s) not written yet are kept for the retry"}
    runs.set(run_id, status="done" if ok else "failed", finished=f"{time.time():.3f}", **message)
    runs.release_lock(crm, run_id)
    rt.metrics.incr("syncs", crm=crm, status="done" if ok else "failed")
    log.info("run finished", extra={"event": "run_finished", "run": run_id, "crm": crm, "ok": ok})


@bulk_work
def retry_due(
    rt: Runtime, crm: CrmName, stream: str, now: float | None = None, result: PageResult | None = None,
    *, batches: int = 1, due_by: float | None = None,
) -> PageResult:
    """Write again the records of the retry set that are due: re-read, scored now, through score_leads.

    Up to `batches` claims of CLAIM_MAX ids due by `due_by` (default: now). Records written,
    unchanged or gone leave the set; those that fail again stay, with a longer wait; a batch
    whose re-read fails goes back as a whole. Bulk work, like a sync page (connector/crm/limits.py).
    """
    result = PageResult() if result is None else result
    now = time.time() if now is None else now
    adapter = rt.adapter(crm)
    for _ in range(batches):
        ids = rt.retries.claim(crm, stream, time.time() if due_by is None else due_by)
        if not ids:
            break
        result.add("retried", len(ids))
        try:
            leads = adapter.get_leads(stream, ids)
            result.add("read", len(leads))
            found = {lead.id for lead in leads}
            rt.retries.done(crm, stream, [i for i in ids if i not in found])  # deleted meanwhile: nothing to write
            if leads:
                adapter.load_activities(leads, now)
                score_leads(rt, crm, stream, leads, now, result)
        except StopSync:
            rt.retries.add(crm, stream, [(i, "the sync was stopped") for i in ids], time.time())
            raise
        except Exception as exc:  # noqa: BLE001 - they stay in the set, with the reason, for the next try
            why = str(exc) if isinstance(exc, RetryLater) else f"internal error: {type(exc).__name__}"
            rt.retries.add(crm, stream, [(i, why) for i in ids], time.time())
            result.failures.append(f"{crm}:{stream}: {len(ids)} record(s) to retry could not be re-read: {why}")
            log.warning("retry failed", extra={"event": "retry_failed", "crm": crm, "stream": stream, "why": why})
            break
    return result


def rescore(rt: Runtime, crm: CrmName, stream: str, ids: Sequence[str], now: float | None = None) -> PageResult:
    """Re-read records and score them now: the webhook path, through the same code as a sync page."""
    now = time.time() if now is None else now
    adapter = rt.adapter(crm)
    calls_before = adapter.calls.this_thread
    leads = adapter.get_leads(stream, list(ids))
    result = PageResult()
    result.add("read", len(leads))
    if leads:
        adapter.load_activities(leads, now)
        score_leads(rt, crm, stream, leads, now, result)
    result.add("api_calls", adapter.calls.this_thread - calls_before)
    return result


__all__ = ["SEARCH_LAG_SECONDS", "fail_page", "finish_run", "rescore", "retry_due", "run_page", "start_run"]
