"""Real-time rescoring: webhook deliveries in, coalesced rescores out.

What the web process does with a delivery (connector/web.py) and what the drain
task does with the ids (tasks/realtime.py) live here, so both stay thin.

HubSpot
    Batched JSON deliveries signed with signature v3: base64(HMAC-SHA256(app
    secret, method + URI + body + timestamp)). The URI is the full URL the
    delivery was sent to, with the characters of HubSpot's table decoded
    (`signable_uri`). The timestamp (ms) must be within five minutes of our
    clock in either direction: HubSpot's own SDK only rejects old ones.
Salesforce
    Outbound Messages: a SOAP `notifications` call with up to 100
    `Notification`s, each with its own id. It carries no signature, so the
    endpoint URL configured in the Outbound Message carries a secret
    (`?token=SALESFORCE_WEBHOOK_SECRET`, checked in connector/web.py before the
    body is read); the OrganizationId is also checked against SALESFORCE_ORG_ID
    when that is set.
    Salesforce resends a message until it reads the ACK envelope (`ACK_SOAP`).
    A Lead or Contact notification whose fields scoring reads are as we last
    scored them is an echo of our own write and is ignored (`drop_echoes`,
    connector.echo): the HubSpot path ignores changes of our own properties.

Both CRMs deliver some events more than once. Every event has an id (HubSpot's
`eventId`, Salesforce's notification `Id`); the first delivery claims it in
Redis (`SET NX`, kept `DEDUPE_TTL_S`) and later ones are counted and dropped.

Coalescing
    An accepted event adds its record id to a pending sorted set per (crm,
    stream), scored with the time it was first seen (`ZADD NX`: a burst of
    changes to one contact is one member). The first event that finds no
    drain scheduled sets a marker (`SET NX` with a short TTL) and the caller
    schedules one drain task a moment later. All of that is one Lua call per
    delivery.
Draining
    A drain takes up to `BATCH` ids, oldest first, into an in-flight set named
    after its task id, and calls `connector.sync.rescore`: the same service as
    the batch sync. It removes the in-flight set only after success. A task
    that is retried or redelivered (acks_late) has the same id and finds its
    in-flight set again, so it retries the same ids; a task that gives up puts
    them back in the pending set. In-flight sets older than `STALE_INFLIGHT_S`
    (a worker died and its message never came back) go back to pending at the
    next drain. When more ids are pending after a take, the drain schedules
    the next one at once, so several workers share a large burst.

New engagements
    A generic `object.creation` of a call, email, meeting or note (HubSpot's beta generic
    subscriptions) queues "type:id" in the `engagement` stream; its drain reads the contacts each
    engagement is associated with and rescores them. Without that subscription, a new engagement
    reaches the score at the next incremental sync.
Deletions
    `contact.deletion` and `contact.privacyDeletion` purge what we keep about
    the contact (`purge_record`): routing records, pending assignments, its
    place in the pending sets, and the lines naming it in run failure lists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from connector.bootstrap import Runtime
from connector.domain import CrmName
from connector.metrics import Metrics
from connector.redisutil import text as _text
from connector.runs import PageResult

log = logging.getLogger("leadscore.webhooks")

DEDUPE_TTL_S = 7 * 86400  # HubSpot retries for a day or more, Salesforce for 24 hours
SIGNATURE_WINDOW_MS = 5 * 60 * 1000
SCHEDULE_DELAY_S = 0.5  # how long a burst may gather before its drain runs
SCHEDULED_TTL_S = 30  # a lost drain message blocks new ones for at most this long
BATCH = 100  # ids per rescore: HubSpot's batch read limit
INFLIGHT_TTL_S = 2 * 86400
STALE_INFLIGHT_S = 3600  # longer than the broker's visibility timeout: the task is not coming back
MAX_BODY_BYTES = 4 * 1024 * 1024

HUBSPOT_SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
HUBSPOT_TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"

# The URI HubSpot signs has these escapes decoded (the query's own "?" is never encoded).
_URI_DECODE = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
_URI_ESCAPE = re.compile("|".join(_URI_DECODE), re.IGNORECASE)

RESCORE_TYPES = frozenset(
    {"contact.creation", "contact.propertyChange", "contact.merge", "contact.restore", "contact.associationChange"}
)
PURGE_TYPES = frozenset({"contact.deletion", "contact.privacyDeletion"})

# A new engagement on a contact: `contact.associationChange` does not announce one (it fires between
# contacts, companies, deals, tickets, line items and products only: Developer Changelog, "New
# subscription types for Webhooks"). HubSpot's generic webhook subscriptions (BETA since 2024-08:
# "Public Beta: Generic Webhook Subscriptions", "Create generic webhook subscriptions (BETA)") send
# `object.creation` with the engagement's objectTypeId and id; the drain reads which contacts it is
# associated with and rescores those. Object type ids of the engagements scoring reads:
ENGAGEMENT_TYPE_IDS = {"0-46": "notes", "0-47": "meetings", "0-48": "calls", "0-49": "emails"}
ENGAGEMENTS = "engagement"  # the pending stream of new engagements ("calls:123", ...), resolved to contacts

OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"

ACK_SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}">'
    "<soapenv:Body>"
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body>"
    "</soapenv:Envelope>"
)

# Salesforce id prefixes of the records a Task or Event can point at with WhoId.
WHO_PREFIXES = {"00Q": "Lead", "003": "Contact"}


class Rejected(Exception):
    """A delivery we refuse; `status` is the HTTP answer, the message one sentence."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- HubSpot signature v3


