"""The HubSpot adapter: contacts, their activities and owners in the engine's vocabulary, scores back.

Built on `connector.crm.hubspot_http.HubSpotTransport` (the official SDK's API
objects built once, the portal's shared quotas, the one error table and the
one retry policy). Everything vendor-shaped stays in this module and in
mappings/hubspot.yaml; the pipeline sees `Lead`, `Activity`, `Rep`.

Calls per sync page of 1,000 contacts in a full sync (LIST_PAGES_PER_READ list calls of 100): one v4
association batch read per engagement type mapped (4), one batch read per 100 engagements of each
type, for web activity either nothing (roll-ups, read with the contacts) or the events of the whole
portal read in bulk once and shared through Redis (hubspot_events.WebEventStore: about one call per
100 events of the look-back, then per 100 new ones), one batch update per 100 changed scores, and
for the page's new hot leads one owner re-read, one owner write and one task creation per 100
(Router.assign_hot_leads). About 133 calls per 1,000 contacts on the generated sandbox
(bench/sync.py); an incremental sync costs what changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import orjson
import redis

from connector.crm.base import (
    CallCounter,
    LeadOutcome,
    OpenTask,
    Page,
    TaskToCreate,
    WriteReport,
    task_ref_in,
    write_with_record_retries,
)
from connector.crm.hubspot_events import FRESH_S, EventsRefused, WebEventStore, without_addresses
from connector.crm.hubspot_events import iso_ms as events_iso
from connector.crm.hubspot_http import ApiError, HubSpotTransport, Response, parse_associations
from connector.crm.limits import DEFAULT_POLICY, RetryPolicy, in_bulk, keeping_priority
from connector.crm.times import parse_time
from connector.domain import WRITE_FIELDS, Activity, CrmName, Lead, Rep
from connector.errors import RecordError, RetryLater, StopSync, UserError
from connector.mappings.custom import HUBSPOT_TYPES, normalise
from connector.mappings.hubspot import EngagementRule, EventRule, HubSpotMapping
from connector.mappings.outcomes import HubSpotOutcomes, combine, lifecycle_date_property

log = logging.getLogger(__name__)

LIST_LIMIT = 100  # list endpoint page size (the API's maximum)
SEARCH_LIMIT = 200  # search page size (the API's maximum)
SEARCH_CAP = 10_000  # search answers 400 beyond this many results per query
BATCH = 100  # batch read/update inputs per call
# Calls spent finding the record whose value HubSpot refused in a batch it turned down as a whole
# (a 400 says what, not whose): one bad record of 100 takes 14 (two per halving), so two or three
# are found; past this the rest of the batch is reported unwritten instead of costing more calls.
ISOLATION_CALLS = 32
ASSOC_BATCH = 1000  # v4 association batch read inputs per call (HubSpot's limit since 2025)
EVENT_READERS = 8
EVENTS_LIMIT = 100
# A full sync reads this many list pages (of 100) into one sync page: 1,000 contacts, what one v4
# association batch read takes, so their engagements cost one association call per type, not ten.
LIST_PAGES_PER_READ = 10
# At most this many contacts (a webhook's rescore) get their web events up to the moment: from the
# shared bulk read (WebEventStore) brought up to date, or one call each while it does not cover the
# look-back yet.
PER_CONTACT_EVENTS_MAX = 20
CHANGED_PAGE = 100  # contacts with new web events read per incremental sync page (one batch read)
CHANGED_FRESH_S = 0.0  # the first such page reads the web events up to its own time
SEARCHED_TTL_S = 86400  # ids an incremental stream's search returned, kept for its web events part
# Our score writes' modification times per contact (see _remember_writes), in this many Redis hashes,
# each kept this long after its last write (longer than incremental syncs are apart).
WRITTEN_BUCKETS = 1024
WRITTEN_TTL_S = 3 * 86400
TIE_OFFSET = 20  # beyond this many records sharing one timestamp, page by offset instead of by id
# Roll-up and gate properties of contacts just read (_extra), for the load_activities that follows each
# read in the same task thread (a sync page, a retry batch, a webhook's rescore): two list reads' worth. It was
# 20,000, which held every contact a pool child had read (about 360 bytes each, 7 MB when full) and
# made the pool child's RSS grow with the portal for no reuse: a full sync never reads a contact twice.
CACHE_SIZE = 2 * LIST_LIMIT * LIST_PAGES_PER_READ
# The events API is Enterprise-only (events.json: x-hubspot-product-tier-requirements ENTERPRISE); on other
# tiers it answers 403. Once refused, web activity comes from roll-ups, and the API is asked again this long
# after (a portal may upgrade). Workers share the refusal through Redis and look at it this often.
EVENTS_RECHECK_S = 6 * 3600
EVENTS_FLAG_CACHE_S = 30.0

CONTACT_TYPE_ID = "0-1"
TASK_TO_CONTACT = 204
ACTED_TYPES = ("calls", "emails", "meetings", "notes")

# What `setup` creates: engine field -> (type, fieldType, label, options)
PROPERTY_SPECS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "score": ("number", "number", "Lead score", ()),
    "fit": ("number", "number", "Lead fit score", ()),
    "engagement": ("number", "number", "Lead engagement score", ()),
    "band": ("enumeration", "select", "Lead band", ("cold", "warm", "hot")),
    "grade": ("enumeration", "select", "Lead grade", ("A", "B", "C", "D")),
    "reasons": ("string", "textarea", "Lead score reasons", ()),
    "scored_at": ("datetime", "date", "Lead scored at", ()),
    "model": ("string", "text", "Lead score model", ()),
    "probability": ("number", "number", "Lead conversion probability (%)", ()),
    "factors": ("string", "textarea", "Lead probability factors", ()),
}
GROUP = "lead_scoring"
GROUP_LABEL = "Lead scoring"
NUMBER_FIELDS = frozenset({"score", "fit", "engagement", "probability"})


# ----------------------------------------------------------------------------- values


def parse_ts(value: Any) -> float | None:
    """HubSpot times (ISO 8601 strings, epoch milliseconds, dates) as epoch seconds; None if unreadable."""
    return parse_time(value)


def iso(ts: float) -> str:
    """Epoch seconds as HubSpot's ISO form, whole seconds, UTC."""
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical(engine_field: str, value: Any) -> str:
    """One spelling per value, so what we read back compares equal to what we would write.

    Numbers become integer strings ("87.0" -> "87"), times ISO seconds in UTC
    (HubSpot answers "...T10:00:00.000Z" for a value written as epoch ms).
    """
    text = "" if value is None else str(value)
    if engine_field in NUMBER_FIELDS:
        try:
            number = float(text)
        except ValueError:
            return text.strip()
        if math.isfinite(number):
            return str(math.floor(number + 0.5))
        return text.strip()
    if engine_field == "scored_at":
        try:
            ts = float(text)  # epoch seconds from the engine
        except ValueError:
            ts = parse_ts(text) or 0.0
            if not text.strip():
                return ""
        else:
            if ts > 1e11:  # epoch milliseconds
                ts /= 1000
        return iso(ts)
    if engine_field in ("band", "grade", "model"):
        return text.strip()
    return text


class _Lru(OrderedDict[str, dict[str, Any]]):
    def put(self, key: str, value: dict[str, Any]) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("category") or "refused by HubSpot")
    return "refused by HubSpot"


# ----------------------------------------------------------------------------- the adapter


