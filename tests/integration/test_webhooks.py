"""The web process against a private Redis (also the Celery broker): what reaches the queue, and what does not.

Assertions read the broker's queue (the `leadscore` list in Redis) and the
pending sets, never which functions were called. The drain runs in-process
against a fake adapter (our own interface) for the failure cases, and against
the sandbox HubSpot over HTTP for the burst.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import shutil
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import uvicorn
from starlette.applications import Starlette

from connector import webhooks
from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.crm.base import CallCounter, Page, WriteReport
from connector.domain import CrmName, Lead, Rep
from connector.errors import RetryLater
from connector.metrics import Metrics
from connector.web import build_admin_app, build_app
from connector.webhooks import ACK_SOAP, PendingQueue, sign_hubspot_v3
from tasks.realtime import CeleryDispatcher
from tests.conftest import ROOT, free_port

SECRET = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SF_TOKEN = "Q3bJ9x-outbound-message-token_2f7c"
SF_HOOK = f"/webhooks/salesforce?token={SF_TOKEN}"  # the endpoint URL as set in the Outbound Message
ORG = "00D8d0000000001EAA"
QUEUE = "leadscore"  # the Celery queue: a list in the broker's Redis


# --------------------------------------------------------------------------- helpers


def fast_mappings(tmp: Path) -> Path:
    """mappings/ with a portal allowance the sandbox can take (the tests measure the pipeline, not the quota)."""
    target = tmp / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    path = target / "hubspot.yaml"
    text = path.read_text()
    assert "  tier: enterprise\n" in text
    path.write_text(text.replace("  tier: enterprise\n", "  tier: enterprise\n  requests_per_10s: 10000\n", 1))
    return target


class WebServer:
    """The web app under uvicorn on a loopback port, in a background thread (as `leadscore serve` runs it)."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the web app did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class TestClient(httpx.Client):
    """An HTTP client for a WebServer running `app`; `hook` is the URL HubSpot would sign."""

    __test__ = False

    def __init__(self, app: Starlette) -> None:
        self._web = WebServer(app)
        super().__init__(base_url=self._web.url, timeout=10)
        self.hook = f"{self._web.url}/webhooks/hubspot"

    def __enter__(self) -> TestClient:
        self._web.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()
        self._web.__exit__()


def _settings(redis_url: str, **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "hubspot_webhook_secret": SECRET,
        "salesforce_webhook_secret": SF_TOKEN,
        "salesforce_org_id": ORG,
    }
    base.update(extra)
    return Settings(**base)


@pytest.fixture
def rt(redis_url: str) -> Iterator[Runtime]:
    runtime = build_runtime(_settings(redis_url))
    yield runtime
    runtime.close()


@pytest.fixture
def public_app(rt: Runtime, redis_url: str) -> Starlette:
    return build_app(lambda: rt, dispatcher=CeleryDispatcher(redis_url))


@pytest.fixture
def client(public_app: Starlette) -> Iterator[TestClient]:
    """The public listener: what the CRMs reach."""
    with TestClient(public_app) as c:
        yield c


@pytest.fixture
def admin(public_app: Starlette) -> Iterator[TestClient]:
    """The operator's listener (LEADSCORE_METRICS_ADDR): metrics and readiness."""
    with TestClient(build_admin_app(public_app)) as c:
        yield c


def _event(event_id: int, contact: int, kind: str = "contact.propertyChange", **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id, "subscriptionId": 1, "portalId": 24681357, "appId": 1, "occurredAt": 1,
        "subscriptionType": kind, "attemptNumber": 0, "objectId": contact, "propertyName": "jobtitle",
        "propertyValue": "CTO", "changeSource": "CRM_UI", **extra,
    }  # fmt: skip


def _post_hubspot(
    client: TestClient,
    events: Sequence[Mapping[str, Any]],
    *,
    secret: str = SECRET,
    ts_ms: int | None = None,
    body: bytes | None = None,
    signed_body: bytes | None = None,
) -> httpx.Response:
    raw = orjson.dumps(list(events))
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    sig = sign_hubspot_v3(secret, "POST", client.hook, raw if signed_body is None else signed_body, ts)
    headers = {"X-HubSpot-Signature-v3": sig, "X-HubSpot-Request-Timestamp": str(ts),
               "Content-Type": "application/json"}  # fmt: skip
    return client.post("/webhooks/hubspot", content=raw if body is None else body, headers=headers)


def _queued(r: redis.Redis) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in the broker's queue."""
    out = []
    for raw in r.lrange(QUEUE, 0, -1):  # type: ignore[union-attr]
        message = orjson.loads(raw)
        args = orjson.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args))
    return out


def _pending(rt: Runtime, crm: CrmName = "hubspot", stream: str = "contact") -> list[str]:
    return sorted(PendingQueue(rt.redis, rt.namespace).pending_ids(crm, stream))


