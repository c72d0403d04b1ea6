"""The sandbox's Salesforce org, driven by simple-salesforce over real HTTPS."""

# Building SOQL text from values is what these tests exercise.
# ruff: noqa: S608

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)

from sandbox import sf_ids
from sandbox.salesforce import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_REFRESH_TOKEN,
    SCORE_FIELDS,
)
from sandbox.server import Sandbox

PEOPLE = 4500
TASK_KINDS = {"email_open", "email_click", "email_reply", "email_bounce", "call", "note"}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=PEOPLE, seed=11) as sb:
        yield sb


def _session(sb: Sandbox) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise win over `verify`
    session.verify = sb.ca_cert
    return session


def _client(sb: Sandbox, token: str | None = None) -> Salesforce:
    return Salesforce(
        instance_url=sb.salesforce_url, session_id=token or sb.salesforce_token, session=_session(sb), version="59.0"
    )


@pytest.fixture
def sf(sandbox: Sandbox) -> Iterator[Salesforce]:
    client = _client(sandbox)
    yield client
    client.session.close()


def _admin(sb: Sandbox, path: str, body: Any = None) -> Any:
    with _session(sb) as s:
        r = s.post(f"{sb.salesforce_url}/__sandbox__/{path}", json=body)
        r.raise_for_status()
        return r.json()


def _stats(sb: Sandbox) -> dict[str, Any]:
    with _session(sb) as s:
        data: dict[str, Any] = s.get(f"{sb.salesforce_url}/__sandbox__/stats").json()
        return data


def _people(sb: Sandbox, sf_type: str) -> list[int]:
    return [i for i in range(PEOPLE) if sb.population.person(i).sf_type == sf_type]


def _converted(sb: Sandbox, i: int) -> bool:
    """Whether person i is a converted Lead: won, or lost with a dated (closed) opportunity."""
    p = sb.population.person(i)
    return p.sf_type == "Lead" and (p.outcome == "won" or (p.outcome == "lost" and p.outcome_dated))


def _unconverted_leads(sb: Sandbox) -> list[int]:
    return [i for i in _people(sb, "Lead") if not _converted(sb, i)]


def _contacts(sb: Sandbox) -> list[int]:
    """People with a Contact record: Contact people and the Contacts converted Leads became."""
    return [i for i in range(PEOPLE) if sb.population.person(i).sf_type == "Contact" or _converted(sb, i)]


def _lead_id(sb: Sandbox, nth: int) -> str:
    return sf_ids.make_id(sf_ids.LEAD, _unconverted_leads(sb)[nth])