class HubSpotAdapter:
    crm: CrmName = "hubspot"
    streams: tuple[str, ...] = ("contact",)
    outcome_streams: tuple[str, ...] = ("contact",)

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        mapping: HubSpotMapping,
        redis: redis.Redis,
        account: str = "default",
        timeout: float = 30.0,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self.mapping = mapping
        self.base_url = base_url.rstrip("/")
        self.account = account
        self.http = HubSpotTransport(
            base_url=self.base_url,
            token=token,
            redis_client=redis,
            account_name=account,
            limits=mapping.account,
            timeout=timeout,
            policy=retry_policy,
        )
        self.apis = self.http.apis
        # per-contact event reads run a few at a time (the events API has no batch read)
        self._pool = ThreadPoolExecutor(max_workers=EVENT_READERS, thread_name_prefix="hubspot-events")
        self._portal_id: str | None = mapping.account.portal_id
        self._extras = threading.local()  # per thread: contact id -> roll-up and gate properties seen in reads
        self._redis = redis
        self._events_off_key = f"leadscore:hubspot:{account}:events-refused"
        self._events_seen: tuple[float, str | None] = (0.0, None)  # (when Redis was asked, why refused)
        self._events_warned = False
        self._props: dict[str, tuple[list[str], list[str]]] = {
            mode: self._props_for(mode) for mode in ("events", "rollups", "none")
        }
        acts = mapping.activities
        self.web_events = WebEventStore(
            redis, account, acts.events, acts.lookback_days * 86400.0, self._read_events_window
        )

    def _read_events_window(self, lo_ms: int, hi_ms: int, event_type: str | None, after: str | None) -> Any:
        """One page of every contact's events with lo_ms <= occurredAt <= hi_ms (GET /events/v3/events
        without objectId, events.json)."""
        try:
            resp = self._call(
                self.apis.events.get_page,
                object_type="contact",
                event_type=event_type,
                occurred_after=events_iso(lo_ms),
                occurred_before=events_iso(hi_ms),
                limit=EVENTS_LIMIT,
                after=after,
                refusals=(403,),
            )
        except ApiError as exc:
            if exc.status == 403:
                raise EventsRefused(f"{exc.status}: {exc.message}") from None
            raise
        return resp.body

    def _props_for(self, web: str) -> tuple[list[str], list[str]]:
        """(roll-up or gate properties, every property a contact read asks for) with `web` as the source."""
        acts = self.mapping.activities
        extra: list[str] = []
        if web == "rollups":
            for rollup in acts.rollups:
                extra += [rollup.count, rollup.last]
        if web == "events":
            extra += acts.event_gates
        contact = self.mapping.contact
        read = [*contact.read_fields().values(), contact.owner, *self.mapping.write.values(), contact.modified, *extra]
        return list(dict.fromkeys(extra)), list(dict.fromkeys(read))

    # -- where web activity comes from

    def events_refused(self) -> str | None:
        """Why HubSpot refused the events API lately (shared by the workers through Redis), else None."""
        asked, why = self._events_seen
        if time.monotonic() - asked > EVENTS_FLAG_CACHE_S:
            raw = self._redis.get(self._events_off_key)
            why = raw.decode() if isinstance(raw, bytes) else raw
            self._events_seen = (time.monotonic(), why)
        return why

    def _refuse_events(self, why: str) -> None:
        self._redis.set(self._events_off_key, why, ex=EVENTS_RECHECK_S)
        self._events_seen = (time.monotonic(), why)

    def _web(self) -> str:
        """Where web activity comes from now: the mapping's choice, or roll-ups while the events API refuses."""
        web = self.mapping.activities.web
        if web == "events" and self.events_refused() is not None:
            fallback = "rollups" if self.mapping.activities.rollups else "none"
            if not self._events_warned:
                self._events_warned = True
                log.warning(
                    "HubSpot refuses the events API on this portal (it needs an Enterprise subscription), so web "
                    "activity comes from %s instead until activities.web in mappings/hubspot.yaml says so.",
                    "the contacts' roll-up properties" if fallback == "rollups" else "nowhere (no rollups mapped)",
                )
            return fallback
        return web

    @property
    def _extra(self) -> _Lru:
        """This thread's cache of roll-up and gate properties. A page's read and the load_activities after
        it run in one task thread; a threads pool runs several tasks at once, each with its own two pages."""
        lru: _Lru | None = getattr(self._extras, "lru", None)
        if lru is None:
            lru = self._extras.lru = _Lru()
        return lru

    @property
    def _extra_props(self) -> list[str]:
        return self._props[self._web()][0]

    @property
    def _read_props(self) -> list[str]:
        return self._props[self._web()][1]

    # -- bookkeeping

    def api_budget(self) -> tuple[int, int | None, str]:
        """(calls used today, the daily budget, what "today" means), from the shared limiter."""
        limiter = self.http.limiter
        return limiter.used_today(), (limiter.daily_limit or None), "today (UTC)"

    def preparing(self) -> str | None:
        """The shared read of web events under way (a first sync reads the whole look-back before any page
        is scored: on a big portal at a real rate limit, the better part of an hour), from Redis."""
        if self.mapping.activities.events_read != "bulk":
            return None
        fill = self.web_events.progress()
        return None if fill is None else fill.text()

    @property
    def calls(self) -> CallCounter:
        return self.http.calls

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.http.close()

    def _call(self, op: Any, *args: Any, **kwargs: Any) -> Response:
        return self.http.call(op, *args, **kwargs)

    @staticmethod
    def _stream(stream: str) -> None:
        if stream != "contact":
            raise UserError(f"HubSpot has the stream 'contact', not '{stream}'.")

    # -- reading contacts

    def _lead(self, obj: Mapping[str, Any]) -> Lead:
        props: Mapping[str, Any] = obj.get("properties") or {}
        contact = self.mapping.contact
        profile = {
            engine: props[prop] for engine, prop in contact.fields.items() if props.get(prop) not in (None, "")
        }
        for name, custom in contact.custom.items():
            value = normalise(props.get(custom.property), custom.type)
            if value is not None:
                profile[name] = value
        written = {
            engine: canonical(engine, props[prop])
            for engine, prop in self.mapping.write.items()
            if props.get(prop) not in (None, "")
        }
        lead_id = str(obj["id"])
        if self._extra_props:
            self._extra.put(lead_id, {p: props.get(p) for p in self._extra_props})
        owner = props.get(contact.owner)
        return Lead(
            crm="hubspot",
            object_type="contact",
            id=lead_id,
            profile=profile,
            owner_id=str(owner) if owner not in (None, "") else None,
            written=written,
            modified_at=parse_ts(props.get(contact.modified)) or parse_ts(obj.get("updatedAt")),
        )

    def _leads(self, results: Iterable[Mapping[str, Any]], problems: list[tuple[str, str]]) -> list[Lead]:
        leads = []
        for obj in results:
            try:
                leads.append(self._lead(obj))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append((str(obj.get("id", "?")), f"unreadable record ({type(exc).__name__})"))
        return leads

    def read_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        self._stream(stream)
        if since is None:
            return self._list_page(cursor)
        return self._search_page(cursor, since)

    def _list_page(self, cursor: str | None, props: list[str] | None = None, raw: list[Any] | None = None) -> Page:
        after = orjson.loads(cursor)["after"] if cursor else None
        problems: list[tuple[str, str]] = []
        leads: list[Lead] = []
        for _ in range(LIST_PAGES_PER_READ):
            resp = self._call(
                self.apis.contacts.get_page, limit=LIST_LIMIT, after=after, properties=props or self._read_props,
                archived=False,
            )
            leads += self._leads(resp.body.get("results") or [], problems)
            if raw is not None:
                raw += resp.body.get("results") or []
            nxt = ((resp.body.get("paging") or {}).get("next") or {}).get("after")
            if nxt is not None and str(nxt) == str(after):
                raise StopSync(
                    f"HubSpot repeated the page token {nxt!r} of the contact list; stopping to avoid a loop."
                )
            after = str(nxt) if nxt is not None else None
            if after is None:
                break
        stamps = [lead.modified_at for lead in leads if lead.modified_at is not None]
        return Page(
            leads=leads,
            next_cursor=orjson.dumps({"after": after}).decode() if after is not None else None,
            high_water=max(stamps) if stamps else None,
            problems=problems,
        )

    def _search_page(
        self, cursor: str | None, since: float, read: list[str] | None = None, raw: list[Any] | None = None
    ) -> Page:
        # Incremental reads search on the modification time, ascending. The
        # cursor is the window start `s` (epoch ms, inclusive), how many records
        # stamped exactly `s` were already returned (`n`) and, while that tie
        # group is small, their ids (`x`, deduped client-side).
        #
        # Why every page restarts the query at the last seen timestamp instead
        # of paging by offset until HubSpot's 10,000-result cap: (1) search
        # answers 400 past 10,000 results per query, so a long window must be
        # restarted anyway; (2) the pipeline writes scores between pages, and
        # every write moves the contact to the end of the ascending order,
        # which would shift offsets and silently skip unread contacts. Keyset
        # paging by (timestamp, seen ids) is immune to both; the offset is used
        # only inside a large group of contacts sharing one millisecond.
        modified = self.mapping.contact.modified
        state: dict[str, Any] = orjson.loads(cursor) if cursor else {}
        if "w" in state:
            return self._changed_page(state, since)
        start = int(state.get("s", math.floor(since * 1000)))
        seen_n = int(state.get("n", 0))
        seen: set[str] = {str(i) for i in state.get("x", [])}
        offset = seen_n if seen_n > TIE_OFFSET else 0
        problems: list[tuple[str, str]] = []
        if offset + SEARCH_LIMIT > SEARCH_CAP:
            problems.append(("-", f"more than {SEARCH_CAP} contacts share the modification time {start} ms; "
                                  "the rest of them is skipped"))
            start, seen_n, seen, offset = start + 1, 0, set(), 0
        body: dict[str, Any] = {
            "filterGroups": [{"filters": [{"propertyName": modified, "operator": "GTE", "value": str(start)}]}],
            "sorts": [{"propertyName": modified, "direction": "ASCENDING"}],
            "properties": read or self._read_props,
            "limit": SEARCH_LIMIT,
        }
        if offset:
            body["after"] = str(offset)
        resp = self._call(self.apis.contacts_search.do_search, body, search=True)
        results = resp.body.get("results") or []
        fresh = [r for r in results if str(r.get("id")) not in seen]
        leads = self._leads(fresh, problems)
        if raw is not None:
            raw += fresh
        echoes = self._own_echoes(leads)
        if echoes:  # modified last by our own score write: nothing new to score (the cursor still moves on)
            stamps_only = [lead.modified_at for lead in leads if lead.modified_at is not None]
            leads = [lead for lead in leads if lead.id not in echoes]
        has_more = bool(((resp.body.get("paging") or {}).get("next") or {}).get("after"))
        stamps_ms: list[tuple[int, str]] = []
        for obj in results:
            props = obj.get("properties") or {}
            ts = parse_ts(props.get(modified)) or parse_ts(obj.get("updatedAt"))
            stamps_ms.append((round(ts * 1000) if ts is not None else start, str(obj.get("id"))))
        high = [lead.modified_at for lead in leads if lead.modified_at is not None]
        if echoes:
            high = stamps_only
        if not has_more or not results:
            next_cursor = None
        else:
            last_ms = max(ms for ms, _ in stamps_ms)
            at_last = [i for ms, i in stamps_ms if ms == last_ms]
            if last_ms > start:
                count, ids = len(at_last), at_last
            else:  # the whole page shares the window start: a large tie group
                count = seen_n + len([i for i in at_last if i not in seen])
                ids = [*seen, *at_last] if count <= TIE_OFFSET else []
            next_cursor = orjson.dumps(
                {"s": last_ms, "n": count, "x": ids if count <= TIE_OFFSET else []}
            ).decode()
        total = resp.body.get("total")
        bulk = self._web() == "events" and self.mapping.activities.events_read == "bulk"
        if bulk and leads:
            # which contacts this incremental stream already read, so its web events part skips them
            key = self._searched_key(since)
            pipe = self._redis.pipeline(transaction=False)
            pipe.sadd(key, *[lead.id for lead in leads])
            pipe.expire(key, SEARCHED_TTL_S)
            pipe.execute()
        if next_cursor is None and bulk:
            # then the contacts with new web events since `since` (their scores may have changed too)
            next_cursor = orjson.dumps({"w": math.floor(since * 1000)}).decode()
        return Page(leads=leads, next_cursor=next_cursor, high_water=max(high) if high else None, problems=problems,
                    total=int(total) if cursor is None and isinstance(total, int) else None)

    # -- outcomes (read for learning, never written)

    def _outcomes_config(self) -> HubSpotOutcomes:
        if self.mapping.outcomes is None:
            raise UserError(
                "mappings/hubspot.yaml has no outcomes: section, so nothing says what counts as won or lost; "
                "add one (the shipped file shows lifecycle stages, a property and deals)."
            )
        return self.mapping.outcomes

    def outcome_profile_fields(self) -> frozenset[str]:
        outcomes = self.mapping.outcomes
        if outcomes is None:
            return frozenset()
        defining = outcomes.defining_properties()
        return frozenset(engine for engine, prop in self.mapping.contact.read_fields().items() if prop in defining)

    def read_outcome_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        """A page of contacts with their outcomes: the outcome properties ride along the page read; deals
        cost one v4 association batch read and one deal batch read per 100 deals."""
        self._stream(stream)
        outcomes = self._outcomes_config()
        props = list(dict.fromkeys([*self._read_props, *outcomes.contact_properties()]))
        raw: list[Any] = []
        page = self._list_page(cursor, props, raw) if since is None else self._search_page(cursor, since, props, raw)
        found: dict[str, list[tuple[str, float | None]]] = {lead.id: [] for lead in page.leads}
        for obj in raw:
            lead_id = str(obj.get("id"))
            if lead_id in found:
                found[lead_id] += self._property_outcomes(outcomes, obj.get("properties") or {})
        if outcomes.deals is not None and found:
            for lead_id, hits in self._deal_outcomes(outcomes, list(found)).items():
                found[lead_id] += hits
        for lead_id, hits in found.items():
            what, at = combine(hits)
            if what is not None:
                page.outcomes[lead_id] = LeadOutcome(what, at)
        return page

    @staticmethod
    def _property_outcomes(outcomes: HubSpotOutcomes, props: Mapping[str, Any]) -> list[tuple[str, float | None]]:
        hits: list[tuple[str, float | None]] = []
        life = outcomes.lifecycle
        if life is not None:
            stage = props.get(life.property)
            if stage in life.won:
                hits.append(("won", parse_ts(props.get(lifecycle_date_property(str(stage))))))
        prop = outcomes.property
        if prop is not None:
            value = props.get(prop.name)
            when = parse_ts(props.get(prop.date)) if prop.date else None
            if value is not None and str(value) in prop.won:
                hits.append(("won", when))
            elif value is not None and str(value) in prop.lost:
                hits.append(("lost", when))
        return hits

    def _deal_outcomes(self, outcomes: HubSpotOutcomes, ids: list[str]) -> dict[str, list[tuple[str, float | None]]]:
        rule = outcomes.deals
        assert rule is not None
        deals_of = self._associated(ids, "deals")
        deal_ids = list(dict.fromkeys(d for lead_id in ids for d in deals_of.get(lead_id, [])))
        if not deal_ids:
            return {}
        deals = self._batch_read("deals", deal_ids, ["dealstage", "pipeline", rule.date])
        out: dict[str, list[tuple[str, float | None]]] = {}
        for lead_id in ids:
            for deal_id in deals_of.get(lead_id, []):
                props = deals.get(deal_id)
                if props is None or (rule.pipelines and props.get("pipeline") not in rule.pipelines):
                    continue
                stage = props.get("dealstage")
                when = parse_ts(props.get(rule.date))
                if stage in rule.won:
                    out.setdefault(lead_id, []).append(("won", when))
                elif stage in rule.lost:
                    out.setdefault(lead_id, []).append(("lost", when))
        return out

    def _searched_key(self, since: float) -> str:
        return f"leadscore:hubspot:{self.account}:searched:{math.floor(since * 1000)}"

    def _changed_page(self, state: Mapping[str, Any], since: float) -> Page:
        """Contacts with web events since `since` that this stream's search did not return (not modified
        since, or not searchable yet),
        CHANGED_PAGE at a time from the shared web events (refreshed first: about one call per 100 new
        events), read with one batch read. The cursor: the last event time returned and the contacts at it."""
        since_ms = int(state["w"])
        after = (int(state["t"]), [str(i) for i in state.get("x", [])]) if "t" in state else None
        if after is None:
            # up to now: events newer than this refresh are found by the next run, whose `since` lies
            # at least SEARCH_LAG_SECONDS before this run's start
            try:
                self.web_events.ensure(time.time(), fresh_s=CHANGED_FRESH_S)
            except EventsRefused as exc:
                self._refuse_events(exc.why)
                return Page(leads=[], next_cursor=None)
        rows = self.web_events.changed_since(since_ms, after, CHANGED_PAGE)
        if not rows:
            return Page(leads=[], next_cursor=None)
        ids = [cid for cid, _ in rows]
        searched = self._redis.smismember(self._searched_key(since), ids)
        unread = [cid for cid, seen in zip(ids, searched, strict=True) if not seen]
        leads = self.get_leads("contact", unread) if unread else []
        next_cursor = None
        if len(rows) == CHANGED_PAGE:
            last = rows[-1][1]
            tie = [cid for cid, ms in rows if ms == last]
            if after is not None and after[0] == last:
                tie = [*after[1], *tie]
            next_cursor = orjson.dumps({"w": since_ms, "t": last, "x": tie}).decode()
        # the newest event seen counts as a change: the next run's cursor moves past it
        return Page(leads=leads, next_cursor=next_cursor, high_water=max(ms for _, ms in rows) / 1000)

    def get_leads(self, stream: str, ids: Sequence[str]) -> list[Lead]:
        self._stream(stream)
        problems: list[tuple[str, str]] = []
        leads: list[Lead] = []
        for chunk in _chunks(list(dict.fromkeys(ids)), BATCH):
            resp = self._call(
                self.apis.contacts_batch.read,
                {"inputs": [{"id": i} for i in chunk], "properties": self._read_props},
                archived=False,
            )
            leads += self._leads(resp.body.get("results") or [], problems)
        return leads

    def _contact_props(self, ids: Sequence[str], props: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Properties of contacts by id: from what reads cached, else one batch read per 100."""
        out: dict[str, dict[str, Any]] = {}
        missing = []
        for i in ids:
            cached = self._extra.get(i)
            if cached is not None and all(p in cached for p in props):
                out[i] = cached
            else:
                missing.append(i)
        for chunk in _chunks(missing, BATCH):
            resp = self._call(
                self.apis.contacts_batch.read, {"inputs": [{"id": i} for i in chunk], "properties": list(props)},
                archived=False,
            )
            for obj in resp.body.get("results") or []:
                values = {p: (obj.get("properties") or {}).get(p) for p in props}
                out[str(obj["id"])] = values
                self._extra.put(str(obj["id"]), values)
        return out

    # -- activities

    def load_activities(self, leads: Sequence[Lead], now: float) -> None:
        if not leads:
            return
        acts = self.mapping.activities
        cutoff = now - acts.lookback_days * 86400
        by_id: dict[str, list[Activity]] = {lead.id: [] for lead in leads}
        ids = list(by_id)
        self._engagements(ids, by_id, cutoff, now)
        web = self._web()
        if web == "events" and not self._events(ids, by_id, cutoff, now):
            web = self._web()  # refused just now: the roll-ups (or nothing) for this page too
        if web == "rollups":
            self._rollups(ids, by_id, cutoff, now)
        for lead in leads:
            lead.activities = sorted(by_id[lead.id], key=lambda a: a.ts)

    def contacts_of_engagements(self, members: Sequence[str]) -> list[str]:
        """The contacts new engagements ("calls:123", "emails:456") are associated with, in order, once each."""
        by_type: dict[str, list[str]] = {}
        for member in members:
            object_type, _, object_id = member.partition(":")
            if object_type in ACTED_TYPES and object_id:
                by_type.setdefault(object_type, []).append(object_id)
        contacts: list[str] = []
        for object_type, ids in by_type.items():
            links = self._associated(ids, "contacts", from_type=object_type)
            contacts += [c for i in ids for c in links.get(i, [])]
        return list(dict.fromkeys(contacts))

    def _associated(self, ids: Sequence[str], to_type: str, from_type: str = "contacts") -> dict[str, list[str]]:
        """object id -> ids of associated `to_type` objects, via v4 batch reads.

        A batch read pages within each input: a contact with more associations than one page holds
        comes back with `paging.next.after`, sent back with its id in the next round (all such
        contacts of a round in one call). Association ids are strings in the v4 spec.
        """
        out: dict[str, list[str]] = {i: [] for i in ids}
        pending: list[dict[str, str]] = [{"id": i} for i in ids]
        asked: set[tuple[str, str]] = set()
        while pending:
            follow: list[dict[str, str]] = []
            for chunk in _chunks(pending, ASSOC_BATCH):
                resp = self._call(self.apis.assoc_batch.get_page, from_type, to_type, {"inputs": list(chunk)},
                                  parse=parse_associations)  # fmt: skip
                for result in resp.body.get("results") or []:
                    frm = str((result.get("from") or {}).get("id"))
                    out.setdefault(frm, []).extend(result.get("to") or [])  # the ids (parse_associations)
                    after = ((result.get("paging") or {}).get("next") or {}).get("after")
                    if after:
                        if (frm, str(after)) in asked:
                            raise StopSync(f"HubSpot repeated the page token {after!r} of {from_type} {frm}'s "
                                           f"{to_type} associations; stopping to avoid a loop.")  # fmt: skip
                        asked.add((frm, str(after)))
                        follow.append({"id": frm, "after": str(after)})
            pending = follow
        return out

    def _batch_read(self, object_type: str, ids: Sequence[str], props: Sequence[str]) -> dict[str, dict[str, Any]]:
        return dict(self._batch_read_each(object_type, ids, props))

    def _batch_read_each(
        self, object_type: str, ids: Sequence[str], props: Sequence[str]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, properties) of each object found, one batch call (BATCH ids) at a time."""
        for chunk in _chunks(list(ids), BATCH):
            resp = self._call(
                self.apis.objects_batch.read,
                object_type,
                {"inputs": [{"id": i} for i in chunk], "properties": list(props)},
                archived=False,
            )
            for obj in resp.body.get("results") or []:
                props_out = dict(obj.get("properties") or {})
                props_out.setdefault("hs_createdate", obj.get("createdAt"))
                yield str(obj["id"]), props_out

    @staticmethod
    def _emit(rules: Sequence[EngagementRule | EventRule], props: Mapping[str, Any], ts: float) -> list[Activity]:
        sprops = {k: (None if v is None else str(v)) for k, v in props.items()}
        out = []
        for rule in rules:
            if rule.matches(sprops):
                attrs = {attr: sprops[p] or "" for attr, p in rule.attrs.items() if sprops.get(p) is not None}
                out.append(Activity(kind=rule.kind, ts=ts, attrs=attrs))
        return out

    def _engagements(self, ids: Sequence[str], by_id: dict[str, list[Activity]], cutoff: float, now: float) -> None:
        rules_by_type: dict[str, list[EngagementRule]] = {}
        for rule in self.mapping.activities.engagements:
            rules_by_type.setdefault(rule.type, []).append(rule)
        for object_type, rules in rules_by_type.items():
            links = self._associated(ids, object_type)
            wanted = list(dict.fromkeys(e for i in ids for e in links.get(i, [])))
            if not wanted:
                continue
            props = list(dict.fromkeys(
                [p for r in rules for p in (*r.when, *r.attrs.values(), r.timestamp)]
            ))
            # Each engagement's activities as its batch comes in (shared by its contacts), so a page does
            # not hold all its engagements' properties at once: a worker's peak memory (issue 16).
            made: dict[str, list[Activity]] = {}
            for eng_id, obj in self._batch_read_each(object_type, wanted, props):
                ts = parse_ts(obj.get(rules[0].timestamp)) or parse_ts(obj.get("hs_createdate"))
                if ts is not None and ts >= cutoff:
                    made[eng_id] = self._emit(rules, obj, min(ts, now))
            for contact_id in ids:
                for eng_id in links.get(contact_id, []):
                    found = made.get(eng_id)
                    if found:
                        by_id[contact_id] += found

    def _events(self, ids: Sequence[str], by_id: dict[str, list[Activity]], cutoff: float, now: float) -> bool:
        """Web activity from the events API; False (nothing added) when HubSpot refuses it for this portal.

        From the shared bulk read (WebEventStore): a sync page's contacts (bulk work, limits.bulk_calls)
        from it as it is when fresh (no call), else refreshed first (about one call per 100 new events of
        the portal). A webhook's rescore (real-time work) needs the events up to `now`, however many
        contacts it takes: the web event that sent the webhook is likely newer than the shared read, which
        a sync refreshed minutes ago at most. The shared read is brought up to `now` when it covers the
        look-back; else a few contacts (at most PER_CONTACT_EVENTS_MAX) are read per contact (one call
        each, only those whose gate property, last visit or last conversion, lies inside the look-back),
        which is cheaper than a first bulk read of the whole look-back.
        """
        acts = self.mapping.activities
        store = self.web_events
        covered, fresh = store.covers(now) if acts.events_read == "bulk" else (False, False)
        few = len(ids) <= PER_CONTACT_EVENTS_MAX
        up_to_now = few or not in_bulk()
        if acts.events_read == "per_contact" or (few and not covered):
            targets: Sequence[str] = ids
            if acts.event_gates:
                gates = self._contact_props(ids, acts.event_gates)
                targets = [
                    i for i in ids
                    if any((parse_ts(gates.get(i, {}).get(g)) or 0) >= cutoff for g in acts.event_gates)
                ]
            return self._events_per_contact(targets, by_id, cutoff, now)
        if up_to_now or not fresh:
            try:
                store.ensure(now, fresh_s=0.0 if up_to_now else FRESH_S)
            except EventsRefused as exc:
                self._refuse_events(exc.why)
                return False
        for contact_id, found in store.activities(ids, cutoff, now, self._emit).items():
            by_id[contact_id] += found
        return True

    def _events_per_contact(
        self, targets: Sequence[str], by_id: dict[str, list[Activity]], cutoff: float, now: float
    ) -> bool:
        # The events API filtered on one objectId per call: one call per contact (more only past
        # EVENTS_LIMIT events), all mapped event types in that one call when there are several.
        acts = self.mapping.activities
        rules_by_type: dict[str, list[EventRule]] = {}
        for rule in acts.events:
            rules_by_type.setdefault(rule.type, []).append(rule)
        only_type = next(iter(rules_by_type)) if len(rules_by_type) == 1 else None

        def one(contact_id: str) -> tuple[list[Activity] | None, int]:
            # Runs on the adapter's small pool: the calls are independent and the
            # shared limiter, not this loop, sets the pace.
            before = self.calls.this_thread
            found: dict[str, list[Activity]] = {contact_id: []}
            try:
                if self.events_refused() is not None:
                    return None, 0
                self._events_of(contact_id, rules_by_type, only_type, found, cutoff, now)
            except RecordError:
                log.info("hubspot events of contact %s unreadable; skipped", contact_id)
            except ApiError as exc:  # 403: the portal's tier has no events API
                self._refuse_events(f"{exc.status}: {exc.message}")
                return None, self.calls.this_thread - before
            return found[contact_id], self.calls.this_thread - before

        answers = list(zip(targets, self._pool.map(keeping_priority(one), targets), strict=True))
        for _, (_, calls) in answers:
            self.calls.credit(calls)
        if any(activities is None for _, (activities, _) in answers):
            return False
        for contact_id, (activities, _) in answers:
            by_id[contact_id] += activities or []
        return True

    def _events_of(
        self,
        contact_id: str,
        rules_by_type: Mapping[str, Sequence[EventRule]],
        only_type: str | None,
        by_id: dict[str, list[Activity]],
        cutoff: float,
        now: float,
    ) -> None:
        after: str | None = None
        while True:
            resp = self._call(
                self.apis.events.get_page,
                object_type="contact",
                object_id=contact_id,
                event_type=only_type,
                occurred_after=iso(cutoff),
                limit=EVENTS_LIMIT,
                after=after,
                record_id=contact_id,
                refusals=(403,),  # below Enterprise the events API answers 403: the caller falls back
            )
            for event in resp.body.get("results") or []:
                rules = rules_by_type.get(str(event.get("eventType")))
                ts = parse_ts(event.get("occurredAt"))
                if not rules or ts is None or ts < cutoff:
                    continue
                # as the bulk read keeps them (hubspot_events.py): the same text scored on either path
                props = without_addresses(event.get("properties") or {})
                by_id[contact_id] += self._emit(rules, props, min(ts, now))
            nxt = ((resp.body.get("paging") or {}).get("next") or {}).get("after")
            if not nxt or nxt == after:
                break
            after = str(nxt)

    def _rollups(self, ids: Sequence[str], by_id: dict[str, list[Activity]], cutoff: float, now: float) -> None:
        # Roll-ups count, they do not date: each becomes up to `rollup_max`
        # synthetic activities stamped with its last-occurrence property, so
        # decay treats all of them as recent as the latest. No call when the
        # contacts came from read_page in this process (the properties were
        # read with them); otherwise one batch read per 100 contacts.
        acts = self.mapping.activities
        props = [p for r in acts.rollups for p in (r.count, r.last)]
        values = self._contact_props(ids, props)
        for contact_id in ids:
            got = values.get(contact_id) or {}
            for rollup in acts.rollups:
                try:
                    count = int(float(got.get(rollup.count) or 0))
                except (TypeError, ValueError):
                    continue
                ts = parse_ts(got.get(rollup.last))
                if count <= 0 or ts is None or ts < cutoff:
                    continue
                synthetic = Activity(kind=rollup.kind, ts=min(ts, now), attrs={"source": "rollup"})
                by_id[contact_id] += [synthetic] * min(count, acts.rollup_max)

    # -- writing scores

    def write_scores(self, stream: str, updates: Mapping[str, Mapping[str, str]]) -> WriteReport:
        self._stream(stream)
        report = WriteReport()
        valid: dict[str, Mapping[str, str]] = {}
        for lead_id, values in updates.items():
            unknown = [k for k in values if k not in WRITE_FIELDS]
            if unknown:
                report.failed.append((lead_id, f"not a written field: {', '.join(unknown)}"))
                continue
            if not values:
                continue
            valid[lead_id] = values
        report.merge(write_with_record_retries(self._write_once, valid))
        return report

    def _write_once(self, updates: Mapping[str, Mapping[str, str]]) -> WriteReport:
        report = WriteReport()
        inputs = [
            {"id": lead_id, "properties": {self.mapping.write[k]: canonical(k, v) for k, v in values.items()}}
            for lead_id, values in updates.items()
        ]
        for chunk in _chunks(inputs, BATCH):
            try:
                self._update_batch(list(chunk), report)
            except RetryLater as exc:
                # The transport's retries are used up and nothing is known of this batch: its
                # records are written again later; the other batches go on.
                report.retry.extend((c["id"], f"not written: {exc}") for c in chunk)
        return report

    def _update_batch(self, chunk: list[dict[str, Any]], report: WriteReport, budget: list[int] | None = None) -> None:
        # A batch whose outcome is known is never sent again: 200 and 207 are
        # final (207 names the records HubSpot could not find or could not write
        # this time, the rest are written; those of the second kind go to
        # report.retry and only they are sent again). A 400 refuses the whole
        # batch and writes nothing. When it is about a property (missing, read-only, an option it lacks) every batch
        # would meet it: the sync stops and says what to run. Otherwise a value
        # of some record was refused and the message does not say whose: the
        # halves are tried to find it, within ISOLATION_CALLS for the batch.
        # Only RetryLater (nothing known) repeats the batch.
        budget = [ISOLATION_CALLS] if budget is None else budget
        try:
            resp = self._call(self.apis.contacts_batch.update, {"inputs": chunk})
        except ApiError as exc:
            refusal = property_refusal(exc.body)
            if refusal is not None:
                raise StopSync(refusal) from None
            said = problems_text(exc.body) or exc.message
            if len(chunk) == 1:
                report.failed.append((chunk[0]["id"], said))
                return
            if budget[0] < 2:
                report.failed.extend(
                    (c["id"], f"not written: HubSpot refused its batch ({said}) and the record it refused "
                              "was not found within the calls allowed for that")
                    for c in chunk
                )  # fmt: skip
                return
            budget[0] -= 2
            half = len(chunk) // 2
            self._update_batch(chunk[:half], report, budget)
            self._update_batch(chunk[half:], report, budget)
            return
        sent = [c["id"] for c in chunk]
        ok = {str(r.get("id")) for r in resp.body.get("results") or []}
        errors = resp.body.get("errors") or []
        attributed: dict[str, tuple[str, bool]] = {}
        loose: list[str] = []
        sent_set = set(sent)
        for err in errors:
            msg = _message(err)
            ids = {i for i in _ids_in(err) if i in sent_set}
            for i in ids:
                attributed.setdefault(i, (msg, transient_batch_error(err)))
            if not ids:
                loose.append(msg)
        self._remember_writes(resp.body.get("results") or [])
        for lead_id in sent:
            if lead_id in attributed and lead_id not in ok:
                msg, passes = attributed[lead_id]
                (report.retry if passes else report.failed).append((lead_id, msg))
            elif lead_id in ok or (resp.status == 200 and not errors):
                report.written.append(lead_id)
            else:
                # Neither written nor refused by name: whether it was written is not known, and
                # writing the same values again is harmless.
                report.retry.append((lead_id, "; ".join(loose) or "HubSpot did not confirm the update"))

    # -- our own writes, seen again by incremental syncs

    def _written_key(self, lead_id: str) -> str:
        return f"leadscore:hubspot:{self.account}:written:{zlib.crc32(lead_id.encode()) % WRITTEN_BUCKETS}"

    def _remember_writes(self, results: Sequence[Mapping[str, Any]]) -> None:
        """The modification time HubSpot gave each contact for our score write (batch update answer:
        the `lastmodifieddate` property, else updatedAt), shared through Redis: an incremental sync that
        finds a contact modified at exactly that time finds our own write, nothing new to score."""
        modified = self.mapping.contact.modified
        pipe = self._redis.pipeline(transaction=False)
        keys = set()
        for obj in results:
            ts = parse_ts((obj.get("properties") or {}).get(modified)) or parse_ts(obj.get("updatedAt"))
            if ts is None or obj.get("id") is None:
                continue
            key = self._written_key(str(obj["id"]))
            pipe.hset(key, str(obj["id"]), str(round(ts * 1000)))
            keys.add(key)
        for key in keys:
            pipe.expire(key, WRITTEN_TTL_S)
        if keys:
            pipe.execute()

    def _own_echoes(self, leads: Sequence[Lead]) -> set[str]:
        """Ids of leads whose last modification is our own score write (see _remember_writes)."""
        stamped = [lead for lead in leads if lead.modified_at is not None]
        if not stamped:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for lead in stamped:
            pipe.hget(self._written_key(lead.id), lead.id)
        ours = pipe.execute()
        return {lead.id for lead, ms in zip(stamped, ours, strict=True)
                if ms is not None and int(ms) == round((lead.modified_at or 0) * 1000)}  # fmt: skip

    # -- reps and owners

    def list_reps(self) -> list[Rep]:
        reps: dict[str, Rep] = {}
        for archived in (False, True):
            after: str | None = None
            while True:
                resp = self._call(self.apis.owners.get_page, limit=100, after=after, archived=archived)
                for owner in resp.body.get("results") or []:
                    rep = self._rep(owner, archived)
                    reps.setdefault(rep.id, rep)
                nxt = ((resp.body.get("paging") or {}).get("next") or {}).get("after")
                if not nxt or nxt == after:
                    break
                after = str(nxt)
        return list(reps.values())

    def _rep(self, owner: Mapping[str, Any], archived: bool) -> Rep:
        conf = self.mapping.reps
        owner_id = str(owner["id"])
        email = str(owner.get("email") or "")
        teams = owner.get("teams") or []
        names = tuple(str(t.get("name")) for t in sorted(teams, key=lambda t: not t.get("primary")) if t.get("name"))
        tz = conf.timezones.get(owner_id) or conf.timezones.get(email)
        if tz is None:
            tz = next((conf.team_timezones[n] for n in names if n in conf.team_timezones), conf.default_timezone)
        name = " ".join(p for p in (owner.get("firstName"), owner.get("lastName")) if p) or email or owner_id
        return Rep(
            id=owner_id,
            email=email,
            name=name,
            region=None,
            active=not (archived or owner.get("archived")),
            timezone=tz,
            teams=names,
        )

    def set_owner(self, stream: str, lead_id: str, rep_id: str, *, expected: str | None = None) -> bool:
        self._stream(stream)
        prop = self.mapping.contact.owner
        resp = self._call(self.apis.contacts.get_by_id, lead_id, properties=[prop], record_id=lead_id)
        current = (resp.body.get("properties") or {}).get(prop) or None
        if current == rep_id:
            return True
        if current != expected:
            return False
        self._call(
            self.apis.contacts.update, lead_id, {"properties": {prop: rep_id}}, record_id=lead_id
        )
        return True

    def set_owners(
        self, stream: str, wanted: Sequence[tuple[str, str, str | None]]
    ) -> dict[str, bool | str]:
        """`set_owner` for many records at once: (lead id, rep id, expected owner) each.

        One batch read of the owner property per 100 records (the re-read that narrows the race), then
        one batch update per 100 of those whose owner is still `expected` (POST /crm/v3/objects/contacts/
        batch/read|update, contacts.json). Per lead: True when the rep owns it after the call, False when
        someone else does, a sentence when HubSpot refused it (deleted, say).
        """
        self._stream(stream)
        prop = self.mapping.contact.owner
        out: dict[str, bool | str] = {}
        current: dict[str, str | None] = {}
        ids = list(dict.fromkeys(lead_id for lead_id, _, _ in wanted))
        for chunk in _chunks(ids, BATCH):
            resp = self._call(self.apis.contacts_batch.read,
                              {"inputs": [{"id": i} for i in chunk], "properties": [prop]}, archived=False)
            for obj in resp.body.get("results") or []:
                current[str(obj["id"])] = (obj.get("properties") or {}).get(prop) or None
        updates: list[dict[str, Any]] = []
        for lead_id, rep_id, expected in wanted:
            if lead_id not in current:
                out[lead_id] = "not found in HubSpot (deleted or merged)"
            elif current[lead_id] == rep_id:
                out[lead_id] = True
            elif current[lead_id] != expected:
                out[lead_id] = False
            else:
                updates.append({"id": lead_id, "properties": {prop: rep_id}})
        for chunk in _chunks(updates, BATCH):
            sent = [c["id"] for c in chunk]
            try:
                resp = self._call(self.apis.contacts_batch.update, {"inputs": list(chunk)})
            except ApiError as exc:  # refused as a whole (400): nothing written
                for lead_id in sent:
                    out[lead_id] = problems_text(exc.body) or exc.message
                continue
            done = {str(r.get("id")) for r in resp.body.get("results") or []}
            errors = resp.body.get("errors") or []
            for lead_id in sent:
                said = next((_message(e) for e in errors if lead_id in _ids_in(e)), None)
                out[lead_id] = True if lead_id in done else (said or "HubSpot did not confirm the owner")
        return out

    def create_tasks(self, stream: str, tasks: Sequence[TaskToCreate]) -> tuple[dict[str, str], dict[str, str]]:
        """Tasks linked to their records, 100 per call (POST /crm/v3/objects/tasks/batch/create, tasks.json:
        each input carries its associations). Returns (ref -> task id, ref -> why not created), matched by
        the reference in each task's body (a batch answer need not keep the inputs' order).

        Not idempotent, like `create_task`: a timeout or a 5xx is raised as RetryLater untouched, and the
        caller looks its references up (`find_tasks`) before it sends them again.
        """
        self._stream(stream)
        created: dict[str, str] = {}
        failed: dict[str, str] = {}
        for chunk in _chunks(list(tasks), BATCH):
            inputs = [{
                "properties": {
                    "hs_timestamp": iso(t.due),
                    "hs_task_subject": t.subject,
                    "hs_task_body": t.body,
                    "hs_task_status": "NOT_STARTED",
                    "hs_task_priority": self.mapping.tasks.priority,
                    "hs_task_type": self.mapping.tasks.type,
                    "hubspot_owner_id": t.rep_id,
                },
                "associations": [{
                    "to": {"id": t.lead_id},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
                }],
            } for t in chunk]  # fmt: skip
            try:
                resp = self._call(self.apis.objects_batch.create, "tasks", {"inputs": inputs}, idempotent=False)
            except ApiError as exc:  # the whole batch refused (400): nothing was created
                for t in chunk:
                    failed[t.ref] = exc.message
                continue
            for obj in resp.body.get("results") or []:
                ref = task_ref_in((obj.get("properties") or {}).get("hs_task_body"))
                if ref is not None:
                    created[ref] = str(obj["id"])
            errors = resp.body.get("errors") or []
            for k, t in enumerate(chunk):
                if t.ref in created:
                    continue
                said = next((_message(e) for e in errors if str(k) in _ids_in(e)), None)
                failed[t.ref] = said or "HubSpot did not confirm the task"
        return created, failed

    def find_tasks(self, stream: str, wanted: Sequence[tuple[str, str, str]]) -> dict[str, str]:
        """`find_task` for many (lead id, rep id, ref) at once: ref -> task id for those that exist.

        One v4 association read per 1,000 records and one task batch read per 100 tasks (not search:
        a task created a moment ago is not searchable yet)."""
        self._stream(stream)
        tasks = self._tasks_of([lead_id for lead_id, _, _ in wanted], ["hubspot_owner_id", "hs_task_body"])
        out: dict[str, str] = {}
        for lead_id, rep_id, ref in wanted:
            for task_id, task in tasks.get(lead_id, []):
                if str(task.get("hubspot_owner_id") or "") == rep_id and task_ref_in(task.get("hs_task_body")) == ref:
                    out[ref] = task_id
        return out

    def open_tasks(
        self, stream: str, wanted: Sequence[tuple[str, str]], subject_prefixes: Sequence[str]
    ) -> dict[str, str]:
        """`open_task` for many (lead id, rep id) at once: lead id -> an open task of the rep's on it."""
        self._stream(stream)
        tasks = self._tasks_of([lead_id for lead_id, _ in wanted],
                               ["hubspot_owner_id", "hs_task_status", "hs_task_subject"])  # fmt: skip
        out: dict[str, str] = {}
        for lead_id, rep_id in wanted:
            for task_id, task in tasks.get(lead_id, []):
                if (
                    str(task.get("hubspot_owner_id") or "") == rep_id
                    and task.get("hs_task_status") != "COMPLETED"
                    and str(task.get("hs_task_subject") or "").startswith(tuple(subject_prefixes))
                ):
                    out.setdefault(lead_id, task_id)
        return out

    def _tasks_of(self, lead_ids: Sequence[str], props: Sequence[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        links = self._associated(list(dict.fromkeys(lead_ids)), "tasks")
        wanted = list(dict.fromkeys(t for ids in links.values() for t in ids))
        tasks = self._batch_read("tasks", wanted, props) if wanted else {}
        return {lead_id: [(t, tasks[t]) for t in ids if t in tasks] for lead_id, ids in links.items()}

    # -- tasks and follow-up

    def create_task(self, stream: str, lead_id: str, rep_id: str, *, subject: str, body: str, due: float) -> str:
        self._stream(stream)
        task = {
            "properties": {
                "hs_timestamp": iso(due),
                "hs_task_subject": subject,
                "hs_task_body": body,
                "hs_task_status": "NOT_STARTED",
                "hs_task_priority": self.mapping.tasks.priority,
                "hs_task_type": self.mapping.tasks.type,
                "hubspot_owner_id": rep_id,
            },
            "associations": [
                {
                    "to": {"id": lead_id},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
                }
            ],
        }
        resp = self._call(self.apis.objects.create, "tasks", task, record_id=lead_id, idempotent=False)
        return str(resp.body["id"])

    def task_is_open(self, task_id: str) -> bool:
        try:
            resp = self._call(
                self.apis.objects.get_by_id, "tasks", task_id, properties=["hs_task_status"], record_id=task_id
            )
        except RecordError:
            return False  # deleted: nothing left open
        return (resp.body.get("properties") or {}).get("hs_task_status") != "COMPLETED"

    def open_task(self, stream: str, lead_id: str, rep_id: str, subject_prefixes: Sequence[str]) -> str | None:
        self._stream(stream)
        linked = self._associated([lead_id], "tasks").get(lead_id) or []
        if not linked:
            return None
        tasks = self._batch_read("tasks", linked, ["hubspot_owner_id", "hs_task_status", "hs_task_subject"])
        for task_id, task in tasks.items():
            if (
                str(task.get("hubspot_owner_id") or "") == rep_id
                and task.get("hs_task_status") != "COMPLETED"
                and str(task.get("hs_task_subject") or "").startswith(tuple(subject_prefixes))
            ):
                return str(task_id)
        return None

    def find_task(self, stream: str, lead_id: str, rep_id: str, ref: str) -> str | None:
        """Read through the contact's task associations (v4) and a batch read, not search: a task
        created a moment ago is not searchable yet."""
        self._stream(stream)
        linked = self._associated([lead_id], "tasks").get(lead_id) or []
        if not linked:
            return None
        tasks = self._batch_read("tasks", linked, ["hubspot_owner_id", "hs_task_body"])
        for task_id, task in tasks.items():
            if str(task.get("hubspot_owner_id") or "") == rep_id and task_ref_in(task.get("hs_task_body")) == ref:
                return str(task_id)
        return None

    def open_routing_tasks(self, subject_prefixes: Sequence[str], since: float) -> list[OpenTask]:
        """Open, owned tasks due since `since` whose subject starts with a prefix, with their contact.

        One search (POST /crm/v3/objects/tasks/search, spec: PublicApiSpecs/CRM/Tasks/Rollouts/424/v3/
        tasks.json) ascending by due time, restarted from the last due time seen instead of paging past
        the 10,000-result cap, then one v4 association read per 1,000 tasks.
        """
        prefixes = tuple(subject_prefixes)
        found: dict[str, dict[str, Any]] = {}
        start = math.floor(since * 1000)
        after = 0
        while True:
            body: dict[str, Any] = {
                "filterGroups": [{"filters": [
                    {"propertyName": "hs_task_status", "operator": "NEQ", "value": "COMPLETED"},
                    {"propertyName": "hs_timestamp", "operator": "GTE", "value": str(start)},
                    {"propertyName": "hubspot_owner_id", "operator": "HAS_PROPERTY"},
                ]}],
                "sorts": [{"propertyName": "hs_timestamp", "direction": "ASCENDING"}],
                "properties": ["hs_task_subject", "hubspot_owner_id", "hs_timestamp", "hs_createdate"],
                "limit": SEARCH_LIMIT,
            }  # fmt: skip
            if after:
                body["after"] = str(after)
            resp = self._call(self.apis.objects_search.do_search, "tasks", body, search=True)
            results = resp.body.get("results") or []
            for obj in results:
                found[str(obj["id"])] = dict(obj.get("properties") or {}, _created=obj.get("createdAt"))
            nxt = ((resp.body.get("paging") or {}).get("next") or {}).get("after")
            if not nxt or not results:
                break
            if int(nxt) + SEARCH_LIMIT > SEARCH_CAP:  # restart the window at the last due time (ids dedupe)
                last = max(parse_ts(o.get("properties", {}).get("hs_timestamp")) or 0.0 for o in results)
                if math.floor(last * 1000) <= start:
                    break  # 10,000 tasks due in one millisecond: nothing sensible left to page
                start, after = math.floor(last * 1000), 0
            else:
                after = int(nxt)
        ours = {i: t for i, t in found.items() if str(t.get("hs_task_subject") or "").startswith(prefixes)}
        if not ours:
            return []
        contacts = self._associated(list(ours), "contacts", from_type="tasks")
        out: list[OpenTask] = []
        for task_id, task in ours.items():
            linked = contacts.get(task_id) or []
            if not linked:
                continue  # the contact was deleted
            created = parse_ts(task.get("hs_createdate")) or parse_ts(task.get("_created")) or 0.0
            out.append(
                OpenTask(
                    stream="contact",
                    lead_id=str(linked[0]),
                    rep_id=str(task["hubspot_owner_id"]),
                    task_id=task_id,
                    subject=str(task.get("hs_task_subject") or ""),
                    created_at=created,
                    due=parse_ts(task.get("hs_timestamp")),
                )
            )
        return out

    def rep_acted_since(self, stream: str, lead_id: str, rep_id: str, since: float) -> bool:
        self._stream(stream)
        for object_type in ACTED_TYPES:
            linked = self._associated([lead_id], object_type).get(lead_id) or []
            if not linked:
                continue
            objects = self._batch_read(object_type, linked, ["hubspot_owner_id", "hs_timestamp", "hs_createdate"])
            for obj in objects.values():
                if str(obj.get("hubspot_owner_id") or "") != rep_id:
                    continue
                when = max(parse_ts(obj.get("hs_timestamp")) or 0.0, parse_ts(obj.get("hs_createdate")) or 0.0)
                if when >= since:
                    return True
        return False

    def record_url(self, stream: str, lead_id: str) -> str:
        self._stream(stream)
        host = urlparse(self.base_url).hostname or ""
        if host.endswith("hubapi.com"):
            # api.hubapi.com -> app.hubspot.com, api-eu1.hubapi.com -> app-eu1.hubspot.com
            app = host.split(".", 1)[0].replace("api", "app", 1) + ".hubspot.com"
            portal = self._portal()
            if portal:
                return f"https://{app}/contacts/{portal}/record/{CONTACT_TYPE_ID}/{lead_id}"
            return f"https://{app}/contacts/record/{CONTACT_TYPE_ID}/{lead_id}"
        return f"{self.base_url}/contacts/{self._portal_id or 'sandbox'}/record/{CONTACT_TYPE_ID}/{lead_id}"

    def _portal(self) -> str | None:
        if self._portal_id is None:
            portal = self.http.account_details().get("portalId")
            self._portal_id = str(portal) if portal else None
            if self._portal_id is None:
                log.warning("hubspot portal id unknown; set account.portal_id in mappings/hubspot.yaml")
        return self._portal_id

    # -- admin

    def _properties(self) -> dict[str, Mapping[str, Any]]:
        resp = self._call(self.apis.properties.get_all, "contacts", archived=False)
        return {str(p["name"]): p for p in resp.body.get("results") or []}

    def check(self) -> list[str]:
        problems: list[str] = []
        quick = RetryPolicy(attempts=2, total_seconds=5.0, base=0.2, cap=1.0)
        saved, self.http.policy = self.http.policy, quick
        try:
            try:
                existing = self._properties()
            except StopSync as exc:
                return [str(exc)]
            except RetryLater:
                return [f"Cannot reach HubSpot at {self.base_url}: check HUBSPOT_BASE_URL and the network."]
            except ApiError as exc:
                return [f"HubSpot refused to list contact properties ({exc.status}): {exc.message}"]
            missing = [p for p in self.mapping.write.values() if p not in existing]
            if missing:
                problems.append(
                    f"The contact propert{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)} "
                    f"{'are' if len(missing) > 1 else 'is'} missing: run `leadscore setup` to create them."
                )
            unknown = [p for p in dict.fromkeys([*self.mapping.contact.read_fields().values(), *self._extra_props])
                       if p not in existing]
            if unknown:
                problems.append(
                    f"mappings/hubspot.yaml reads contact propert{'ies' if len(unknown) > 1 else 'y'} that HubSpot "
                    f"does not have: {', '.join(unknown)}; fix the names or create them."
                )
            for name, custom in self.mapping.contact.custom.items():
                have = existing.get(custom.property)
                kind = str((have or {}).get("type") or "")
                if have is not None and kind not in HUBSPOT_TYPES[custom.type]:
                    problems.append(
                        f"mappings/hubspot.yaml declares contact.custom.{name} as {custom.type}, but the HubSpot "
                        f"property {custom.property} is of type {kind}; fix the type or name another property."
                    )
            outcomes = self.mapping.outcomes
            if outcomes is not None:
                absent = [p for p in outcomes.contact_properties() if p not in existing]
                if absent:
                    problems.append(
                        f"The outcomes: section of mappings/hubspot.yaml reads contact "
                        f"propert{'ies' if len(absent) > 1 else 'y'} HubSpot does not have: {', '.join(absent)}; "
                        "fix the names (a lifecycle stage's internal value gives hs_lifecyclestage_<stage>_date)."
                    )
            probes: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
                (self.apis.contacts.get_page, (), {"limit": 1, "properties": ["email"]}),
                (self.apis.owners.get_page, (), {"limit": 1}),
            ]

            for op, args, kwargs in probes:
                try:
                    self._call(op, *args, **kwargs)
                except StopSync as exc:
                    if str(exc) not in problems:
                        problems.append(str(exc))
                except (RetryLater, ApiError):
                    continue
            if outcomes is not None and outcomes.deals is not None:  # outcomes from deals need their read scope
                try:
                    self._call(self.apis.objects.get_page, "deals", limit=1, properties=["dealstage"])
                except StopSync as exc:
                    problems.append(
                        "The outcomes: section of mappings/hubspot.yaml reads deals, but the private app lacks the "
                        "scope crm.objects.deals.read: add it in the app's settings (Scopes) and use the new token, "
                        "or remove outcomes.deals."
                        if "crm.objects.deals.read" in str(exc)
                        else f"The outcomes: section of mappings/hubspot.yaml reads deals, but HubSpot refused: {exc}"
                    )
                except (RetryLater, ApiError):
                    pass
            if self.mapping.activities.web == "events":
                refused = self._probe_events()
                if refused:
                    problems.append(refused)
        finally:
            self.http.policy = saved
        return problems

    def _probe_events(self) -> str | None:
        """A sentence when the portal refuses the events API that the mapping reads web activity from."""
        try:
            self._call(self.apis.events.get_types, refusals=(403,))
        except ApiError as exc:
            if exc.status != 403:
                return None
            self._refuse_events(f"{exc.status}: {exc.message}")
            fallback = "roll-up properties" if self.mapping.activities.rollups else "nowhere (no rollups are mapped)"
            return (
                f"HubSpot refuses the events API on this portal ({exc.status}: {exc.message}), which needs a "
                "Marketing, Sales, Service, Content or Data Hub Enterprise subscription: set activities.web: rollups "
                f"in mappings/hubspot.yaml (until then syncs take web activity from {fallback})."
            )
        except (RetryLater, StopSync, RecordError):
            return None
        return None

    def setup(self) -> list[str]:
        done: list[str] = []
        groups = self._call(self.apis.property_groups.get_all, "contacts")
        if not any(g.get("name") == GROUP for g in groups.body.get("results") or []):
            try:
                self._call(
                    self.apis.property_groups.create, "contacts",
                    {"name": GROUP, "label": GROUP_LABEL, "displayOrder": -1},
                )
                done.append(f"created the contact property group {GROUP}")
            except ApiError as exc:
                if exc.status != 409:  # 409: someone made it meanwhile
                    raise
        existing = self._properties()
        made: list[str] = []
        for engine, prop in self.mapping.write.items():
            kind, field_type, label, options = PROPERTY_SPECS[engine]
            have = existing.get(prop)
            if have is not None:
                if have.get("type") != kind:
                    done.append(
                        f"still to do: the contact property {prop} exists as type {have.get('type')}, "
                        f"but {engine} needs {kind}; rename it in mappings/hubspot.yaml or change it in HubSpot"
                    )
                elif options and not set(options) <= {str(o.get("value")) for o in have.get("options") or []}:
                    done.append(
                        f"still to do: the contact property {prop} lacks some of the options {', '.join(options)}; "
                        "add them in HubSpot"
                    )
                continue
            spec: dict[str, Any] = {
                "name": prop, "label": label, "type": kind, "fieldType": field_type, "groupName": GROUP,
            }
            if options:
                spec["options"] = [
                    {"label": o, "value": o, "displayOrder": n, "hidden": False} for n, o in enumerate(options)
                ]
            # one call per property (setup runs once; 409 means it appeared meanwhile)
            try:
                self._call(self.apis.properties.create, "contacts", spec)
                made.append(prop)
            except ApiError as exc:
                if exc.status != 409:
                    done.append(f"still to do: HubSpot refused to create {prop}: {exc.message}")
        if made:
            done.append(f"created the contact properties {', '.join(made)}")
        if not done:
            done.append(f"nothing to do: the group and {len(self.mapping.write)} properties exist")
        if self.mapping.activities.web == "events":
            refused = self._probe_events()
            if refused:
                done.append(f"still to do: {refused}")
        return done


_VALUES_PREFIX = "Property values were not valid: "


def property_problems(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The problems a VALIDATION_ERROR lists: HubSpot puts them as JSON after a fixed prefix of its message
    (`Property values were not valid: [{"isValid":false,"message":...,"error":"PROPERTY_DOESNT_EXIST",
    "name":"lead_band",...}]`); [] when the message is not of that form."""
    message = str(body.get("message") or "")
    if body.get("category") != "VALIDATION_ERROR" or not message.startswith(_VALUES_PREFIX):
        return []
    try:
        items = orjson.loads(message[len(_VALUES_PREFIX):])
    except orjson.JSONDecodeError:
        return []
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def problems_text(body: Mapping[str, Any]) -> str:
    """'lead_score: abc is not a valid number' for each problem listed ('' when none is)."""
    return "; ".join(f"{p.get('name')}: {p.get('message')}" for p in property_problems(body))


def property_refusal(body: Mapping[str, Any]) -> str | None:
    """One sentence for the admin when HubSpot refused a write because of a property itself, else None.

    PROPERTY_DOESNT_EXIST, READ_ONLY_VALUE and INVALID_OPTION (the property lacks an option the engine
    writes, such as a band) are about the portal's properties, not about one record: every batch would
    meet them. Other problems (a value of the wrong type) belong to the records that carry them.
    """
    for problem in property_problems(body):
        name = str(problem.get("name") or "?")
        code = str(problem.get("error") or "")
        if code == "PROPERTY_DOESNT_EXIST":
            return (f"HubSpot has no contact property {name} to write scores into: run `leadscore setup` to "
                    "create it, or fix its name under write: in mappings/hubspot.yaml.")  # fmt: skip
        if code == "READ_ONLY_VALUE":
            return (f"HubSpot refuses writes to the contact property {name}, which is read-only: name a property "
                    "the connector may write under write: in mappings/hubspot.yaml and run `leadscore setup`.")
        if code == "INVALID_OPTION":
            return (f"The HubSpot contact property {name} lacks an option the connector writes "
                    f"({problem.get('message') or 'not one of the allowed options'}): run `leadscore setup` to see "
                    "which options to add to it.")  # fmt: skip
    return None


# An entry of a 207's `errors` is the spec's StandardError, whose `status` is "the HTTP status code
# associated with the error" (contacts v3 spec, BatchResponseSimplePublicObjectWithErrors): a 5xx or
# 429 there is a record HubSpot could not write this time. The categories HubSpot gives such
# entries are unverified; these are the ones its error bodies use for passing trouble.
TRANSIENT_CATEGORIES = frozenset({"RATE_LIMITS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})


def transient_batch_error(err: Mapping[str, Any]) -> bool:
    """Whether one entry of a batch answer's `errors` is worth writing again later."""
    status = str(err.get("status") or "")
    if status.isdigit() and (int(status) >= 500 or int(status) == 429):
        return True
    return str(err.get("category") or "") in TRANSIENT_CATEGORIES


def _ids_in(err: Mapping[str, Any]) -> list[str]:
    """Record ids a batch error names (context.ids / context.id / id)."""
    out: list[str] = []
    if err.get("id") is not None:
        out.append(str(err["id"]))
    context = err.get("context")
    if isinstance(context, dict):
        for value in context.values():
            if isinstance(value, list):
                out += [str(v) for v in value]
            elif isinstance(value, str | int):
                out.append(str(value))
    return out
