"""The sandbox's webhooks: HubSpot deliveries and Salesforce Outbound Messages, sent like the real CRMs send them.

Configured through `POST /__sandbox__/webhooks` (see `WebhookEmitter.configure`):

    {"hubspot": {"url": "http://127.0.0.1:8000/webhooks/hubspot", "secret": "...",
                 "properties": ["jobtitle", "num_conversion_events", ...]},
     "salesforce": {"url": "http://127.0.0.1:8000/webhooks/salesforce", "org_id": "00D...",
                    "fields": ["Title", "Status", ...]}}

`{}` (or a null target) switches a target off. The servers call the `hubspot_*`
and `salesforce_*` methods where their store changes; when a target is
configured the change becomes an event, else nothing happens.

HubSpot
    Events are gathered for `window_s` (or until 100) and POSTed as one JSON
    array, signed with signature v3 at each attempt (a fresh timestamp). Like
    HubSpot, a delivery is retried on connection errors, timeouts and any
    status except 2xx, 400, 401, 403, 404 and 405 (a 429's Retry-After is
    honoured), with exponential backoff, at most `max_attempts` times; the
    events' `attemptNumber` counts the retries. Up to `concurrency` deliveries
    are in flight at once.
    `contact.propertyChange` is sent only for the subscribed properties and
    only when the value changed: subscribe to what scoring reads, never to the
    score properties the connector writes (a real portal would otherwise call
    the connector back for its own writes, forever). The default list is
    `DEFAULT_HUBSPOT_PROPERTIES`.
    `contact.associationChange` fires only between contacts, companies, deals, tickets, line items
    and products (Developer Changelog, "New subscription types for Webhooks"), never for an
    engagement. A new engagement (email, call, meeting, note) is announced by HubSpot's generic
    (beta) subscription `object.creation`: the engagement's objectTypeId and id, not the contact's
    ("Create generic webhook subscriptions (BETA)").
Salesforce
    One Outbound Message per object type with up to 100 notifications, posted
    as SOAP; only the ACK envelope (`<Ack>true</Ack>`) counts as delivered,
    anything else is retried with backoff, at most `max_attempts` times.
    A Lead or Contact change fires when one of the watched `fields` changed
    (the workflow rule's criteria); by default every field but the score
    fields and OwnerId, which the connector writes (in a real org: disable
    "Send Outbound Messages" on the integration user's profile). Like
    Salesforce's, a notification carries the record's current values of the
    fields selected for the message (`message_fields`, default every field of
    the record; empty ones left out, unverified), not a list of changes. New
    Tasks and Events fire with their WhoId.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.data import ACTIVITY_KINDS
from sandbox.hubspot_ids import ENGAGEMENT_ID_BASE, ENGAGEMENT_KINDS

log = logging.getLogger("leadscore.sandbox.webhooks")

# What scoring reads from a contact: profile fields and activity roll-ups. Not the score properties.
DEFAULT_HUBSPOT_PROPERTIES: frozenset[str] = frozenset(
    {
        "email", "jobtitle", "company", "industry", "numberofemployees", "annualrevenue", "country", "state",
        "city", "lifecyclestage", "hs_lead_status", "hs_lead_source",
        "hs_analytics_num_page_views", "hs_analytics_num_visits", "hs_analytics_last_visit_timestamp",
        "num_conversion_events", "recent_conversion_date", "recent_conversion_event_name",
        "hs_email_open", "hs_email_click", "hs_email_bounce", "hs_email_last_open_date",
        "hs_sales_email_last_replied",
    }
)  # fmt: skip
HUBSPOT_TYPES: frozenset[str] = frozenset(
    {
        "contact.creation", "contact.propertyChange", "contact.deletion", "contact.privacyDeletion",
        "contact.merge", "contact.restore", "contact.associationChange", "object.creation",
    }
)  # fmt: skip
HUBSPOT_NO_RETRY = frozenset({400, 401, 403, 404, 405})
ENGAGEMENT_TYPE_IDS = {"emails": "0-49", "calls": "0-48", "meetings": "0-47", "notes": "0-46"}  # objectTypeId
SALESFORCE_UNWATCHED = frozenset({"OwnerId", "LastModifiedDate", "SystemModstamp", "LastModifiedById"})
SALESFORCE_SCORE_PREFIXES = ("Lead_Score", "Lead_Fit", "Lead_Engagement", "Lead_Band", "Lead_Grade")
HUBSPOT_APP_ID = 1_234_567
# HubSpot signs the URI with these escapes decoded. Kept apart from connector.webhooks on purpose:
# the sandbox plays HubSpot, so a mistake on the connector's side must not be mirrored here.
_SIGNED_URI_DECODE = (
    ("%3A", ":"), ("%2F", "/"), ("%3F", "?"), ("%40", "@"), ("%21", "!"), ("%24", "$"),
    ("%27", "'"), ("%28", "("), ("%29", ")"), ("%2A", "*"), ("%2C", ","), ("%3B", ";"),
)  # fmt: skip
MAX_BATCH = 100


class WebhookConfigError(ValueError):
    """A bad `/__sandbox__/webhooks` body; the message is one sentence."""


@dataclass(frozen=True)
class HubSpotTarget:
    url: str
    secret: str
    properties: frozenset[str] = DEFAULT_HUBSPOT_PROPERTIES
    types: frozenset[str] = HUBSPOT_TYPES


@dataclass(frozen=True)
class SalesforceTarget:
    url: str
    org_id: str
    fields: frozenset[str] | None = None  # None: every field but the connector's own
    message_fields: frozenset[str] | None = None  # what a notification carries; None: every field


@dataclass
class _Delivery:
    crm: str
    items: list[Any]
    attempt: int = 0


@dataclass
class EmitterStats:
    events: dict[str, int] = field(default_factory=lambda: {"hubspot": 0, "salesforce": 0})
    deliveries: dict[str, int] = field(default_factory=lambda: {"hubspot": 0, "salesforce": 0})
    attempts: dict[str, int] = field(default_factory=lambda: {"hubspot": 0, "salesforce": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"hubspot": 0, "salesforce": 0})
    given_up: dict[str, int] = field(default_factory=lambda: {"hubspot": 0, "salesforce": 0})

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "events": dict(self.events),
            "deliveries": dict(self.deliveries),
            "attempts": dict(self.attempts),
            "failed": dict(self.failed),
            "given_up": dict(self.given_up),
        }


class WebhookEmitter:
    """Turns store changes into webhook deliveries; thread-safe, sends from its event loop."""

    def __init__(
        self,
        *,
        portal_id: int = 0,
        org_id: str = "",
        salesforce_url: str = "",
        window_s: float = 0.05,
        max_attempts: int = 5,
        backoff_s: float = 0.25,
        max_backoff_s: float = 5.0,
        concurrency: int = 10,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        verify: bool | str = True,
    ) -> None:
        self.portal_id = portal_id
        self.default_org_id = org_id
        self.salesforce_url = salesforce_url
        self.window_s = window_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.clock = clock
        self.verify = verify
        self.hubspot: HubSpotTarget | None = None
        self.salesforce: SalesforceTarget | None = None
        self.stats = EmitterStats()
        self._lock = threading.Lock()
        self._buffers: dict[str, list[Any]] = {"hubspot": [], "salesforce": []}
        self._ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000 + random.randrange(1000))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._busy = 0  # deliveries being sent or waiting for a retry
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ configuration

    def configure(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a `/__sandbox__/webhooks` body (from inside the sandbox's event loop). Returns the new setup."""
        if not isinstance(spec, Mapping):
            raise WebhookConfigError('send {"hubspot": {"url", "secret"}, "salesforce": {"url", "org_id"}}')
        unknown = set(spec) - {"hubspot", "salesforce"}
        if unknown:
            raise WebhookConfigError(f"unknown keys {sorted(unknown)}: use hubspot and salesforce")
        hubspot = self.hubspot
        salesforce = self.salesforce
        if "hubspot" in spec:
            hubspot = self._hubspot_target(spec["hubspot"])
        if "salesforce" in spec:
            salesforce = self._salesforce_target(spec["salesforce"])
        self._start()
        with self._lock:
            self.hubspot, self.salesforce = hubspot, salesforce
        return self.describe()

    def describe(self) -> dict[str, Any]:
        hs, sf = self.hubspot, self.salesforce
        return {
            "hubspot": None if hs is None else {"url": hs.url, "properties": sorted(hs.properties),
                                                "types": sorted(hs.types)},
            "salesforce": None if sf is None else {
                "url": sf.url, "org_id": sf.org_id, "fields": None if sf.fields is None else sorted(sf.fields),
                "message_fields": None if sf.message_fields is None else sorted(sf.message_fields)},
            "stats": self.stats.as_dict(),
            "pending": self.pending,
        }  # fmt: skip

    @staticmethod
    def _hubspot_target(raw: Any) -> HubSpotTarget | None:
        if raw is None or raw == {}:
            return None
        if not isinstance(raw, Mapping):
            raise WebhookConfigError("hubspot must be an object with url and secret")
        url, secret = raw.get("url"), raw.get("secret")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise WebhookConfigError("hubspot.url must be an http(s) URL")
        if not isinstance(secret, str) or not secret:
            raise WebhookConfigError("hubspot.secret must be the app's client secret (a non-empty string)")
        props = raw.get("properties")
        types = raw.get("types")
        if props is not None and not (isinstance(props, list) and all(isinstance(p, str) for p in props)):
            raise WebhookConfigError("hubspot.properties must be a list of property names")
        if types is not None and not (isinstance(types, list) and set(types) <= HUBSPOT_TYPES):
            raise WebhookConfigError(f"hubspot.types must be a list of {', '.join(sorted(HUBSPOT_TYPES))}")
        return HubSpotTarget(
            url=url,
            secret=secret,
            properties=DEFAULT_HUBSPOT_PROPERTIES if props is None else frozenset(props),
            types=HUBSPOT_TYPES if types is None else frozenset(types),
        )

    def _salesforce_target(self, raw: Any) -> SalesforceTarget | None:
        if raw is None or raw == {}:
            return None
        if not isinstance(raw, Mapping):
            raise WebhookConfigError("salesforce must be an object with url and org_id")
        url = raw.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise WebhookConfigError("salesforce.url must be an http(s) URL")
        org = raw.get("org_id", self.default_org_id)
        if not isinstance(org, str) or not org:
            raise WebhookConfigError("salesforce.org_id must be the org's id")
        fields = raw.get("fields")
        if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
            raise WebhookConfigError("salesforce.fields must be a list of field names")
        carried = raw.get("message_fields")
        if carried is not None and not (isinstance(carried, list) and all(isinstance(f, str) for f in carried)):
            raise WebhookConfigError("salesforce.message_fields must be a list of field names")
        return SalesforceTarget(
            url=url,
            org_id=org,
            fields=None if fields is None else frozenset(fields),
            message_fields=None if carried is None else frozenset(carried),
        )

    # ------------------------------------------------------------------ HubSpot events

    def hubspot_contact_created(self, contact_id: str, at_ms: int | None = None) -> None:
        target = self.hubspot
        if target is not None and "contact.creation" in target.types:
            self._add("hubspot", self._hs_event("contact.creation", contact_id, at_ms, changeSource="CRM_UI"))

    def hubspot_contact_changed(
        self,
        contact_id: str,
        values: Mapping[str, Any],
        before: Mapping[str, Any] | None = None,
        *,
        at_ms: int | None = None,
        source: str = "INTEGRATION",
    ) -> None:
        """Properties written to a contact; one event per subscribed property whose value changed."""
        target = self.hubspot
        if target is None or "contact.propertyChange" not in target.types:
            return
        for name, value in values.items():
            if name not in target.properties:
                continue
            text = "" if value is None else str(value)
            if before is not None and ("" if before.get(name) is None else str(before.get(name))) == text:
                continue
            self._add(
                "hubspot",
                self._hs_event("contact.propertyChange", contact_id, at_ms, propertyName=name, propertyValue=text,
                               changeSource=source),
            )  # fmt: skip

    def hubspot_contact_deleted(self, contact_id: str, *, privacy: bool = False, at_ms: int | None = None) -> None:
        kind = "contact.privacyDeletion" if privacy else "contact.deletion"
        target = self.hubspot
        if target is not None and kind in target.types:
            self._add("hubspot", self._hs_event(kind, contact_id, at_ms, changeSource="CRM_UI"))

    def hubspot_engagement_created(
        self, engagement_type: str, engagement_id: str, contact_ids: Iterable[str] = (), *, at_ms: int | None = None
    ) -> None:
        """A new engagement (already associated with `contact_ids`): a generic `object.creation` of it."""
        del contact_ids  # the event names the engagement only; the receiver reads its associations
        target = self.hubspot
        type_id = ENGAGEMENT_TYPE_IDS.get(engagement_type)
        if target is None or type_id is None or "object.creation" not in target.types:
            return
        self._add("hubspot", self._hs_event("object.creation", engagement_id, at_ms, objectTypeId=type_id,
                                            changeFlag="CREATED", changeSource="CRM_UI"))  # fmt: skip

    def _hs_event(self, kind: str, object_id: str, at_ms: int | None, **extra: Any) -> dict[str, Any]:
        return {
            "eventId": next(self._ids),
            "subscriptionId": 100_000 + sorted(HUBSPOT_TYPES).index(kind),
            "portalId": self.portal_id,
            "appId": HUBSPOT_APP_ID,
            "occurredAt": int(self.clock() * 1000) if at_ms is None else at_ms,
            "subscriptionType": kind,
            "attemptNumber": 0,
            "objectId": int(object_id) if str(object_id).isdigit() else object_id,
            **extra,
        }

    # ------------------------------------------------------------------ Salesforce events

    def salesforce_record_changed(
        self, sobject: str, record_id: str, values: Mapping[str, Any], changed: Iterable[str] | None = None
    ) -> None:
        """A Lead or Contact was created or edited; `changed` names the fields that changed (default: values')."""
        target = self.salesforce
        if target is None or sobject not in ("Lead", "Contact"):
            return
        names = set(values if changed is None else changed)
        if not any(self._watched(target, n) for n in names):
            return
        carried = sorted(values if target.message_fields is None else target.message_fields & set(values))
        current = {k: values[k] for k in carried if k != "Id" and values[k] is not None and values[k] != ""}
        self._add("salesforce", (sobject, {"Id": record_id, **current}))

    def salesforce_activity_created(self, sobject: str, record_id: str, who_id: str | None) -> None:
        target = self.salesforce
        if target is None or sobject not in ("Task", "Event") or not who_id:
            return
        self._add("salesforce", (sobject, {"Id": record_id, "WhoId": who_id}))

    @staticmethod
    def _watched(target: SalesforceTarget, name: str) -> bool:
        if target.fields is not None:
            return name in target.fields
        return name not in SALESFORCE_UNWATCHED and not (
            name.endswith("__c") and name.startswith(SALESFORCE_SCORE_PREFIXES)
        )

    # ------------------------------------------------------------------ sending

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffers["hubspot"]) + len(self._buffers["salesforce"]) + self._busy

    async def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every recorded event was delivered or given up (for tests)."""
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _add(self, crm: str, item: Any) -> None:
        with self._lock:
            self._buffers[crm].append(item)
            self.stats.events[crm] += 1
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _start(self) -> None:
        if self._runner is not None and not self._runner.done():
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(self.concurrency)
        self._client = httpx.AsyncClient(timeout=self.timeout_s, verify=self.verify)
        self._runner = self._loop.create_task(self._run(), name="sandbox-webhooks")
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        assert self._sem is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.window_s)  # let a burst gather into one delivery
            while True:
                batch = self._take()
                if batch is None:
                    break
                await self._sem.acquire()
                task = asyncio.get_running_loop().create_task(self._deliver(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _take(self) -> _Delivery | None:
        with self._lock:
            for crm in ("hubspot", "salesforce"):
                buf = self._buffers[crm]
                if not buf:
                    continue
                if crm == "salesforce":
                    kind = buf[0][0]  # one message per object type
                    mine = [b for b in buf if b[0] == kind][:MAX_BATCH]
                    ids = {id(b) for b in mine}
                    self._buffers[crm] = [b for b in buf if id(b) not in ids]
                else:
                    mine, self._buffers[crm] = buf[:MAX_BATCH], buf[MAX_BATCH:]
                self._busy += 1
                return _Delivery(crm, mine)
        return None

    async def _deliver(self, delivery: _Delivery) -> None:
        assert self._sem is not None
        try:
            while True:
                wait = await self._attempt(delivery)
                if wait is None:
                    return
                delivery.attempt += 1
                if delivery.attempt >= self.max_attempts:
                    self.stats.given_up[delivery.crm] += 1
                    log.warning("webhook delivery given up", extra={"crm": delivery.crm, "events": len(delivery.items)})
                    return
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            raise
        except Exception:  # a sandbox bug must not kill the sender
            log.exception("webhook delivery crashed")
        finally:
            with self._lock:
                self._busy -= 1
            self._sem.release()

    async def _attempt(self, delivery: _Delivery) -> float | None:
        """One attempt; None when done (delivered, or refused for good), else the wait before the next."""
        assert self._client is not None
        backoff = float(min(self.max_backoff_s, self.backoff_s * 2**delivery.attempt)) * (0.75 + random.random() / 2)
        self.stats.attempts[delivery.crm] += 1
        if delivery.crm == "hubspot":
            target = self.hubspot
            if target is None:
                return None
            for event in delivery.items:
                event["attemptNumber"] = delivery.attempt
            body = orjson.dumps(delivery.items)
            ts = int(self.clock() * 1000)
            headers = {
                "Content-Type": "application/json",
                "X-HubSpot-Signature-v3": _sign_v3(target.secret, target.url, body, ts),
                "X-HubSpot-Request-Timestamp": str(ts),
                "X-HubSpot-Signature": hashlib.sha256(target.secret.encode() + body).hexdigest(),
                "X-HubSpot-Signature-Version": "v1",
                "User-Agent": "HubSpot Connect 2.0 (sandbox)",
            }
            try:
                resp = await self._client.post(target.url, content=body, headers=headers)
            except httpx.HTTPError:
                self.stats.failed["hubspot"] += 1
                return backoff
            if 200 <= resp.status_code < 300:
                self.stats.deliveries["hubspot"] += 1
                return None
            self.stats.failed["hubspot"] += 1
            if resp.status_code in HUBSPOT_NO_RETRY:
                self.stats.given_up["hubspot"] += 1
                return None
            retry_after = resp.headers.get("Retry-After", "")
            if resp.status_code == 429 and retry_after.isdigit():
                return min(self.max_backoff_s, float(retry_after))
            return backoff
        sf = self.salesforce
        if sf is None:
            return None
        body = self._soap(sf, delivery.items).encode()
        try:
            resp = await self._client.post(
                sf.url, content=body, headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
            )
        except httpx.HTTPError:
            self.stats.failed["salesforce"] += 1
            return backoff
        if 200 <= resp.status_code < 300 and _acked(resp.text):
            self.stats.deliveries["salesforce"] += 1
            return None
        self.stats.failed["salesforce"] += 1
        return backoff

    def _soap(self, target: SalesforceTarget, items: list[tuple[str, dict[str, Any]]]) -> str:
        kind = items[0][0]
        base = self.salesforce_url or "https://sandbox.invalid"
        notes = []
        for _, values in items:
            fields = "".join(f"<sf:{name}>{escape(_sf_text(value))}</sf:{name}>" for name, value in values.items())
            notes.append(
                f"<Notification><Id>04l{next(self._ids) % 10**15:015d}</Id>"
                f'<sObject xsi:type="sf:{kind}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject>'
                "</Notification>"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            "<soapenv:Body>"
            '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
            f"<OrganizationId>{escape(target.org_id)}</OrganizationId>"
            "<ActionId>04k000000000001AAA</ActionId>"
            '<SessionId xsi:nil="true"/>'
            f"<EnterpriseUrl>{escape(base)}/services/Soap/c/59.0/{escape(target.org_id)}</EnterpriseUrl>"
            f"<PartnerUrl>{escape(base)}/services/Soap/u/59.0/{escape(target.org_id)}</PartnerUrl>"
            + "".join(notes)
            + "</notifications></soapenv:Body></soapenv:Envelope>"
        )

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# --------------------------------------------------------------------------- admin endpoints


def admin_routes(emitter: WebhookEmitter, hubspot_crm: Any = None) -> list[Route]:
    """`POST|GET /__sandbox__/webhooks` (configure, describe) and, given the HubSpot records,
    `POST /__sandbox__/activities` (a person does something: a page view, a form, an email, a meeting...).

    An activity body: `{"contact": "12", "kind": "form_submission", "attrs": {"form_title": "..."}}`
    (`ts_ms` optional, default now). Page views and forms change the contact's roll-up properties and
    fire `contact.propertyChange` for the subscribed ones; emails, calls, meetings and notes are
    engagements and fire a generic `object.creation` of the engagement.
    """

    async def configure(request: Request) -> Response:
        try:
            spec = orjson.loads(await request.body() or b"{}")
            return JSONResponse(emitter.configure(spec))
        except (orjson.JSONDecodeError, WebhookConfigError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def describe(request: Request) -> Response:
        return JSONResponse(emitter.describe())

    async def add_activity(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": 'send {"contact": "id", "kind": "page_view", "attrs": {...}}'}, 400)
        try:
            return JSONResponse(record_hubspot_activity(emitter, hubspot_crm, body), status_code=201)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    routes = [
        Route("/__sandbox__/webhooks", configure, methods=["POST"]),
        Route("/__sandbox__/webhooks", describe, methods=["GET"]),
    ]
    if hubspot_crm is not None:
        routes.append(Route("/__sandbox__/activities", add_activity, methods=["POST"]))
    return routes


def record_hubspot_activity(emitter: WebhookEmitter, crm: Any, body: Mapping[str, Any]) -> dict[str, Any]:
    """Add one activity to a HubSpot contact's person and fire what HubSpot would fire."""
    contact_id = str(body.get("contact", ""))
    key = crm.contact_key(contact_id)
    if key is None or key >= crm.pop.n:
        raise ValueError(f"no generated contact with id {contact_id!r}")
    kind = body.get("kind")
    if kind not in ACTIVITY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ACTIVITY_KINDS)}")
    attrs = body.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise ValueError("attrs must be an object of strings")
    ts_ms = body.get("ts_ms")
    at = int(time.time() * 1000) if ts_ms is None else int(ts_ms)
    before = crm.rollups(key)
    activity = crm.pop.add_activity(key, kind, at, {str(k): str(v) for k, v in attrs.items()})
    crm.write_contact(key, {})  # the contact's lastmodifieddate moves, as in HubSpot
    after = crm.rollups(key)
    emitter.hubspot_contact_changed(contact_id, after, before, at_ms=at, source="ANALYTICS")
    engagement_type = next((t for t, kinds in ENGAGEMENT_KINDS.items() if kind in kinds), None)
    out: dict[str, Any] = {"contact": contact_id, "kind": kind, "ts_ms": at, "activity_id": activity.id}
    if engagement_type is not None:
        engagement_id = str(ENGAGEMENT_ID_BASE + activity.id)
        emitter.hubspot_engagement_created(engagement_type, engagement_id, [contact_id], at_ms=at)
        out["engagement"] = {"type": engagement_type, "id": engagement_id}
    return out


def _sign_v3(secret: str, url: str, body: bytes, ts_ms: int) -> str:
    for encoded, char in _SIGNED_URI_DECODE:
        url = url.replace(encoded, char).replace(encoded.lower(), char)
    digest = hmac.new(secret.encode(), b"POST" + url.encode() + body + str(ts_ms).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _sf_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _acked(text: str) -> bool:
    compact = "".join(text.split())
    return "<Ack>true</Ack>" in compact


__all__ = [
    "DEFAULT_HUBSPOT_PROPERTIES",
    "HubSpotTarget",
    "SalesforceTarget",
    "WebhookConfigError",
    "WebhookEmitter",
    "admin_routes",
    "record_hubspot_activity",
]