def _soql_now(offset_s: float = 0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_query_all_iter_pages_every_lead_2000_at_a_time(sandbox: Sandbox, sf: Salesforce) -> None:
    _admin(sandbox, "stats/reset")
    ids = [r["Id"] for r in sf.query_all_iter("SELECT Id, Name FROM Lead WHERE IsConverted = false")]
    leads = _unconverted_leads(sandbox)
    assert ids == [sf_ids.make_id(sf_ids.LEAD, i) for i in leads]
    calls = _stats(sandbox)["calls"]
    assert calls["GET /services/data/{version}/query"] == 1
    assert calls["GET /services/data/{version}/query/{locator}"] == (len(leads) - 1) // 2000


def test_first_page_reports_the_exact_total_and_a_locator(sf: Salesforce, sandbox: Sandbox) -> None:
    page = sf.query("SELECT Id FROM Lead")
    assert page["totalSize"] == len(_people(sandbox, "Lead")) > 2000
    assert len(page["records"]) == min(2000, page["totalSize"])
    assert page["done"] is False
    assert page["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")


def test_batch_size_header_is_honoured(sf: Salesforce, sandbox: Sandbox) -> None:
    pages = []
    page = sf.query("SELECT Id FROM Lead", headers={"Sforce-Query-Options": "batchSize=500"})
    pages.append(len(page["records"]))
    while not page["done"]:
        page = sf.query_more(page["nextRecordsUrl"], identifier_is_url=True)
        pages.append(len(page["records"]))
    total = len(_people(sandbox, "Lead"))
    assert pages[:-1] == [500] * (len(pages) - 1)
    assert sum(pages) == total


def test_a_locator_url_can_be_fetched_again_after_a_failure(sf: Salesforce) -> None:
    first = sf.query("SELECT Id FROM Lead")
    again = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    retry = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert [r["Id"] for r in again["records"]] == [r["Id"] for r in retry["records"]]


def test_incremental_query_sees_the_connectors_own_writes_in_modstamp_order(sandbox: Sandbox, sf: Salesforce) -> None:
    since = _soql_now(-1)
    first, second = _lead_id(sandbox, 3), _lead_id(sandbox, 1)
    sf.Lead.update(first, {"Title": "Head of Test"})
    sf.Lead.update(second, {"Title": "CTO"})
    rows = list(
        sf.query_all_iter(
            f"SELECT Id, Title, SystemModstamp FROM Lead WHERE SystemModstamp > {since} ORDER BY SystemModstamp"
        )
    )
    assert [r["Id"] for r in rows][-2:] == [first, second]
    assert rows[-1]["Title"] == "CTO"
    later = sf.query(f"SELECT Id FROM Lead WHERE SystemModstamp > {_soql_now(5)}")
    assert later["totalSize"] == 0


def test_modstamp_range_over_the_base_population_counts_exactly(sandbox: Sandbox, sf: Salesforce) -> None:
    pop = sandbox.population
    cut_i = PEOPLE // 2
    cut = dt.datetime.fromtimestamp(pop.base_modified_ms(cut_i) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    page = sf.query(f"SELECT COUNT() FROM Contact WHERE SystemModstamp >= {cut}Z")
    written = {i for i in _contacts(sandbox) if sandbox.salesforce_store.modified_ms("Contact", i) is not None}
    expected = sum(
        1 for i in _contacts(sandbox) if pop.base_modified_ms(i) >= pop.base_modified_ms(cut_i) or i in written
    )
    assert page["totalSize"] == expected


def test_in_list_activity_queries_find_each_persons_tasks_events_and_campaign_members(
    sandbox: Sandbox, sf: Salesforce
) -> None:
    people = _people(sandbox, "Lead")[:40]
    ids = "','".join(sf_ids.make_id(sf_ids.LEAD, i) for i in people)
    kinds = [a.kind for i in people for a in sandbox.population.activities(i)]
    tasks = sf.query_all(f"SELECT Id, WhoId, Subject, Type, TaskSubtype FROM Task WHERE WhoId IN ('{ids}')")
    events = sf.query_all(f"SELECT Id, WhoId, StartDateTime FROM Event WHERE WhoId IN ('{ids}')")
    members = sf.query_all(
        f"SELECT Id, LeadId, Status, Campaign.Name, Campaign.Type FROM CampaignMember WHERE LeadId IN ('{ids}')"
    )
    assert tasks["totalSize"] == sum(1 for k in kinds if k in TASK_KINDS)
    assert events["totalSize"] == kinds.count("meeting")
    cm_kinds = ("webinar_registered", "webinar_attended", "event_attended", "form_submission")
    assert members["totalSize"] == sum(1 for k in kinds if k in cm_kinds)
    bounced = sum(1 for r in tasks["records"] if r["Subject"].startswith("Bounced: "))
    assert bounced == kinds.count("email_bounce")
    assert {r["Campaign"]["Type"] for r in members["records"]} <= {"Webinar", "Trade Show", "Conference", "Other"}


def test_describe_lists_the_score_fields_only_once_they_are_created(sandbox: Sandbox, sf: Salesforce) -> None:
    before = {f["name"] for f in sf.Contact.describe()["fields"]}
    assert "Lead_Score__c" not in before
    _admin(
        sandbox,
        "salesforce/fields",
        {"object": "Contact", "fields": [{"name": n, "type": t} for n, t, _ in SCORE_FIELDS]},
    )
    fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    assert fields["Lead_Score__c"]["type"] == "double"
    assert fields["Lead_Score__c"]["custom"] is True
    assert fields["Lead_Score__c"]["updateable"] is True
    assert fields["Lead_Scored_At__c"]["type"] == "datetime"


@pytest.fixture
def score_fields(sandbox: Sandbox) -> None:
    for obj in ("Lead", "Contact"):
        fields = [{"name": n, "type": t, **kw} for n, t, kw in SCORE_FIELDS]
        _admin(sandbox, "salesforce/fields", {"object": obj, "fields": fields})


@pytest.mark.usefixtures("score_fields")
def test_composite_update_reports_each_record_and_keeps_the_good_ones(sandbox: Sandbox, sf: Salesforce) -> None:
    good, bad = _lead_id(sandbox, 10), _lead_id(sandbox, 11)
    result = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Lead"}, "id": good, "Lead_Score__c": 91, "Lead_Band__c": "hot"},
                {"attributes": {"type": "Lead"}, "id": bad, "Lead_Scoer__c": 5},
            ],
        },
    )
    assert result[0] == {"id": good, "success": True, "errors": []}
    assert result[1]["success"] is False
    assert result[1]["errors"][0]["statusCode"] == "INVALID_FIELD"
    rows = sf.query(f"SELECT Id, Lead_Score__c, Lead_Band__c FROM Lead WHERE Id IN ('{good}', '{bad}') ORDER BY Id")
    by_id = {r["Id"]: r for r in rows["records"]}
    assert by_id[good]["Lead_Score__c"] == 91.0
    assert by_id[good]["Lead_Band__c"] == "hot"
    assert by_id[bad]["Lead_Score__c"] is None