def _outbound(org: str, notes: Sequence[tuple[str, str, str]]) -> bytes:
    body = "".join(
        f'<Notification><Id>{nid}</Id><sObject xsi:type="sf:{kind}" '
        f'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject></Notification>'
        for nid, kind, fields in notes
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        f'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}</OrganizationId>'
        f"<ActionId>04k000000000001AAA</ActionId>{body}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


# --------------------------------------------------------------------------- HubSpot deliveries


def test_a_signed_delivery_queues_its_contacts_and_schedules_one_drain(
    client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    resp = _post_hubspot(client, [_event(1, 101), _event(2, 102, "contact.creation")])
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "accepted": 2, "deduplicated": 0, "ignored": 0}
    assert _pending(rt) == ["101", "102"]
    assert _queued(redis_client) == [("leadscore.realtime.rescore_pending", ["hubspot", "contact"])]


def test_a_burst_for_one_contact_coalesces_into_one_pending_id_and_one_drain(
    client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    for n in range(40):
        assert _post_hubspot(client, [_event(1000 + n, 7)]).status_code == 200
    assert _pending(rt) == ["7"]
    assert len(_queued(redis_client)) == 1


@pytest.mark.parametrize(
    "case",
    ["forged", "stale", "future", "altered", "unsigned"],
)
def test_rejected_deliveries_leave_nothing_queued(
    case: str, client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    events = [_event(10, 201)]
    raw = orjson.dumps(events)
    now_ms = int(time.time() * 1000)
    if case == "forged":
        resp = _post_hubspot(client, events, secret="someone-else")
    elif case == "stale":
        resp = _post_hubspot(client, events, ts_ms=now_ms - 301_000)
    elif case == "future":
        resp = _post_hubspot(client, events, ts_ms=now_ms + 301_000)
    elif case == "altered":
        resp = _post_hubspot(client, events, body=raw.replace(b"201", b"202"), signed_body=raw)
    else:
        resp = client.post("/webhooks/hubspot", content=raw)
    assert resp.status_code == 401
    assert resp.json()["status"] == "error"
    assert _pending(rt) == []
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.keys("leadscore:webhook:seen:*") == []  # the event id was not claimed either
    assert Metrics(rt.redis).value("webhook_deliveries", crm="hubspot", outcome="rejected") == 1


def test_a_replayed_event_id_is_deduplicated(client: TestClient, rt: Runtime, redis_client: redis.Redis) -> None:
    assert _post_hubspot(client, [_event(77, 301)]).json()["accepted"] == 1
    # Drain what is pending (as a worker would), then replay the same event.
    redis_client.delete("leadscore:realtime:pending:hubspot:contact", "leadscore:realtime:scheduled:hubspot:contact",
                        QUEUE)  # fmt: skip
    replay = _post_hubspot(client, [_event(77, 301)])
    assert replay.status_code == 200
    assert replay.json()["deduplicated"] == 1
    assert _pending(rt) == []
    assert redis_client.llen(QUEUE) == 0
    assert Metrics(rt.redis).value("webhook_events", crm="hubspot", outcome="deduplicated") == 1


def test_changes_of_the_score_properties_do_not_queue_a_rescore(
    client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    resp = _post_hubspot(client, [_event(5, 401, propertyName="lead_score"), _event(6, 402, propertyName="lead_band")])
    assert resp.json()["ignored"] == 2
    assert _pending(rt) == []
    assert redis_client.llen(QUEUE) == 0


def test_without_a_webhook_secret_deliveries_are_refused_with_503(redis_url: str, redis_client: redis.Redis) -> None:
    runtime = build_runtime(_settings(redis_url, hubspot_webhook_secret=None))
    with TestClient(build_app(lambda: runtime, dispatcher=CeleryDispatcher(redis_url))) as c:
        resp = _post_hubspot(c, [_event(1, 1)])
    runtime.close()
    assert resp.status_code == 503
    assert "HUBSPOT_WEBHOOK_SECRET" in resp.json()["message"]
    assert redis_client.keys("leadscore:realtime:*") == []
    assert redis_client.llen(QUEUE) == 0


def test_when_the_broker_is_down_the_delivery_fails_and_its_retry_is_accepted_later(
    rt: Runtime, redis_url: str, redis_client: redis.Redis
) -> None:
    dead = CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(build_app(lambda: rt, dispatcher=dead)) as c:
        assert _post_hubspot(c, [_event(9, 501)]).status_code == 503
    assert redis_client.keys("leadscore:webhook:seen:*") == []  # HubSpot's retry will not look like a replay
    with TestClient(build_app(lambda: rt, dispatcher=CeleryDispatcher(redis_url))) as c:
        retry = _post_hubspot(c, [_event(9, 501)])
    assert retry.json()["accepted"] == 1
    assert _queued(redis_client) == [("leadscore.realtime.rescore_pending", ["hubspot", "contact"])]


def test_a_deletion_queues_a_purge_of_that_contact(client: TestClient, redis_client: redis.Redis) -> None:
    resp = _post_hubspot(client, [_event(31, 601, "contact.deletion"), _event(32, 602, "contact.privacyDeletion")])
    assert resp.status_code == 200
    assert _queued(redis_client) == [("leadscore.realtime.purge", [["hubspot:contact:601", "hubspot:contact:602"]])]


def test_purge_record_removes_what_names_the_lead_and_nothing_else(rt: Runtime, redis_client: redis.Redis) -> None:
    r = redis_client
    lead, other = "hubspot:contact:12", "hubspot:contact:123"
    for key in (lead, other):
        r.rpush(f"leadscore:routing:record:{key}", '{"rep": "1"}')
        r.hset(f"leadscore:routing:pending:{key}|ep1", "rep", "1")
        r.hset(f"leadscore:routing:episode:{key}", "open", "1")
        r.zadd("leadscore:routing:sla", {f"{key}|ep1": 1.0})
        r.set(f"leadscore:notify:email:{key}|ep1|r1|assigned", "1")
        r.rpush("leadscore:run:hubspot-1:failures", f"{key}: could not be scored (ValueError)")
    r.zadd("leadscore:realtime:pending:hubspot:contact", {"12": 1.0, "123": 1.0})
    webhooks.purge_record(rt, lead)
    left = sorted(k for k in r.keys("leadscore:*") if lead + "|" in k or k.endswith(lead))
    assert left == []
    assert r.zrange("leadscore:routing:sla", 0, -1) == [f"{other}|ep1"]
    assert r.lrange("leadscore:run:hubspot-1:failures", 0, -1) == [f"{other}: could not be scored (ValueError)"]
    assert r.zrange("leadscore:realtime:pending:hubspot:contact", 0, -1) == ["123"]
    assert r.exists(f"leadscore:routing:record:{other}", f"leadscore:notify:email:{other}|ep1|r1|assigned") == 2


def test_a_deletion_purges_what_routing_and_notifications_kept_without_scanning_redis(
    rt: Runtime, redis_client: redis.Redis
) -> None:
    from connector.notify import Notifier
    from connector.routing.service import Router
    from connector.runs import RunStore
    from tests.integration.test_routing_redis import NOW, FakeCrm, Score, make_config, make_reps

    crm = FakeCrm(reps=make_reps())
    notifier = Notifier(chat_webhook_url=f"http://127.0.0.1:{free_port()}/hook", dedupe=rt.redis, timeout=2)
    router = Router(make_config(), rt.redis, lambda _c: crm, notifier, clock=lambda: NOW,
                    namespace=f"{rt.namespace}:routing")  # fmt: skip
    for lead_id in ("12", "123"):
        router.assign_hot_lead(crm.add_lead(lead_id), "contact", Score(), NOW)
    assert len(router.check_sla(NOW + 31 * 60)) == 2  # a second round each: more keys, more claims
    notifier.close()
    _queue_ids(rt, ["12", "123"])
    runs = RunStore(rt.redis, rt.namespace)
    run_id = runs.new_run("hubspot", "full", ("contact",))
    for lead in ("hubspot:contact:12", "hubspot:contact:123"):
        redis_client.rpush(f"leadscore:run:{run_id}:failures", f"{lead}: could not be written (429)")
    webhooks.purge_record(rt, "hubspot:contact:999")  # the first deletion after an upgrade indexes older keys once
    redis_client.config_resetstat()

    webhooks.purge_record(rt, "hubspot:contact:12")

    used = {name.removeprefix("cmdstat_") for name in redis_client.info("commandstats")}
    assert not used & {"scan", "keys", "hscan", "sscan", "zscan"}, used
    everything = {k: _dump_value(redis_client, k) for k in redis_client.keys("*")}
    assert not [k for k, v in everything.items() if webhooks._names(k + " " + v, "hubspot:contact:12")]
    assert [k for k, v in everything.items() if webhooks._names(k + " " + v, "hubspot:contact:123")]
    assert redis_client.exists("leadscore:routing:record:hubspot:contact:123")
    assert _pending(rt) == ["123"]


def test_a_deletion_finds_the_notifications_the_outbox_still_retries_through_the_leads_index(
    rt: Runtime, redis_client: redis.Redis
) -> None:
    from connector.notify import Notifier
    from connector.routing.service import Router
    from tests.integration.test_routing_redis import NOW, FakeCrm, Score, make_config, make_reps

    webhooks.purge_record(rt, "hubspot:contact:999")  # older keys indexed once: what follows is found by index only
    crm = FakeCrm(reps=make_reps())
    notifier = Notifier(chat_webhook_url=f"http://127.0.0.1:{free_port()}/hook", dedupe=rt.redis, timeout=2)
    router = Router(make_config(), rt.redis, lambda _c: crm, notifier, clock=lambda: NOW,
                    namespace=f"{rt.namespace}:routing")  # fmt: skip
    for lead_id in ("12", "123"):
        router.assign_hot_lead(crm.add_lead(lead_id), "contact", Score(), NOW)
    notifier.close()
    waiting = [_text(m) for m in redis_client.zrange("leadscore:routing:outbox", 0, -1)]
    assert sorted(m.split("|")[0] for m in waiting) == ["hubspot:contact:12", "hubspot:contact:123"]
    redis_client.config_resetstat()

    webhooks.purge_record(rt, "hubspot:contact:12")

    used = {name.removeprefix("cmdstat_") for name in redis_client.info("commandstats")}
    assert not used & {"scan", "keys", "hscan", "sscan", "zscan"}, used
    everything = {k: _dump_value(redis_client, k) for k in redis_client.keys("*")}
    assert not [k for k, v in everything.items() if webhooks._names(k + " " + v, "hubspot:contact:12")]
    left = [_text(m) for m in redis_client.zrange("leadscore:routing:outbox", 0, -1)]
    assert [m.split("|")[0] for m in left] == ["hubspot:contact:123"], "the other lead's retry stays due"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dump_value(r: redis.Redis, key: str) -> str:
    kind = r.type(key)
    if kind == "hash":
        return str(r.hgetall(key))
    if kind == "list":
        return str(r.lrange(key, 0, -1))
    if kind == "zset":
        return str(r.zrange(key, 0, -1))
    if kind == "set":
        return str(sorted(r.smembers(key)))
    return str(r.get(key))


# --------------------------------------------------------------------------- Salesforce outbound messages


def test_an_outbound_message_is_acknowledged_and_queues_its_records(
    client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    body = _outbound(ORG, [
        ("04l000000000001AAA", "Lead", "<sf:Id>00Q000000000001AAA</sf:Id>"),
        ("04l000000000002AAA", "Task", "<sf:Id>00T000000000002AAA</sf:Id><sf:WhoId>003000000000002AAA</sf:WhoId>"),
    ])  # fmt: skip
    resp = client.post(SF_HOOK, content=body, headers={"Content-Type": "text/xml"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/xml")
    assert resp.text == ACK_SOAP
    assert '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>' in resp.text
    assert _pending(rt, "salesforce", "Lead") == ["00Q000000000001AAA"]
    assert _pending(rt, "salesforce", "Contact") == ["003000000000002AAA"]
    assert sorted(args[1] for _, args in _queued(redis_client)) == ["Contact", "Lead"]
    again = client.post(SF_HOOK, content=body)
    assert again.text == ACK_SOAP  # a redelivered message is acknowledged again, and not queued twice
    assert len(_queued(redis_client)) == 2


def test_an_outbound_message_from_another_org_is_refused(
    client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    body = _outbound("00D000000000999AAA", [("04l000000000001AAA", "Lead", "<sf:Id>00Q000000000001AAA</sf:Id>")])
    resp = client.post(SF_HOOK, content=body)
    assert resp.status_code == 403
    assert "<faultstring>" in resp.text
    assert "Ack" not in resp.text
    assert _pending(rt, "salesforce", "Lead") == []
    assert redis_client.llen(QUEUE) == 0


def test_an_outbound_message_with_a_doctype_is_refused(client: TestClient, redis_client: redis.Redis) -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    resp = client.post(SF_HOOK, content=body)
    assert resp.status_code == 400
    assert redis_client.llen(QUEUE) == 0


@pytest.mark.parametrize("url", ["/webhooks/salesforce", "/webhooks/salesforce?token=guess", f"{SF_HOOK}x"])
def test_an_outbound_message_without_the_endpoint_token_is_refused_and_not_read(
    url: str, client: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    body = _outbound(ORG, [("04l000000000001AAA", "Lead", "<sf:Id>00Q000000000001AAA</sf:Id>")])
    resp = client.post(url, content=body, headers={"Content-Type": "text/xml"})
    assert resp.status_code == 401
    assert "<faultstring>the endpoint URL lacks the right token" in resp.text
    assert "Ack" not in resp.text
    assert _pending(rt, "salesforce", "Lead") == []
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.keys("leadscore:webhook:seen:*") == []
    assert Metrics(rt.redis).value("webhook_rejections", crm="salesforce", reason="token") == 1


def test_without_a_salesforce_secret_no_outbound_message_is_accepted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    runtime = build_runtime(_settings(redis_url, salesforce_webhook_secret=None))
    body = _outbound(ORG, [("04l000000000001AAA", "Lead", "<sf:Id>00Q000000000001AAA</sf:Id>")])
    with TestClient(build_app(lambda: runtime, dispatcher=CeleryDispatcher(redis_url))) as c:
        for url in ("/webhooks/salesforce", SF_HOOK, "/webhooks/salesforce?token="):
            resp = c.post(url, content=body)
            assert resp.status_code == 503
            assert "SALESFORCE_WEBHOOK_SECRET is not set" in resp.text
    runtime.close()
    assert redis_client.keys("leadscore:realtime:*") == []
    assert redis_client.llen(QUEUE) == 0


def test_serve_says_in_one_line_that_outbound_messages_are_refused_without_a_secret(redis_url: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    env.update(REDIS_URL=redis_url, PORT=str(free_port()), LEADSCORE_METRICS_ADDR=f"127.0.0.1:{free_port()}",
               HUBSPOT_WEBHOOK_SECRET=SECRET)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "serve"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends when the process does
            lines.append(line)
            if '"event": "listening"' in line or len(lines) > 20:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    said = [orjson.loads(x)["msg"] for x in lines if x.startswith("{") and "SALESFORCE_WEBHOOK_SECRET" in x]
    assert said == [
        "SALESFORCE_WEBHOOK_SECRET is not set: Salesforce outbound messages will be refused (503) until it is."
    ]


def test_the_salesforce_secret_must_be_long_enough_to_be_one(redis_url: str) -> None:
    from connector.config import load_settings
    from connector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^SALESFORCE_WEBHOOK_SECRET must be at least 24 characters"):
        load_settings({"SALESFORCE_WEBHOOK_SECRET": "short"})
    with pytest.raises(ConfigError, match="letters, digits, - and _ only"):
        load_settings({"SALESFORCE_WEBHOOK_SECRET": "a" * 30 + "&b=c"})
    assert load_settings({"SALESFORCE_WEBHOOK_SECRET": SF_TOKEN}).salesforce_webhook_secret == SF_TOKEN
    assert SF_TOKEN not in repr(load_settings({"SALESFORCE_WEBHOOK_SECRET": SF_TOKEN}))


# --------------------------------------------------------------------------- health and metrics


def test_healthz_answers_while_the_process_is_up(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_redis_and_the_broker(admin: TestClient, rt: Runtime) -> None:
    assert admin.get("/readyz").json() == {"status": "ok", "redis": "ok", "broker": "ok"}
    dead = CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(build_admin_app(build_app(lambda: rt, dispatcher=dead))) as c:
        resp = c.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["broker"].startswith("broker unreachable")


def test_metrics_export_the_shared_counters_in_prometheus_format(
    client: TestClient, admin: TestClient, rt: Runtime
) -> None:
    _post_hubspot(client, [_event(1, 1)])
    _post_hubspot(client, [_event(1, 1)])
    _post_hubspot(client, [_event(2, 1)], secret="forged")
    m = Metrics(rt.redis, rt.namespace)  # what workers record, in other processes
    m.incr("syncs", crm="hubspot", status="done")
    m.incr("records_written", 12, crm="hubspot", path="sync")
    m.incr("api_rate_limited", 3, crm="hubspot")
    m.incr("assignments", crm="hubspot", region="DACH")
    m.observe("task_seconds", 0.3, task="leadscore.sync.page")
    resp = admin.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for line in (
        'leadscore_webhook_deliveries_total{crm="hubspot",outcome="accepted"} 2.0',
        'leadscore_webhook_deliveries_total{crm="hubspot",outcome="rejected"} 1.0',
        'leadscore_webhook_rejections_total{crm="hubspot",reason="signature"} 1.0',
        'leadscore_webhook_events_total{crm="hubspot",outcome="deduplicated"} 1.0',
        'leadscore_syncs_total{crm="hubspot",status="done"} 1.0',
        'leadscore_records_written_total{crm="hubspot",path="sync"} 12.0',
        'leadscore_api_rate_limited_total{crm="hubspot"} 3.0',
        'leadscore_assignments_total{crm="hubspot",region="DACH"} 1.0',
        'leadscore_task_seconds_bucket{le="0.25",task="leadscore.sync.page"} 0.0',
        'leadscore_task_seconds_bucket{le="0.5",task="leadscore.sync.page"} 1.0',
        'leadscore_task_seconds_count{task="leadscore.sync.page"} 1.0',
        'leadscore_realtime_pending{crm="hubspot",stream="contact"} 1.0',
    ):
        assert line in text, line
    assert "# TYPE leadscore_task_seconds histogram" in text


def test_the_public_listener_serves_webhooks_and_healthz_but_neither_metrics_nor_readiness(
    client: TestClient, admin: TestClient
) -> None:
    assert client.get("/metrics").status_code == 404
    assert client.get("/readyz").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert admin.get("/healthz").json() == {"status": "ok"}
    assert admin.post("/webhooks/hubspot", content=b"[]").status_code == 404


def _commands(r: redis.Redis) -> dict[str, int]:
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_a_scrape_costs_a_few_redis_reads_and_no_key_scans(
    client: TestClient, admin: TestClient, rt: Runtime, redis_client: redis.Redis
) -> None:
    for n in range(30):
        _post_hubspot(client, [_event(900 + n, 900 + n)])
        Metrics(rt.redis).incr("records_written", crm="hubspot", path=f"p{n}")
    admin.get("/metrics")  # warm: the runtime is built
    before = _commands(redis_client)
    assert admin.get("/metrics").status_code == 200
    after = _commands(redis_client)
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    spent.pop("info", None)  # the test's own INFO
    assert not {"scan", "keys", "hscan", "zscan", "sscan"} & set(spent), spent
    assert sum(spent.values()) <= 6, spent


def test_serve_answers_metrics_only_on_the_operators_address_and_stops_on_sigterm(redis_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    web, ops = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    env.update(REDIS_URL=redis_url, PORT=str(web), LEADSCORE_METRICS_ADDR=f"127.0.0.1:{ops}",
               HUBSPOT_WEBHOOK_SECRET=SECRET, SALESFORCE_WEBHOOK_SECRET=SF_TOKEN)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "serve"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{ops}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{ops}/metrics").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{web}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{web}/readyz").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{web}/healthz").json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_the_operators_address_defaults_to_loopback_and_a_bad_one_is_one_sentence() -> None:
    from connector.config import load_settings
    from connector.errors import ConfigError

    assert load_settings({}).metrics_bind == ("127.0.0.1", 9464)
    assert load_settings({"LEADSCORE_METRICS_ADDR": "[::1]:9100"}).metrics_bind == ("::1", 9100)
    with pytest.raises(ConfigError, match=r"^LEADSCORE_METRICS_ADDR must be host:port"):
        load_settings({"LEADSCORE_METRICS_ADDR": "9464"})


# --------------------------------------------------------------------------- the drain, against a fake adapter


class FakeAdapter:
    """Our adapter interface over a dict; `fail` makes the next get_leads calls raise."""

    crm: CrmName = "hubspot"
    streams = ("contact",)

    def __init__(self) -> None:
        self.read: list[list[str]] = []
        self.fail: list[Exception] = []
        self.calls = CallCounter()

    def get_leads(self, stream: str, ids: Sequence[str]) -> list[Lead]:
        self.calls.add()
        if self.fail:
            raise self.fail.pop(0)
        self.read.append(list(ids))
        return [Lead("hubspot", "contact", i, {"job_title": "Student"}, written={}) for i in ids]

    def load_activities(self, leads: Sequence[Lead], now: float) -> None:
        return None

    def write_scores(self, stream: str, updates: Mapping[str, Mapping[str, str]]) -> WriteReport:
        return WriteReport(written=list(updates))

    def read_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        raise NotImplementedError

    def list_reps(self) -> list[Rep]:
        return []

    def close(self) -> None:
        return None


@pytest.fixture
def fake(rt: Runtime) -> FakeAdapter:
    adapter = FakeAdapter()
    rt._adapters["hubspot"] = adapter  # type: ignore[assignment]
    return adapter


def _queue_ids(rt: Runtime, ids: Sequence[str]) -> None:
    PendingQueue(rt.redis, rt.namespace).accept("hubspot", [(f"e{i}", "contact", i) for i in ids], time.time())


def test_a_drain_takes_a_batch_and_schedules_the_next_while_more_wait(rt: Runtime, fake: FakeAdapter) -> None:
    ids = [str(i) for i in range(1, 251)]
    _queue_ids(rt, ids)
    scheduled: list[tuple[str, str, float]] = []
    out = webhooks.drain(rt, "hubspot", "contact", "task-1", lambda c, s, d: scheduled.append((c, s, d)))
    assert (out.taken, out.remaining) == (100, 150)
    assert scheduled == [("hubspot", "contact", 0.0)]
    webhooks.drain(rt, "hubspot", "contact", "task-2", lambda c, s, d: None)
    webhooks.drain(rt, "hubspot", "contact", "task-3", lambda c, s, d: None)
    assert sorted(i for batch in fake.read for i in batch) == sorted(ids)
    assert _pending(rt) == []
    assert rt.redis.keys("leadscore:realtime:inflight:*") == []


def test_a_failed_drain_keeps_its_ids_and_its_retry_rescores_the_same_ones(rt: Runtime, fake: FakeAdapter) -> None:
    _queue_ids(rt, ["1", "2", "3"])
    fake.fail.append(RetryLater("429", wait=1.0))
    with pytest.raises(RetryLater):
        webhooks.drain(rt, "hubspot", "contact", "task-1", lambda c, s, d: None)
    _queue_ids(rt, ["4"])  # a new change while the retry waits: it goes to the next drain
    webhooks.drain(rt, "hubspot", "contact", "task-1", lambda c, s, d: None)  # the retry: same task id
    assert fake.read == [["1", "2", "3"]]
    assert _pending(rt) == ["4"]


def test_a_drain_that_gives_up_puts_its_ids_back(rt: Runtime, fake: FakeAdapter) -> None:
    _queue_ids(rt, ["1", "2"])
    fake.fail.append(RetryLater("down"))
    with pytest.raises(RetryLater):
        webhooks.drain(rt, "hubspot", "contact", "task-1", lambda c, s, d: None)
    assert _pending(rt) == []
    webhooks.give_up(rt, "hubspot", "contact", "task-1", put_back=True, why="down")
    assert _pending(rt) == ["1", "2"]
    assert Metrics(rt.redis).value("realtime_requeued", crm="hubspot") == 2


def test_ids_held_by_a_drain_whose_worker_died_return_to_pending(rt: Runtime, fake: FakeAdapter) -> None:
    _queue_ids(rt, ["1", "2"])
    queue = PendingQueue(rt.redis, rt.namespace)
    long_ago = time.time() - webhooks.STALE_INFLIGHT_S - 10
    assert len(queue.take("hubspot", "contact", "dead-task", 100, long_ago)[0]) == 2  # then the worker died
    webhooks.drain(rt, "hubspot", "contact", "task-2", lambda c, s, d: None)
    assert _pending(rt) == []
    assert fake.read == [["1", "2"]]


# --------------------------------------------------------------------------- a burst, against the sandbox


@pytest.mark.slow
def test_a_burst_of_1000_deliveries_rescores_every_contact_once(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from sandbox.server import Sandbox

    with Sandbox.start(contacts=1200, seed=3, hubspot_rate=100_000) as sb:
        runtime = build_runtime(_settings(redis_url, hubspot_base_url=sb.hubspot_url,
                                          hubspot_access_token=sb.hubspot_token,
                                          mappings_dir=fast_mappings(tmp_path)))  # fmt: skip
        try:
            runtime.adapter("hubspot").setup()  # the score properties exist before anything is written
            contacts = [1 + (n * 7) % 1000 for n in range(1000)]  # 1,000 deliveries, some contacts twice
            with TestClient(build_app(lambda: runtime, dispatcher=CeleryDispatcher(redis_url))) as c:
                for n, contact in enumerate(contacts):
                    events = [_event(10_000 + n, contact), _event(50_000 + n, contact, "contact.creation")]
                    resp = _post_hubspot(c, events)
                    assert resp.status_code == 200, resp.text
                distinct = {str(x) for x in contacts}
                assert set(_pending(runtime)) == distinct
                assert 1 <= redis_client.llen(QUEUE) <= 2  # coalesced into (about) one drain
                read = 0
                n = 0
                while _pending(runtime):  # the drains a worker would run
                    n += 1
                    out = webhooks.drain(runtime, "hubspot", "contact", f"drain-{n}", lambda c_, s, d: None)
                    assert out.result is not None
                    assert out.result.failures == []
                    read += out.result.counts["read"]
            assert read == len(distinct)  # each contact rescored exactly once
            with httpx.Client(base_url=sb.hubspot_url, headers={"Authorization": f"Bearer {sb.hubspot_token}"}) as api:
                scored = 0
                ids = sorted(distinct, key=int)
                for i in range(0, len(ids), 100):
                    resp = api.post("/crm/v3/objects/contacts/batch/read", json={
                        "inputs": [{"id": x} for x in ids[i:i + 100]], "properties": ["lead_score", "lead_band"],
                    })  # fmt: skip
                    scored += sum(1 for r in resp.json()["results"] if r["properties"].get("lead_score"))
            assert scored == len(distinct)
        finally:
            runtime.close()


# --------------------------------------------------------------------------- the sandbox's emitter


class Receiver:
    """A stand-in endpoint that answers the statuses it is given, in order, then 200; records what came."""

    def __init__(self, statuses: Sequence[int]) -> None:
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.statuses = list(statuses)
        self.bodies: list[bytes] = []

        async def hook(request: Request) -> Response:
            self.bodies.append(await request.body())
            return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

        self.server = WebServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))
        self.url = f"{self.server.url}/hook"


def _emit(setup: Mapping[str, Any], *calls: Any, **options: Any) -> dict[str, Any]:
    """Configure an emitter, make the calls, wait until it has delivered (or given up); its stats."""
    from sandbox.webhooks import WebhookEmitter

    async def run() -> dict[str, Any]:
        emitter = WebhookEmitter(portal_id=24681357, backoff_s=0.01, window_s=0.01, **options)
        emitter.configure(setup)
        for name, *args in calls:
            getattr(emitter, name)(*args)
        assert await emitter.wait_idle(10)
        stats = emitter.describe()["stats"]
        await emitter.aclose()
        return stats

    return asyncio.run(run())


def test_the_emitter_sends_only_subscribed_properties_so_score_writes_do_not_loop(
    client: TestClient, rt: Runtime
) -> None:
    stats = _emit(
        {"hubspot": {"url": client.hook, "secret": SECRET, "properties": ["jobtitle", "num_conversion_events"]}},
        ("hubspot_contact_changed", "41", {"lead_score": "88", "lead_band": "hot", "hubspot_owner_id": "7"}),
        ("hubspot_contact_changed", "42", {"jobtitle": "CTO"}, {"jobtitle": "CTO"}),  # unchanged: no event
        ("hubspot_contact_changed", "43", {"jobtitle": "CTO", "lead_score": "12"}, {"jobtitle": "Intern"}),
        ("hubspot_engagement_created", "meetings", "50000000001", ["44"]),
    )
    assert stats["events"]["hubspot"] == 2
    assert stats["deliveries"]["hubspot"] >= 1
    assert _pending(rt) == ["43"]
    # a new engagement is a generic object.creation of it (no contact.associationChange): its contacts are
    # looked up when it is drained
    assert _pending(rt, "hubspot", "engagement") == ["meetings:50000000001"]


def test_the_emitter_retries_like_hubspot_and_gives_up_on_refusals() -> None:
    retried = Receiver([503, 500])
    refused = Receiver([401])
    with retried.server, refused.server:
        ok = _emit({"hubspot": {"url": retried.url, "secret": SECRET}}, ("hubspot_contact_created", "1"))
        no = _emit({"hubspot": {"url": refused.url, "secret": SECRET}}, ("hubspot_contact_created", "1"))
    assert [orjson.loads(b)[0]["attemptNumber"] for b in retried.bodies] == [0, 1, 2]
    assert (ok["deliveries"]["hubspot"], ok["failed"]["hubspot"]) == (1, 2)
    assert len(refused.bodies) == 1  # 400, 401, 403, 404 and 405 are not retried
    assert no["given_up"]["hubspot"] == 1


def test_the_emitter_gives_up_after_its_attempts() -> None:
    down = Receiver([500] * 10)
    with down.server:
        stats = _emit({"hubspot": {"url": down.url, "secret": SECRET}}, ("hubspot_contact_created", "1"),
                      max_attempts=3)  # fmt: skip
    assert len(down.bodies) == 3
    assert stats["given_up"]["hubspot"] == 1


def test_the_emitters_outbound_messages_are_acknowledged_by_the_web_app(client: TestClient, rt: Runtime) -> None:
    stats = _emit(
        {"salesforce": {"url": f"{client.hook.rsplit('/', 1)[0]}/salesforce?token={SF_TOKEN}", "org_id": ORG}},
        ("salesforce_record_changed", "Lead", "00Q000000000001AAA", {"Title": "CTO", "Lead_Score__c": 5}),
        ("salesforce_record_changed", "Lead", "00Q000000000002AAA", {"Lead_Score__c": 91, "OwnerId": "005x"}),
        ("salesforce_activity_created", "Task", "00T000000000003AAA", "003000000000003AAA"),
    )
    assert stats["deliveries"]["salesforce"] == 2  # one message per object type
    assert stats["failed"]["salesforce"] == 0
    assert _pending(rt, "salesforce", "Lead") == ["00Q000000000001AAA"]  # the score-only write sent nothing
    assert _pending(rt, "salesforce", "Contact") == ["003000000000003AAA"]


# --------------------------------------------------------------------------- our own Salesforce writes coming back


def _emitter_idle(sb: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the sandbox has delivered (or given up) every Outbound Message; its webhook state."""
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = httpx.get(f"{sb.hubspot_url}/__sandbox__/webhooks", timeout=10).json()
        if state["pending"] == 0:
            return state
        assert time.monotonic() < deadline, f"the sandbox's outbound messages never went out: {state}"
        time.sleep(0.05)


@contextlib.contextmanager
def _salesforce_firing_on_every_edit(
    redis_url: str, tmp_path: Path, sb: Any, **settings: Any
) -> Iterator[Runtime]:
    """A runtime on the sandbox's Salesforce, its web app receiving the Outbound Messages of a workflow rule
    that fires on every edit, our score and owner writes included."""
    runtime = build_runtime(_settings(
        redis_url, mappings_dir=fast_mappings(tmp_path), salesforce_instance_url=sb.salesforce_url,
        salesforce_access_token=sb.salesforce_token, salesforce_ca_bundle=Path(sb.ca_cert), **settings,
    ))  # fmt: skip
    try:
        runtime.adapter("salesforce").setup()  # the score fields, as `leadscore setup` creates them
        with TestClient(build_app(lambda: runtime, dispatcher=CeleryDispatcher(redis_url))) as client:
            fired_by = ["Title", "Status", "OwnerId", "Lead_Score__c", "Lead_Band__c", "Lead_Scored_At__c"]
            setup = httpx.post(f"{sb.hubspot_url}/__sandbox__/webhooks", timeout=10, json={
                "salesforce": {"url": f"{client.hook.rsplit('/', 1)[0]}/salesforce?token={SF_TOKEN}",
                               "org_id": ORG, "fields": fired_by},
            })  # fmt: skip
            assert setup.status_code == 200, setup.text
            yield runtime
    finally:
        runtime.close()


def test_outbound_messages_that_only_echo_our_own_score_writes_are_not_rescored(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from connector import sync
    from sandbox.server import Sandbox

    with (
        Sandbox.start(contacts=60, seed=3) as sb,
        _salesforce_firing_on_every_edit(redis_url, tmp_path, sb) as runtime,
    ):
        # leads that stay below hot (routed hot leads: the next test)
        page = runtime.adapter("salesforce").read_page("Lead", None, since=None).leads
        runtime.adapter("salesforce").load_activities(page, time.time())
        ids = [lead.id for lead in page
               if runtime.model.score(lead.profile, lead.activities, time.time()).band != "hot"][:20]

        result = sync.rescore(runtime, "salesforce", "Lead", ids, time.time())
        echoed = _emitter_idle(sb)["stats"]

        assert result.counts["written"] == len(ids)
        assert echoed["events"]["salesforce"] == len(ids), "every score write fired a notification"
        assert echoed["failed"]["salesforce"] == 0, "and the web app accepted every one"
        assert _pending(runtime, "salesforce", "Lead") == [], "and none of them queued a rescore"

        rep = next(r for r in runtime.adapter("salesforce").list_reps() if r.active)
        tls = ssl.create_default_context(cafile=sb.ca_cert)
        with httpx.Client(base_url=f"{sb.salesforce_url}/services/data/v59.0/sobjects/Lead", verify=tls,
                          headers={"Authorization": f"Bearer {sb.salesforce_token}"}, timeout=10) as api:
            for record_id, change in ((ids[0], {"Title": "Chief Executive Officer"}),
                                      (ids[1], {"OwnerId": rep.id})):  # an admin's hand
                assert api.patch(f"/{record_id}", json=change).status_code == 204
        _emitter_idle(sb)
    assert _pending(runtime, "salesforce", "Lead") == [ids[0]], "a new title is rescored; a new owner is not"


WORKING_HOUR = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC).timestamp()  # a Monday, most reps at work


def _unowned_hot_leads(runtime: Runtime, n: int) -> list[str]:
    """Up to n leads of the sandbox Salesforce's first page that score hot and have no owner yet."""
    adapter = runtime.adapter("salesforce")
    leads = adapter.read_page("Lead", None, since=None).leads
    adapter.load_activities(leads, time.time())
    return [lead.id for lead in leads if lead.owner_id is None
            and runtime.model.score(lead.profile, lead.activities, time.time()).band == "hot"][:n]  # fmt: skip


def test_the_outbound_messages_of_routing_a_hot_lead_are_echoes_too(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Routing sets the owner and creates a task before the score is written: their Outbound Messages are ours too."""
    from connector import sync
    from sandbox.server import Sandbox

    with (
        Sandbox.start(contacts=300, seed=3) as sb,
        _salesforce_firing_on_every_edit(redis_url, tmp_path, sb, routing_at=WORKING_HOUR) as runtime,
    ):
        hot = _unowned_hot_leads(runtime, 10)
        assert len(hot) >= 3, "the sandbox's first page holds unowned hot leads"

        result = sync.rescore(runtime, "salesforce", "Lead", hot, time.time())
        echoed = _emitter_idle(sb)["stats"]
    assert result.counts["assigned"] >= 3, result.counts
    assert echoed["events"]["salesforce"] >= result.counts["written"] + 2 * result.counts["assigned"], (
        "each score write, each owner write and each routing task fired a notification"
    )
    assert echoed["failed"]["salesforce"] == 0
    assert _pending(runtime, "salesforce", "Lead") == [], "none of them queued a rescore"


def test_the_outbound_message_of_a_routing_task_whose_answer_was_lost_is_an_echo_too(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Salesforce stores the task routing creates, and fires its Outbound Message, before the connector has
    the task's id (always, when the answer is lost on the way): the message of a task being created is ours."""
    from connector import sync
    from sandbox.server import Sandbox

    with (
        Sandbox.start(contacts=300, seed=3) as sb,
        _salesforce_firing_on_every_edit(redis_url, tmp_path, sb, routing_at=WORKING_HOUR) as runtime,
    ):
        hot = _unowned_hot_leads(runtime, 3)
        assert hot, "the sandbox's first page holds unowned hot leads"
        tls = ssl.create_default_context(cafile=sb.ca_cert)

        def tasks() -> dict[str, str]:
            soql = "SELECT Id, WhoId FROM Task WHERE WhoId IN ('" + "','".join(hot) + "')"  # noqa: S608 - our own ids
            got = httpx.get(f"{sb.salesforce_url}/services/data/v59.0/query", params={"q": soql}, verify=tls,
                            headers={"Authorization": f"Bearer {sb.salesforce_token}"}).json()  # fmt: skip
            return {t["Id"]: t["WhoId"][:15] for t in got["records"]}

        before = tasks()
        faults = {"drop": 1.0, "only": "POST /services/data/v59.0/sobjects/Task", "max": 1, "timeout_s": 0}
        assert httpx.post(f"{sb.salesforce_url}/__sandbox__/faults", json=faults, verify=tls).status_code == 200
        # the first task stored, its answer lost: routing finds it by its reference, and stores its id
        result = sync.rescore(runtime, "salesforce", "Lead", hot, time.time())
        injected = httpx.get(f"{sb.salesforce_url}/__sandbox__/faults", verify=tls).json()["faults"]["injected"]
        echoed = _emitter_idle(sb)["stats"]
        new = [who for task_id, who in tasks().items() if task_id not in before]
    assert injected == 1
    assert sorted(new) == sorted(i[:15] for i in hot), "one task each, none made twice"
    assert result.counts["assigned"] == len(hot), result.counts
    assert echoed["events"]["salesforce"] >= 2 * len(hot) + len(hot), "the owner and score writes and the tasks fired"
    assert echoed["failed"]["salesforce"] == 0
    assert _pending(runtime, "salesforce", "Lead") == [], "none of them queued a rescore"
