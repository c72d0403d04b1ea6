"""Routing against the sandbox CRM through the real HubSpot adapter, with 4 workers assigning at once.

Reps are in regional teams; one is away, one has a capacity of one lead a day, some are
inactive CRM users. The CRM is read back through its API: owners and tasks.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import redis
import yaml

from connector import leases, sync
from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.domain import Lead
from connector.errors import RetryLater
from connector.routing import service, sla_rebuild
from sandbox.server import Sandbox
from tests.conftest import ROOT

# 2026-11-23 (a Monday) 10:00 UTC: inside working hours in Europe.
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC).timestamp()
AWAY = "julia.hofer@sandbox-corp.example"
CAPPED = "markus.brandt@sandbox-corp.example"


class Hot(NamedTuple):
    score: int = 90
    band: str = "hot"
    grade: str = "A"
    reasons: str = "+25 Decision-maker title; +20 Demo request"
    model_version: str = "test"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=400, seed=5, hubspot_rate=5000) as sb:
        yield sb


def make_runtime(
    sandbox: Sandbox, redis_url: str, mdir: Path, *, routing_at: float = NOW, **routing_changes: Any
) -> Runtime:
    """A runtime on the sandbox whose routing decides as at `routing_at` (LEADSCORE_ROUTING_AT's setting)."""
    if not mdir.exists():
        shutil.copytree(ROOT / "mappings", mdir)
    routing = yaml.safe_load((ROOT / "mappings" / "routing.yaml").read_text())
    routing["reps"] = {CAPPED: {"capacity": 1}}  # weights equal: shares must differ by at most one
    routing["sla"] = {"enabled": True, "minutes": 30, "max_reassignments": 2}
    routing.update(routing_changes)
    (mdir / "routing.yaml").write_text(yaml.safe_dump(routing, sort_keys=False, allow_unicode=True))
    settings = Settings(mappings_dir=mdir, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, routing_at=routing_at)
    runtime = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url), namespace="rt")
    runtime.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
    runtime.adapter("hubspot").setup()  # the score properties (idempotent)
    service.set_away(runtime.router, AWAY, dt.date(2026, 11, 30), now=NOW)
    # The sandbox is shared by this module's tests and Redis is emptied between them: say the SLA
    # schedule is known, so a test's check does not adopt the open tasks earlier tests left.
    runtime.redis.set(sla_rebuild.marker(runtime.router), "known", ex=3600)
    return runtime


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(sandbox, redis_url, tmp_path / "mappings")
    yield runtime
    runtime.close()


def unowned_dach_leads(rt: Runtime, n: int) -> list[Lead]:
    adapter = rt.adapter("hubspot")
    found: list[Lead] = []
    cursor = None
    while len(found) < n:
        page = adapter.read_page("contact", cursor, since=None)
        found += [lead for lead in page.leads if lead.owner_id is None
                  and lead.profile.get("country") in ("Germany", "Austria", "Switzerland")]
        cursor = page.next_cursor
        assert cursor is not None or len(found) >= n, "not enough unowned DACH contacts in the sandbox"
    return found[:n]


def tasks_of(sandbox: Sandbox, contact_ids: list[str]) -> Counter[str]:
    """Tasks associated with each contact, read through the CRM's v4 associations API."""
    import httpx

    out: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {sandbox.hubspot_token}"}
    with httpx.Client(base_url=sandbox.hubspot_url, headers=headers, timeout=30) as http:
        for cid in contact_ids:
            resp = http.get(f"/crm/v4/objects/contacts/{cid}/associations/tasks")
            resp.raise_for_status()
            out[cid] = len(resp.json()["results"])
    return out


