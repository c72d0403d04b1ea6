"""End to end: a change in the sandbox HubSpot goes through the web app to a real Celery worker and back as a score.

sandbox (in-thread, sending signed webhooks) -> web app under uvicorn ->
private Redis (pending ids + Celery broker) -> `celery -A tasks worker` in a
subprocess -> connector.sync.rescore -> the sandbox, read back through its API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector import sync
from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.domain import Activity
from connector.metrics import Metrics
from connector.web import build_admin_app, build_app
from connector.webhooks import PendingQueue
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.integration.test_webhooks import WebServer, fast_mappings

SECRET = "e2e-webhook-secret-9d8c7b6a"
WHITEPAPER = {"form_id": "f1a2b3c4-0002", "form_title": "Whitepaper: Strain gauge measurement"}
PRICING = {"url": "/pricing", "title": "Pricing"}
SCORE_PROPS = ["lead_score", "lead_band", "lead_scored_at", "hubspot_owner_id"]

pytestmark = pytest.mark.slow


class Worker:
    """`celery -A tasks worker` in a subprocess, one process, ready when it says so."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-I", "tasks.realtime", "--pool=solo",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
             "-n", f"e2e-{os.getpid()}@%h"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if " ready." in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self.ready.wait(timeout):
            raise AssertionError("the worker did not start:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=200, seed=11, hubspot_rate=100_000) as sb:
        yield sb


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    return fast_mappings(tmp_path)


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str, mappings: Path) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, hubspot_webhook_secret=SECRET,
                        mappings_dir=mappings)  # fmt: skip
    runtime = build_runtime(settings)
    runtime.adapter("hubspot").setup()  # `leadscore setup`: the score properties exist
    yield runtime
    runtime.close()


@pytest.fixture
def worker(sandbox: Sandbox, redis_url: str, mappings: Path) -> Iterator[Worker]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    env.update(REDIS_URL=redis_url, HUBSPOT_BASE_URL=sandbox.hubspot_url, HUBSPOT_ACCESS_TOKEN=sandbox.hubspot_token,
               LEADSCORE_MAPPINGS=str(mappings), PYTHONWARNINGS="ignore")  # fmt: skip
    w = Worker(env)
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def _contacts(api: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    resp = api.post("/crm/v3/objects/contacts/batch/read",
                    json={"inputs": [{"id": i} for i in ids], "properties": SCORE_PROPS})  # fmt: skip
    resp.raise_for_status()
    return {r["id"]: r["properties"] for r in resp.json()["results"]}


def _tasks_of(api: httpx.Client, contact: str) -> list[str]:
    resp = api.get(f"/crm/v4/objects/contacts/{contact}/associations/tasks")
    resp.raise_for_status()
    return [str(r["toObjectId"]) for r in resp.json()["results"]]


def _pick_contact(rt: Runtime, ids: list[str], now: float) -> tuple[str, bool]:
    """A scored, unowned contact that the whitepaper form and the pricing view should make hot (else the warmest)."""
    adapter = rt.adapter("hubspot")
    leads = adapter.get_leads("contact", ids)
    adapter.load_activities(leads, now)
    extra = [Activity("form_submission", now, {"form": WHITEPAPER["form_title"], "form_id": WHITEPAPER["form_id"]}),
             Activity("page_view", now, PRICING)]  # fmt: skip
    best: tuple[float, str] | None = None
    for lead in leads:
        before = rt.model.score(lead.profile, lead.activities, now)
        if lead.owner_id is not None or before.band == "hot":
            continue
        after = rt.model.score(lead.profile, [*lead.activities, *extra], now)
        if after.band == "hot":
            return lead.id, True
        if best is None or after.score > best[0]:
            best = (after.score, lead.id)
    assert best is not None
    return best[1], False


def test_a_form_and_a_pricing_view_come_back_as_a_score_and_a_task_for_the_rep(
    sandbox: Sandbox, rt: Runtime, worker: Worker
) -> None:
    now = time.time()
    ids = [str(i) for i in range(1, 201)]
    for i in range(0, len(ids), 100):  # a batch sync scored everyone before
        sync.rescore(rt, "hubspot", "contact", ids[i : i + 100], now)
    contact, should_be_hot = _pick_contact(rt, ids, now)

    auth = {"Authorization": f"Bearer {sandbox.hubspot_token}"}
    app = build_app(lambda: rt)
    with (
        WebServer(app) as web,
        WebServer(build_admin_app(app)) as ops,
        httpx.Client(base_url=sandbox.hubspot_url, headers=auth) as api,
    ):
        assert httpx.get(f"{ops.url}/readyz").status_code == 200
        setup = api.post("/__sandbox__/webhooks", json={"hubspot": {"url": f"{web.url}/webhooks/hubspot",
                                                                    "secret": SECRET}})  # fmt: skip
        assert setup.status_code == 200, setup.text
        before = _contacts(api, [contact])[contact]
        started = time.monotonic()
        for kind, attrs in (("form_submission", WHITEPAPER), ("page_view", PRICING)):
            resp = api.post("/__sandbox__/activities", json={"contact": contact, "kind": kind, "attrs": attrs})
            assert resp.status_code == 201, resp.text

        deadline = time.monotonic() + 30
        after = before
        while time.monotonic() < deadline:
            after = _contacts(api, [contact])[contact]
            if after["lead_scored_at"] != before["lead_scored_at"]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no score came back:\n" + "\n".join(worker.lines[-30:]))
        assert float(after["lead_score"]) > float(before["lead_score"] or 0)

        if should_be_hot:
            assert after["lead_band"] == "hot"
            tasks: list[str] = []
            while time.monotonic() < deadline and not tasks:
                tasks = _tasks_of(api, contact)
                time.sleep(0.05)
            assert tasks, "the hot lead got no task"
            owner = _contacts(api, [contact])[contact]["hubspot_owner_id"]
            task = api.get(f"/crm/v3/objects/tasks/{tasks[0]}", params={"properties": "hubspot_owner_id"}).json()
            assert owner
            assert task["properties"]["hubspot_owner_id"] == owner
        elapsed = time.monotonic() - started
        metrics = httpx.get(f"{ops.url}/metrics").text

    assert elapsed < 10
    assert PendingQueue(rt.redis, rt.namespace).pending("hubspot", "contact") == 0
    assert Metrics(rt.redis, rt.namespace).value("realtime_rescored", crm="hubspot") >= 1
    assert 'leadscore_webhook_deliveries_total{crm="hubspot",outcome="accepted"}' in metrics
    assert "leadscore_task_seconds_bucket" in metrics