def signable_uri(uri: str) -> str:
    """The URI as HubSpot signs it: the escapes of its table decoded, everything else as sent."""
    return _URI_ESCAPE.sub(lambda m: _URI_DECODE[m.group(0).upper()], uri)


def sign_hubspot_v3(secret: str, method: str, uri: str, body: bytes, timestamp_ms: int | str) -> str:
    """X-HubSpot-Signature-v3 for a request (the sandbox's emitter signs with this too)."""
    message = method.upper().encode() + signable_uri(uri).encode() + body + str(timestamp_ms).encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_hubspot_v3(
    secret: str,
    method: str,
    uri: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
) -> None:
    """Raise `Rejected` (401) unless the signature and a timestamp within five minutes both hold."""
    if not signature or not timestamp:
        raise Rejected(401, "unsigned", f"missing {HUBSPOT_SIGNATURE_HEADER} or {HUBSPOT_TIMESTAMP_HEADER} header.")
    ts = timestamp.strip()
    if not ts.isdigit() or len(ts) > 16:
        raise Rejected(401, "timestamp", f"{HUBSPOT_TIMESTAMP_HEADER} is not a time in milliseconds.")
    if abs(now * 1000 - int(ts)) > SIGNATURE_WINDOW_MS:
        raise Rejected(401, "timestamp", "the request timestamp is more than five minutes away from our clock.")
    expected = sign_hubspot_v3(secret, method, uri, body, ts)
    if not hmac.compare_digest(expected.encode("ascii"), signature.strip().encode("utf-8", "replace")):
        raise Rejected(401, "signature", "the signature does not match the request.")


# --------------------------------------------------------------------------- what a delivery asks for


@dataclass
class Intake:
    """The events of one delivery, each with its dedupe id and what it asks for."""

    crm: CrmName
    # (event id, stream, record id): a rescore of that record
    rescores: list[tuple[str, str, str]] = field(default_factory=list)
    # (event id, lead key): purge everything kept about that record
    purges: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    # event id -> the field values a Salesforce Outbound Message delivered with its record
    values: dict[str, dict[str, str | None]] = field(default_factory=dict)
    # event id -> the id of the Task or Event a Salesforce Outbound Message announced (rescores its WhoId)
    activities: dict[str, str] = field(default_factory=dict)


