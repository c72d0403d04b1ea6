"""The sandbox HubSpot, driven by the official SDK over real HTTP, behaves as docs/crm-api-notes.md says."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import urllib3
from hubspot import HubSpot
from hubspot.crm.contacts import (
    ApiException as ContactsApiException,
)
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchReadInputSimplePublicObjectId,
    PublicObjectSearchRequest,
)
from hubspot.crm.objects.tasks import SimplePublicObjectInput as TaskUpdate
from hubspot.crm.objects.tasks import SimplePublicObjectInputForCreate as TaskCreate
from hubspot.crm.properties import ApiException as PropertiesApiException
from hubspot.crm.properties import PropertyCreate, PropertyGroupCreate

from sandbox.server import Sandbox

N = 260
ANCHOR = 1_750_000_000.0
TIMEOUT = 10


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=N, seed=7, anchor=ANCHOR, search_rate=10_000) as sb:
        yield sb


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> HubSpot:
    return HubSpot(access_token=sandbox.hubspot_token, host=sandbox.hubspot_url)


@pytest.fixture(scope="module")
def limited() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=20, seed=1, anchor=ANCHOR, hubspot_rate=5, search_rate=5) as sb:
        yield sb


def dt_from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def admin(sb: Sandbox, path: str, body: Any = None) -> Any:
    url = sb.hubspot_url + "/__sandbox__/" + path
    response = httpx.post(url, json=body) if body is not None or path.endswith("reset") else httpx.get(url)
    response.raise_for_status()
    return response.json()


def raw(sb: Sandbox, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or sb.hubspot_token}"}
    return httpx.request(method, sb.hubspot_url + path, headers=headers, timeout=TIMEOUT, **kw)


# ---------------------------------------------------------------- reading contacts


def test_paging_the_list_reaches_every_contact_once_and_the_last_page_has_no_paging(client: HubSpot) -> None:
    api = client.crm.contacts.basic_api
    ids: list[str] = []
    after = None
    pages = 0
    while True:
        page = api.get_page(limit=100, after=after, _request_timeout=TIMEOUT)
        ids += [r.id for r in page.results]
        pages += 1
        if page.paging is None:
            break
        after = page.paging.next.after
    assert pages == 3
    assert len(ids) == len(set(ids)) == N


def test_only_default_properties_come_back_unless_named_and_values_are_strings(client: HubSpot) -> None:
    api = client.crm.contacts.basic_api
    default = api.get_page(limit=1, _request_timeout=TIMEOUT).results[0]
    assert set(default.properties) == {
        "createdate",
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "lastname",
    }
    named = api.get_page(
        limit=5, properties=["numberofemployees", "hs_analytics_num_page_views", "country"], _request_timeout=TIMEOUT
    ).results
    for record in named:
        assert set(record.properties) >= {"numberofemployees", "hs_analytics_num_page_views", "country"}
        assert all(v is None or isinstance(v, str) for v in record.properties.values())


def test_properties_may_be_repeated_or_comma_separated(sandbox: Sandbox) -> None:
    repeated = raw(sandbox, "GET", "/crm/v3/objects/contacts?limit=2&properties=email&properties=jobtitle").json()
    comma = raw(sandbox, "GET", "/crm/v3/objects/contacts?limit=2&properties=email,jobtitle").json()
    assert repeated == comma
    assert set(repeated["results"][0]["properties"]) == {"email", "jobtitle"}


def test_a_list_limit_above_one_hundred_is_a_validation_error(client: HubSpot) -> None:
    with pytest.raises(ContactsApiException) as caught:
        client.crm.contacts.basic_api.get_page(limit=101, _request_timeout=TIMEOUT)
    assert caught.value.status == 400
    assert json.loads(caught.value.body)["category"] == "VALIDATION_ERROR"


def test_an_unknown_contact_is_not_found(client: HubSpot) -> None:
    with pytest.raises(ContactsApiException) as caught:
        client.crm.contacts.basic_api.get_by_id("999999", _request_timeout=TIMEOUT)
    assert caught.value.status == 404
    assert json.loads(caught.value.body)["category"] == "OBJECT_NOT_FOUND"


# ---------------------------------------------------------------- search


def _search(client: HubSpot, **body: Any) -> Any:
    return client.crm.contacts.search_api.do_search(PublicObjectSearchRequest(**body), _request_timeout=TIMEOUT)


def test_search_on_lastmodifieddate_ascending_pages_in_order_with_an_exact_total(
    sandbox: Sandbox, client: HubSpot
) -> None:
    since = sandbox.population.base_modified_ms(200)
    filters = [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(since)}]}]
    sorts = [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}]
    first = _search(client, filter_groups=filters, sorts=sorts, limit=40)
    assert first.total == N - 200
    assert first.paging.next.after == "40"
    second = _search(client, filter_groups=filters, sorts=sorts, limit=40, after="40")
    assert second.paging is None
    stamps = [r.properties["lastmodifieddate"] for r in first.results + second.results]
    assert stamps == sorted(stamps)
    assert len(stamps) == N - 200


def test_search_or_of_groups_and_of_filters_on_owner_and_id(client: HubSpot) -> None:
    owned = _search(
        client,
        filter_groups=[{"filters": [{"propertyName": "hubspot_owner_id", "operator": "HAS_PROPERTY"}]}],
        properties=["hubspot_owner_id"],
        limit=200,
    )
    assert 0 < owned.total < N
    assert all(r.properties["hubspot_owner_id"] for r in owned.results)
    either = _search(
        client,
        filter_groups=[
            {"filters": [{"propertyName": "hs_object_id", "operator": "EQ", "value": "3"}]},
            {"filters": [{"propertyName": "hs_object_id", "operator": "IN", "values": ["5", "7"]}]},
        ],
    )
    assert sorted(r.id for r in either.results) == ["3", "5", "7"]


def test_search_refuses_more_than_five_groups_and_paging_past_ten_thousand(client: HubSpot) -> None:
    group = {"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": "0"}]}
    with pytest.raises(ContactsApiException) as too_many:
        _search(client, filter_groups=[group] * 6)
    assert too_many.value.status == 400
    with pytest.raises(ContactsApiException) as past_cap:
        _search(client, limit=100, after="9950")
    assert past_cap.value.status == 400
    with pytest.raises(ContactsApiException) as big_page:
        _search(client, limit=201)
    assert big_page.value.status == 400


def test_search_allows_five_requests_per_second_and_sends_no_rate_limit_headers(limited: Sandbox) -> None:
    time.sleep(1.1)
    answers = [raw(limited, "POST", "/crm/v3/objects/contacts/search", json={"limit": 1}) for _ in range(7)]
    assert [a.status_code for a in answers[:5]] == [200] * 5
    assert answers[5].status_code == 429
    body = answers[5].json()
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "SECONDLY"
    assert "x-hubspot-ratelimit-remaining" not in answers[0].headers


# ---------------------------------------------------------------- writes


def test_batch_update_refuses_a_batch_with_a_bad_property_and_answers_207_for_missing_ids(client: HubSpot) -> None:
    groups = client.crm.properties.groups_api
    props = client.crm.properties.core_api
    groups.create("contacts", PropertyGroupCreate(name="batch_test", label="Batch test"), _request_timeout=TIMEOUT)
    props.create(
        "contacts",
        PropertyCreate(name="batch_score", label="Score", type="number", field_type="number", group_name="batch_test"),
        _request_timeout=TIMEOUT,
    )
    props.create(
        "contacts",
        PropertyCreate(
            name="batch_band",
            label="Band",
            type="enumeration",
            field_type="select",
            group_name="batch_test",
            options=[{"label": "Hot", "value": "hot"}, {"label": "Cold", "value": "cold"}],
        ),
        _request_timeout=TIMEOUT,
    )
    inputs = [
        {"id": "10", "properties": {"batch_score": "87", "batch_band": "hot"}},
        {"id": "11", "properties": {"batch_band": "lukewarm"}},
        {"id": "12", "properties": {"no_such_property": "1"}},
        {"id": "987654", "properties": {"batch_score": "1"}},
    ]
    # A property that does not exist or an option it lacks refuses the whole batch: 400, nothing written.
    with pytest.raises(ContactsApiException) as refused:
        client.crm.contacts.batch_api.update(BatchInputSimplePublicObjectBatchInput(inputs=inputs),
                                             _request_timeout=TIMEOUT)  # fmt: skip
    assert refused.value.status == 400
    body = json.loads(refused.value.body)
    assert body["category"] == "VALIDATION_ERROR"
    prefix = "Property values were not valid: "
    assert body["message"].startswith(prefix)
    listed = {(p["name"], p["error"]) for p in json.loads(body["message"][len(prefix):])}
    assert listed == {("batch_band", "INVALID_OPTION"), ("no_such_property", "PROPERTY_DOESNT_EXIST")}
    untouched = client.crm.contacts.basic_api.get_by_id("10", properties=["batch_score"])
    assert untouched.properties["batch_score"] is None
    # A valid batch answers 207 for the ids it cannot find and writes the others.
    answer = client.crm.contacts.batch_api.update(
        BatchInputSimplePublicObjectBatchInput(inputs=[inputs[0], inputs[3]]), _request_timeout=TIMEOUT
    )
    assert answer.num_errors == 1
    assert {e.category for e in answer.errors} == {"OBJECT_NOT_FOUND"}
    assert [r.id for r in answer.results] == ["10"]
    read = client.crm.contacts.basic_api.get_by_id("10", properties=["batch_score", "batch_band"])
    assert read.properties["batch_score"] == "87"
    assert read.properties["batch_band"] == "hot"


def test_a_write_moves_lastmodifieddate_and_updated_at(client: HubSpot) -> None:
    before = client.crm.contacts.basic_api.get_by_id("20", _request_timeout=TIMEOUT)
    client.crm.contacts.basic_api.update("20", {"properties": {"jobtitle": "Head of Test"}}, _request_timeout=TIMEOUT)
    after = client.crm.contacts.basic_api.get_by_id("20", properties=["jobtitle", "lastmodifieddate"])
    assert after.properties["jobtitle"] == "Head of Test"
    assert after.updated_at > before.updated_at
    assert after.properties["lastmodifieddate"] > before.properties["lastmodifieddate"]


def test_batch_calls_take_at_most_one_hundred_inputs(client: HubSpot) -> None:
    inputs = [{"id": str(i)} for i in range(1, 102)]
    with pytest.raises(ContactsApiException) as caught:
        client.crm.contacts.batch_api.read(BatchReadInputSimplePublicObjectId(inputs=inputs, properties=["email"]))
    assert caught.value.status == 400


def test_creating_an_existing_property_is_a_409(client: HubSpot) -> None:
    core = client.crm.properties.core_api
    spec = PropertyCreate(
        name="dup_score", label="Dup", type="number", field_type="number", group_name="contactinformation"
    )
    core.create("contacts", spec, _request_timeout=TIMEOUT)
    with pytest.raises(PropertiesApiException) as caught:
        core.create("contacts", spec, _request_timeout=TIMEOUT)
    assert caught.value.status == 409
    assert json.loads(caught.value.body)["status"] == "error"
    assert core.get_by_name("contacts", "dup_score").type == "number"


def test_a_property_with_a_field_type_that_does_not_fit_its_type_is_refused(sandbox: Sandbox) -> None:
    answer = raw(
        sandbox,
        "POST",
        "/crm/v3/properties/contacts",
        json={
            "name": "bad_combo",
            "label": "Bad",
            "type": "number",
            "fieldType": "select",
            "groupName": "contactinformation",
        },
    )
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"


def test_schemas_answer_a_valid_empty_list(client: HubSpot) -> None:
    assert client.crm.schemas.core_api.get_all(_request_timeout=TIMEOUT).results == []


# ---------------------------------------------------------------- owners, tasks, associations, events


def test_owners_with_and_without_the_trailing_slash_and_archived_ones(sandbox: Sandbox, client: HubSpot) -> None:
    active = client.crm.owners.owners_api.get_page(limit=100, _request_timeout=TIMEOUT).results
    archived = client.crm.owners.owners_api.get_page(archived=True, _request_timeout=TIMEOUT).results
    assert all(o.teams[0].name in {"DACH", "Nordics", "UK&I", "Benelux", "Rest of World"} for o in active)
    assert archived
    assert all(o.archived for o in archived)
    plain = raw(sandbox, "GET", "/crm/v3/owners?limit=100").json()
    assert [o["id"] for o in plain["results"]] == [o.id for o in active]
    by_email = client.crm.owners.owners_api.get_page(email=active[0].email).results
    assert [o.id for o in by_email] == [active[0].id]


def test_a_task_created_with_type_204_is_associated_with_its_contact_and_can_be_completed(client: HubSpot) -> None:
    tasks = client.crm.objects.tasks.basic_api
    task = tasks.create(
        TaskCreate(
            properties={
                "hs_timestamp": "2025-06-15T10:00:00Z",
                "hs_task_subject": "Call the hot lead",
                "hs_task_status": "NOT_STARTED",
                "hs_task_priority": "HIGH",
                "hs_task_type": "CALL",
            },
            associations=[
                {"to": {"id": "30"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}]}
            ],
        ),
        _request_timeout=TIMEOUT,
    )
    linked = client.crm.associations.v4.basic_api.get_page("contacts", "30", "tasks", _request_timeout=TIMEOUT)
    assert [str(r.to_object_id) for r in linked.results] == [task.id]
    assert linked.results[0].association_types[0].type_id == 203
    tasks.update(task.id, TaskUpdate(properties={"hs_task_status": "COMPLETED"}), _request_timeout=TIMEOUT)
    assert tasks.get_by_id(task.id, properties=["hs_task_status"]).properties["hs_task_status"] == "COMPLETED"


def test_a_task_without_hs_timestamp_is_refused(sandbox: Sandbox) -> None:
    answer = raw(sandbox, "POST", "/crm/v3/objects/tasks", json={"properties": {"hs_task_subject": "x"}})
    assert answer.status_code == 400
    assert "hs_timestamp" in answer.json()["message"]


def test_engagements_are_associated_both_ways_and_read_in_batches(sandbox: Sandbox, client: HubSpot) -> None:
    person = next(i for i in range(N) if any(a.kind.startswith("email_") for a in sandbox.population.activities(i)))
    contact_id = str(person + 1)
    emails = client.crm.associations.v4.basic_api.get_page("contacts", contact_id, "emails").results
    assert emails
    email = client.crm.objects.emails.basic_api.get_by_id(
        str(emails[0].to_object_id), properties=["hs_email_direction", "hs_email_status", "hs_timestamp"]
    )
    assert email.properties["hs_email_direction"] in ("EMAIL", "INCOMING_EMAIL")
    back = raw(
        sandbox, "POST", "/crm/v4/associations/emails/contacts/batch/read", json={"inputs": [{"id": email.id}]}
    ).json()
    assert back["results"][0]["to"][0]["toObjectId"] == str(contact_id)  # a string in the v4 spec
    assert back["results"][0]["to"][0]["associationTypes"][0]["typeId"] == 198
    batch = raw(
        sandbox,
        "POST",
        "/crm/v4/associations/contacts/meetings/batch/read",
        json={"inputs": [{"id": str(i)} for i in range(1, 101)]},
    )
    assert batch.status_code in (200, 207)


def test_events_list_page_views_and_form_submissions_for_one_contact(sandbox: Sandbox, client: HubSpot) -> None:
    person = next(i for i in range(N) if any(a.kind == "form_submission" for a in sandbox.population.activities(i)))
    page = client.events.events_api.get_page(
        object_type="contact", object_id=person + 1, limit=100, _request_timeout=TIMEOUT
    )
    types = {e.event_type for e in page.results}
    assert "e_visited_page" in types or "e_submitted_form" in types
    forms = client.events.events_api.get_page(
        object_type="contact", object_id=person + 1, event_type="e_submitted_form"
    )
    assert forms.results
    assert all(e.event_type == "e_submitted_form" for e in forms.results)
    assert all(e.object_id == str(person + 1) for e in forms.results)


def test_events_of_every_contact_in_a_window_come_oldest_first_in_pages(sandbox: Sandbox, client: HubSpot) -> None:
    # events.json (Events v3): objectId is optional; objectType=contact + eventType + occurredAfter/Before
    # returns the events of every contact in the window, paged by paging.next.after.
    pop = sandbox.population
    acts = [a for i in range(N) for a in pop.activities(i) if a.kind == "page_view"]
    times = sorted(a.ts_ms for a in acts)
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
    want = sorted((a.ts_ms, a.person) for a in acts if lo <= a.ts_ms <= hi)
    got: list[tuple[str, str]] = []
    after: str | None = None
    pages = 0
    while True:
        page = client.events.events_api.get_page(
            object_type="contact", event_type="e_visited_page", limit=50, after=after,
            occurred_after=dt_from_ms(lo), occurred_before=dt_from_ms(hi), _request_timeout=TIMEOUT,
        )  # fmt: skip
        pages += 1
        got += [(e.occurred_at.isoformat(), e.object_id) for e in page.results]
        assert all(e.event_type == "e_visited_page" for e in page.results)
        after = page.paging.next.after if page.paging and page.paging.next else None
        if after is None:
            break
    assert len(got) == len(want)
    assert [g[0] for g in got] == sorted(g[0] for g in got)  # oldest first
    assert sorted(int(oid) - 1 for _, oid in got) == sorted(p for _, p in want)
    assert pages == -(-len(want) // 50)


def test_the_events_query_refuses_what_the_spec_does_not_allow(sandbox: Sandbox) -> None:
    assert raw(sandbox, "GET", "/events/v3/events?objectId=5").status_code == 400  # objectId needs objectType
    assert raw(sandbox, "GET", "/events/v3/events?objectType=contact&after=not-a-token").status_code == 400
    answer = raw(sandbox, "GET", "/events/v3/events?objectType=contact&limit=0")
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"


# ---------------------------------------------------------------- limits, auth, stats, faults


def test_every_answer_carries_rate_limit_headers(sandbox: Sandbox) -> None:
    answer = raw(sandbox, "GET", "/crm/v3/objects/contacts?limit=1")
    assert answer.headers["X-HubSpot-RateLimit-Max"] == "190"
    assert answer.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert int(answer.headers["X-HubSpot-RateLimit-Remaining"]) < 190
    assert int(answer.headers["X-HubSpot-RateLimit-Daily-Remaining"]) > 0


def test_going_over_the_ten_second_window_answers_429_in_hubspot_s_shape(limited: Sandbox) -> None:
    admin(limited, "limits/reset")
    answers = [raw(limited, "GET", "/crm/v3/objects/contacts?limit=1") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    body = answers[-1].json()
    assert body["status"] == "error"
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert answers[-1].headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert admin(limited, "stats")["rate_limited"] >= 1


def test_a_bad_token_is_401_and_a_token_without_the_scope_is_403(sandbox: Sandbox) -> None:
    bad = raw(sandbox, "GET", "/crm/v3/objects/contacts", token="nope")
    assert bad.status_code == 401
    assert bad.json()["category"] == "INVALID_AUTHENTICATION"
    admin(sandbox, "tokens", {"token": "pat-owners-only", "scopes": ["crm.objects.owners.read"]})
    assert raw(sandbox, "GET", "/crm/v3/owners/", token="pat-owners-only").status_code == 200
    denied = raw(sandbox, "GET", "/crm/v3/objects/contacts", token="pat-owners-only")
    assert denied.status_code == 403
    assert denied.json()["category"] == "MISSING_SCOPES"


def test_stats_count_calls_by_route_template(sandbox: Sandbox, client: HubSpot) -> None:
    admin(sandbox, "stats/reset")
    client.crm.contacts.basic_api.get_by_id("1", _request_timeout=TIMEOUT)
    client.crm.contacts.basic_api.get_by_id("2", _request_timeout=TIMEOUT)
    client.crm.owners.owners_api.get_page(_request_timeout=TIMEOUT)
    stats = admin(sandbox, "stats")
    assert stats["calls"] == {"GET /crm/v3/objects/contacts/{object_id}": 2, "GET /crm/v3/owners/": 1}
    assert stats["total"] == 3


def test_injected_faults_answer_500_and_429_and_clear_with_an_empty_spec(sandbox: Sandbox) -> None:
    admin(sandbox, "faults", {"500": 0.5, "429": 0.5, "seed": 3})
    try:
        codes = {raw(sandbox, "GET", "/crm/v3/objects/contacts?limit=1").status_code for _ in range(20)}
    finally:
        admin(sandbox, "faults", {})
    assert codes == {429, 500}
    assert raw(sandbox, "GET", "/crm/v3/objects/contacts?limit=1").status_code == 200


def test_a_dropped_answer_means_the_task_was_stored_though_the_client_got_a_504(sandbox: Sandbox) -> None:
    task = {"properties": {"hs_timestamp": "2026-11-23T10:00:00Z", "hs_task_subject": "Call back"},
            "associations": [{"to": {"id": "7"}, "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                                             "associationTypeId": 204}]}]}  # fmt: skip
    before = raw(sandbox, "GET", "/crm/v4/objects/contacts/7/associations/tasks").json()["results"]
    admin(sandbox, "faults", {"drop": 1.0, "only": "POST /crm/v3/objects/tasks", "max": 1, "timeout_s": 0})
    try:
        listed = raw(sandbox, "GET", "/crm/v3/objects/contacts?limit=1").status_code  # not an `only` route
        dropped = raw(sandbox, "POST", "/crm/v3/objects/tasks", json=task)
        second = raw(sandbox, "POST", "/crm/v3/objects/tasks", json=task)  # past `max`: answered
    finally:
        admin(sandbox, "faults", {})
    after = raw(sandbox, "GET", "/crm/v4/objects/contacts/7/associations/tasks").json()["results"]
    assert (listed, dropped.status_code, second.status_code) == (200, 504, 201)
    assert len(after) == len(before) + 2, "the dropped request was carried out all the same"


def test_an_injected_timeout_makes_the_sdk_time_out_without_wedging_the_server(
    sandbox: Sandbox, client: HubSpot
) -> None:
    admin(sandbox, "faults", {"timeout": 1.0, "timeout_s": 1.5})
    try:
        with pytest.raises((urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.MaxRetryError)):
            client.crm.contacts.basic_api.get_page(limit=1, _request_timeout=0.3)
    finally:
        admin(sandbox, "faults", {})
    assert client.crm.contacts.basic_api.get_page(limit=1, _request_timeout=TIMEOUT).results


def test_search_shows_a_write_only_once_its_index_caught_up() -> None:
    # HubSpot's search lags writes: until then it finds the contact as it was (reads by id see it at once).
    with Sandbox.start(contacts=20, seed=4, search_lag_s=0) as sb:
        raw(sb, "POST", "/__sandbox__/search", json={"lag_s": [3600, 3600]})
        before = raw(sb, "GET", "/crm/v3/objects/contacts/5", params={"properties": "lastmodifieddate"}).json()
        raw(sb, "PATCH", "/crm/v3/objects/contacts/5", json={"properties": {"jobtitle": "Index Tester"}})
        made = raw(sb, "POST", "/crm/v3/objects/contacts", json={"properties": {"email": "new@example.com"}}).json()
        by_title = {"filterGroups": [{"filters": [{"propertyName": "jobtitle", "operator": "EQ",
                                                   "value": "Index Tester"}]}], "properties": ["jobtitle"]}  # fmt: skip
        assert raw(sb, "POST", "/crm/v3/objects/contacts/search", json=by_title).json()["total"] == 0
        everyone = raw(sb, "POST", "/crm/v3/objects/contacts/search",
                       json={"limit": 100, "properties": ["jobtitle", "lastmodifieddate"]}).json()  # fmt: skip
        assert made["id"] not in [r["id"] for r in everyone["results"]]
        five = next(r for r in everyone["results"] if r["id"] == "5")
        assert five["properties"]["lastmodifieddate"] == before["properties"]["lastmodifieddate"]
        assert five["properties"]["jobtitle"] != "Index Tester"
        by_id = raw(sb, "GET", "/crm/v3/objects/contacts/5", params={"properties": "jobtitle"}).json()
        assert by_id["properties"]["jobtitle"] == "Index Tester"
        assert raw(sb, "GET", "/__sandbox__/search").json()["pending"] == 2

        raw(sb, "POST", "/__sandbox__/search", json={"advance_s": 3600})
        assert raw(sb, "POST", "/crm/v3/objects/contacts/search", json=by_title).json()["total"] == 1
        assert raw(sb, "GET", "/__sandbox__/search").json() == {"lag_s": [3600.0, 3600.0], "pending": 0}


def test_v4_batch_read_pages_within_an_input_and_is_not_counted_in_the_ten_second_window() -> None:
    with Sandbox.start(contacts=40, seed=6, hubspot_rate=3, association_page_size=2) as sb:
        person = next(i for i in range(40) if sum(a.kind.startswith("email_") for a in sb.population.activities(i)) > 4)
        emails = [str(50_000_000_000 + a.id) for a in sb.population.activities(person) if a.kind.startswith("email_")]
        contact = str(person + 1)
        seen: list[str] = []
        pages = 0
        ask: dict[str, str] = {"id": contact}
        while True:
            resp = raw(sb, "POST", "/crm/v4/associations/contacts/emails/batch/read", json={"inputs": [ask]})
            assert resp.status_code == 200  # three calls a window allowed, yet none refused
            [result] = resp.json()["results"]
            seen += [t["toObjectId"] for t in result["to"]]
            pages += 1
            after = (result.get("paging") or {}).get("next", {}).get("after")
            if not after:
                break
            assert not after.isdigit()  # an opaque token, sent back as it came
            ask = {"id": contact, "after": after}
        assert seen == emails
        assert all(isinstance(t, str) for t in seen)
        assert pages == -(-len(emails) // 2) > 2
        # the window still has all its three requests for everything else
        head = raw(sb, "GET", f"/crm/v3/objects/contacts/{contact}")
        assert head.headers["X-HubSpot-RateLimit-Remaining"] == "2"