def test_four_workers_route_hot_leads_to_available_reps_of_the_region_once_each(
    rt: Runtime, sandbox: Sandbox
) -> None:
    leads = unowned_dach_leads(rt, 24)
    reps = {r.id: r for r in rt.adapter("hubspot").list_reps()}
    away_id = next(r.id for r in reps.values() if r.email == AWAY)
    capped_id = next(r.id for r in reps.values() if r.email == CAPPED)
    dach_active = {r.id for r in reps.values() if "DACH" in r.teams and r.active} - {away_id}

    def work(chunk: list[Lead]) -> None:
        for lead in chunk:
            rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)

    threads = [threading.Thread(target=work, args=(leads[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    owners = {lead.id: lead.owner_id for lead in rt.adapter("hubspot").get_leads("contact", [x.id for x in leads])}
    assert all(owner is not None for owner in owners.values())
    counts = Counter(owners.values())
    assert set(counts) <= dach_active, "only available DACH reps (the fallback owner is one of them) get leads"
    assert away_id not in counts
    assert not any(not reps[o].active for o in counts), "no inactive user gets a lead"
    assert counts[capped_id] == 1, "the rep with capacity 1 gets exactly one"
    uncapped = [n for rep, n in counts.items() if rep != capped_id]
    assert max(uncapped) - min(uncapped) <= 1, f"equal weights: shares differ by at most one ({counts})"
    tasks = tasks_of(sandbox, [lead.id for lead in leads])
    assert set(tasks.values()) == {1}, f"exactly one task per assignment: {tasks}"


def test_a_rep_who_ignores_a_lead_past_the_sla_loses_it_to_the_next_rep(rt: Runtime, sandbox: Sandbox) -> None:
    lead = unowned_dach_leads(rt, 1)[0]
    first = rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)
    assert first.assigned_now
    assert rt.router.check_sla(NOW + 10 * 60) == []  # not due yet

    moved = rt.router.check_sla(NOW + 31 * 60)

    assert [d.chosen for d in moved] != [first.chosen]
    now_owner = rt.adapter("hubspot").get_leads("contact", [lead.id])[0].owner_id
    assert now_owner == moved[0].chosen != first.chosen
    assert tasks_of(sandbox, [lead.id])[lead.id] == 2, "the next rep got a task too"


def test_after_redis_lost_everything_the_sla_check_still_reassigns_from_the_crms_open_task(
    rt: Runtime, sandbox: Sandbox
) -> None:
    lead = unowned_dach_leads(rt, 1)[0]
    first = rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)
    assert first.assigned_now
    rt.redis.flushall()  # a Redis restart without persistence: no routing state, no SLA schedule

    rt.router.check_sla(NOW + 31 * 60)

    now_owner = rt.adapter("hubspot").get_leads("contact", [lead.id])[0].owner_id
    assert now_owner is not None
    assert now_owner != first.chosen
    assert tasks_of(sandbox, [lead.id])[lead.id] == 2, "the next rep got a task too"
    record = rt.router.routing_record(lead.key)
    assert [(r["reason"], r["previous_owner"], r["chosen"]) for r in record] == [("sla", first.chosen, now_owner)]


def set_faults(sandbox: Sandbox, spec: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(f"{sandbox.hubspot_url}/__sandbox__/faults", json=spec, timeout=10)
    resp.raise_for_status()
    return dict(resp.json())


def task_owners(sandbox: Sandbox, contact_id: str) -> list[str]:
    """The owner of every task associated with the contact, read through the CRM's API."""
    headers = {"Authorization": f"Bearer {sandbox.hubspot_token}"}
    with httpx.Client(base_url=sandbox.hubspot_url, headers=headers, timeout=30) as http:
        linked = http.get(f"/crm/v4/objects/contacts/{contact_id}/associations/tasks").json()["results"]
        owners = []
        for link in linked:
            task = http.get(f"/crm/v3/objects/tasks/{link['toObjectId']}",
                            params={"properties": "hubspot_owner_id"}).json()  # fmt: skip
            owners.append(task["properties"]["hubspot_owner_id"])
    return owners


def test_a_task_the_crm_stored_before_its_answer_was_lost_is_not_created_again(rt: Runtime, sandbox: Sandbox) -> None:
    lead = unowned_dach_leads(rt, 1)[0]
    # HubSpot stores the task, then the answer is lost (a 504 from a proxy, a read timeout).
    set_faults(sandbox, {"drop": 1.0, "only": "POST /crm/v3/objects/tasks", "max": 1, "timeout_s": 0})
    try:
        with pytest.raises(RetryLater):
            rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)
    finally:
        set_faults(sandbox, {})
    assert tasks_of(sandbox, [lead.id])[lead.id] == 1, "the CRM did store the task"

    decision = rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)  # Celery's retry

    assert decision.assigned_now
    assert task_owners(sandbox, lead.id) == [decision.chosen], "exactly one task, for the rep who got the lead"


_KILLED_WORKER = """
import sys
from pathlib import Path

import redis
from connector.bootstrap import build_runtime
from connector.config import Settings

mappings, hubspot_url, token, redis_url, lead_id, now = sys.argv[1:]

class Hot:
    score, band, grade, reasons, model_version = 90, "hot", "A", "+25 Decision-maker title", "test"

rt = build_runtime(Settings(mappings_dir=Path(mappings), hubspot_base_url=hubspot_url, hubspot_access_token=token),
                   redis_client=redis.Redis.from_url(redis_url), namespace="rt")
rt.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
lead = rt.adapter("hubspot").get_leads("contact", [lead_id])[0]
rt.router.assign_hot_lead(lead, "contact", Hot(), float(now), became_hot=True)
"""


def test_a_worker_killed_while_creating_the_task_leaves_its_lock_for_seconds_and_the_rep_exactly_one_task(
    rt: Runtime, sandbox: Sandbox, redis_url: str
) -> None:
    lead = unowned_dach_leads(rt, 1)[0]
    # The task request hangs before HubSpot stores anything, and the worker is killed meanwhile.
    set_faults(sandbox, {"timeout": 1.0, "only": "POST /crm/v3/objects/tasks", "max": 1, "timeout_s": 5})
    args = [str(rt.settings.mappings_dir), sandbox.hubspot_url, sandbox.hubspot_token, redis_url, lead.id, repr(NOW)]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, *args], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while set_faults_state(sandbox).get("injected", 0) < 1:
            assert proc.poll() is None, "the worker ended before it sent the task"
            assert time.monotonic() < deadline, "the worker never sent the task"
            time.sleep(0.05)
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
    finally:
        set_faults(sandbox, {})
    assert tasks_of(sandbox, [lead.id])[lead.id] == 0

    while True:  # the page comes back; it retries while the dead worker's lock (a lease) runs out
        try:
            decision = rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)
            break
        except RetryLater:
            assert time.monotonic() - killed_at < leases.LEASE_S + 2, "the dead worker's lock outlived its lease"
            time.sleep(0.1)

    owner = rt.adapter("hubspot").get_leads("contact", [lead.id])[0].owner_id
    assert owner == decision.chosen is not None
    assert task_owners(sandbox, lead.id) == [owner], "the rep got the task the killed worker never created"