def parse_hubspot_delivery(body: bytes, ignored_properties: Iterable[str] = ()) -> Intake:
    """A HubSpot delivery (a JSON array of events) as rescores and purges.

    Changes of `ignored_properties` (the score properties the connector writes
    itself) are ignored, so a portal subscribed to them cannot start a loop.
    """
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Rejected(400, "malformed", "the body is not JSON.") from None
    if not isinstance(events, list):
        raise Rejected(400, "malformed", "the body is not a JSON array of events.")
    skip = set(ignored_properties)
    intake = Intake("hubspot")
    for event in events:
        if not isinstance(event, dict):
            intake.ignored += 1
            continue
        kind = str(event.get("subscriptionType") or "")
        event_id = _id(event.get("eventId"))
        object_id = _id(event.get("objectId"))
        if event_id is None:
            intake.ignored += 1
            continue
        if kind in PURGE_TYPES and object_id:
            intake.purges.append((event_id, f"hubspot:contact:{object_id}"))
        elif kind == "contact.merge":
            primary = _id(event.get("primaryObjectId")) or _id(event.get("newObjectId")) or object_id
            if primary:
                intake.rescores.append((event_id, "contact", primary))
            merged = event.get("mergedObjectIds") or []
            for n, gone in enumerate(merged if isinstance(merged, list) else []):
                gone_id = _id(gone)
                if gone_id and gone_id != primary:
                    intake.purges.append((f"{event_id}:merged:{n}", f"hubspot:contact:{gone_id}"))
        elif kind == "contact.associationChange":
            contact = _id(event.get("fromObjectId")) or object_id
            if contact:
                intake.rescores.append((event_id, "contact", contact))
            else:
                intake.ignored += 1
        elif kind == "object.creation" and object_id and str(event.get("objectTypeId")) in ENGAGEMENT_TYPE_IDS:
            engagement_type = ENGAGEMENT_TYPE_IDS[str(event.get("objectTypeId"))]
            intake.rescores.append((event_id, ENGAGEMENTS, f"{engagement_type}:{object_id}"))
        elif kind == "object.creation" and object_id and str(event.get("objectTypeId")) == "0-1":
            intake.rescores.append((event_id, "contact", object_id))
        elif kind in RESCORE_TYPES and object_id:
            if kind == "contact.propertyChange" and str(event.get("propertyName") or "") in skip:
                intake.ignored += 1
            else:
                intake.rescores.append((event_id, "contact", object_id))
        else:
            intake.ignored += 1
    return intake


def _id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    return text if text and len(text) <= 64 and text.replace("-", "").isalnum() else None


# --------------------------------------------------------------------------- Salesforce outbound messages


@dataclass
class OutboundMessage:
    organization_id: str
    intake: Intake


