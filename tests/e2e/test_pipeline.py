"""The Celery pipeline end to end: worker processes, a private Redis, the sandbox CRM read back through its API.

Each test starts a fresh sandbox (the same people every time), runs a full sync
with real `celery -A tasks worker` processes and compares what the CRM holds
with what a single-process run of the same service functions left in an
identical sandbox (see conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import redis

from connector.domain import CrmName
from sandbox import sf_ids
from sandbox.data import Population
from sandbox.server import admin_call
from tasks.app import PAGE_WATCH_S
from tests.conftest import free_port
from tests.e2e.conftest import QUEUE, CrmState, Pipeline, Reference, Worker, explain_differences

pytestmark = pytest.mark.slow

CRMS: list[CrmName] = ["hubspot", "salesforce"]
CONTACTS = 1500  # people per CRM in the multi-worker and Redis-restart runs
KILL_CONTACTS = 3000  # bench/sync.py --kill-worker runs the 20,000
# The killed-worker test keeps the production timeouts: the broker's visibility timeout (600 s) and
# routing's lock lease. A lost page must come back through its claim running out, well before this.
LOST_PAGE_BACK_WITHIN_S = 90

# Owners who are inactive CRM users (HubSpot owner ids, Salesforce User ids): routing hands their hot
# leads to an active rep (connector/routing/policy.py, owner_plan), so those owners are not kept.
INACTIVE_OWNERS = frozenset(
    x for r in Population.reps() if not r.active for x in (r.id, sf_ids.make_id(sf_ids.USER, r.index))
)

MakePipeline = Callable[[CrmName, int], Pipeline]
ReferenceFor = Callable[[CrmName, int], Reference]


def assert_same_outcome(p: Pipeline, ref: Reference, got: CrmState, stats: dict[str, Any]) -> set[str]:
    """Scores as the single-process run wrote them, each new hot lead owned once, at most one task per lead.

    Returns the leads the single-process run gave a task and this run did not (for the caller to judge).
    """
    before, want = ref.before, ref.after
    assert len(got.written) == len(want.written) >= p.contacts
    assert all(v.get("band") for v in got.written.values()), "some records were never scored"

    explained, unexplained = explain_differences(p, want, got)
    assert unexplained == {}, f"{len(unexplained)} records differ from the single-process run"
    assert len(explained) <= max(3, len(got.written) // 100), "too many records differ by the clock alone"
    same = set(got.written) - explained

    # Owners: existing ones kept, every new hot lead assigned, nothing else touched.
    for key in same:
        assert bool(got.owner[key]) == bool(want.owner[key]), key
        if before.owner[key] in INACTIVE_OWNERS and got.band(key) == "hot":
            assert got.owner[key] not in INACTIVE_OWNERS, f"{key}: a hot lead stayed with an inactive owner"
        elif before.owner[key]:
            assert got.owner[key] == before.owner[key], f"{key}: an existing owner was replaced"
    hot_unowned = {k for k in same if got.band(k) == "hot" and not before.owner[k]}
    assert hot_unowned <= got.owned
    # ... and each exactly once: one owner write per lead whose owner changed, none repeated.
    changed = {k for k in got.owner if got.owner[k] != before.owner[k]}
    assert p.owner_writes(stats) == len(changed)

    # Tasks: one per routed lead (new owner, or existing owner told), for the lead's owner.
    assert {k: n for k, v in got.tasks.items() if (n := len(v)) != 1} == {}, "a lead got more than one task"
    assert {k for k in got.tasks if got.tasks[k][0] != got.owner[k]} == set(), "a task is not for the lead's owner"
    assert (set(got.tasks) - explained) - set(want.tasks) == set(), "a task for a lead routing had no reason to touch"

    # The portal's rate limit held: the shared limiter kept every worker together under it.
    assert stats["rate_limited"] == 0
    return (set(want.tasks) - explained) - set(got.tasks)



def unacked_ids(client: redis.Redis) -> set[str]:
    """The task ids kombu holds as delivered but not acknowledged (by live workers, or by dead ones)."""
    return {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}


def wait_until_idle(p: Pipeline, timeout: float = 60, dead: frozenset[str] = frozenset()) -> None:
    """No message queued or held by a worker for a second (left-over pages of a lost run included).

    `dead`: task ids a killed worker held; the broker keeps them until its visibility timeout.
    """
    client = redis.Redis.from_url(p.redis_url)
    quiet_since: list[float] = []

    def idle() -> bool:
        busy = client.llen(QUEUE) or (unacked_ids(client) - dead)
        if busy:
            quiet_since.clear()
            return False
        quiet_since.append(time.monotonic())
        return quiet_since[-1] - quiet_since[0] >= 1.0

    try:
        p.wait_for(idle, timeout, "the workers did not go idle")
    finally:
        client.close()


def summary_of(out: str, crm: str) -> str:
    match = re.search(rf"^{crm} sync (\S+): (\w+).*\n(.*)$", out, re.MULTILINE)
    assert match, f"no summary in:\n{out}"
    return match.group(0)


def finished_summary(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"`leadscore sync --wait` did not finish:\n{out}\n{err}") from None
    return proc.returncode, out, err


def pages_done_at_least(p: Pipeline, n: int) -> Callable[[], bool]:
    def check() -> bool:
        view = p.latest_run()
        return view is not None and view.count("pages_done") >= n

    return check


def kill_mid_page(victim: Worker, timeout: float = 60) -> str:
    """kill -9 the worker (and its pool child) while it holds a page; returns that page task's id.

    Whatever else it holds goes with it, a lead's routing lock included. The worker is frozen
    (SIGSTOP) while we look, so what we see is what it holds when it dies.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if in_flight(victim.log(200)) is not None:
            victim.freeze()
            held = in_flight(victim.log(200))
            if held is not None:
                victim.kill()
                return held
            victim.thaw()
        time.sleep(0.02)
    raise AssertionError(f"worker {victim.name} never held a page:\n{victim.log()}")


