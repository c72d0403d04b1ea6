"""The HubSpot adapter against the sandbox HubSpot over real HTTP, with the official SDK.

Assertions read the CRM's state back through its API and count calls with the
sandbox's /__sandbox__/stats; nothing inside the adapter or the SDK is patched.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis
import urllib3
from hubspot import HubSpot

from connector.crm import hubspot_events
from connector.crm.base import CrmAdapter
from connector.crm.hubspot import EVENT_READERS, ISOLATION_CALLS, PER_CONTACT_EVENTS_MAX, HubSpotAdapter
from connector.crm.hubspot_events import FULL_SLICES, WebEventStore
from connector.crm.limits import RetryPolicy, bulk_calls, day_in
from connector.domain import Lead
from connector.errors import StopSync
from connector.mappings.hubspot import Account, HubSpotMapping, load_hubspot_mapping
from sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parents[2]
FAST = Account(requests_per_10s=10_000, daily=0)
HTTP = urllib3.PoolManager()


@pytest.fixture(scope="module")
def shipped() -> HubSpotMapping:
    return load_hubspot_mapping(ROOT / "mappings" / "hubspot.yaml")


def mapping_with(base: HubSpotMapping, **changes: Any) -> HubSpotMapping:
    return base.model_copy(update=changes)


@pytest.fixture
def fast_mapping(shipped: HubSpotMapping) -> HubSpotMapping:
    return mapping_with(shipped, account=FAST)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=250, seed=7, hubspot_rate=100_000) as sb:
        yield sb


def stats(sb: Sandbox) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(HTTP.request("GET", sb.hubspot_url + "/__sandbox__/stats").data)
    return out


def calls_to(snapshot: dict[str, Any], pattern: str) -> int:
    """Calls whose "METHOD /path" matches `pattern`, where * stands for one path segment."""
    want = pattern.split("/")
    total = 0
    for key, n in snapshot["calls"].items():
        have = key.rstrip("/").split("/")
        if len(have) == len(want) and all(w in ("*", h) for w, h in zip(want, have, strict=True)):
            total += n
    return total


def reset_stats(sb: Sandbox) -> None:
    HTTP.request("POST", sb.hubspot_url + "/__sandbox__/stats/reset")


def set_faults(sb: Sandbox, spec: dict[str, float]) -> None:
    HTTP.request("POST", sb.hubspot_url + "/__sandbox__/faults", body=orjson.dumps(spec))


def adapter(sb: Sandbox, mapping: HubSpotMapping, r: redis.Redis, **kw: Any) -> HubSpotAdapter:
    kw.setdefault("token", sb.hubspot_token)
    return HubSpotAdapter(base_url=sb.hubspot_url, mapping=mapping, redis=r, **kw)


def search_index(sb: Sandbox, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = HTTP.request("POST" if body is not None else "GET", sb.hubspot_url + "/__sandbox__/search",
                          body=orjson.dumps(body) if body is not None else None)  # fmt: skip
    out: dict[str, Any] = orjson.loads(answer.data)
    return out


def wait_searchable(sb: Sandbox, timeout: float = 30.0) -> None:
    """Until the sandbox's search index has caught up with every write."""
    deadline = time.monotonic() + timeout
    while search_index(sb)["pending"]:
        assert time.monotonic() < deadline, "the search index did not catch up"
        time.sleep(0.05)


def read_all(a: HubSpotAdapter, since: float | None = None) -> list[Lead]:
    leads: list[Lead] = []
    cursor = None
    while True:
        page = a.read_page("contact", cursor, since=since)
        leads += page.leads
        cursor = page.next_cursor
        if cursor is None:
            return leads


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# ----------------------------------------------------------------------------- reading