def parse_outbound_message(body: bytes) -> OutboundMessage:
    """Parse a Salesforce Outbound Message (SOAP). DOCTYPEs (and so entities) are refused unparsed."""
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in body.lower():
        raise Rejected(400, "malformed", "document type declarations are not accepted.")
    try:
        root = ET.fromstring(body)  # noqa: S314 - no DOCTYPE, so no entity can be declared or expanded
    except ET.ParseError:
        raise Rejected(400, "malformed", "the body is not well-formed XML.") from None
    notifications = root.find(f".//{{{OUTBOUND_NS}}}notifications")
    if notifications is None:
        raise Rejected(400, "malformed", "the body is not a Salesforce outbound message (no notifications element).")
    org = (notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
    if not org:
        raise Rejected(400, "malformed", "the outbound message has no OrganizationId.")
    intake = Intake("salesforce")
    for note in notifications.findall(f"{{{OUTBOUND_NS}}}Notification"):
        note_id = _id(note.findtext(f"{{{OUTBOUND_NS}}}Id"))
        sobject = note.find(f"{{{OUTBOUND_NS}}}sObject")
        if note_id is None or sobject is None:
            intake.ignored += 1
            continue
        kind = (sobject.get(f"{{{XSI_NS}}}type") or "").rpartition(":")[2]
        record_id = _id(sobject.findtext(f"{{{SOBJECT_NS}}}Id"))
        if kind in ("Lead", "Contact") and record_id:
            intake.rescores.append((note_id, kind, record_id))
            intake.values[note_id] = {
                child.tag.rpartition("}")[2]: None if child.get(f"{{{XSI_NS}}}nil") == "true" else (child.text or "")
                for child in sobject
                if child.tag.startswith(f"{{{SOBJECT_NS}}}")
            }
        elif kind in ("Task", "Event"):
            who = _id(sobject.findtext(f"{{{SOBJECT_NS}}}WhoId"))
            stream = WHO_PREFIXES.get(who[:3]) if who else None
            if who and stream:
                intake.rescores.append((note_id, stream, who))
                if record_id:
                    intake.activities[note_id] = record_id
            else:
                intake.ignored += 1
        else:
            intake.ignored += 1
    return OutboundMessage(org, intake)


def drop_echoes(rt: Runtime, intake: Intake) -> Intake:
    """Count as ignored the Lead and Contact notifications whose scoring fields are as we last scored them.

    Our own score writes (and owner changes) fire the org's Outbound Messages; see connector.echo.
    """
    echo = rt.echo_filter
    if echo is None or not (intake.values or intake.activities):
        return intake
    kept: list[tuple[str, str, str]] = []
    for stream in ("Lead", "Contact"):
        mine = [(e, s, r) for e, s, r in intake.rescores if s == stream and e in intake.values]
        flags = echo.echoes(stream, [(r, intake.values[e]) for e, _, r in mine])
        dropped = {e for (e, _, _), echoed in zip(mine, flags, strict=True) if echoed}
        intake.ignored += len(dropped)
        kept += [x for x in mine if x[0] not in dropped]
    # Tasks and Events: rescored, but for the task routing created itself (its owner write's twin)
    tasks = [x for x in intake.rescores if x[0] not in intake.values]
    ours = rt.router.created_tasks(
        [(f"salesforce:{s}:{r}", intake.activities.get(e, "")) for e, s, r in tasks]
    ) if tasks else []  # fmt: skip
    intake.ignored += sum(ours)
    kept += [x for x, own in zip(tasks, ours, strict=True) if not own]
    intake.rescores = sorted(kept, key=intake.rescores.index)
    return intake


def same_org(configured: str, given: str) -> bool:
    """Salesforce ids come in 15 (case-sensitive) and 18 character forms: compare the first 15."""
    return configured[:15] == given[:15] and (len(configured) != len(given) or configured == given)


def soap_fault(message: str, code: str = "soapenv:Client") -> str:
    safe = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>{code}</faultcode><faultstring>{safe}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


# --------------------------------------------------------------------------- the pending queue in Redis

# KEYS: triplets (dedupe key, pending zset, scheduled marker), one per event.
# ARGV: dedupe ttl s, marker ttl ms, now, then one member per event ('' = claim only).
# Returns one flag per event: 0 duplicate, 1 accepted, 2 accepted and a drain must be scheduled.
_ACCEPT = """
local out = {}
local n = #ARGV - 3
for i = 1, n do
  local member = ARGV[3 + i]
  if redis.call('SET', KEYS[3 * i - 2], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
    out[i] = 0
  elseif member == '' then
    out[i] = 1
  else
    redis.call('ZADD', KEYS[3 * i - 1], 'NX', tonumber(ARGV[3]), member)
    if redis.call('SET', KEYS[3 * i], '1', 'NX', 'PX', tonumber(ARGV[2])) then
      out[i] = 2
    else
      out[i] = 1
    end
  end
end
return out
"""

# KEYS: pending zset, in-flight zset of this token, in-flight index, scheduled marker.
# ARGV: n, now, token, ttl. A token seen before (a retry or redelivery) gets its own ids back.
# Returns {ids..., remaining pending} flattened as {remaining, id, score, id, score, ...}.
_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  local held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  table.insert(held, 1, redis.call('ZCARD', KEYS[1]))
  return held
end
redis.call('DEL', KEYS[4])
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
if #popped > 0 then
  for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[2], popped[i + 1], popped[i])
  end
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
  redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[3])
