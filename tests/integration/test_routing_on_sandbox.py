"""Routing against the sandbox CRM through the real HubSpot adapter, with 4 workers assigning at once.

Reps are in regional teams; one is away, one has a capacity of one lead a day, some are
inactive CRM users. The CRM is read back through its API: owners and tasks.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
import yaml

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.domain import Lead
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


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    routing = yaml.safe_load((mdir / "routing.yaml").read_text())
    routing["reps"] = {CAPPED: {"capacity": 1}}  # weights equal: shares must differ by at most one
    routing["sla"] = {"enabled": True, "minutes": 30, "max_reassignments": 2}
    (mdir / "routing.yaml").write_text(yaml.safe_dump(routing, sort_keys=False, allow_unicode=True))
    settings = Settings(mappings_dir=mdir, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token)
    runtime = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url), namespace="rt")
    runtime.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
    runtime.router.clock = lambda: NOW
    service.set_away(runtime.router, AWAY, dt.date(2026, 11, 30), now=NOW)
    # The sandbox is shared by this module's tests and Redis is emptied between them: say the SLA
    # schedule is known, so a test's check does not adopt the open tasks earlier tests left.
    runtime.redis.set(sla_rebuild.marker(runtime.router), "known", ex=3600)
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
