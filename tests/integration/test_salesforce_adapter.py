"""The Salesforce adapter against the sandbox org, over real HTTPS with simple-salesforce.

Each test drives the adapter, then reads the org back through its REST API (with a
client of its own) and counts calls in `/__sandbox__/stats`. Nothing inside the
adapter is patched.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from simple_salesforce.api import Salesforce

from connector.crm.base import CrmAdapter, task_ref, with_task_ref
from connector.crm.limits import RetryPolicy
from connector.crm.salesforce import SalesforceAdapter
from connector.crm.salesforce_http import SESSION_EXPIRED, OAuthCredentials
from connector.crm.salesforce_records import build_soql, soql_id
from connector.domain import Lead
from connector.errors import StopSync
from connector.mappings.salesforce import SalesforceMapping, load_salesforce_mapping
from sandbox.server import Sandbox, SandboxOptions

ROOT = Path(__file__).resolve().parents[2]
PEOPLE = 5000
QUERY = "GET /services/data/{version}/query"
QUERY_MORE = "GET /services/data/{version}/query/{locator}"
COMPOSITE = "PATCH /services/data/{version}/composite/sobjects"
TOKEN = "POST /services/oauth2/token"
FAST = RetryPolicy(attempts=10, total_seconds=60, base=0.01, cap=0.05)

SCORE_FIELDS = [
    {"name": "Lead_Score__c", "type": "double"},
    {"name": "Lead_Fit_Score__c", "type": "double"},
    {"name": "Lead_Engagement_Score__c", "type": "double"},
    {"name": "Lead_Band__c", "type": "string", "length": 20},
    {"name": "Lead_Grade__c", "type": "string", "length": 5},
    {"name": "Lead_Score_Reasons__c", "type": "textarea"},
    {"name": "Lead_Scored_At__c", "type": "datetime"},
    {"name": "Lead_Score_Model__c", "type": "string", "length": 80},
    {"name": "Lead_Conversion_Probability__c", "type": "double"},
    {"name": "Lead_Probability_Factors__c", "type": "textarea"},
]


class Org:
    """The test's own view of a sandbox org: admin endpoints and an API client of its own."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.url = sandbox.salesforce_url
        self.http = requests.Session()
        self.http.verify = sandbox.ca_cert
        self.http.trust_env = False
        info = self.admin("GET", "info")
        self.oauth = OAuthCredentials(
            client_id=info["oauth"]["client_id"],
            client_secret=info["oauth"]["client_secret"],
            refresh_token=info["oauth"]["refresh_token"],
        )
        self.unassigned_owner: str = info["unassigned_owner"]
        self.made: list[SalesforceAdapter] = []
        # A token of the test's own, so expiring the adapter's does not blind the test.
        token = self.http.post(f"{self.url}/services/oauth2/token", data=self.oauth.form(), timeout=10).json()
        self.sf = Salesforce(instance_url=self.url, session_id=token["access_token"], session=self.http, version="59.0")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.url}/__sandbox__/salesforce/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close every client connection, so the sandbox can shut down at once."""
        for made in self.made:
            made.close()
        self.made.clear()
        self.http.close()

    def create_score_fields(self) -> None:
        for obj in ("Lead", "Contact"):
            self.admin("POST", "fields", {"object": obj, "fields": SCORE_FIELDS})

    def stats(self) -> dict[str, int]:
        calls: dict[str, int] = self.http.get(f"{self.url}/__sandbox__/stats", timeout=10).json()["calls"]
        return calls

    def reset_stats(self) -> None:
        self.http.post(f"{self.url}/__sandbox__/stats/reset", timeout=10).raise_for_status()

    def faults(self, spec: dict[str, float]) -> None:
        self.http.post(f"{self.url}/__sandbox__/faults", json=spec, timeout=10).raise_for_status()

    def records(self, soql: str) -> list[dict[str, Any]]:
        return list(self.sf.query_all_iter(soql))

    def adapter(
        self,
        client: redis.Redis,
        mapping: SalesforceMapping,
        *,
        token: str | None = None,
        oauth: OAuthCredentials | None = None,
        ca: bool = True,
        timeout: float = 10.0,
        url: str | None = None,
        learned: bool = True,
    ) -> SalesforceAdapter:
        made = SalesforceAdapter(
            instance_url=url or self.url,
            token=token or self.sandbox.salesforce_token,
            mapping=mapping,
            redis=client,
            ca_bundle=Path(self.sandbox.ca_cert) if ca else None,
            oauth=oauth,
            timeout=timeout,
            retry_policy=FAST,
            learned=learned,
        )
        self.made.append(made)
        return made


@pytest.fixture(scope="module")
def mapping() -> SalesforceMapping:
    return load_salesforce_mapping(ROOT / "mappings" / "salesforce.yaml")


@pytest.fixture(scope="module")
def org() -> Iterator[Org]:
    with Sandbox.start(contacts=PEOPLE, seed=7) as sandbox:
        view = Org(sandbox)
        view.create_score_fields()
        yield view
        view.close()


@pytest.fixture
def adapter(org: Org, redis_client: redis.Redis, mapping: SalesforceMapping) -> Iterator[SalesforceAdapter]:
    org.reset_stats()
    org.faults({})
    made = org.adapter(redis_client, mapping)
    yield made
    made.close()
    org.made.remove(made)


def read_all(adapter: SalesforceAdapter, stream: str, since: float | None = None) -> list[Lead]:
    leads: list[Lead] = []
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = adapter.read_page(stream, cursor, since=since)
        leads += page.leads
        if page.next_cursor is None:
            return leads
        assert page.next_cursor not in seen, "a cursor repeated"
        assert len(page.next_cursor) < 200, "a cursor must stay small"
        seen.add(page.next_cursor)
        cursor = page.next_cursor


@pytest.fixture(scope="module")
def some_leads(org: Org) -> list[str]:
    """Ids of 2,000 unconverted Leads, read by the test's own client; tests use disjoint slices."""
    return [r["Id"] for r in org.records("SELECT Id FROM Lead WHERE IsConverted = false LIMIT 2000")]