end
table.insert(popped, 1, redis.call('ZCARD', KEYS[1]))
return popped
"""

# KEYS: pending zset, in-flight zset, in-flight index. ARGV: token, back ('1': put the ids back).
_FINISH = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZUNIONSTORE', KEYS[1], 2, KEYS[1], KEYS[2], 'AGGREGATE', 'MIN')
end
local n = redis.call('ZCARD', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""


Scheduler = Callable[[CrmName, str, float], None]


class PendingQueue:
    """Pending record ids per (crm, stream), in Redis; see the module docstring."""

    def __init__(self, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.r = client
        self.ns = namespace
        self._accept = client.register_script(_ACCEPT)
        self._take = client.register_script(_TAKE)
        self._finish = client.register_script(_FINISH)

    # keys
    def dedupe_key(self, crm: str, event_id: str) -> str:
        return f"{self.ns}:webhook:seen:{crm}:{event_id}"

    def pending_key(self, crm: str, stream: str) -> str:
        return f"{self.ns}:realtime:pending:{crm}:{stream}"

    def scheduled_key(self, crm: str, stream: str) -> str:
        return f"{self.ns}:realtime:scheduled:{crm}:{stream}"

    def inflight_key(self, crm: str, stream: str, token: str) -> str:
        return f"{self.ns}:realtime:inflight:{crm}:{stream}:{token}"

    def inflight_index(self, crm: str, stream: str) -> str:
        return f"{self.ns}:realtime:inflight:{crm}:{stream}"

    # the web side
    def accept(self, crm: str, items: Sequence[tuple[str, str | None, str]], now: float) -> list[int]:
        """Claim each (event id, stream, record id) and queue the record; stream None: claim only.

        Returns one flag per item: 0 a duplicate, 1 accepted, 2 accepted and a drain must be scheduled.
        """
        if not items:
            return []
        keys: list[str] = []
        members: list[str] = []
        for event_id, stream, record_id in items:
            keys.append(self.dedupe_key(crm, event_id))
            if stream is None:
                keys += [keys[-1], keys[-1]]
                members.append("")
            else:
                keys += [self.pending_key(crm, stream), self.scheduled_key(crm, stream)]
                members.append(record_id)
        flags = self._accept(keys=keys, args=[DEDUPE_TTL_S, SCHEDULED_TTL_S * 1000, repr(now), *members])
        return [int(f) for f in flags]

    def unclaim(self, crm: str, event_ids: Iterable[str], streams: Iterable[str] = ()) -> None:
        """Forget claims (and scheduled markers) so the CRM's retry of a delivery we failed is accepted."""
        keys = [self.dedupe_key(crm, e) for e in event_ids] + [self.scheduled_key(crm, s) for s in streams]
        if keys:
            self.r.delete(*keys)

    def mark_scheduled(self, crm: str, stream: str) -> bool:
        """True when no drain was scheduled and the caller must schedule one now."""
        return bool(self.r.set(self.scheduled_key(crm, stream), "1", nx=True, px=SCHEDULED_TTL_S * 1000))

    def pending(self, crm: str, stream: str) -> int:
        return int(self.r.zcard(self.pending_key(crm, stream)))

    def pending_ids(self, crm: str, stream: str) -> list[str]:
        return [_text(x) for x in self.r.zrange(self.pending_key(crm, stream), 0, -1)]  # type: ignore[union-attr]

    # the drain side
    def take(self, crm: str, stream: str, token: str, n: int, now: float) -> tuple[list[tuple[str, float]], int]:
        """Up to n (id, first seen) into the token's in-flight set, or the ones it already holds; + pending left."""
        self._recover_stale(crm, stream, now)
        raw = self._take(
            keys=[
                self.pending_key(crm, stream),
                self.inflight_key(crm, stream, token),
                self.inflight_index(crm, stream),
                self.scheduled_key(crm, stream),
            ],
            args=[n, repr(now), token, INFLIGHT_TTL_S],
        )
        remaining = int(raw[0])
        pairs = [(_text(raw[i]), float(_text(raw[i + 1]))) for i in range(1, len(raw), 2)]
        return pairs, remaining

    def finish(self, crm: str, stream: str, token: str, *, put_back: bool = False) -> int:
        """Drop the token's in-flight ids (done), or put them back in the pending set. Returns how many."""
        keys = [self.pending_key(crm, stream), self.inflight_key(crm, stream, token), self.inflight_index(crm, stream)]
        return int(self._finish(keys=keys, args=[token, "1" if put_back else "0"]))

    def _recover_stale(self, crm: str, stream: str, now: float) -> None:
        stale = self.r.zrangebyscore(self.inflight_index(crm, stream), "-inf", now - STALE_INFLIGHT_S, 0, 20)
        for token in stale:  # type: ignore[union-attr]
            moved = self.finish(crm, stream, _text(token), put_back=True)
            log.warning(
                "stale in-flight ids put back",
                extra={"event": "realtime_recovered", "crm": crm, "stream": stream, "ids": moved},
            )

    def forget(self, crm: str, stream: str, record_id: str) -> None:
        """Remove a record id from the stream's pending set and from every in-flight set (it was deleted)."""
        tokens = [_text(t) for t in self.r.zrange(self.inflight_index(crm, stream), 0, -1)]  # type: ignore[union-attr]
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.pending_key(crm, stream), record_id)
        for token in tokens:
            pipe.zrem(self.inflight_key(crm, stream, token), record_id)
        pipe.execute()


# --------------------------------------------------------------------------- the drain (called by the task)


@dataclass(frozen=True)
class Drained:
    taken: int
    result: PageResult | None
    remaining: int