def test_the_adapter_fulfils_the_crm_contract(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                              r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    assert isinstance(a, CrmAdapter)
    assert (a.crm, a.streams) == ("hubspot", ("contact",))
    a.close()


def test_a_full_read_pages_the_list_endpoint_100_at_a_time(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                            r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    reset_stats(sandbox)
    leads = read_all(a)
    assert len({lead.id for lead in leads}) == len(leads) == 250
    snap = stats(sandbox)
    assert snap["total"] == calls_to(snap, "GET /crm/v3/objects/*") == math.ceil(250 / 100)
    assert a.calls.total == 3
    person = sandbox.population.person(0)
    first = next(lead for lead in leads if lead.id == "1")
    assert first.profile["email"] == person.email
    assert first.modified_at == person.modified_at
    a.close()


def test_an_incremental_read_returns_only_the_records_changed_since(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                                    r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    a.setup()
    since = time.time()
    time.sleep(0.01)
    # changed by another writer (our own score writes are skipped: see the next test)
    contacts = HubSpot(access_token=sandbox.hubspot_token, host=sandbox.hubspot_url).crm.contacts.basic_api
    for i in ("5", "17", "230"):
        contacts.update(i, {"properties": {"lead_score_model": f"inc-{i}"}})
    wait_searchable(sandbox)  # search shows writes a few moments after them, as in HubSpot
    leads = read_all(a, since=since)
    assert sorted(lead.id for lead in leads) == ["17", "230", "5"]
    assert {lead.written["model"] for lead in leads} == {"inc-5", "inc-17", "inc-230"}
    a.close()


def test_an_incremental_read_crosses_the_10000_result_cap_of_search(shipped: HubSpotMapping, r: redis.Redis) -> None:
    n = 10_150
    with Sandbox.start(contacts=n, seed=3, hubspot_rate=100_000, search_rate=50) as sb:
        a = adapter(sb, mapping_with(shipped, account=Account(requests_per_10s=10_000, search_per_second=50)), r)
        leads = read_all(a, since=0.0)
        assert len(leads) == n
        assert len({lead.id for lead in leads}) == n
        stamps = [lead.modified_at or 0 for lead in leads]
        assert stamps == sorted(stamps)
        # no 400 for paging past 10,000: each page restarts from the last timestamp
        snap = stats(sb)
        assert calls_to(snap, "POST /crm/v3/objects/*/search") == math.ceil(n / 200)
        # then the contacts with web events the search did not return: none here (all were modified since)
        assert calls_to(snap, "POST /crm/v3/objects/contacts/batch/read") == 0
        a.close()


def test_writes_between_incremental_pages_skip_nobody(shipped: HubSpotMapping, r: redis.Redis) -> None:
    # the pipeline writes scores between pages; every write moves a contact to
    # the end of the modification order, which offset paging would trip over
    with Sandbox.start(contacts=700, seed=4, hubspot_rate=100_000, search_rate=50) as sb:
        a = adapter(sb, mapping_with(shipped, account=Account(requests_per_10s=10_000, search_per_second=50)), r)
        a.setup()
        seen: Counter[str] = Counter()
        cursor = None
        while True:
            page = a.read_page("contact", cursor, since=0.0)
            fresh = [lead.id for lead in page.leads if lead.id not in seen]
            seen.update(lead.id for lead in page.leads)
            if fresh:
                assert not a.write_scores("contact", {i: {"score": "1"} for i in fresh}).failed
            cursor = page.next_cursor
            if cursor is None:
                break
        assert set(seen) == {str(i) for i in range(1, 701)}
        a.close()


def test_activities_are_mapped_onto_engine_kinds_with_batched_calls(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                                   r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    page = a.read_page("contact", None, since=None)
    n = len(page.leads)
    assert n == 250  # a full sync page is up to 1,000 contacts (ten list calls), what one association read takes
    reset_stats(sandbox)
    now = time.time()
    a.load_activities(page.leads, now)
    snap = stats(sandbox)
    pop = sandbox.population
    cutoff = now - 180 * 86400
    recent = {i: [act for act in pop.activities(i) if act.ts >= cutoff] for i in range(n)}
    web = ("page_view", "form_submission", "webinar_registered", "webinar_attended", "event_attended")
    truth = Counter(act.kind for i in range(n) for act in recent[i])
    got = Counter(act.kind for lead in page.leads for act in lead.activities)
    for kind in (*web, "call", "meeting", "note", "email_reply", "email_bounce", "email_click"):
        assert got[kind] == truth[kind], kind
    assert got["email_open"] == truth["email_open"] + truth["email_click"]  # a clicked email was opened too
    pricing = [act for lead in page.leads for act in lead.activities if act.attrs.get("url", "").endswith("/pricing")]
    assert all(act.kind in ("page_view", "email_click") for act in pricing)
    # one association read per engagement type for the whole page, engagements 100 per batch read
    assert calls_to(snap, "POST /crm/v4/associations/*/*/batch/read") == 4
    emails = sum(1 for i in range(n) for act in pop.activities(i) if act.kind.startswith("email_"))
    assert calls_to(snap, "POST /crm/v3/objects/emails/batch/read") == math.ceil(emails / 100)
    others = [sum(1 for i in range(n) for act in pop.activities(i) if act.kind == k)
              for k in ("call", "meeting", "note")]  # fmt: skip
    assert calls_to(snap, "POST /crm/v3/objects/*/batch/read") == math.ceil(emails / 100) + sum(
        math.ceil(count / 100) for count in others
    )
    # web events of every contact at once (events API without objectId): one call per 100 events of the
    # look-back, plus at most one partial page per time slice of the read
    events = sum(truth[k] for k in web)
    assert math.ceil(events / 100) <= calls_to(snap, "GET /events/v3/events") <= math.ceil(events / 100) + FULL_SLICES
    # once read, the events are shared: another sync page of the same contacts asks HubSpot for none
    reset_stats(sandbox)
    again = a.get_leads("contact", [lead.id for lead in page.leads[:50]])
    with bulk_calls():
        a.load_activities(again, now)
    assert calls_to(stats(sandbox), "GET /events/v3/events") == 0
    assert Counter(act.kind for lead in again for act in lead.activities if act.kind in web) == Counter(
        act.kind for i in range(50) for act in recent[i] if act.kind in web
    )
    a.close()


def test_the_first_read_of_the_look_backs_web_events_reports_how_far_it_is(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis
) -> None:
    """What `leadscore status` and `sync --wait` show while a first sync reads the look-back's web events
    before it can score a page (on a big portal at a real rate limit, the better part of an hour)."""
    a = adapter(sandbox, fast_mapping, r)
    store = a.web_events
    assert store.progress() is None  # nothing under way
    assert a.preparing() is None
    seen: list[float] = []
    slices: set[bytes] = set()
    read = store.read_window

    def watched(*args: Any) -> Any:
        fill = store.progress()
        assert fill is not None
        assert fill.full
        seen.append(fill.done)
        slices.update(r.zrange(f"{store.prefix}:fill:{store._state()['gen']}", 0, -1))
        return read(*args)

    store.read_window = watched
    page = a.read_page("contact", None, since=None)
    reset_stats(sandbox)
    # another worker waits for a slice: the last one is split, its second half read as a slice of its own
    r.set(f"{store.prefix}:idle", "1", px=60_000)
    with bulk_calls():
        a.load_activities(page.leads, time.time())
    assert len(seen) == calls_to(stats(sandbox), "GET /events/v3/events") > FULL_SLICES
    assert len(slices) > FULL_SLICES  # split
    assert seen[0] == 0.0
    assert seen == sorted(seen)
    assert seen[-1] < 1.0
    # counted within a slice too, not only slice by slice
    assert any(round(x * FULL_SLICES, 6) % 1 for x in seen), seen
    assert store.progress() is None  # done
    assert a.preparing() is None
    a.close()


def test_a_worker_reading_slices_of_a_long_read_is_not_sent_back_when_it_ends(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only waiting for other workers' slices counts toward WAIT_S, not the reading a worker did itself.

    Two workers share a read of the look-back that takes longer than WAIT_S (as 1,000,000 contacts at
    Professional's rate take an hour): whichever ends first waits a moment for the other's last slice,
    and neither is told to come back later."""
    monkeypatch.setattr(hubspot_events, "WAIT_S", 1.5)
    first, second = adapter(sandbox, fast_mapping, r), adapter(sandbox, fast_mapping, r)
    reads: dict[str, list[float]] = {"first": [], "second": []}

    def slowed(store: WebEventStore, name: str, seconds: float) -> None:
        read = store.read_window

        def call(*args: Any) -> Any:
            time.sleep(seconds)  # each call shorter than WAIT_S: a worker waits at most about one of them
            reads[name].append(time.monotonic())
            return read(*args)

        store.read_window = call

    slowed(first.web_events, "first", 0.3)
    slowed(second.web_events, "second", 0.5)
    now = time.time()
    errors: list[Exception] = []

    def run_second() -> None:
        try:
            second.web_events.ensure(now)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=run_second)
    worker.start()
    time.sleep(0.2)  # the second worker started the read and took a slice
    started = time.monotonic()
    first.web_events.ensure(now)
    worker.join(60)
    assert not errors  # before, the first to end: RetryLater("web events are still being read by other workers")
    assert reads["first"][-1] - started > hubspot_events.WAIT_S  # it read for longer than WAIT_S
    assert reads["second"]  # both read their share
    assert first.web_events.covers(now) == (True, True)
    assert first.web_events.progress() is None
    assert_every_web_event_read(first, sandbox, now)
    first.close()
    second.close()


def test_a_read_of_the_look_back_left_half_done_is_taken_up_where_it_stopped(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that stop mid-read (a deploy, a crash) leave its slices to whoever comes next, however
    much later: the window is never taken as read while slices of it were not (the slices' set used to
    expire after 2 x WAIT_S, and the read was then taken as done, its unread slices' events missing)."""
    monkeypatch.setattr(hubspot_events, "WAIT_S", 0.5)  # the set expired after 1 s
    monkeypatch.setattr(hubspot_events, "SLICE_LEASE_S", 0.5)  # a stopped reader's claim runs out soon
    a = adapter(sandbox, fast_mapping, r)
    store = a.web_events
    read = store.read_window
    calls = 0

    class Stopped(Exception):
        pass

    def stops_after_three(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise Stopped
        return read(*args)

    store.read_window = stops_after_three
    now = time.time()
    with pytest.raises(Stopped):
        store.ensure(now)
    assert store.progress() is not None  # left half done
    time.sleep(1.5)
    store.read_window = read
    store.ensure(now)
    assert store.progress() is None
    assert_every_web_event_read(a, sandbox, now)
    a.close()


def assert_every_web_event_read(a: HubSpotAdapter, sandbox: Sandbox, now: float) -> None:
    """The page views and form submissions a page of contacts gets from the shared read are all of theirs."""
    page = a.read_page("contact", None, since=None)
    with bulk_calls():
        a.load_activities(page.leads, now)
    cutoff = now - 180 * 86400
    web = ("page_view", "form_submission")
    truth = Counter(act.kind for i in range(len(page.leads)) for act in sandbox.population.activities(i)
                    if act.kind in web and act.ts >= cutoff)  # fmt: skip
    assert truth["page_view"] > 100
    assert Counter(act.kind for lead in page.leads for act in lead.activities if act.kind in web) == truth


def test_a_few_contacts_get_their_web_events_one_call_each_while_no_bulk_read_covers_the_look_back(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis
) -> None:
    a = adapter(sandbox, fast_mapping, r)
    leads = a.get_leads("contact", ["1", "2", "3", "4", "5"])
    reset_stats(sandbox)
    now = time.time()
    a.load_activities(leads, now)
    cutoff = now - 180 * 86400
    gated = [i for i in range(5) if any(act.kind in ("page_view", "form_submission") and act.ts >= cutoff
                                        for act in sandbox.population.activities(i))]  # fmt: skip
    assert calls_to(stats(sandbox), "GET /events/v3/events") == len(gated) <= PER_CONTACT_EVENTS_MAX
    a.close()


@pytest.mark.parametrize("sync_reading", [False, True], ids=["window-idle", "sync-page-reading-it"])
def test_a_webhooks_rescore_of_many_contacts_sees_the_web_event_newer_than_the_shared_read(
    shipped: HubSpotMapping, r: redis.Redis, sync_reading: bool
) -> None:
    """The drain of a burst of webhooks (more contacts than get their events one call each) brings the
    shared read up to now with one call. When another worker's sync page is reading the new part itself
    (its slice claimed, its calls waiting behind a full rate window), the rescore does not wait for that
    page: it reads the new events itself, and the page's read stays its own to finish."""
    with Sandbox.start(contacts=300, seed=9, hubspot_rate=100_000) as sb:
        a = adapter(sb, mapping_with(shipped, account=FAST), r)
        first = a.read_page("contact", None, since=None)
        with bulk_calls():  # a sync page: the look-back's web events, read in bulk and shared
            a.load_activities(first.leads, time.time())
        store = a.web_events
        gen = None
        if sync_reading:
            gen = store._start(time.time(), True)  # a sync page starts reading the new part...
            assert gen is not None
            fill = f"{store.prefix}:fill:{gen}"
            assert store._claim(keys=[fill], args=[repr(time.time()), repr(time.time() + 120)])  # ...holds it
        visited = time.time()
        HTTP.request("POST", sb.hubspot_url + "/__sandbox__/activities", body=orjson.dumps(
            {"contact": "9", "kind": "page_view", "attrs": {"url": "/careers", "title": "Careers"}}))  # fmt: skip
        time.sleep(0.01)
        ids = [str(i) for i in range(1, PER_CONTACT_EVENTS_MAX + 12)]
        leads = {lead.id: lead for lead in a.get_leads("contact", ids)}
        reset_stats(sb)
        done = threading.Event()

        def rescore() -> None:
            a.load_activities(list(leads.values()), time.time())
            done.set()

        threading.Thread(target=rescore, daemon=True).start()
        assert done.wait(20), "the rescore waited for the sync page's read"
        assert any(act.kind == "page_view" and act.attrs.get("url", "").endswith("/careers") and act.ts >= visited - 1
                   for act in leads["9"].activities)  # fmt: skip
        assert calls_to(stats(sb), "GET /events/v3/events") == 1  # the shared read brought up to now, not 31 calls
        if sync_reading:
            assert store._state().get("gen") == gen
        a.close()


def test_an_incremental_read_also_returns_contacts_with_new_web_events_that_search_does_not_show_yet(
    shipped: HubSpotMapping, r: redis.Redis
) -> None:
    with Sandbox.start(contacts=300, seed=9, hubspot_rate=100_000) as sb:
        a = adapter(sb, mapping_with(shipped, account=FAST), r)
        first = a.read_page("contact", None, since=None)
        a.load_activities(first.leads, time.time())  # the look-back's web events, read in bulk
        since = time.time()
        search_index(sb, {"lag_s": [600, 600]})  # writes reach search only in ten minutes
        HTTP.request("POST", sb.hubspot_url + "/__sandbox__/activities", body=orjson.dumps(
            {"contact": "9", "kind": "page_view", "attrs": {"url": "/pricing", "title": "Pricing"}}))
        time.sleep(0.01)
        reset_stats(sb)
        leads = read_all(a, since=since)
        assert [lead.id for lead in leads] == ["9"]  # found through the events read, not through search
        snap = stats(sb)
        assert calls_to(snap, "GET /events/v3/events") == 1  # only the new events
        assert calls_to(snap, "POST /crm/v3/objects/contacts/batch/read") == 1
        a.load_activities(leads, time.time())
        assert any(act.kind == "page_view" and act.attrs.get("url", "").endswith("/pricing") and act.ts >= since
                   for act in leads[0].activities)  # fmt: skip
        a.close()


def test_a_contact_with_more_associations_than_a_page_holds_is_read_to_the_end(
    shipped: HubSpotMapping, r: redis.Redis
) -> None:
    # v4 batch reads page within each input: the rest of a contact's associations come with
    # paging.next.after, which the adapter sends back with the contact's id until none is left.
    page_size = 3
    with Sandbox.start(contacts=60, seed=8, hubspot_rate=100_000, association_page_size=page_size) as sb:
        acts = shipped.activities.model_copy(update={"web": "none"})
        a = adapter(sb, mapping_with(shipped, account=FAST, activities=acts), r)
        leads = a.read_page("contact", None, since=None).leads
        reset_stats(sb)
        now = time.time()
        a.load_activities(leads, now)
        pop = sb.population
        kinds = {"emails": ("email_open", "email_click", "email_reply", "email_bounce"), "calls": ("call",),
                 "meetings": ("meeting",), "notes": ("note",)}  # fmt: skip
        per_type = {t: [sum(act.kind in ks for act in pop.activities(i)) for i in range(60)] for t, ks in kinds.items()}
        assert max(per_type["emails"]) > page_size  # some contact needs more than one page
        cutoff = now - shipped.activities.lookback_days * 86400
        truth = Counter(act.kind for i in range(60) for act in pop.activities(i)
                        if act.ts >= cutoff and act.kind in ("call", "note", "email_reply", "email_bounce"))
        got = Counter(act.kind for lead in leads for act in lead.activities)
        for kind in ("call", "note", "email_reply", "email_bounce"):
            assert got[kind] == truth[kind], kind
        rounds = sum(max(1, max(-(-n // page_size) for n in counts)) for counts in per_type.values())
        assert calls_to(stats(sb), "POST /crm/v4/associations/*/*/batch/read") == rounds
        a.close()


def test_below_enterprise_web_activity_comes_from_the_rollups_after_one_warning(
    shipped: HubSpotMapping, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The events API is Enterprise-only: a Professional portal answers 403 to it. The sync goes on with
    # the roll-up properties instead of failing every page, and says so once; `check` says what to change.
    with Sandbox.start(contacts=1_100, seed=7, hubspot_rate=100_000, hubspot_tier="professional") as sb:
        mapping = mapping_with(shipped, account=FAST)  # the shipped activities: web: events
        client = redis.Redis.from_url(redis_url)
        a = adapter(sb, mapping, client)
        first = a.read_page("contact", None, since=None)
        reset_stats(sb)
        with caplog.at_level(logging.WARNING, logger="connector.crm.hubspot"):
            a.load_activities(first.leads, time.time())
            second = a.read_page("contact", first.next_cursor, since=None)
            a.load_activities(second.leads, time.time())
        snap = stats(sb)
        assert 1 <= calls_to(snap, "GET /events/v3/events") <= EVENT_READERS  # the calls in flight, then none
        warnings = [rec.getMessage() for rec in caplog.records if "events API" in rec.getMessage()]
        assert len(warnings) == 1
        assert "Enterprise" in warnings[0]
        for page in (first, second):
            views = [act for lead in page.leads for act in lead.activities if act.kind == "page_view"]
            assert views
            assert all(act.attrs == {"source": "rollup"} for act in views)
        # the roll-up properties came with the second page's contacts: no batch read for them
        assert second.leads
        # the first page's only (a sync page is up to 1,000 contacts: 100 per batch read)
        assert calls_to(snap, "POST /crm/v3/objects/contacts/batch/read") == math.ceil(len(first.leads) / 100)
        other = adapter(sb, mapping, redis.Redis.from_url(redis_url))  # another worker knows it too
        reset_stats(sb)
        other.load_activities(other.get_leads("contact", ["5", "6"]), time.time())
        assert calls_to(stats(sb), "GET /events/v3/events") == 0
        a.setup()
        problems = a.check()
        assert problems == [
            "HubSpot refuses the events API on this portal (403: Insufficient scopes, requires one of: "
            "[event-detail-read,web-analytics-api-access]), which needs a Marketing, Sales, Service, Content or "
            "Data Hub Enterprise subscription: set activities.web: rollups in mappings/hubspot.yaml (until then "
            "syncs take web activity from roll-up properties)."]
        a.close()
        other.close()
        client.close()


def test_rollups_become_synthetic_activities_without_extra_calls(sandbox: Sandbox, shipped: HubSpotMapping,
                                                                 r: redis.Redis) -> None:
    acts = shipped.activities.model_copy(update={"web": "rollups", "engagements": []})
    a = adapter(sandbox, mapping_with(shipped, account=FAST, activities=acts), r)
    page = a.read_page("contact", None, since=None)
    reset_stats(sandbox)
    a.load_activities(page.leads, time.time())
    assert stats(sandbox)["total"] == 0
    lead = next(lead for lead in page.leads if lead.activities)
    views = [act for lead in page.leads for act in lead.activities if act.kind == "page_view"]
    assert views
    assert all(act.attrs == {"source": "rollup"} for act in views)
    assert all(len({act.ts for act in lead.activities if act.kind == "page_view"}) <= 1 for lead in page.leads)
    assert lead.activities == sorted(lead.activities, key=lambda act: act.ts)
    a.close()


# ----------------------------------------------------------------------------- writing


def test_written_scores_read_back_in_canonical_form(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                    r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    a.setup()
    values = {"score": "87.0", "fit": "40", "engagement": "47", "band": "hot", "grade": "A",
              "reasons": "Visited pricing\nRequested a demo", "scored_at": "1767323045", "model": "v1"}
    report = a.write_scores("contact", {"11": values, "12": {**values, "score": "12"}})
    assert sorted(report.written) == ["11", "12"]
    assert not report.failed
    back = {lead.id: lead for lead in a.get_leads("contact", ["11", "12", "999999"])}
    assert set(back) == {"11", "12"}
    assert back["11"].written == {**values, "score": "87", "scored_at": "2026-01-02T03:04:05Z"}
    assert back["12"].written["score"] == "12"
    a.close()


def test_an_incremental_read_skips_contacts_whose_last_change_is_our_own_score_write(
    shipped: HubSpotMapping, r: redis.Redis
) -> None:
    with Sandbox.start(contacts=120, seed=4, hubspot_rate=100_000) as sb:
        a = adapter(sb, mapping_with(shipped, account=FAST), r)
        a.setup()
        started = time.time() - 1
        values = {"score": "50", "band": "warm"}
        assert len(a.write_scores("contact", {str(i): values for i in range(1, 41)}).written) == 40
        # someone edits contact 7 after our write: that one is new again
        time.sleep(0.01)
        HubSpot(access_token=sb.hubspot_token, host=sb.hubspot_url).crm.contacts.basic_api.update(
            "7", {"properties": {"jobtitle": "CTO"}})
        wait_searchable(sb)
        reset_stats(sb)
        changed = [lead.id for lead in read_all(a, since=started)]
        assert changed == ["7"]
        assert calls_to(stats(sb), "POST /crm/v3/objects/*/search") == 1
        a.close()


def test_a_partial_failure_reports_the_refused_record_and_writes_the_rest(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis
) -> None:
    # HubSpot answers 207 for per-record outcomes of a valid batch: here a contact deleted since it was read.
    a = adapter(sandbox, fast_mapping, r)
    a.setup()
    HTTP.request("DELETE", sandbox.hubspot_url + "/crm/v3/objects/contacts/123",
                 headers={"Authorization": f"Bearer {sandbox.hubspot_token}"})  # fmt: skip
    reset_stats(sandbox)
    updates = {str(i): {"band": "warm", "model": "p1"} for i in range(120, 130)}
    report = a.write_scores("contact", updates)
    assert [i for i, _ in report.failed] == ["123"]
    assert "may be deleted or not exist" in report.failed[0][1]
    assert sorted(report.written) == sorted(i for i in updates if i != "123")
    # one batch, its outcome known: nothing sent again
    snap = stats(sandbox)
    assert snap["total"] == calls_to(snap, "POST /crm/v3/objects/*/batch/update") == 1
    back = {lead.id: lead.written for lead in a.get_leads("contact", list(updates))}
    assert back["122"]["band"] == "warm"
    assert "123" not in back
    a.close()


def test_a_property_the_portal_refuses_stops_the_sync_after_one_call(
    sandbox: Sandbox, shipped: HubSpotMapping, r: redis.Redis
) -> None:
    # A missing, read-only or option-less property refuses the whole batch (400 VALIDATION_ERROR);
    # every batch would meet it, so the sync stops with a sentence instead of halving 100 records
    # into about 199 calls (over the portal's 190 per 10 s).
    a = adapter(sandbox, mapping_with(shipped, account=FAST), r)
    a.setup()
    renamed = {**shipped.write, "score": "lead_score_v2"}  # never created in the portal
    b = adapter(sandbox, mapping_with(shipped, account=FAST, write=renamed), r)
    updates = {str(i): {"score": "50", "band": "warm"} for i in range(131, 231)}
    reset_stats(sandbox)
    with pytest.raises(StopSync) as missing:
        b.write_scores("contact", updates)
    assert str(missing.value) == (
        "HubSpot has no contact property lead_score_v2 to write scores into: run `leadscore setup` to create it, "
        "or fix its name under write: in mappings/hubspot.yaml.")
    with pytest.raises(StopSync, match=r"lead_band lacks an option the connector writes .*lukewarm.*"
                                       r"run `leadscore setup`"):  # fmt: skip
        a.write_scores("contact", {**updates, "150": {"band": "lukewarm"}})
    read_only = {**shipped.write, "model": "hs_object_id"}
    c = adapter(sandbox, mapping_with(shipped, account=FAST, write=read_only), r)
    with pytest.raises(StopSync, match=r"hs_object_id, which is read-only: .* run `leadscore setup`"):
        c.write_scores("contact", {"131": {"model": "v9"}})
    snap = stats(sandbox)
    assert snap["total"] == calls_to(snap, "POST /crm/v3/objects/*/batch/update") == 3
    assert all("band" not in lead.written for lead in a.get_leads("contact", list(updates)))
    for x in (a, b, c):
        x.close()


def test_a_refused_value_is_found_in_a_bounded_number_of_calls_and_the_rest_written(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis
) -> None:
    a = adapter(sandbox, fast_mapping, r)
    a.setup()
    ids = [str(i) for i in range(131, 231)]
    updates = {i: {"score": "61", "model": "iso"} for i in ids}
    updates["177"] = {"score": "sixty", "model": "iso"}  # one value HubSpot refuses (not a number)
    reset_stats(sandbox)
    report = a.write_scores("contact", updates)
    assert [(i, m) for i, m in report.failed] == [("177", "lead_score: sixty is not a valid number")]
    assert sorted(report.written) == sorted(i for i in ids if i != "177")
    assert 1 < calls_to(stats(sandbox), "POST /crm/v3/objects/*/batch/update") <= 1 + 2 * math.ceil(math.log2(100))
    # every value refused (a systematic problem HubSpot does not name as a property's): the calls stay bounded
    reset_stats(sandbox)
    report = a.write_scores("contact", {i: {"score": "n/a"} for i in ids})
    assert report.written == []
    assert sorted(i for i, _ in report.failed) == sorted(ids)
    assert calls_to(stats(sandbox), "POST /crm/v3/objects/*/batch/update") <= 1 + ISOLATION_CALLS
    a.close()


def test_a_record_hubspot_could_not_write_in_a_207_is_retried_and_a_lasting_one_is_reported_to_retry(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis
) -> None:
    a = adapter(sandbox, fast_mapping, r)
    a.setup()
    ids = [str(i) for i in range(41, 61)]
    # A 5xx for contact 45 inside the batch's 207, once: written again at once, and only it.
    set_faults(sandbox, {"records": ["45"], "max": 1})
    reset_stats(sandbox)
    report = a.write_scores("contact", {i: {"score": "71"} for i in ids})
    assert sorted(report.written) == sorted(ids)
    assert report.retry == []
    assert report.failed == []
    assert calls_to(stats(sandbox), "POST /crm/v3/objects/*/batch/update") == 2

    # Contact 47 cannot be written however often it is tried; 9999 does not exist (that stays a failure).
    set_faults(sandbox, {"records": ["47"]})
    report = a.write_scores("contact", {i: {"score": "72"} for i in [*ids, "9999"]})
    set_faults(sandbox, {})
    assert [i for i, _ in report.retry] == ["47"]
    assert [i for i, _ in report.failed] == ["9999"]
    assert "47" not in report.written
    assert len(report.written) == len(ids) - 1
    back = {lead.id: lead.written.get("score") for lead in a.get_leads("contact", ids)}
    assert back["47"] == "71"
    assert back["45"] == "72"
    a.close()


def test_a_batch_update_that_keeps_timing_out_leaves_its_records_to_retry_and_raises_nothing(
    sandbox: Sandbox, fast_mapping: HubSpotMapping, r: redis.Redis
) -> None:
    brief = RetryPolicy(attempts=3, total_seconds=10, base=0.01, cap=0.05)
    a = adapter(sandbox, fast_mapping, r, timeout=0.3, retry_policy=brief)
    a.setup()
    set_faults(sandbox, {"timeout": 1.0, "timeout_s": 0.6, "only": "POST /crm/v3/objects/contacts/batch/update"})
    try:
        report = a.write_scores("contact", {i: {"score": "19"} for i in ("61", "62", "63")})
    finally:
        set_faults(sandbox, {})
    assert sorted(i for i, _ in report.retry) == ["61", "62", "63"]
    assert report.written == []
    assert report.failed == []
    assert all(why.startswith("not written: ") for _, why in report.retry)
    a.close()


def test_faults_do_not_change_the_written_state(shipped: HubSpotMapping, r: redis.Redis) -> None:
    with Sandbox.start(contacts=300, seed=5, hubspot_rate=100_000) as sb:
        patient = RetryPolicy(attempts=12, total_seconds=60, base=0.05, cap=0.5)
        a = adapter(sb, mapping_with(shipped, account=FAST), r, timeout=0.5, retry_policy=patient)
        a.setup()
        set_faults(sb, {"429": 0.2, "500": 0.05, "timeout": 0.02, "timeout_s": 1.0, "seed": 11})
        leads = read_all(a)
        a.load_activities(leads[:100], time.time())
        report = a.write_scores("contact", {lead.id: {"score": str(int(lead.id) % 100), "band": "cold"}
                                            for lead in leads})
        set_faults(sb, {})
        assert len(report.written) == 300
        assert not report.failed
        faulted = stats(sb)
        assert faulted["rate_limited"] > 0
        back = {lead.id: lead.written for lead in read_all(a)}
        assert all(back[i] == {"score": str(int(i) % 100), "band": "cold"} for i in back)
        a.close()


# ----------------------------------------------------------------------------- admin


def test_setup_is_idempotent(shipped: HubSpotMapping, r: redis.Redis) -> None:
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=100_000) as sb:
        a = adapter(sb, mapping_with(shipped, account=FAST), r)
        first = a.setup()
        assert any("lead_scoring" in line for line in first)
        assert any("lead_score_model" in line for line in first)
        assert calls_to(stats(sb), "POST /crm/v3/properties/*") == 10  # 8 for the points, 2 for the probability
        assert a.setup() == ["nothing to do: the group and 10 properties exist"]
        snap = stats(sb)
        assert calls_to(snap, "POST /crm/v3/properties/*") == 10
        assert calls_to(snap, "POST /crm/v3/properties/*/groups") == 1
        client = HubSpot(access_token=sb.hubspot_token, host=sb.hubspot_url)
        band = client.crm.properties.core_api.get_by_name("contacts", "lead_band")
        assert (band.type, [o.value for o in band.options], band.group_name) == (
            "enumeration", ["cold", "warm", "hot"], "lead_scoring")
        a.close()


def test_check_says_what_to_fix_in_one_sentence_each(shipped: HubSpotMapping, r: redis.Redis) -> None:
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=100_000) as sb:
        mapping = mapping_with(shipped, account=FAST)
        bad = adapter(sb, mapping, r, token="pat-wrong")
        assert bad.check() == [
            "HubSpot rejected the access token (401): set HUBSPOT_ACCESS_TOKEN to a valid private-app token."]
        HTTP.request("POST", sb.hubspot_url + "/__sandbox__/tokens", body=orjson.dumps(
            {"token": "pat-no-owners", "scopes": ["crm.objects.contacts.read", "crm.schemas.contacts.read"]}))
        a = adapter(sb, mapping, r)
        missing = a.check()
        assert len(missing) == 1
        assert "lead_score, lead_fit_score" in missing[0]
        assert "run `leadscore setup`" in missing[0]
        a.setup()
        assert a.check() == []
        scoped = adapter(sb, mapping, r, token="pat-no-owners")
        assert scoped.check() == [
            "The HubSpot private app lacks the scope crm.objects.owners.read: add it in the app's settings "
            "(Scopes) and use the new token.",
            "The outcomes: section of mappings/hubspot.yaml reads deals, but the private app lacks the scope "
            "crm.objects.deals.read: add it in the app's settings (Scopes) and use the new token, or remove "
            "outcomes.deals."]
        for x in (bad, a, scoped):
            x.close()
    gone = HubSpotAdapter(base_url=sb.hubspot_url, token="t", mapping=mapping, redis=r, timeout=1.0)
    assert gone.check() == [
        f"Cannot reach HubSpot at {sb.hubspot_url}: check HUBSPOT_BASE_URL and the network."]
    gone.close()


def test_check_names_outcome_properties_hubspot_lacks(shipped: HubSpotMapping, r: redis.Redis) -> None:
    outcomes = shipped.outcomes
    assert outcomes is not None
    assert outcomes.property is not None
    typo = outcomes.model_copy(update={"property": outcomes.property.model_copy(update={"name": "hs_lead_stat"})})
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=100_000) as sb:
        a = adapter(sb, mapping_with(shipped, account=FAST, outcomes=typo), r)
        a.setup()
        assert a.check() == [
            "The outcomes: section of mappings/hubspot.yaml reads contact property HubSpot does not have: "
            "hs_lead_stat; fix the names (a lifecycle stage's internal value gives hs_lifecyclestage_<stage>_date)."]
        a.close()


# ----------------------------------------------------------------------------- limits


def test_workers_sharing_the_limiter_are_never_rate_limited(shipped: HubSpotMapping, redis_url: str) -> None:
    rate = 16
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=rate) as sb:
        mapping = mapping_with(shipped, account=Account(requests_per_10s=rate, daily=0))
        errors: list[BaseException] = []

        def worker() -> None:
            client = redis.Redis.from_url(redis_url)
            a = HubSpotAdapter(base_url=sb.hubspot_url, token=sb.hubspot_token, mapping=mapping, redis=client,
                               account="shared")
            try:
                for _ in range(3):
                    a.list_reps()  # 2 calls each
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                a.close()
                client.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        snap = stats(sb)
        assert snap["total"] == 24
        assert snap["rate_limited"] == 0


def test_a_server_allowing_less_than_the_mapping_slows_the_adapter_down(shipped: HubSpotMapping,
                                                                         r: redis.Redis) -> None:
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=6) as sb:
        a = adapter(sb, mapping_with(shipped, account=Account(tier="professional")), r)
        for _ in range(4):
            a.list_reps()
        assert a.http.limiter.limit == 6
        snap = stats(sb)
        assert snap["total"] == a.calls.total == 8
        assert snap["rate_limited"] == 0
        a.close()


def _next_midnight(zone: str) -> float:
    return day_in(ZoneInfo(zone))(time.time())[1]


def test_the_daily_limit_pauses_every_worker_until_the_portals_own_midnight(shipped: HubSpotMapping,
                                                                            redis_url: str) -> None:
    # HubSpot's daily limit resets at midnight in the portal's time zone (account details: timeZone),
    # not UTC: a New York portal that pauses until UTC midnight resumes into DAILY again.
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=100_000, hubspot_daily=20,
                       hubspot_timezone="America/New_York") as sb:  # fmt: skip
        mapping = mapping_with(shipped, account=Account(requests_per_10s=10_000, daily=0))
        first, second = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
        a = adapter(sb, mapping, first)
        for _ in range(9):
            a.list_reps()  # 18 calls of the portal's 20
        with pytest.raises(StopSync) as info:
            a.list_reps()  # 19, 20 (the account details read in between), then DAILY
        assert info.value.resume_at == pytest.approx(_next_midnight("America/New_York"), abs=5)
        assert "00:00 America/New_York" in str(info.value)
        snap = stats(sb)
        # the time zone was read once, while the last calls of the day still went through
        assert calls_to(snap, "GET /account-info/v3/details") == 1
        assert snap["rate_limited"] == 1
        b = adapter(sb, mapping, second)  # another worker: it does not call at all until then
        with pytest.raises(StopSync) as again:
            b.list_reps()
        assert again.value.resume_at == pytest.approx(info.value.resume_at, abs=5)
        assert stats(sb)["total"] == snap["total"]
        a.close()
        b.close()
        first.close()
        second.close()


def test_the_mappings_portal_time_zone_wins_and_spares_the_lookup(shipped: HubSpotMapping, r: redis.Redis) -> None:
    with Sandbox.start(contacts=10, seed=2, hubspot_rate=100_000) as sb:
        a = adapter(sb, mapping_with(shipped, account=Account(requests_per_10s=10_000, daily=4,
                                                              timezone="Asia/Tokyo")), r)  # fmt: skip
        a.list_reps()
        a.list_reps()
        with pytest.raises(StopSync, match="daily API budget of 4 calls") as info:
            a.list_reps()
        assert info.value.resume_at == pytest.approx(_next_midnight("Asia/Tokyo"), abs=5)
        assert "00:00 Asia/Tokyo" in str(info.value)
        assert calls_to(stats(sb), "GET /account-info/v3/details") == 0
        a.close()


def test_the_sandbox_reports_its_portals_time_zone_and_when_the_day_resets(shipped: HubSpotMapping) -> None:
    with Sandbox.start(contacts=10, seed=2, hubspot_timezone="America/Los_Angeles") as sb:
        auth = {"Authorization": f"Bearer {sb.hubspot_token}"}
        details = orjson.loads(HTTP.request("GET", sb.hubspot_url + "/account-info/v3/details", headers=auth).data)
        assert details["timeZone"] == "America/Los_Angeles"
        assert details["portalId"] == 24_681_357
        assert details["utcOffsetMilliseconds"] in (-7 * 3_600_000, -8 * 3_600_000)
        usage = orjson.loads(HTTP.request("GET", sb.hubspot_url + "/account-info/v3/api-usage/daily/private-apps",
                                          headers=auth).data)["results"][0]  # fmt: skip
        resets = dt.datetime.fromisoformat(usage["resetsAt"].replace("Z", "+00:00")).timestamp()
        assert resets == pytest.approx(_next_midnight("America/Los_Angeles"), abs=1)
        assert usage["currentUsage"] == 2
        assert HTTP.request("GET", sb.hubspot_url + "/account-info/v3/details").status == 401


# ----------------------------------------------------------------------------- owners and tasks


def test_reps_come_from_active_and_archived_owners_with_teams(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                              r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    reps = {rep.email: rep for rep in a.list_reps()}
    assert len(reps) == 17
    katrin = reps["katrin.vogel@sandbox-corp.example"]
    assert (katrin.name, katrin.teams, katrin.timezone, katrin.active, katrin.region) == (
        "Katrin Vogel", ("DACH",), "Europe/Berlin", True, None)
    assert sum(not rep.active for rep in reps.values()) == 3
    a.close()


def test_set_owner_assigns_only_when_the_owner_is_as_expected(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                              r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    reps = [rep.id for rep in a.list_reps() if rep.active]
    lead = next(lead for lead in read_all(a) if lead.owner_id is None and int(lead.id) > 100)
    assert a.set_owner("contact", lead.id, reps[0]) is True
    assert a.get_leads("contact", [lead.id])[0].owner_id == reps[0]
    assert a.set_owner("contact", lead.id, reps[1]) is False  # expected unowned, but reps[0] owns it
    assert a.set_owner("contact", lead.id, reps[0]) is True  # already theirs
    assert a.set_owner("contact", lead.id, reps[1], expected=reps[0]) is True
    assert a.get_leads("contact", [lead.id])[0].owner_id == reps[1]
    a.close()


def test_a_task_is_linked_to_the_contact_with_association_204(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                              r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    rep = next(rep for rep in a.list_reps() if rep.active)
    due = time.time() + 3600
    task_id = a.create_task("contact", "42", rep.id, subject="Call the hot lead", body="Score 91", due=due)
    client = HubSpot(access_token=sandbox.hubspot_token, host=sandbox.hubspot_url)
    links = client.crm.associations.v4.basic_api.get_page("tasks", task_id, "contacts")
    assert [(str(x.to_object_id), [t.type_id for t in x.association_types]) for x in links.results] == [
        ("42", [204])]
    task = client.crm.objects.basic_api.get_by_id(
        "tasks", task_id, properties=["hs_task_status", "hs_task_priority", "hs_task_type", "hubspot_owner_id"])
    assert task.properties == {"hs_task_status": "NOT_STARTED", "hs_task_priority": "HIGH", "hs_task_type": "CALL",
                               "hubspot_owner_id": rep.id, **{k: v for k, v in task.properties.items()
                                                              if k.startswith("hs_") and k not in (
                                                                  "hs_task_status", "hs_task_priority",
                                                                  "hs_task_type")}}
    assert a.task_is_open(task_id) is True
    client.crm.objects.basic_api.update("tasks", task_id, {"properties": {"hs_task_status": "COMPLETED"}})
    assert a.task_is_open(task_id) is False
    assert a.task_is_open("90999999999") is False
    a.close()


def test_rep_acted_since_looks_at_the_reps_own_logged_activities(sandbox: Sandbox, fast_mapping: HubSpotMapping,
                                                                 r: redis.Redis) -> None:
    a = adapter(sandbox, fast_mapping, r)
    pop = sandbox.population
    reps = pop.reps()
    i = next(i for i in range(250) if pop.person(i).owner is not None
             and any(act.kind in ("call", "meeting", "note") for act in pop.activities(i)))
    owner = reps[pop.person(i).owner or 0].id
    other = next(rep.id for rep in reps if rep.id != owner)
    last = max(act.ts for act in pop.activities(i) if act.kind in ("call", "meeting", "note", "email_reply",
                                                                    "email_open", "email_click", "email_bounce"))
    lead_id = str(i + 1)
    assert a.rep_acted_since("contact", lead_id, owner, last - 1) is True
    assert a.rep_acted_since("contact", lead_id, owner, last + 1) is False
    assert a.rep_acted_since("contact", lead_id, other, 0) is False
    assert a.record_url("contact", lead_id) == f"{sandbox.hubspot_url}/contacts/sandbox/record/0-1/{lead_id}"
    a.close()