def test_the_adapter_fulfils_the_contract(adapter: SalesforceAdapter) -> None:
    assert isinstance(adapter, CrmAdapter)
    assert adapter.streams == ("Lead", "Contact")


def test_a_full_read_takes_one_query_call_per_2000_records_of_each_object(adapter: SalesforceAdapter, org: Org) -> None:
    leads = read_all(adapter, "Lead")
    calls_after_leads = org.stats()
    contacts = read_all(adapter, "Contact")
    calls = org.stats()

    assert len(leads) + len(contacts) == PEOPLE
    assert len({lead.id for lead in leads + contacts}) == PEOPLE
    lead_calls = calls_after_leads.get(QUERY, 0) + calls_after_leads.get(QUERY_MORE, 0)
    assert lead_calls == math.ceil(len(leads) / 2000)
    assert calls.get(QUERY, 0) + calls.get(QUERY_MORE, 0) == lead_calls + math.ceil(len(contacts) / 2000)
    assert adapter.api_calls == sum(calls.values())
    first = leads[0]
    assert first.key == f"salesforce:Lead:{first.id}"
    # the integration user counts as nobody (mappings/salesforce.yaml owners.unassigned); reps stay owners
    owners = {lead.owner_id for lead in leads + contacts}
    assert None in owners
    assert "0058d00000000G7AAI" not in owners
    assert any(o is not None and o.startswith("005") for o in owners)
    assert first.modified_at is not None
    assert {"email", "company", "country"} <= set(first.profile)
    assert any("company" in c.profile for c in contacts), "Contacts read their company from Account.Name"