def third_of(ref: Reference) -> int:
    """Pages done a third of the way: of 30 HubSpot pages (100 records each) 9; of Salesforce's 2 or 3 (up to
    2,000 records each) none, so that a worker still has a page of the first ones in hand."""
    return (ref.view.count("pages_total") - 1) // 3


def in_flight(log: str) -> str | None:
    """The id of the page task a worker has received and not finished, from its log."""
    open_ = open_tasks(log, r"leadscore\.sync\.page")
    return open_[-1] if open_ else None


def open_tasks(log: str, name: str = r"[\w.]+") -> list[str]:
    """Tasks a worker has received and not finished (a page in hand, retries waiting their countdown)."""
    received = re.findall(rf"Task {name}\[([0-9a-f-]+)\] received", log)
    finished = set(re.findall(rf"Task {name}\[([0-9a-f-]+)\] (?:succeeded|failed|retry)", log))
    return [t for t in received if t not in finished]


# --------------------------------------------------------------------------- 1. several workers


@pytest.mark.parametrize("crm", CRMS)
@pytest.mark.parametrize("workers", [2, 4])
def test_several_workers_write_the_single_process_scores_and_route_each_hot_lead_once(
    crm: CrmName, workers: int, make_pipeline: MakePipeline, reference_for: ReferenceFor
) -> None:
    p = make_pipeline(crm, CONTACTS)
    ref = reference_for(crm, CONTACTS)
    p.start_workers(workers)
    p.reset_stats()

    done = p.cli("sync", "--crm", crm, "--full", "--wait")
    stats = p.stats()

    assert done.returncode == 0, done.stdout + done.stderr
    summary = summary_of(done.stdout, crm)
    assert ": done" in summary
    n = len(ref.after.written)
    assert f"read {n}, scored {n}, written {n}," in summary
    assert "failed 0" in summary
    assert "Traceback" not in done.stderr
    assert assert_same_outcome(p, ref, p.state(), stats) == set(), "a routed lead has no task"