def drain(
    rt: Runtime,
    crm: CrmName,
    stream: str,
    token: str,
    schedule: Scheduler,
    *,
    now: float | None = None,
    batch: int = BATCH,
) -> Drained:
    """Rescore up to `batch` pending ids of (crm, stream) through `connector.sync.rescore`.

    `token` names the in-flight set (the task id): a retry with the same token
    rescores the same ids. Raises whatever the rescore raised; the ids stay in
    flight until `give_up` or a successful retry.
    """
    from connector import sync  # the service; imported here so the web process need not load the engine

    started = time.time()
    now = started if now is None else now
    queue = PendingQueue(rt.redis, rt.namespace)
    pairs, remaining = queue.take(crm, stream, token, batch, started)
    if remaining and queue.mark_scheduled(crm, stream):
        try:
            schedule(crm, stream, 0.0)
        except Exception:  # the ids stay pending; the next webhook schedules their drain
            queue.unclaim(crm, (), [stream])
            log.exception("could not schedule the next drain", extra={"event": "realtime_schedule_failed"})
    if not pairs:
        return Drained(0, None, remaining)
    ids = [record_id for record_id, _ in pairs]
    if stream == ENGAGEMENTS:
        # new engagements: rescore the contacts they are associated with
        adapter = rt.adapter(crm)
        resolve = getattr(adapter, "contacts_of_engagements", None)
        ids = resolve(ids) if resolve is not None else []
        result = sync.rescore(rt, crm, "contact", ids, now) if ids else PageResult()
    else:
        result = sync.rescore(rt, crm, stream, ids, now)
    queue.finish(crm, stream, token)
    done = time.time()
    metrics = Metrics(rt.redis, rt.namespace)
    metrics.incr("realtime_rescored", result.counts.get("read", 0), crm=crm)
    metrics.incr("records_scored", result.counts.get("scored", 0), crm=crm, path="realtime")
    metrics.incr("records_written", result.counts.get("written", 0), crm=crm, path="realtime")
    metrics.incr("api_calls", result.counts.get("api_calls", 0), crm=crm)
    for _, first_seen in pairs:
        metrics.observe("realtime_lag_seconds", done - first_seen, crm=crm)
    log.info(
        "rescored",
        extra={
            "event": "realtime_rescored",
            "crm": crm,
            "stream": stream,
            "ids": len(ids),
            "remaining": remaining,
            **{k: v for k, v in result.counts.items() if v},
        },
    )
    return Drained(len(ids), result, remaining)


def give_up(rt: Runtime, crm: CrmName, stream: str, token: str, *, put_back: bool, why: str) -> int:
    """A drain failed for good: put its ids back for the next drain, or drop them. Returns how many."""
    n = PendingQueue(rt.redis, rt.namespace).finish(crm, stream, token, put_back=put_back)
    Metrics(rt.redis, rt.namespace).incr("realtime_requeued" if put_back else "realtime_dropped", n, crm=crm)
    log.warning(
        "drain gave up",
        extra={"event": "realtime_gave_up", "crm": crm, "stream": stream, "ids": n, "requeued": put_back, "why": why},
    )
    return n


# --------------------------------------------------------------------------- purge


