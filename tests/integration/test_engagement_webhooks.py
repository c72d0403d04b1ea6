"""A new engagement announced by webhook reaches the score of the contacts it is associated with.

HubSpot's `contact.associationChange` does not fire for engagements; its generic (beta)
`object.creation` subscription names the engagement. The drain looks up the engagement's contacts
through the v4 associations API and rescores them through the same service as a sync.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from connector import webhooks
from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.mappings.hubspot import Account
from connector.webhooks import PendingQueue
from sandbox.server import Sandbox
from tests.conftest import ROOT


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=30, seed=12, hubspot_rate=100_000) as sb:
        yield sb


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, mappings_dir=ROOT / "mappings")  # fmt: skip
    runtime = build_runtime(settings, overrides={"hubspot": {"account": Account(requests_per_10s=10_000, daily=0)}})
    runtime.adapter("hubspot").setup()
    yield runtime
    runtime.close()


def test_a_logged_call_rescores_the_contact_it_is_about(sandbox: Sandbox, rt: Runtime) -> None:
    auth = {"Authorization": f"Bearer {sandbox.hubspot_token}"}
    with httpx.Client(base_url=sandbox.hubspot_url, headers=auth) as api:
        made = api.post("/__sandbox__/activities", json={"contact": "12", "kind": "call",
                                                        "attrs": {"disposition": "Connected"}}).json()  # fmt: skip
        engagement = made["engagement"]
        assert engagement["type"] == "calls"
        queue = PendingQueue(rt.redis, rt.namespace)
        queue.accept("hubspot", [("evt-1", webhooks.ENGAGEMENTS, f"calls:{engagement['id']}")], time.time())

        drained = webhooks.drain(rt, "hubspot", webhooks.ENGAGEMENTS, "task-1", lambda c, s, d: None)

        assert drained.taken == 1
        assert drained.result is not None
        assert drained.result.counts["read"] == 1
        contact = api.get("/crm/v3/objects/contacts/12", params={"properties": "lead_scored_at,lead_score"}).json()
        assert contact["properties"]["lead_scored_at"]
        assert queue.pending("hubspot", webhooks.ENGAGEMENTS) == 0
