"""A page's hot leads routed at once: owners, tasks and re-reads in a few batch calls, not a few per lead.

Against the sandbox HubSpot through the real adapter; the CRM is read back through its API and the
calls are counted by the sandbox (/__sandbox__/stats).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.bootstrap import Runtime
from connector.errors import RetryLater
from connector.routing.policy import Decision
from connector.routing.service import HotLead
from sandbox.server import Sandbox
from tests.integration.test_routing_on_sandbox import NOW, Hot, make_runtime, set_faults, tasks_of, unowned_dach_leads


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=400, seed=5, hubspot_rate=5000) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(sandbox, redis_url, tmp_path / "mappings")
    yield runtime
    runtime.close()


def stats(sandbox: Sandbox, reset: bool = False) -> dict[str, int]:
    with httpx.Client(base_url=sandbox.hubspot_url, timeout=10) as http:
        if reset:
            http.post("/__sandbox__/stats/reset")
            return {}
        calls: dict[str, int] = http.get("/__sandbox__/stats").json()["calls"]
        return calls


def owners_of(rt: Runtime, ids: list[str]) -> dict[str, str | None]:
    return {lead.id: lead.owner_id for lead in rt.adapter("hubspot").get_leads("contact", ids)}


def test_a_pages_hot_leads_take_a_few_calls_in_all_and_get_one_owner_and_one_task_each(
    rt: Runtime, sandbox: Sandbox
) -> None:
    leads = unowned_dach_leads(rt, 30)
    rt.router.reps("hubspot")  # the owners list, cached per worker: not part of a page's calls
    stats(sandbox, reset=True)

    decisions = rt.router.assign_hot_leads([HotLead(lead, "contact", Hot(), became_hot=True) for lead in leads], NOW)

    calls = stats(sandbox)
    assert all(isinstance(d, Decision) and d.assigned_now for d in decisions)
    # one owner re-read, one owner write, one task creation (associations included): 3 calls, not ~90
    assert calls == {
        "POST /crm/v3/objects/contacts/batch/read": 1,
        "POST /crm/v3/objects/contacts/batch/update": 1,
        "POST /crm/v3/objects/tasks/batch/create": 1,
    }, calls
    owners = owners_of(rt, [lead.id for lead in leads])
    assert owners == {lead.id: d.chosen for lead, d in zip(leads, decisions, strict=True) if isinstance(d, Decision)}
    assert set(tasks_of(sandbox, [lead.id for lead in leads]).values()) == {1}

    # the same page again (a retried task): nothing new in the CRM, no call at all
    stats(sandbox, reset=True)
    again = rt.router.assign_hot_leads([HotLead(lead, "contact", Hot(), became_hot=True) for lead in leads], NOW)
    assert all(isinstance(d, Decision) and d.replayed for d in again)
    assert stats(sandbox) == {}
    assert set(tasks_of(sandbox, [lead.id for lead in leads]).values()) == {1}


def test_a_lead_someone_took_meanwhile_keeps_its_owner_and_the_turn_goes_back(rt: Runtime, sandbox: Sandbox) -> None:
    leads = unowned_dach_leads(rt, 3)
    reps = [r for r in rt.adapter("hubspot").list_reps() if r.active]
    taken = leads[1]
    # a person sets the owner in HubSpot after the page was read: the batch compare-and-set sees it
    with httpx.Client(base_url=sandbox.hubspot_url, timeout=10,
                      headers={"Authorization": f"Bearer {sandbox.hubspot_token}"}) as http:  # fmt: skip
        http.patch(f"/crm/v3/objects/contacts/{taken.id}",
                   json={"properties": {"hubspot_owner_id": reps[-1].id}}).raise_for_status()  # fmt: skip

    decisions = rt.router.assign_hot_leads([HotLead(lead, "contact", Hot(), became_hot=True) for lead in leads], NOW)

    outcome: dict[str, Any] = {lead.id: d for lead, d in zip(leads, decisions, strict=True)}
    assert outcome[taken.id].outcome == "lost_race"
    assert owners_of(rt, [taken.id]) == {taken.id: reps[-1].id}
    assert tasks_of(sandbox, [taken.id])[taken.id] == 0, "nobody is told about a lead routing did not assign"
    others = [lead.id for lead in leads if lead.id != taken.id]
    assert all(outcome[i].assigned_now for i in others)
    assert set(tasks_of(sandbox, others).values()) == {1}


def test_tasks_the_crm_stored_before_the_batch_answer_was_lost_are_found_by_reference_not_made_again(
    rt: Runtime, sandbox: Sandbox
) -> None:
    leads = unowned_dach_leads(rt, 5)
    set_faults(sandbox, {"drop": 1.0, "only": "POST /crm/v3/objects/tasks/batch/create", "max": 1, "timeout_s": 0})
    try:
        with pytest.raises(RetryLater):
            rt.router.assign_hot_leads([HotLead(lead, "contact", Hot(), became_hot=True) for lead in leads], NOW)
    finally:
        set_faults(sandbox, {})
    assert set(tasks_of(sandbox, [lead.id for lead in leads]).values()) == {1}, "HubSpot stored them"
    stats(sandbox, reset=True)

    decisions = rt.router.assign_hot_leads([HotLead(lead, "contact", Hot(), became_hot=True) for lead in leads], NOW)

    assert all(isinstance(d, Decision) and d.assigned_now for d in decisions)
    assert set(tasks_of(sandbox, [lead.id for lead in leads]).values()) == {1}, "exactly one task each"
    calls = stats(sandbox)
    assert "POST /crm/v3/objects/tasks/batch/create" not in calls
    # found in batch: one association read and one task read for all five
    assert calls.get("POST /crm/v4/associations/{from_type}/{to_type}/batch/read") == 1
    assert calls.get("POST /crm/v3/objects/{object_type}/batch/read", 0) + calls.get(
        "POST /crm/v3/objects/tasks/batch/read", 0) == 1