@pytest.mark.usefixtures("score_fields")
def test_all_or_none_rolls_back_every_record_when_one_fails(sandbox: Sandbox, sf: Salesforce) -> None:
    good = _lead_id(sandbox, 12)
    result = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "allOrNone": True,
            "records": [
                {"attributes": {"type": "Lead"}, "id": good, "Lead_Score__c": 42},
                {"attributes": {"type": "Lead"}, "id": "00Qnotanid", "Lead_Score__c": 1},
            ],
        },
    )
    assert [r["success"] for r in result] == [False, False]
    assert result[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert result[1]["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert sf.Lead.get(good)["Lead_Score__c"] is None


@pytest.mark.usefixtures("score_fields")
def test_single_record_patch_answers_204_and_moves_the_modstamp(sandbox: Sandbox, sf: Salesforce) -> None:
    rid = _lead_id(sandbox, 13)
    before = sf.Lead.get(rid)["SystemModstamp"]
    assert sf.Lead.update(rid, {"Lead_Score__c": 77, "Lead_Scored_At__c": "2026-01-02T03:04:05Z"}) == 204
    after = sf.Lead.get(rid)
    assert after["Lead_Score__c"] == 77.0
    assert after["Lead_Scored_At__c"] == "2026-01-02T03:04:05.000+0000"
    assert after["SystemModstamp"] > before


def test_owner_change_without_auto_assign_false_is_overridden_by_the_assignment_rule(
    sandbox: Sandbox, sf: Salesforce
) -> None:
    active = next(r.index for r in sandbox.population.reps() if r.active)
    owner = sf_ids.make_id(sf_ids.USER, active)
    kept, overridden = _lead_id(sandbox, 20), _lead_id(sandbox, 21)
    sf.Lead.update(kept, {"OwnerId": owner}, headers={"Sforce-Auto-Assign": "FALSE"})
    sf.Lead.update(overridden, {"OwnerId": owner})
    assert sf.Lead.get(kept)["OwnerId"] == owner
    assert sf.Lead.get(overridden)["OwnerId"] != owner
    with _session(sandbox) as s:
        info = s.get(f"{sandbox.salesforce_url}/__sandbox__/salesforce/info").json()
    assert info["auto_assign_applied"] >= 1


def _info(sb: Sandbox) -> dict[str, Any]:
    with _session(sb) as s:
        data: dict[str, Any] = s.get(f"{sb.salesforce_url}/__sandbox__/salesforce/info").json()
        return data


def _owner_of(sf: Salesforce, lead_id: str) -> str:
    return str(sf.Lead.get(lead_id)["OwnerId"])


@pytest.mark.usefixtures("score_fields")
def test_any_lead_update_without_auto_assign_false_runs_the_assignment_rule(sandbox: Sandbox, sf: Salesforce) -> None:
    # REST applies the active assignment rule on Lead updates unless Sforce-Auto-Assign says FALSE,
    # whatever the update changes: a score write without the header moves the owner too.
    info = _info(sandbox)
    rule_owner = info["assignment_rule_owner"]
    assert rule_owner == info["queues"]["Inbound Leads"]
    rep = sf_ids.make_id(sf_ids.USER, next(r.index for r in sandbox.population.reps() if r.active))
    single, composite, kept = _lead_id(sandbox, 23), _lead_id(sandbox, 24), _lead_id(sandbox, 25)
    for lead_id in (single, composite, kept):
        sf.Lead.update(lead_id, {"OwnerId": rep}, headers={"Sforce-Auto-Assign": "FALSE"})
        assert _owner_of(sf, lead_id) == rep

    sf.Lead.update(single, {"Lead_Score__c": 70})
    sf.restful("composite/sobjects", method="PATCH", json={
        "allOrNone": False, "records": [{"attributes": {"type": "Lead"}, "id": composite, "Lead_Score__c": 71}]})
    sf.Lead.update(kept, {"Lead_Score__c": 72}, headers={"Sforce-Auto-Assign": "false"})

    assert _owner_of(sf, single) == rule_owner
    assert _owner_of(sf, composite) == rule_owner
    assert _owner_of(sf, kept) == rep
    assert _info(sandbox)["auto_assign_applied"] == info["auto_assign_applied"] + 2


@pytest.mark.usefixtures("score_fields")
def test_a_bulk_job_runs_the_assignment_rule_only_when_it_names_it(sandbox: Sandbox, sf: Salesforce) -> None:
    info = _info(sandbox)
    rep = sf_ids.make_id(sf_ids.USER, next(r.index for r in sandbox.population.reps() if r.active))
    plain, ruled = _lead_id(sandbox, 26), _lead_id(sandbox, 27)
    for lead_id in (plain, ruled):
        sf.Lead.update(lead_id, {"OwnerId": rep}, headers={"Sforce-Auto-Assign": "FALSE"})
    [result] = sf.bulk2.Lead.update(records=[{"Id": plain, "Lead_Score__c": "5"}], wait=0)
    assert result["numberRecordsFailed"] == 0
    assert _owner_of(sf, plain) == rep
    base = f"{sandbox.salesforce_url}/services/data/v59.0/jobs/ingest"
    auth = {"Authorization": f"Bearer {sandbox.salesforce_token}"}
    with _session(sandbox) as s:
        job = s.post(base, headers=auth, json={"object": "Lead", "operation": "update",
                                               "assignmentRuleId": info["assignment_rule_id"]}).json()  # fmt: skip
        s.put(f"{base}/{job['id']}/batches", headers={**auth, "Content-Type": "text/csv"},
              data=f"Id,Lead_Score__c\n{ruled},6\n").raise_for_status()  # fmt: skip
        s.patch(f"{base}/{job['id']}", headers=auth, json={"state": "UploadComplete"}).raise_for_status()
    assert _owner_of(sf, ruled) == info["assignment_rule_owner"]


def test_some_unowned_leads_wait_in_queues_which_are_groups(sandbox: Sandbox, sf: Salesforce) -> None:
    queues = sf.query("SELECT Id, Name, Type FROM Group WHERE Type = 'Queue'")["records"]
    assert {q["Name"] for q in queues} == {"Inbound Leads", "Event Leads"}
    assert all(q["Id"].startswith("00G") for q in queues)
    inbound = next(q["Id"] for q in queues if q["Name"] == "Inbound Leads")
    rows = sf.query(f"SELECT Id, OwnerId, Owner.Name FROM Lead WHERE OwnerId = '{inbound}' LIMIT 5")["records"]
    assert len(rows) == 5
    assert {r["Owner"]["Name"] for r in rows} == {"Inbound Leads"}
    owners = [r["OwnerId"] for r in sf.query_all_iter("SELECT OwnerId FROM Lead")]
    assert sum(o.startswith("00G") for o in owners) > 0
    unassigned = _info(sandbox)["unassigned_owner"]
    assert sum(o == unassigned for o in owners) > 0
    # a queue can own a Lead, not a Task
    with pytest.raises(SalesforceMalformedRequest):
        sf.Task.create({"WhoId": _lead_id(sandbox, 28), "Subject": "x", "OwnerId": inbound})


def test_an_inactive_owner_is_refused(sandbox: Sandbox, sf: Salesforce) -> None:
    inactive = next(r.index for r in sandbox.population.reps() if not r.active)
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Lead.update(_lead_id(sandbox, 22), {"OwnerId": sf_ids.make_id(sf_ids.USER, inactive)})
    assert err.value.content[0]["errorCode"] == "INACTIVE_OWNER_OR_USER"


def test_task_create_answers_201_and_the_task_is_queryable_by_who(sandbox: Sandbox, sf: Salesforce) -> None:
    who = _lead_id(sandbox, 30)
    created = sf.Task.create(
        {"WhoId": who, "Subject": "Hot lead: call today", "Priority": "High", "Status": "Not Started"}
    )
    assert created["success"] is True
    assert created["id"].startswith("00T")
    rows = sf.query(f"SELECT Id, Subject, Priority FROM Task WHERE WhoId = '{who}' AND Subject LIKE 'Hot lead%'")
    assert [r["Id"] for r in rows["records"]] == [created["id"]]
    recent = sf.query(f"SELECT Id FROM Task WHERE SystemModstamp > {_soql_now(-60)}")
    assert created["id"] in [r["Id"] for r in recent["records"]]


def test_every_response_reports_api_usage(sf: Salesforce) -> None:
    sf.query("SELECT Id FROM User WHERE IsActive = true")
    first = sf.api_usage["api-usage"]
    sf.query("SELECT Id FROM User")
    assert sf.api_usage["api-usage"].used == first.used + 1
    assert first.total == 100_000


def test_a_spent_daily_budget_refuses_with_request_limit_exceeded(sandbox: Sandbox, sf: Salesforce) -> None:
    _admin(sandbox, "salesforce/limits", {"daily": 5, "used": 5})
    try:
        with pytest.raises(SalesforceRefusedRequest) as err:
            sf.query("SELECT Id FROM User")
        assert err.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
        assert err.value.content[0]["message"] == "TotalRequests Limit exceeded."
    finally:
        _admin(sandbox, "salesforce/limits", {"daily": 100_000})


def test_an_expired_token_is_refused_until_refreshed_through_oauth(sandbox: Sandbox) -> None:
    with _session(sandbox) as s:
        token = s.post(
            f"{sandbox.salesforce_url}/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": SANDBOX_CLIENT_ID,
                "client_secret": SANDBOX_CLIENT_SECRET,
            },
        ).json()["access_token"]
    sf = _client(sandbox, token)
    sf.query("SELECT Id FROM User")
    _admin(sandbox, "salesforce/expire", {"token": token})
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM User")
    with _session(sandbox) as s:
        fresh = s.post(
            f"{sandbox.salesforce_url}/services/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": SANDBOX_CLIENT_ID,
                "client_secret": SANDBOX_CLIENT_SECRET,
                "refresh_token": SANDBOX_REFRESH_TOKEN,
            },
        ).json()
    assert fresh["token_type"] == "Bearer"
    assert fresh["instance_url"] == sandbox.salesforce_url
    assert _client(sandbox, fresh["access_token"]).query("SELECT Id FROM User")["totalSize"] > 0


