"""Incremental syncs against a search index that lags writes, as HubSpot's does.

HubSpot's search shows a change some moments after it is made, and not necessarily in the order
the changes were made. An incremental run reads what search shows, ascending by modification
time, and saves the largest time it saw as the next run's start: a change made earlier but shown
later would fall behind that mark and never be read. The connector keeps the cursor at least
`connector.sync.SEARCH_LAG_SECONDS` behind the run's own start, so the next run reads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import urllib3

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.mappings.hubspot import Account
from connector.runs import RunView
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process

HTTP = urllib3.PoolManager()


def run_incremental(rt: Runtime) -> RunView:
    """One sync of HubSpot in this process, page after page (the first one, without a cursor, reads everyone)."""
    return run_in_process(rt, "hubspot", full=False)


def search_index(sb: Sandbox, body: dict[str, Any]) -> None:
    HTTP.request("POST", sb.hubspot_url + "/__sandbox__/search", body=orjson.dumps(body))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=30, seed=9, hubspot_rate=100_000, search_rate=50, search_lag_s=0) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, mappings_dir=ROOT / "mappings")  # fmt: skip
    fast = Account(requests_per_10s=10_000, daily=0, search_per_second=50)
    runtime = build_runtime(settings, overrides={"hubspot": {"account": fast}})
    runtime.adapter("hubspot").setup()
    yield runtime
    runtime.close()


def test_a_change_search_shows_late_and_out_of_order_is_read_by_the_next_incremental_sync(
    sandbox: Sandbox, rt: Runtime
) -> None:
    api = httpx.Client(base_url=sandbox.hubspot_url, headers={"Authorization": f"Bearer {sandbox.hubspot_token}"})

    def score_of(contact: str) -> str:
        resp = api.get(f"/crm/v3/objects/contacts/{contact}", params={"properties": "lead_score"})
        return str(resp.json()["properties"]["lead_score"])

    assert run_incremental(rt).status == "done"  # no cursor yet: every contact read and scored
    scored = score_of("7")

    # Another integration overwrites contact 7's score; search will show that change late...
    search_index(sandbox, {"lag_s": [3600, 3600]})
    api.patch("/crm/v3/objects/contacts/7", json={"properties": {"lead_score": "1"}}).raise_for_status()
    time.sleep(0.01)
    # ...while contact 8's change, a moment later, shows up at once.
    search_index(sandbox, {"lag_s": [0, 0]})
    api.patch("/crm/v3/objects/contacts/8", json={"properties": {"jobtitle": "Chief Testing Officer"}})

    assert run_incremental(rt).status == "done"  # search shows 8's change, not 7's
    assert score_of("7") == "1"
    search_index(sandbox, {"advance_s": 3600})  # now search shows 7's change, stamped before 8's

    assert run_incremental(rt).status == "done"
    assert score_of("7") == scored  # read and scored again: the wrong score did not stay
    api.close()