def purge_record(rt: Runtime, lead_key: str) -> int:
    """Delete what we keep about one record, found by its lead key ("hubspot:contact:123"). Returns items removed.

    Nothing is searched for: the keys come from the lead's index (see
    connector/routing/keys.py) and from names derived from the lead key.

    - routing's keys about the lead (episodes, pending assignments, routing record,
      lock, notification outbox entries) and the notification claims made for it: deleted;
    - its entries in the SLA schedule ("lead key|episode") and in the outbox's retry
      schedule: removed;
    - the record's id in its stream's real-time pending and in-flight sets;
    - a Salesforce record's fingerprint kept to tell echoes of our own writes;
    - run failure lines about the record in the recent runs (they name ids only, no
      personal data, but they name this one); older runs expire within a week.
    """
    from connector.notify import DEDUPE_PREFIX
    from connector.routing.keys import index_key, index_older_keys

    crm, _, rest = lead_key.partition(":")
    stream, _, record_id = rest.partition(":")
    if not crm or not stream or not record_id:
        raise ValueError(f"{lead_key!r} is not a lead key such as hubspot:contact:123")
    r = rt.redis
    prefix = f"{rt.namespace}:routing:"
    notify = sorted({DEDUPE_PREFIX, f"{rt.namespace}:notify:"})
    failure_lists = f"{prefix}failure-lists"
    index_older_keys(r, prefix, notify, f"{rt.namespace}:run:*:failures", failure_lists)  # once per Redis
    index = index_key(prefix, lead_key)
    listed = {_text(k) for k in r.smembers(index)}  # type: ignore[union-attr]
    episode = f"{prefix}episode:{lead_key}"
    ep = {_text(k): _text(v) for k, v in r.hgetall(episode).items()}  # type: ignore[union-attr]
    # Keys an index may have missed (written before indexes, or the index lost): their names are known.
    known = {f"{prefix}{family}:{lead_key}" for family in ("record", "episode", "lock")}
    episodes = [str(n) for n in range(1, int(ep.get("n", "0") or 0) + 1)] + ([ep["last"]] if "last" in ep else [])
    known |= {f"{prefix}pending:{lead_key}|{e}" for e in episodes}
    names = sorted(listed | known)
    pending, outbox = f"{prefix}pending:", f"{prefix}outbox:"
    members = [n.removeprefix(pending) for n in names if n.startswith(pending)]
    entries = [n.removeprefix(outbox) for n in names if n.startswith(outbox)]
    pipe = r.pipeline(transaction=False)
    pipe.delete(*names, index)
    if members:
        pipe.zrem(f"{prefix}sla", *members)
    if entries:
        pipe.zrem(f"{prefix}outbox", *entries)  # notifications still to be retried
    touched = sum(int(x) for x in pipe.execute())
    PendingQueue(r, rt.namespace).forget(crm, stream, record_id)
    if crm == "salesforce" and rt.echo_filter is not None:
        touched += rt.echo_filter.forget(stream, record_id)
    runs = {_text(x) for x in r.lrange(f"{rt.namespace}:runs:{crm}", 0, -1)}  # type: ignore[union-attr]
    lists = {f"{rt.namespace}:run:{run}:failures" for run in runs}
    older = {_text(x) for x in r.smembers(failure_lists)}  # type: ignore[union-attr]
    for key in sorted(lists | older):
        if key in older and not r.exists(key):
            r.srem(failure_lists, key)  # that run has expired
            continue
        touched += _purge_list(r, key, lead_key)
    log.info("record purged", extra={"event": "record_purged", "record": lead_key, "items": touched})
    return touched


def _purge_list(r: redis.Redis, key: str, lead_key: str) -> int:
    removed = 0
    for line in {_text(x) for x in r.lrange(key, 0, -1)}:  # type: ignore[union-attr]
        if _names(line, lead_key):
            removed += int(r.lrem(key, 0, line))
    return removed


def _names(text: str, lead_key: str) -> bool:
    """Whether `text` names exactly this lead key (so hubspot:contact:12 does not match ...:123)."""
    start = 0
    while (at := text.find(lead_key, start)) >= 0:
        end = at + len(lead_key)
        if (end == len(text) or not text[end].isalnum()) and (at == 0 or not text[at - 1].isalnum()):
            return True
        start = end
    return False




def score_properties(rt: Runtime) -> frozenset[str]:
    """The HubSpot properties the connector writes (their changes are never a reason to rescore)."""
    from connector.mappings.hubspot import DEFAULT_WRITE

    names = set(DEFAULT_WRITE.values())
    path = rt.mappings_dir / "hubspot.yaml"
    if path.is_file():
        try:
            from connector.mappings.hubspot import load_hubspot_mapping

            names |= set(load_hubspot_mapping(path).write.values())
        except Exception:  # noqa: BLE001 - a broken mapping is `leadscore check`'s to report; keep the defaults
            log.warning("hubspot mapping unreadable; ignoring default score properties only")
    return frozenset(names)


__all__ = [
    "ACK_SOAP",
    "BATCH",
    "DEDUPE_TTL_S",
    "Drained",
    "Intake",
    "OutboundMessage",
    "PendingQueue",
    "Rejected",
    "drain",
    "drop_echoes",
    "give_up",
    "parse_hubspot_delivery",
    "parse_outbound_message",
    "purge_record",
    "same_org",
    "score_properties",
    "sign_hubspot_v3",
    "signable_uri",
    "verify_hubspot_v3",
]