def test_a_worker_whose_pool_process_is_replaced_after_every_task_writes_the_single_process_scores(
    make_pipeline: MakePipeline, reference_for: ReferenceFor
) -> None:
    """A pool process grown past its bound (tasks/app.py, _bound_pool) is replaced between tasks: nothing
    is lost or done twice. The worker is given Celery's `--max-memory-per-child=1` (KiB), the smallest
    bound an admin can set, so its process is replaced after every task; it runs the whole sync alone."""
    p = make_pipeline("hubspot", CONTACTS)
    ref = reference_for("hubspot", CONTACTS)
    [tight] = p.start_workers(1, "--max-memory-per-child=1")
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                seen.update(c.pid for c in psutil.Process(tight.proc.pid).children())
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    p.reset_stats()
    try:
        done = p.cli("sync", "--crm", "hubspot", "--full", "--wait")
    finally:
        stop.set()
        watcher.join(5)
    stats = p.stats()

    assert done.returncode == 0, done.stdout + done.stderr
    n = len(ref.after.written)
    summary = summary_of(done.stdout, "hubspot")
    assert f"read {n}, scored {n}, written {n}," in summary
    assert "failed 0" in summary
    assert assert_same_outcome(p, ref, p.state(), stats) == set(), "a routed lead has no task"
    ran = len(re.findall(r"Task leadscore\.\S+\[[^\]]+\] received", tight.log(10_000)))
    assert ran >= 2, f"the worker ran {ran} task(s): nothing to replace its process between"
    assert len(seen) >= 2, f"its pool process was never replaced: {sorted(seen)}"
    said = "a pool process is replaced after its task once it holds more than"
    assert said not in tight.log(10_000), "the admin's own bound was overridden"
    [bounded] = p.start_workers(1)  # no bound given: the connector's own
    assert said in bounded.log(10_000)


# --------------------------------------------------------------------------- 2. a worker killed


@pytest.mark.parametrize("crm", CRMS)
def test_a_worker_killed_mid_sync_costs_seconds_and_leaves_the_state_of_an_uninterrupted_run(
    crm: CrmName, make_pipeline: MakePipeline, reference_for: ReferenceFor
) -> None:
    p = make_pipeline(crm, KILL_CONTACTS)
    ref = reference_for(crm, KILL_CONTACTS)
    victim, _ = p.start_workers(2)  # production timeouts: nothing shortened
    p.reset_stats()
    sync_cmd = p.sync_cli()

    p.wait_for(pages_done_at_least(p, third_of(ref)), 120, "the sync did not get a third of the way")
    lost = kill_mid_page(victim)
    killed_at = time.monotonic()
    view = p.latest_run()
    assert view is not None
    assert not view.finished

    p.start_workers(1)  # the worker started again at once
    code, out, err = finished_summary(sync_cmd)
    finished_after = time.monotonic() - killed_at
    wait_until_idle(p, dead=frozenset(open_tasks(victim.log(100_000))))
    stats = p.stats()

    assert code == 0, out + err
    assert ": done" in summary_of(out, crm)
    assert finished_after < LOST_PAGE_BACK_WITHIN_S, f"the run waited {finished_after:.0f} s for the lost page"
    client = redis.Redis.from_url(p.redis_url)
    try:
        assert lost in unacked_ids(client), "the broker gave the page back: the claim was not what recovered it"
    finally:
        client.close()
    view = p.latest_run()
    assert view is not None
    assert view.count("pages_resent") >= 1
    # while it waited, the progress said so (the moment it is sent again may be too short to show)
    assert re.search(r"\w+: waiting \d+ s for a page (whose worker stopped answering|lost with its worker)", err), err
    assert re.search(r"page\(s\) lost with their worker were sent to another worker; waited \d+ s", out), out
    missing_tasks = assert_same_outcome(p, ref, p.state(), stats)
    assert not missing_tasks, f"hot leads left without their task: {sorted(missing_tasks)}"