_FROZEN_WORKER = _KILLED_WORKER.replace(
    'rt.router.assign_hot_lead(lead, "contact", Hot(), float(now), became_hot=True)',
    """from connector.errors import RetryLater
try:
    print("routed", rt.router.assign_hot_lead(lead, "contact", Hot(), float(now), became_hot=True).chosen)
except RetryLater as exc:
    print("stepped back:", exc)""",
)


def test_a_worker_frozen_past_its_routing_lock_steps_back_and_the_lead_gets_one_owner_and_one_task(
    rt: Runtime, sandbox: Sandbox, redis_url: str
) -> None:
    lead = unowned_dach_leads(rt, 1)[0]
    # The worker takes the lead's lock and waits for the owners list; it is frozen (SIGSTOP) there,
    # longer than its lock's lease, and another worker routes the lead meanwhile.
    set_faults(sandbox, {"timeout": 1.0, "only": ["GET /crm/v3/owners/", "GET /crm/v3/owners"], "max": 1,
                         "timeout_s": 2})  # fmt: skip
    args = [str(rt.settings.mappings_dir), sandbox.hubspot_url, sandbox.hubspot_token, redis_url, lead.id, repr(NOW)]
    proc = subprocess.Popen([sys.executable, "-c", _FROZEN_WORKER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while set_faults_state(sandbox).get("injected", 0) < 1:
            assert proc.poll() is None, "the worker ended before it listed the owners"
            assert time.monotonic() < deadline, "the worker never listed the owners"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)
        set_faults(sandbox, {})
        deadline = time.monotonic() + leases.LEASE_S + 5
        while True:
            try:
                decision = rt.router.assign_hot_lead(lead, "contact", Hot(), NOW, became_hot=True)
                break
            except RetryLater:
                assert time.monotonic() < deadline, "the frozen worker's lock never ran out"
                time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        set_faults(sandbox, {})
    out, _ = proc.communicate(timeout=60)

    assert f"stepped back: lead {lead.key}: another worker took its routing over" in out
    owner = rt.adapter("hubspot").get_leads("contact", [lead.id])[0].owner_id
    assert owner == decision.chosen is not None
    assert task_owners(sandbox, lead.id) == [owner], "one task, for the rep who has the lead"
    assert rt.router.routing_record(lead.key)[0]["chosen"] == owner, "routing's record names that rep"


def set_faults_state(sandbox: Sandbox) -> dict[str, Any]:
    return dict(httpx.get(f"{sandbox.hubspot_url}/__sandbox__/faults", timeout=10).json()["faults"])


# --------------------------------------------------------------------------- through the pipeline (connector.sync)

DAY = 86400.0
STRONG = (  # a demo request and two meetings: hot for any lead with a fair fit
    ("form_submission", {"form_id": "f-demo-1", "form_title": "Request a demo"}),
    ("meeting", {"title": "Discovery call"}),
    ("meeting", {"title": "Technical deep dive"}),
)


def add_activities(sandbox: Sandbox, contact_id: str, at: float) -> None:
    with httpx.Client(base_url=sandbox.hubspot_url, timeout=30) as http:
        for kind, attrs in STRONG:
            resp = http.post("/__sandbox__/activities",
                             json={"contact": contact_id, "kind": kind, "attrs": attrs, "ts_ms": int(at * 1000)})
            assert resp.status_code == 201, resp.text


def fair_fit_dach_lead(rt: Runtime, now: float) -> Lead:
    """An unowned DACH contact, not hot, whose fit makes it hot once it shows strong engagement."""
    adapter = rt.adapter("hubspot")
    for lead in unowned_dach_leads(rt, 80)[-40:]:
        adapter.load_activities([lead], now)
        scored = rt.model.score(lead.profile, lead.activities, now)
        if scored.fit >= 25 and scored.band != "hot" and lead.written.get("band") != "hot":
            return lead
    raise AssertionError("no unowned DACH contact with a fair fit in the sandbox")


def crm_view(rt: Runtime, sandbox: Sandbox, lead_id: str) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """(owner, band written, [(task owner, task subject)]) read back through the CRM's API."""
    lead = rt.adapter("hubspot").get_leads("contact", [lead_id])[0]
    headers = {"Authorization": f"Bearer {sandbox.hubspot_token}"}
    with httpx.Client(base_url=sandbox.hubspot_url, headers=headers, timeout=30) as http:
        linked = http.get(f"/crm/v4/objects/contacts/{lead_id}/associations/tasks").json()["results"]
        tasks = []
        for link in sorted(linked, key=lambda x: int(x["toObjectId"])):
            wanted = {"properties": "hubspot_owner_id,hs_task_subject"}
            props = http.get(f"/crm/v3/objects/tasks/{link['toObjectId']}", params=wanted).json()["properties"]
            tasks.append((props["hubspot_owner_id"], props["hs_task_subject"].split(":")[0]))
    return lead.owner_id, lead.written.get("band"), tasks


def test_a_sync_routes_by_the_routing_clock_not_by_the_hour_it_runs_at(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    now = time.time()
    sunday_night = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC).timestamp()
    outcomes = []
    for n, routing_at in enumerate((sunday_night, NOW)):
        runtime = make_runtime(sandbox, redis_url, tmp_path / f"mappings{n}", routing_at=routing_at)
        try:
            lead = fair_fit_dach_lead(runtime, now)
            add_activities(sandbox, lead.id, now)
            result = sync.rescore(runtime, "hubspot", "contact", [lead.id], now)  # scored at the real time
            assert result.counts.get("hot") == 1, result.counts
            owner = runtime.adapter("hubspot").get_leads("contact", [lead.id])[0].owner_id
            [record] = runtime.router.routing_record(lead.key)
            outcomes.append((record["at"], record["outcome"], owner == record["chosen"]))
        finally:
            runtime.close()
    assert outcomes == [
        (sunday_night, "fallback_owner", True),  # nobody works on Sunday night: the queue owner
        (NOW, "assigned", True),  # Monday 10:00: the next DACH rep of the rotation
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("notify_owner", "the owner keeps it and gets a second task"),
        ("reassign", "the next rep of the rotation gets it and a task"),
        ("silent", "nothing happens"),
    ],
)
def test_a_lead_that_cools_and_turns_hot_again_follows_the_rehot_policy(
    sandbox: Sandbox, redis_url: str, tmp_path: Path, policy: str, expected: str
) -> None:
    # Routing decides as at NOW throughout: for its clock the lead cools and is hot again within the
    # hour, so only the pipeline telling it that the lead cooled (lead_cooled) makes the second a re-hot.
    runtime = make_runtime(sandbox, redis_url, tmp_path / "mappings", rehot=policy)
    try:
        t0 = time.time()
        lead = fair_fit_dach_lead(runtime, t0)
        add_activities(sandbox, lead.id, t0)
        sync.rescore(runtime, "hubspot", "contact", [lead.id], t0)
        first_owner, band, tasks = crm_view(runtime, sandbox, lead.id)
        assert (band, tasks) == ("hot", [(first_owner, "Hot lead")])

        later = t0 + 200 * DAY  # the demo request and the meetings have decayed
        sync.rescore(runtime, "hubspot", "contact", [lead.id], later)
        assert crm_view(runtime, sandbox, lead.id)[1] != "hot"

        add_activities(sandbox, lead.id, later)  # a new demo request and new meetings
        sync.rescore(runtime, "hubspot", "contact", [lead.id], later)
        owner, band, tasks = crm_view(runtime, sandbox, lead.id)
    finally:
        runtime.close()
    assert band == "hot"
    if policy == "notify_owner":
        assert (owner, tasks) == (first_owner, [(first_owner, "Hot lead"), (first_owner, "Hot again")]), expected
    elif policy == "reassign":
        assert owner not in (None, first_owner), expected
        assert tasks == [(first_owner, "Hot lead"), (owner, "Hot again")], expected
    else:
        assert (owner, tasks) == (first_owner, [(first_owner, "Hot lead")]), expected
