"""Records a sync could not write are kept and written later; the cursor never leaves them behind.

A sync of the sandbox HubSpot in this process, page after page, with the sandbox's fault injection:
a contact HubSpot answers a 5xx for inside a 207, and a page whose activities cannot be read however
often its task retries. What the CRM holds is read back through its API; what an admin sees through
`leadscore check` and the operator's /metrics.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
import redis
import urllib3

from connector import sync
from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.errors import RetryLater
from connector.mappings.hubspot import Account
from connector.retry import BACKOFF_BASE, LEASE_SECONDS, RetrySet
from connector.runs import RunView
from connector.web import build_admin_app, build_app
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.integration.test_webhooks import TestClient  # the web app under uvicorn on a loopback port

HTTP = urllib3.PoolManager()
CALLS = "POST /crm/v3/objects/calls/batch/read"  # one of the reads of a page's activities


def set_faults(sb: Sandbox, spec: dict[str, object]) -> None:
    HTTP.request("POST", sb.hubspot_url + "/__sandbox__/faults", body=orjson.dumps(spec))


def run_sync(rt: Runtime, before_page: Callable[[int], None] = lambda n: None) -> RunView:
    """One sync of HubSpot, page after page, as the workers run it: a page whose retries are used
    up is handed to fail_page, as tasks/sync.py does (`before_page(n)` runs before the n-th page)."""
    started, firsts = sync.start_run(rt, "hubspot", full=False)
    assert started.skipped_for is None
    queue = collections.deque((stream, None, since) for stream, since in firsts)
    n = 0
    while queue:
        stream, cursor, since = queue.popleft()
        n += 1
        before_page(n)
        try:
            sync.run_page(rt, started.run_id, "hubspot", stream, cursor, since,
                          lambda nxt, s=stream, si=since: queue.append((s, nxt, si)))  # fmt: skip
        except RetryLater as exc:
            sync.fail_page(rt, started.run_id, "hubspot", stream, cursor, f"gave up after 8 retries: {exc}",
                           stop=False)  # fmt: skip
    view = rt.runs.get(started.run_id)
    assert view is not None
    return view


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    contacts = getattr(request, "param", 250)  # a full sync reads pages of 1,000 (LIST_PAGES_PER_READ)
    with Sandbox.start(contacts=contacts, seed=9, hubspot_rate=100_000, search_rate=50, search_lag_s=0) as sb:
        yield sb


@pytest.fixture
def env(sandbox: Sandbox, redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "HUBSPOT_BASE_URL": sandbox.hubspot_url,
            "HUBSPOT_ACCESS_TOKEN": sandbox.hubspot_token}  # fmt: skip


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, mappings_dir=ROOT / "mappings")  # fmt: skip
    fast = Account(requests_per_10s=10_000, daily=0, search_per_second=50)
    runtime = build_runtime(settings, overrides={"hubspot": {"account": fast}})
    runtime.adapter("hubspot").setup()
    yield runtime
    runtime.close()


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.hubspot_url, headers={"Authorization": f"Bearer {sandbox.hubspot_token}"}) as c:
        yield c


def scores(api: httpx.Client, ids: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for k in range(0, len(ids), 100):  # a batch read takes 100
        resp = api.post("/crm/v3/objects/contacts/batch/read",
                        json={"inputs": [{"id": i} for i in ids[k:k + 100]], "properties": ["lead_score"]})  # fmt: skip
        out |= {r["id"]: r["properties"].get("lead_score") for r in resp.json()["results"]}
    return out


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    clean.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "connector.cli", "check"], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)  # fmt: skip


def metrics(rt: Runtime) -> str:
    with TestClient(build_admin_app(build_app(lambda: rt))) as admin:
        return admin.get("/metrics").text


def test_a_contact_hubspot_keeps_refusing_for_now_is_kept_and_the_next_run_writes_it(
    rt: Runtime, sandbox: Sandbox, api: httpx.Client
) -> None:
    set_faults(sandbox, {"records": ["7"]})  # a 5xx for contact 7 inside every batch update's 207
    first = run_sync(rt)

    assert first.status == "done"
    assert first.count("retrying") == 1
    assert first.count("failed") == 0
    assert rt.retries.ids("hubspot", "contact") == ["7"]
    assert rt.runs.cursor("hubspot", "contact") is not None  # the cursor moved: 7 is not left behind by it
    assert scores(api, ["7", "8"]) == {"7": None, "8": scores(api, ["8"])["8"]}
    assert scores(api, ["8"])["8"] is not None

    set_faults(sandbox, {})
    second = run_sync(rt)  # an incremental run: 7 did not change, only the retry set brings it back

    assert second.status == "done"
    assert second.count("retried") == 1
    assert scores(api, ["7"])["7"] is not None
    assert rt.retries.ids("hubspot", "contact") == []


@pytest.mark.parametrize("sandbox", [2_500], indirect=True)
def test_a_page_that_keeps_failing_hands_its_records_to_the_retry_set_and_the_run_moves_the_cursor(
    rt: Runtime, sandbox: Sandbox, api: httpx.Client, env: dict[str, str]
) -> None:
    def page_two_fails(n: int) -> None:
        set_faults(sandbox, {"500": 1.0, "only": CALLS} if n == 2 else {})

    api.post("/__sandbox__/stats/reset").raise_for_status()
    view = run_sync(rt, page_two_fails)  # three pages of 1,000; the second one's activities never come

    assert view.status == "done", view.fields.get("message")
    # The calls the failing page made count too: what the run reports is what HubSpot answered.
    made = api.get("/__sandbox__/stats").json()
    assert view.count("api_calls") == made["total"], made["calls"]
    assert made["calls"][CALLS] > 1
    assert view.count("calls:activities") >= made["calls"][CALLS]
    assert view.count("pages_deferred") == 1
    assert view.count("pages_failed") == 0
    assert rt.runs.cursor("hubspot", "contact") is not None
    waiting = rt.retries.ids("hubspot", "contact")
    assert len(waiting) == 1000
    assert set(scores(api, waiting[:20]).values()) == {None}  # not scored yet...
    assert None not in scores(api, [str(i) for i in range(1, 21)]).values()  # ...while page one was

    # The admin sees the stream behind: `leadscore check` (a warning, not a failure) and /metrics.
    proc = check(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warn = [line for line in proc.stdout.splitlines() if line.startswith("WARN hubspot contact: behind by ")]
    assert len(warn) == 1, proc.stdout
    assert "1000 record(s) not written yet, waiting to be retried since " in warn[0]
    assert "its page kept failing" in warn[0]
    text = metrics(rt)
    assert 'leadscore_retry_waiting{crm="hubspot",stream="contact"} 1000.0' in text
    behind = next(line for line in text.splitlines()
                  if line.startswith('leadscore_retry_behind_seconds{crm="hubspot",stream="contact"}'))  # fmt: skip
    assert float(behind.split()[-1]) >= 0.0

    # The periodic retry writes them on their own, and the stream is no longer behind.
    time.sleep(0.01)
    retried = written = 0
    for _ in range(2):  # RUN_RETRY_BATCHES batches of 100 a time
        result = sync.retry_due(rt, "hubspot", "contact", batches=sync.RUN_RETRY_BATCHES)
        retried, written = retried + result.counts["retried"], written + result.counts["written"]
    assert retried == 1000
    assert written == 1000
    assert None not in scores(api, waiting).values()
    assert rt.retries.ids("hubspot", "contact") == []
    assert 'leadscore_retry_waiting{crm="hubspot",stream="contact"} 0.0' in metrics(rt)
    proc = check(env)
    assert not [line for line in proc.stdout.splitlines() if "behind by" in line], proc.stdout


@pytest.mark.parametrize("sandbox", [2_500], indirect=True)
def test_a_page_that_cannot_be_read_moves_an_incremental_cursor_up_to_the_pages_before_it_not_a_full_ones(
    rt: Runtime, sandbox: Sandbox
) -> None:
    def second_list_page_unreadable(n: int) -> None:
        set_faults(sandbox, {"500": 1.0, "only": "GET /crm/v3/objects/contacts"} if n == 2 else {})

    # A full read comes in id order: pages after the unreadable one may hold older changes.
    first = run_sync(rt, second_list_page_unreadable)
    assert first.status == "failed", (first.fields, first.failures)
    assert rt.runs.cursor("hubspot", "contact") is None

    set_faults(sandbox, {})
    second = run_sync(rt)
    assert second.status == "done", (second.fields, second.failures)
    before = rt.runs.cursor("hubspot", "contact")
    assert before is not None

    def second_search_page_unreadable(n: int) -> None:
        set_faults(sandbox, {"500": 1.0, "only": "POST /crm/v3/objects/contacts/search"} if n == 2 else {})

    # An incremental read comes in order of modification (pages of 200: everyone written by the
    # last run shows up again, skipped unread as our own writes): what was not read is newer than what was.
    third = run_sync(rt, second_search_page_unreadable)
    assert third.status == "failed", (third.fields, third.failures)
    assert third.count("read") == 0, (third.fields, third.failures)
    after = rt.runs.cursor("hubspot", "contact")
    assert after is not None
    assert after > before, (after, before, third.fields)  # the window the next run reads does not keep growing


def test_workers_claim_disjoint_ids_a_dead_claim_comes_due_again_and_one_failing_again_waits_longer(
    redis_url: str,
) -> None:
    store = RetrySet(redis.Redis.from_url(redis_url))
    t0 = 1_000_000.0
    store.add("salesforce", "Lead", [(f"00Q{i:015d}", "UNABLE_TO_LOCK_ROW") for i in range(250)], t0)
    first = store.claim("salesforce", "Lead", t0)
    second = store.claim("salesforce", "Lead", t0)
    third = store.claim("salesforce", "Lead", t0)
    assert (len(first), len(second), len(third)) == (100, 100, 50)
    assert len(set(first) | set(second) | set(third)) == 250  # no id handed to two workers
    assert store.claim("salesforce", "Lead", t0 + 1) == []  # all leased

    store.done("salesforce", "Lead", first + second)
    store.add("salesforce", "Lead", [(i, "UNABLE_TO_LOCK_ROW again") for i in third[:10]], t0 + 2)
    # The 10 that failed again wait BACKOFF_BASE; the worker holding the other 40 died: they come
    # due when its lease runs out.
    assert store.claim("salesforce", "Lead", t0 + 2 + BACKOFF_BASE - 1) == []
    assert sorted(store.claim("salesforce", "Lead", t0 + 2 + BACKOFF_BASE)) == sorted(third[:10])
    assert store.claim("salesforce", "Lead", t0 + LEASE_SECONDS - 1) == []
    assert sorted(store.claim("salesforce", "Lead", t0 + LEASE_SECONDS)) == sorted(third[10:])

    behind = store.behind("salesforce", "Lead")
    assert behind.waiting == 50
    assert behind.since == t0  # when the oldest first failed, not when it last failed
    store.done("salesforce", "Lead", third)
    assert store.streams() == []  # nothing waits: the stream left the index
    assert store.behind("salesforce", "Lead").waiting == 0