def test_threads_sharing_one_adapter_each_count_their_own_calls(adapter: SalesforceAdapter) -> None:
    counts: dict[str, int] = {}

    def read(stream: str) -> None:
        before = adapter.calls.this_thread
        read_all(adapter, stream)
        counts[stream] = adapter.calls.this_thread - before

    threads = [threading.Thread(target=read, args=(stream,)) for stream in adapter.streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert counts["Lead"] >= 1
    assert counts["Contact"] >= 1
    assert adapter.calls.total == counts["Lead"] + counts["Contact"]


def test_the_mappings_page_size_is_asked_for_with_sforce_query_options(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    small = org.adapter(redis_client, mapping.model_copy(update={"page_size": 500}))
    first = small.read_page("Contact", None, since=None)
    second = small.read_page("Contact", first.next_cursor, since=None)
    assert (len(first.leads), len(second.leads)) == (500, 500)
    assert not {lead.id for lead in first.leads} & {lead.id for lead in second.leads}


def test_an_incremental_read_sees_only_what_changed_since(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    changed = some_leads[1000:1010]
    time.sleep(1.05)  # SystemModstamp has whole seconds: step past earlier tests' writes
    since = time.time()
    time.sleep(0.05)
    report = adapter.write_scores("Lead", {i: {"score": "55", "band": "warm"} for i in changed})
    assert sorted(report.written) == sorted(changed)

    fresh = read_all(adapter, "Lead", since=math.floor(since))

    assert sorted(lead.id for lead in fresh) == sorted(changed)
    assert all(lead.written == {"score": "55", "band": "warm"} for lead in fresh)
    stamps = [lead.modified_at or 0 for lead in fresh]
    assert stamps == sorted(stamps)
    assert nothing_after(adapter, time.time() + 5)


def in_list(ids: list[str]) -> str:
    return ", ".join(soql_id(i) for i in ids)


def read_until_stopped(adapter: SalesforceAdapter) -> None:
    for _ in range(100):
        adapter.read_page("Lead", None, since=None)


def nothing_after(adapter: SalesforceAdapter, when: float) -> bool:
    page = adapter.read_page("Contact", None, since=when)
    return page.leads == [] and page.next_cursor is None


def test_activities_for_a_page_come_from_a_few_in_list_queries(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    leads = adapter.get_leads("Lead", some_leads[:1500])
    contacts = adapter.read_page("Contact", None, since=None).leads[:500]
    page = leads + contacts
    org.reset_stats()

    adapter.load_activities(page, now=time.time())

    calls = org.stats()
    queries = calls.get(QUERY, 0) + calls.get(QUERY_MORE, 0)
    assert 3 <= queries <= 16, calls
    kinds = {a.kind for lead in page for a in lead.activities}
    assert {"email_open", "email_click", "call", "meeting", "webinar_attended", "form_submission"} <= kinds
    # Every activity record the org holds for a person became one engine activity.
    for lead in page[:3] + page[-3:]:
        link = "LeadId" if lead.object_type == "Lead" else "ContactId"
        held = sum(
            len(org.records(build_soql(["Id"], obj, [f"{field} = {soql_id(lead.id)}"])))
            for obj, field in (("Task", "WhoId"), ("Event", "WhoId"), ("CampaignMember", link))
        )
        assert len(lead.activities) == held, lead.id
        assert [a.ts for a in lead.activities] == sorted(a.ts for a in lead.activities)


def test_scores_are_written_200_a_call_and_a_refused_record_does_not_stop_the_others(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    ids = some_leads[:450]
    bad = ids[7]
    updates = {
        i: {
            "score": "87",
            "fit": "40",
            "engagement": "47.0",
            "band": "hot",
            "grade": "A",
            "reasons": "Visited pricing twice\nRequested a demo",
            "scored_at": "2026-03-01T12:00:00Z",
            "model": "m" * 100 if i == bad else "v3",
        }
        for i in ids
    }

    report = adapter.write_scores("Lead", updates)

    assert org.stats().get(COMPOSITE) == 3
    assert [rid for rid, _ in report.failed] == [bad]
    assert "STRING_TOO_LONG" in report.failed[0][1]
    assert sorted(report.written) == sorted(set(ids) - {bad})
    held = {
        r["Id"]: r
        for r in org.records(
            build_soql(
                ["Id", "Lead_Score__c", "Lead_Engagement_Score__c", "Lead_Band__c", "Lead_Scored_At__c"],
                "Lead",
                [f"Id IN ({in_list(ids[:20])})"],
            )
        )
    }
    assert held[ids[0]]["Lead_Score__c"] == 87
    assert held[ids[0]]["Lead_Engagement_Score__c"] == 47
    assert held[ids[0]]["Lead_Band__c"] == "hot"
    assert held[ids[0]]["Lead_Scored_At__c"].startswith("2026-03-01T12:00:00")
    assert held[bad]["Lead_Score__c"] is None
    # Read back through the adapter, the values come as canonical strings.
    again = adapter.get_leads("Lead", [ids[0]])[0]
    assert again.written["score"] == "87"
    assert again.written["engagement"] == "47"
    assert again.written["scored_at"] == "2026-03-01T12:00:00.000Z"


def test_a_large_write_goes_through_bulk_api_2_and_reports_failed_rows(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping, some_leads: list[str]
) -> None:
    org.reset_stats()
    adapter = org.adapter(redis_client, mapping.model_copy(update={"bulk_threshold": 300}))
    ids = some_leads[500:900]
    bad = ids[3]
    updates = {i: {"score": "12", "grade": "TOOLONG" if i == bad else "C"} for i in ids}

    report = adapter.write_scores("Lead", updates)

    calls = org.stats()
    assert calls.get("POST /services/data/{version}/jobs/ingest") == 1
    assert COMPOSITE not in calls
    assert report.failed == [(bad, report.failed[0][1])]
    assert report.failed[0][1].startswith("STRING_TOO_LONG")
    assert len(report.written) == 399
    held = org.records(
        build_soql(["Id", "Lead_Score__c", "Lead_Grade__c"], "Lead", [f"Id IN ({in_list([ids[0], bad])})"])
    )
    values = {r["Id"]: (r["Lead_Score__c"], r["Lead_Grade__c"]) for r in held}
    assert values == {ids[0]: (12, "C"), bad: (None, None)}
    adapter.close()


def test_transient_failures_and_timeouts_are_retried_to_the_same_end_state(
    adapter: SalesforceAdapter, org: Org, redis_client: redis.Redis, mapping: SalesforceMapping, some_leads: list[str]
) -> None:
    ids = some_leads[1100:1500]
    org.faults({"500": 0.25, "429": 0.1, "timeout": 0.05, "timeout_s": 1.0, "seed": 3})
    impatient = org.adapter(redis_client, mapping, timeout=0.5)
    try:
        report = impatient.write_scores("Lead", {i: {"score": "33", "band": "cold"} for i in ids})
        leads = impatient.get_leads("Lead", ids)
    finally:
        org.faults({})
        impatient.close()

    assert sorted(report.written) == sorted(ids)
    assert report.failed == []
    assert sorted(lead.id for lead in leads) == sorted(ids)
    assert impatient.api_calls > 2 + 2  # some calls were repeated
    held = org.records(build_soql(["Id", "Lead_Score__c"], "Lead", [f"Id IN ({in_list(ids[:50])})"]))
    assert {r["Lead_Score__c"] for r in held} == {33}


BULK_JOBS = "POST /services/data/{version}/jobs/ingest"


def _scores(org: Org, ids: list[str]) -> dict[str, Any]:
    held = org.records(build_soql(["Id", "Lead_Score__c"], "Lead", [f"Id IN ({in_list(ids)})"]))
    return {r["Id"]: r["Lead_Score__c"] for r in held}


def test_a_row_lock_on_one_record_is_retried_and_a_lasting_one_is_reported_to_retry_not_as_failed(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    ids = some_leads[1500:1540]
    locked, stuck, bad = ids[3], ids[9], ids[20]
    updates = {i: {"score": "44", "model": "m" * 100 if i == bad else "v3"} for i in ids}

    # Another transaction holds `locked` for one attempt, `stuck` for every attempt.
    org.faults({"records": [locked], "max": 1})
    report = adapter.write_scores("Lead", updates)
    assert report.retry == []
    assert locked in report.written

    org.faults({"records": [stuck]})
    report = adapter.write_scores("Lead", {i: {"score": "45", "model": "m" * 100 if i == bad else "v3"} for i in ids})
    org.faults({})

    assert [rid for rid, _ in report.retry] == [stuck]
    assert report.retry[0][1].startswith("UNABLE_TO_LOCK_ROW")
    assert [rid for rid, _ in report.failed] == [bad]  # a validation error stays reported and skipped
    assert "STRING_TOO_LONG" in report.failed[0][1]
    assert stuck not in report.written
    assert len(report.written) == len(ids) - 2
    # only the locked record was sent again (1 + 2 retries), not the others
    assert org.stats().get(COMPOSITE) == 2 + 3
    scores = _scores(org, ids)
    assert scores[stuck] == 44
    assert scores[ids[0]] == 45
    assert scores[bad] is None


def test_rows_a_failed_bulk_job_left_unprocessed_are_written_again_and_never_reported_as_written(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping, some_leads: list[str]
) -> None:
    org.reset_stats()
    adapter = org.adapter(redis_client, mapping.model_copy(update={"bulk_threshold": 300}))
    ids = some_leads[1600:2000]

    # The job gives up at row 150 once: rows 150.. are unprocessed, written again (and only they).
    org.faults({"records": [ids[150]], "max": 1})
    report = adapter.write_scores("Lead", {i: {"score": "61"} for i in ids})
    assert sorted(report.written) == sorted(ids)
    assert report.retry == []
    assert report.failed == []
    calls = org.stats()
    assert calls.get(BULK_JOBS) == 1  # the 150 rows it did write were not sent again in a second job
    assert calls.get(COMPOSITE) == 2  # the 250 unprocessed ones, 200 a call
    assert set(_scores(org, ids[140:160]).values()) == {61}

    # A job that fails at the same row every time: that row is reported to retry, never as written.
    org.reset_stats()
    org.faults({"records": [ids[150]]})
    report = adapter.write_scores("Lead", {i: {"score": "62"} for i in ids})
    org.faults({})
    assert [rid for rid, _ in report.retry] == [ids[150]]
    assert ids[150] not in report.written
    assert len(report.written) == len(ids) - 1
    assert report.failed == []
    scores = _scores(org, ids[140:160])
    assert scores[ids[150]] == 61
    assert scores[ids[151]] == 62
    adapter.close()


def test_set_owner_assigns_an_unowned_lead_without_the_orgs_assignment_rules(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    unowned = org.records(
        build_soql(["Id"], "Lead", ["IsConverted = false", f"OwnerId = {soql_id(org.unassigned_owner)}"], limit=2)
    )
    lead_id = unowned[0]["Id"]
    reps = [r for r in adapter.list_reps() if r.active and r.region]
    first, second = reps[0].id, reps[1].id

    assert adapter.set_owner("Lead", lead_id, first) is True
    # Owned now: a second assignment without `expected` must not steal it.
    assert adapter.set_owner("Lead", lead_id, second) is False
    assert adapter.set_owner("Lead", lead_id, first) is True  # already theirs
    # An SLA reassignment names the rep who loses the lead.
    assert adapter.set_owner("Lead", lead_id, second, expected=first) is True

    held = org.records(build_soql(["OwnerId"], "Lead", [f"Id = {soql_id(lead_id)}"]))
    assert held[0]["OwnerId"] == second
    assert org.admin("GET", "info")["auto_assign_applied"] == 0


def _owners(org: Org, ids: list[str]) -> dict[str, str]:
    rows = org.records(build_soql(["Id", "OwnerId"], "Lead", [f"Id IN ({in_list(ids)})"]))
    return {r["Id"]: r["OwnerId"] for r in rows}


@pytest.mark.parametrize("bulk", [False, True], ids=["composite", "bulk"])
def test_score_writes_leave_the_owner_routing_set_alone(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping, some_leads: list[str], bulk: bool
) -> None:
    # The org's lead assignment rule runs on every REST Lead update that does not say
    # Sforce-Auto-Assign: FALSE (the sandbox does as Salesforce does): a score write without the
    # header would hand the lead routing just gave a rep to the rule's queue.
    ids = some_leads[1700:1705] if bulk else some_leads[1705:1710]
    adapter = org.adapter(redis_client, mapping)
    rep = next(r for r in adapter.list_reps() if r.active and r.region).id
    before = org.admin("GET", "info")["auto_assign_applied"]
    for lead_id in ids:
        current = _owners(org, [lead_id])[lead_id]
        assert adapter.set_owner("Lead", lead_id, rep, expected=current) is True

    report = adapter.write_scores("Lead", {i: {"score": "91", "band": "hot"} for i in ids}, bulk=bulk)

    assert sorted(report.written) == sorted(ids)
    assert _owners(org, ids) == dict.fromkeys(ids, rep)
    assert org.admin("GET", "info")["auto_assign_applied"] == before
    adapter.close()


def test_a_lead_waiting_in_a_queue_is_unassigned_and_routing_may_give_it_to_a_rep(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    # A Lead owned by a queue (00G...) waits for a rep to pick it up: with owners.queues_are_unassigned
    # (the shipped default) the adapter reports no owner and set_owner may assign it.
    queues = org.admin("GET", "info")["queues"]
    inbound = queues["Inbound Leads"]
    waiting = [r["Id"] for r in org.records(build_soql(
        ["Id"], "Lead", ["IsConverted = false", f"OwnerId = {soql_id(inbound)}"], limit=3))]  # fmt: skip
    assert len(waiting) == 3
    adapter = org.adapter(redis_client, mapping)
    assert [lead.owner_id for lead in adapter.get_leads("Lead", waiting)] == [None, None, None]
    rep = next(r for r in adapter.list_reps() if r.active and r.region).id
    assert adapter.set_owner("Lead", waiting[0], rep) is True
    assert _owners(org, [waiting[0]]) == {waiting[0]: rep}

    # An org whose queues are worked by teams of their own: a queue counts as an owner, routing keeps off.
    strict = org.adapter(redis_client, mapping.model_copy(
        update={"owners": mapping.owners.model_copy(update={"queues_are_unassigned": False})}))  # fmt: skip
    assert [lead.owner_id for lead in strict.get_leads("Lead", waiting[1:])] == [inbound, inbound]
    assert strict.set_owner("Lead", waiting[1], rep) is False
    assert _owners(org, [waiting[1]]) == {waiting[1]: inbound}
    adapter.close()
    strict.close()


def test_reps_are_the_orgs_users_with_their_division_as_region(adapter: SalesforceAdapter) -> None:
    reps = adapter.list_reps()
    regions = {r.region for r in reps if r.region}
    assert {"DACH", "Nordics", "UK&I", "Benelux", "Rest of World"} <= regions
    assert any(not r.active for r in reps)
    dach = next(r for r in reps if r.region == "DACH")
    assert dach.teams == ("DACH",)
    assert "@" in dach.email
    assert dach.timezone != ""


def test_a_task_for_the_rep_is_created_and_followed(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    lead_id = some_leads[1600]
    rep = next(r for r in adapter.list_reps() if r.active and r.region).id
    before = time.time() - 1
    due = time.time() + 86400

    task_id = adapter.create_task("Lead", lead_id, rep, subject="Hot lead: call today", body="Score 91", due=due)

    fields = ["WhoId", "OwnerId", "Subject", "Status", "Priority", "ActivityDate"]
    held = org.records(build_soql(fields, "Task", [f"Id = {soql_id(task_id)}"]))[0]
    assert (held["WhoId"], held["OwnerId"], held["Status"], held["Priority"]) == (lead_id, rep, "Not Started", "High")
    assert held["ActivityDate"] == time.strftime("%Y-%m-%d", time.gmtime(due))
    assert adapter.task_is_open(task_id) is True
    assert adapter.rep_acted_since("Lead", lead_id, rep, before) is False

    org.sf.Task.update(task_id, {"Status": "Completed"})

    assert adapter.task_is_open(task_id) is False
    assert adapter.rep_acted_since("Lead", lead_id, rep, before) is True
    assert adapter.record_url("Lead", lead_id) == f"{org.url}/lightning/r/Lead/{lead_id}/view"


def test_a_task_stored_before_its_answer_was_lost_is_found_by_its_reference_and_not_created_twice(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    lead_id = some_leads[1601]
    rep = next(r for r in adapter.list_reps() if r.active and r.region).id
    ref = task_ref("salesforce:Lead:x|1|r0")
    mine = build_soql(["Id"], "Task", [f"WhoId = {soql_id(lead_id)}", f"OwnerId = {soql_id(rep)}"])
    before = len(org.records(mine))
    # Salesforce stores the task, then the answer is lost: the adapter's retry must not post it again.
    org.faults({"drop": 1.0, "only": "POST /services/data/v59.0/sobjects/Task", "max": 1, "timeout_s": 0})
    try:
        task_id = adapter.create_task("Lead", lead_id, rep, subject="Hot lead: call today",
                                      body=with_task_ref("Score 91", ref), due=time.time() + 86400)  # fmt: skip
        injected = org.http.get(f"{org.url}/__sandbox__/faults", timeout=10).json()["faults"]["injected"]
    finally:
        org.faults({})
    assert injected == 1, "the first POST was answered with a 504 after Salesforce stored the task"
    assert [r["Id"] for r in org.records(mine)][before:] == [task_id]
    assert adapter.find_task("Lead", lead_id, rep, ref) == task_id
    assert adapter.find_task("Lead", lead_id, rep, task_ref("another assignment")) is None


def test_routings_open_tasks_are_found_again_by_their_headline(
    adapter: SalesforceAdapter, org: Org, some_leads: list[str]
) -> None:
    lead_id, other_id = some_leads[1700], some_leads[1701]
    rep = next(r for r in adapter.list_reps() if r.active and r.region).id
    since = time.time() - 60
    body = with_task_ref("b", task_ref("salesforce:Lead:y|1|r0"))  # as routing writes it
    ours = adapter.create_task("Lead", lead_id, rep, subject="Hot lead: Ana Ruiz, score 91", body=body, due=since)
    done = adapter.create_task("Lead", other_id, rep, subject="Hot lead: Bo Li, score 88", body="b", due=since)
    adapter.create_task("Lead", other_id, rep, subject="Call back about pricing", body="b", due=since)
    org.sf.Task.update(done, {"Status": "Completed"})

    found = adapter.open_routing_tasks(("Hot lead", "Hot lead reassigned to you"), since)

    mine = [t for t in found if t.lead_id in (lead_id, other_id)]
    assert [(t.stream, t.lead_id, t.rep_id, t.task_id, t.subject) for t in mine] == [
        ("Lead", lead_id, rep, ours, "Hot lead: Ana Ruiz, score 91")
    ]
    assert since <= mine[0].created_at <= time.time() + 1
    assert adapter.open_routing_tasks(("Hot lead",), time.time() + 3600) == []


def test_an_expired_token_is_refreshed_mid_run_and_shared_with_other_workers(
    redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    with Sandbox.start(contacts=4500, seed=11) as sandbox:
        org = Org(sandbox)
        org.create_score_fields()
        worker = org.adapter(redis_client, mapping, oauth=org.oauth)
        first = worker.read_page("Lead", None, since=None)
        assert first.next_cursor is not None

        org.http.post(f"{org.url}/__sandbox__/salesforce/expire", json={"token": sandbox.salesforce_token}, timeout=10)
        rest = read_all_from(worker, "Lead", first.next_cursor)
        other = org.adapter(redis_client, mapping, oauth=org.oauth)
        contacts = read_all(other, "Contact")

        assert len(first.leads) + len(rest) + len(contacts) == 4500
        calls = org.stats()
        assert calls.get(TOKEN) == 2  # the test's own token, and one refresh for both workers
        assert sandbox.salesforce_token not in redis_client.keys("*")

        # A worker without refresh credentials, and no refreshed token shared yet, stops.
        redis_client.flushall()
        unrefreshable = org.adapter(redis_client, mapping)
        with pytest.raises(StopSync) as info:
            unrefreshable.read_page("Lead", None, since=None)
        assert str(info.value) == SESSION_EXPIRED
        org.close()


def read_all_from(adapter: SalesforceAdapter, stream: str, cursor: str) -> list[Lead]:
    leads: list[Lead] = []
    next_cursor: str | None = cursor
    while next_cursor is not None:
        page = adapter.read_page(stream, next_cursor, since=None)
        leads += page.leads
        next_cursor = page.next_cursor
    return leads


def test_check_names_each_missing_score_field_and_setup_creates_them(
    redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    with Sandbox.start(contacts=50, seed=3) as sandbox:
        org = Org(sandbox)
        adapter = org.adapter(redis_client, mapping)
        org.admin("POST", "fields", {"object": "Lead", "fields": [{"name": "Lead_Score__c", "type": "string"}]})

        problems = adapter.check()

        assert "Lead: create the field Lead_Fit_Score__c (Number(18,0))" in "\n".join(problems)
        assert sum("Lead_Fit_Score__c" in line for line in problems) == 2  # one line per object
        assert any(line.startswith("Contact: create the field Lead_Scored_At__c (Date/Time)") for line in problems)
        assert any(line.startswith("Lead: the field Lead_Score__c is of type string") for line in problems)
        assert len(problems) == 20  # 10 score fields (8 points, 2 learned) on Lead and Contact
        assert all(p.startswith(("Lead: ", "Contact: ")) for p in problems)

        lines = adapter.setup()

        assert "Lead: created the field Lead_Fit_Score__c (Number(18,0))" in lines
        assert "Contact: created the field Lead_Score__c (Number(18,0))" in lines
        assert any(line.startswith("Lead: the field Lead_Score__c is of type string") for line in lines)
        remaining = adapter.check()
        assert len(remaining) == 1
        assert remaining[0].startswith("Lead: the field Lead_Score__c is of type string")
        assert adapter.usage_line() is not None
        assert adapter.usage_line().startswith("Salesforce API usage: ")  # type: ignore[union-attr]
        org.close()


def test_an_org_without_the_learned_fields_syncs_while_no_model_store_is_configured(
    redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    """An org set up before the learned probability existed has only the 8 score fields: without a model
    store (LEADSCORE_MODEL_STORE) the sync must neither query the two learned fields (INVALID_FIELD
    would stop every page) nor ask for them in check; with one, check names them."""
    with Sandbox.start(contacts=50, seed=5) as sandbox:
        org = Org(sandbox)
        points_only = [f for f in SCORE_FIELDS if "Probab" not in f["name"]]
        for obj in ("Lead", "Contact"):
            org.admin("POST", "fields", {"object": obj, "fields": points_only})
        adapter = org.adapter(redis_client, mapping, learned=False)
        try:
            assert adapter.check() == []
            page = adapter.read_page("Lead", None, since=None)
            assert page.leads
            lead = page.leads[0]
            report = adapter.write_scores("Lead", {lead.id: {"score": "42", "band": "warm"}})
            assert report.written == [lead.id]
            assert report.failed == []
            read_back = org.records(build_soql(["Lead_Score__c"], "Lead", [f"Id = {soql_id(lead.id)}"]))
            assert read_back[0]["Lead_Score__c"] == 42

            with_store = org.adapter(redis_client, mapping, learned=True)
            problems = with_store.check()
            assert len(problems) == 4  # the 2 learned fields on Lead and Contact
            assert all("Probability" in p for p in problems)
        finally:
            org.close()


def test_check_reports_a_bad_token_an_unreachable_host_and_an_untrusted_certificate(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    bad_token = org.adapter(redis_client, mapping, token="00Dbogus!token")
    assert bad_token.check() == [SESSION_EXPIRED[:1].upper() + SESSION_EXPIRED[1:] + "."]

    no_ca = org.adapter(redis_client, mapping, ca=False)
    problems = no_ca.check()
    assert len(problems) == 1
    assert "TLS certificate" in problems[0]
    assert "SALESFORCE_CA_BUNDLE" in problems[0]
    with pytest.raises(StopSync, match="not trusted"):
        no_ca.read_page("Lead", None, since=None)

    with socket_closed_port() as port:
        nowhere = org.adapter(redis_client, mapping, url=f"https://127.0.0.1:{port}", timeout=2)
        problems = nowhere.check()
    assert len(problems) == 1
    assert problems[0].startswith("Cannot reach Salesforce at 127.0.0.1:")


class socket_closed_port:
    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_api_floor_and_the_daily_limit_stop_the_sync_with_a_sentence(
    redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    sandbox = Sandbox._start_thread(SandboxOptions(contacts=20, seed=5, salesforce_daily=20))
    try:
        org = Org(sandbox)
        org.create_score_fields()
        careful = org.adapter(redis_client, mapping.model_copy(update={"api_floor_percent": 50.0}))
        with pytest.raises(StopSync) as info:
            read_until_stopped(careful)
        assert "Salesforce API usage is at 10 of the org's 20 calls" in str(info.value)
        assert "leave 50% for other integrations" in str(info.value)
        # check() still reaches the org (the describes of Lead and Contact, and of Opportunity and
        # OpportunityContactRole for the outcomes: section) and reports the usage as a problem.
        assert careful.check() == [f"{info.value}.".replace("at 10 of", "at 14 of")]

        # Another integration spends the rest of the day's budget...
        while org.admin("GET", "info")["api_usage"] != "api-usage=20/20":
            org.records("SELECT Id FROM User LIMIT 1")
        # ...so a worker that has not seen the usage yet meets Salesforce's own refusal.
        redis_client.flushall()
        fresh = org.adapter(redis_client, mapping)
        with pytest.raises(StopSync) as info:
            fresh.read_page("Lead", None, since=None)
        assert "API request limit is used up" in str(info.value)
        assert "rolling 24 hours" in str(info.value)
        assert info.value.resume_at is not None
        org.close()
    finally:
        sandbox.stop()


def test_a_page_cursor_older_than_two_days_stops_the_stream_with_a_sentence(
    redis_client: redis.Redis, mapping: SalesforceMapping
) -> None:
    # Query locators live two days after the initial query (API 56.0+): a sync page handed on
    # later than that meets INVALID_QUERY_LOCATOR and says so, instead of retrying forever.
    with Sandbox.start(contacts=1000, seed=3) as sandbox:  # more than 400 unconverted Leads
        org = Org(sandbox)
        org.create_score_fields()
        adapter = org.adapter(redis_client, mapping.model_copy(update={"page_size": 200}))
        first = adapter.read_page("Lead", None, since=None)
        assert first.next_cursor is not None
        assert len(adapter.read_page("Lead", first.next_cursor, since=None).leads) == 200
        org.admin("POST", "clock", {"advance_s": 2 * 86_400 + 60})
        with pytest.raises(StopSync, match=r"query cursor expired or is invalid .*INVALID_QUERY_LOCATOR"):
            adapter.read_page("Lead", first.next_cursor, since=None)
        org.close()


class ConnectProxy:
    """An HTTPS forward proxy on loopback (HTTP CONNECT, then bytes both ways); records each CONNECT target."""

    def __init__(self) -> None:
        import select
        import socket
        import socketserver

        self.targets: list[str] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                if method != "CONNECT":
                    self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                    return
                proxy.targets.append(target)
                host, port = target.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=10) as upstream:
                    self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    pair = {self.request: upstream, upstream: self.request}
                    while True:
                        readable, _, _ = select.select(list(pair), [], [], 10)
                        if not readable:
                            return
                        for sock in readable:
                            data = sock.recv(65536)
                            if not data:
                                return
                            pair[sock].sendall(data)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _proxy_env(monkeypatch: pytest.MonkeyPatch, proxy: str, no_proxy: str) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    # Set on these machines: with it, requests ignores session.verify; the CA bundle must still win.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")


def test_with_a_ca_bundle_the_adapter_still_goes_through_the_https_proxy(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ConnectProxy() as proxy:
        _proxy_env(monkeypatch, proxy.url, "example.invalid")
        through_proxy = org.adapter(redis_client, mapping)  # with SALESFORCE_CA_BUNDLE (the sandbox's CA)
        reps = through_proxy.list_reps()
    assert reps, "the org's users were read"
    host = org.url.removeprefix("https://")
    assert proxy.targets
    assert set(proxy.targets) == {host}


def test_no_proxy_still_sends_the_org_direct_with_a_ca_bundle(
    org: Org, redis_client: redis.Redis, mapping: SalesforceMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ConnectProxy() as proxy:
        _proxy_env(monkeypatch, proxy.url, "127.0.0.1,localhost")
        direct = org.adapter(redis_client, mapping)
        assert direct.list_reps()
    assert proxy.targets == []