def test_malformed_soql_raises_malformed_request(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query("SELECT Id FROM Lead WHERE Status = 'Open' AND")
    assert err.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query("SELECT Id, Score FROM Lead")
    assert err.value.content[0]["errorCode"] == "INVALID_FIELD"


@pytest.mark.usefixtures("score_fields")
def test_bulk_2_update_round_trip(sandbox: Sandbox, sf: Salesforce) -> None:
    ids = [_lead_id(sandbox, 40 + k) for k in range(5)]
    records = [{"Id": rid, "Lead_Score__c": str(60 + k)} for k, rid in enumerate(ids)]
    records.append({"Id": "00Q8d0000000000ZZZ", "Lead_Score__c": "1"})
    [result] = sf.bulk2.Lead.update(records=records, wait=0)
    assert result["numberRecordsProcessed"] == 6
    assert result["numberRecordsFailed"] == 1
    failed = sf.bulk2.Lead.get_failed_records(result["job_id"])
    assert "sf__Error" in failed.splitlines()[0]
    quoted = "','".join(ids)
    rows = sf.query(f"SELECT Id, Lead_Score__c FROM Lead WHERE Id IN ('{quoted}')")
    assert sorted(r["Lead_Score__c"] for r in rows["records"]) == [60.0, 61.0, 62.0, 63.0, 64.0]


def test_tls_verification_fails_without_the_sandbox_ca(sandbox: Sandbox) -> None:
    session = requests.Session()
    session.trust_env = False
    session.verify = True
    sf = Salesforce(instance_url=sandbox.salesforce_url, session_id=sandbox.salesforce_token, session=session)
    with pytest.raises(requests.exceptions.SSLError):
        sf.query("SELECT Id FROM User")
    session.close()


def test_an_overlong_query_url_is_refused_as_salesforce_does(sandbox: Sandbox) -> None:
    ids = "','".join(sf_ids.make_id(sf_ids.LEAD, i) for i in range(900))
    with _session(sandbox) as s:
        r = s.get(
            f"{sandbox.salesforce_url}/services/data/v59.0/query",
            params={"q": f"SELECT Id FROM Lead WHERE Id IN ('{ids}')"},
            headers={"Authorization": f"Bearer {sandbox.salesforce_token}"},
        )
    assert r.status_code in (414, 431)


# --------------------------------------------------------------------------- the org's clock


@pytest.fixture
def small() -> Iterator[Sandbox]:
    """A sandbox of its own, whose clock a test may move forward without disturbing the others."""
    with Sandbox.start(contacts=700, seed=3) as sb:
        yield sb


def test_a_query_locator_lives_two_days_from_the_query_then_answers_invalid_query_locator(small: Sandbox) -> None:
    sf = _client(small)
    options = {"Sforce-Query-Options": "batchSize=200"}
    first = sf.query("SELECT Id FROM Lead", headers=options)
    locator = first["nextRecordsUrl"]
    assert re.fullmatch(r"/services/data/v59\.0/query/01g[0-9A-Za-z]{15}-200", locator)
    single = sf.query("SELECT Id FROM User WHERE IsActive = true")
    assert single["done"] is True
    assert "nextRecordsUrl" not in single

    _admin(small, "salesforce/clock", {"advance_s": 2 * 86_400 - 60})
    assert len(sf.query_more(locator, identifier_is_url=True)["records"]) == 200  # still within two days
    _admin(small, "salesforce/clock", {"advance_s": 120})
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query_more(locator, identifier_is_url=True)
    assert err.value.content == [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]
    sf.session.close()


def test_the_api_allowance_is_a_rolling_24_hours_not_a_calendar_day(small: Sandbox) -> None:
    sf = _client(small)
    _admin(small, "salesforce/limits", {"daily": 10, "used": 10})
    with pytest.raises(SalesforceRefusedRequest) as err:
        sf.query("SELECT Id FROM User")
    assert err.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    # 23 hours later (past any midnight) the calls of the last 24 hours still count
    _admin(small, "salesforce/clock", {"advance_s": 23 * 3600})
    with pytest.raises(SalesforceRefusedRequest):
        sf.query("SELECT Id FROM User")
    # once they are more than 24 hours old they no longer do
    _admin(small, "salesforce/clock", {"advance_s": 3600 + 120})
    sf.query("SELECT Id FROM User")
    assert sf.api_usage["api-usage"].used == 1
    assert sf.api_usage["api-usage"].total == 10
    sf.session.close()