def test_a_page_queued_behind_a_busy_worker_is_not_sent_again_nor_reported_lost(
    make_pipeline: MakePipeline,
) -> None:
    """A first sync on a big portal reads the look-back's web events for the better part of an hour at a
    real rate limit, in its first pages: the pages queued behind them wait for a worker, they are not lost.
    Here the events API hangs (every worker slot busy in the first page) and the queued page's claim has
    run out, as it does after a minute in the queue: nobody sends it again and `sync --wait` does not say
    it was lost; once the events come, the run ends with no page sent again."""
    p = make_pipeline("hubspot", CONTACTS)  # two pages of a full sync
    admin_call(p.sandbox.hubspot_url, "/__sandbox__/faults",
               {"timeout": 1.0, "timeout_s": 25, "only": "GET /events/v3/events/"})  # fmt: skip
    p.start_workers(1)  # one slot, taken by the first page
    sync_cmd = p.sync_cli()
    client = redis.Redis.from_url(p.redis_url)
    try:
        def second_page_queued() -> bool:
            view = p.latest_run()
            return view is not None and view.count("pages_total") >= 2

        p.wait_for(second_page_queued, 60, "the first page did not queue the second")
        view = p.latest_run()
        assert view is not None
        base = f"leadscore:run:{view.id}"
        for pk in client.hkeys(f"{base}:pages"):
            claim = client.get(f"{base}:claim:{pk.decode()}")
            if claim is not None and not claim.startswith(b"h:"):  # the queued page, not the one being worked on
                client.delete(f"{base}:claim:{pk.decode()}")  # its lease ran out
        time.sleep(4 * PAGE_WATCH_S)  # four rounds of the worker's watch
        view = p.latest_run()
        assert view is not None
        assert not view.finished
        assert view.count("pages_resent") == 0
        assert p.rt.runs.stalled(view.id) == []
    finally:
        client.close()
        admin_call(p.sandbox.hubspot_url, "/__sandbox__/faults", {})
    code, out, err = finished_summary(sync_cmd)
    assert code == 0, out + err
    assert ": done" in summary_of(out, "hubspot")
    assert "lost with" not in out + err
    view = p.latest_run()
    assert view is not None
    assert view.count("pages_resent") == 0


# --------------------------------------------------------------------------- 3. Redis restarted


@pytest.mark.parametrize("crm", CRMS)
def test_a_sync_rerun_after_redis_lost_its_data_mid_run_ends_in_the_same_state_without_assigning_twice(
    crm: CrmName, make_pipeline: MakePipeline, reference_for: ReferenceFor
) -> None:
    p = make_pipeline(crm, CONTACTS)
    ref = reference_for(crm, CONTACTS)
    p.start_workers(2)
    p.reset_stats()
    first = p.sync_cli()
    p.wait_for(pages_done_at_least(p, third_of(ref)), 120, "the sync did not get a third of the way")
    view = p.latest_run()
    assert view is not None
    assert not view.finished
    run_id = view.id

    p.redis_server.restart()  # nothing on disk: the queue, the run and routing's state are gone

    # The first `leadscore sync --wait` cannot finish a run that no longer exists; the operator reruns it.
    try:
        first.wait(5)
    except subprocess.TimeoutExpired:
        first.terminate()
    first.communicate(timeout=10)
    gone = p.rt.runs.get(run_id)
    assert gone is None or not gone.finished
    rerun = p.cli("sync", "--crm", crm, "--full", "--wait")
    wait_until_idle(p)
    stats = p.stats()

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ": done" in summary_of(rerun.stdout, crm)
    missing_tasks = assert_same_outcome(p, ref, p.state(), stats)
    assert not missing_tasks, f"hot leads left without their task: {sorted(missing_tasks)}"


# --------------------------------------------------------------------------- 4. what `leadscore sync` says


def test_sync_wait_exits_non_zero_and_says_why_when_the_run_failed(make_pipeline: MakePipeline) -> None:
    p = make_pipeline("hubspot", 300)
    bad = {"HUBSPOT_ACCESS_TOKEN": "pat-na1-not-a-valid-token"}
    p.start_workers(1, **bad)

    done = p.cli("sync", "--crm", "hubspot", "--full", "--wait", env=p.env(**bad))

    assert done.returncode == 1, done.stdout + done.stderr
    summary = summary_of(done.stdout, "hubspot")
    assert ": failed (HubSpot rejected the access token (401): set HUBSPOT_ACCESS_TOKEN" in summary
    assert "Traceback" not in done.stdout + done.stderr


def test_sync_without_a_reachable_redis_says_so_in_one_sentence(make_pipeline: MakePipeline) -> None:
    p = make_pipeline("hubspot", 10)
    nowhere = p.env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    done = p.cli("sync", "--crm", "hubspot", "--full", env=nowhere, timeout=60)

    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("leadscore: Redis cannot be reached")
    assert "REDIS_URL" in lines[0]
