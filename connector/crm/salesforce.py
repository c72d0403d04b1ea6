"""The Salesforce adapter: Leads and Contacts in, scores and owners out.

Built on simple-salesforce over one `ApiSession` (see salesforce_http.py): every call
has a timeout, is counted, waits for the org's shared rate limiter, stops before the
org's daily API budget is eaten into past the configured floor, and goes through the
one error table. Transient failures are retried by `call_with_retry`; an expired
session is refreshed once (OAuth refresh_token or client_credentials grant) and the
new token shared with every worker through Redis (encrypted, see TokenStore).

Reading: one SOQL query per stream, read a batch at a time. The cursor is the
`nextRecordsUrl` Salesforce gives (a short path with a query locator), so the pages
of a sync can be handed from task to task. Since API 56.0 a locator and its results
live two days after the initial query, with no limit on open cursors ("API Query
Cursor Limits"); reading one later answers INVALID_QUERY_LOCATOR, which stops the
stream with a sentence (an incremental sync then resumes from its high-water mark).

Owners: every Salesforce record has one. "Unowned" means owned by one of
`owners.unassigned` in mappings/salesforce.yaml (the integration user, a catch-all
user) or, with `owners.queues_are_unassigned`, by a queue (ids starting 00G).
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import redis
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.bulk2 import Operation, SFBulk2Handler

from connector.crm.base import (
    CallCounter,
    LeadOutcome,
    OpenTask,
    Page,
    WriteReport,
    task_ref_in,
    write_with_record_retries,
)
from connector.crm.limits import DEFAULT_POLICY, RetryPolicy, SlidingWindowLimiter, call_with_retry
from connector.crm.salesforce_http import (
    SESSION_EXPIRED,
    ApiSession,
    OAuthCredentials,
    SessionExpired,
    TokenStore,
    classify,
    error_detail,
    parse_limit_info,
    session_key,
)
from connector.crm.salesforce_records import (
    LINK_FIELDS,
    activity_from,
    build_soql,
    canonical_written,
    chunked,
    get_path,
    in_list_queries,
    iso_utc,
    parse_time,
    soql_datetime,
    soql_id,
    soql_string,
    source_fields,
    to_salesforce,
)
from connector.crm.salesforce_setup import SalesforceSetup
from connector.domain import LEARNED_FIELDS, WRITE_FIELDS, CrmName, Lead, Rep
from connector.errors import RecordError, RetryLater, StopSync, UserError
from connector.mappings.custom import SALESFORCE_TYPES, normalise
from connector.mappings.outcomes import SalesforceOutcomes, combine
from connector.mappings.salesforce import OBJECTS, SALESFORCE_ID, SalesforceMapping
from connector.redisutil import text as redis_text

API_VERSION = "59.0"
COMPOSITE_MAX = 200
# Per-record status codes of a write that pass by themselves: another transaction held the row
# (StatusCode UNABLE_TO_LOCK_ROW, SOAP/REST API "Core Data Types: StatusCode"). Written again later;
# every other per-record code (validation, field too long, ...) is reported and skipped.
TRANSIENT_RECORD_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})
BULK_WAIT_SECONDS = 600.0  # a closed job not finished by then is left to a later write
# How many of a rep's tasks on one record `find_task` reads (newest first) looking for a reference.
FIND_TASK_LIMIT = 50

# On every Lead write over REST, score writes included. Without it Salesforce runs the org's active
# lead assignment rule on each create *and update* (the header defaults to TRUE; REST API Developer
# Guide, "Assignment Rule Header"), which can hand a Lead that routing just gave a rep to a queue.
# Bulk API 2.0 has no such header: a job runs an assignment rule only when it names one
# (`assignmentRuleId`, "Create a Job"), and ours never does.
NO_AUTO_ASSIGN: Mapping[str, str] = {"Sforce-Auto-Assign": "FALSE"}

T = TypeVar("T")

# What each score field should be in Salesforce: accepted describe types, and how to
# tell an admin to create it.
FIELD_SPECS: Mapping[str, tuple[frozenset[str], str, str]] = {
    "score": (frozenset({"double", "int", "currency", "percent"}), "Number(18,0)", "Lead Score"),
    "fit": (frozenset({"double", "int", "currency", "percent"}), "Number(18,0)", "Lead Fit Score"),
    "engagement": (frozenset({"double", "int", "currency", "percent"}), "Number(18,0)", "Lead Engagement Score"),
    "band": (frozenset({"string", "picklist", "textarea"}), "Text(20)", "Lead Band"),
    "grade": (frozenset({"string", "picklist", "textarea"}), "Text(5)", "Lead Grade"),
    "reasons": (frozenset({"textarea", "string"}), "Long Text Area(32768)", "Lead Score Reasons"),
    "scored_at": (frozenset({"datetime"}), "Date/Time", "Lead Scored At"),
    "model": (frozenset({"string", "picklist", "textarea"}), "Text(80)", "Lead Score Model"),
    "probability": (frozenset({"double", "int", "percent"}), "Number(3,0)", "Lead Conversion Probability"),
    "factors": (frozenset({"textarea", "string"}), "Long Text Area(32768)", "Lead Probability Factors"),
}

# check() reaches the org once, quickly: an unreachable host is reported, not waited out.
_CHECK_POLICY = RetryPolicy(attempts=1, total_seconds=30.0)



class SalesforceAdapter:
    """CrmAdapter for one Salesforce org (see connector/crm/base.py for the contract)."""

    crm: CrmName = "salesforce"
    streams: tuple[str, ...] = OBJECTS
    outcome_streams: tuple[str, ...] = OBJECTS  # Lead read with its converted Leads, which the sync skips


    def __init__(
        self,
        *,
        instance_url: str,
        token: str,
        mapping: SalesforceMapping,
        redis: redis.Redis,
        ca_bundle: Path | None = None,
        oauth: OAuthCredentials | None = None,
        account: str = "default",
        timeout: float = 30.0,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        learned: bool = True,
    ) -> None:
        parsed = urlparse(instance_url)
        if parsed.scheme != "https" or not parsed.netloc:
            raise ValueError(f"instance_url must be an https:// URL, not {instance_url!r}")
        self.instance_url = instance_url.rstrip("/")
        self.mapping = mapping
        # The score fields read and checked. The learned probability's two fields only when a model store
        # is configured (`learned`): an org that never trains must not need them, or every query naming
        # them would fail with INVALID_FIELD until `leadscore setup` ran.
        self._score_fields = {
            engine: api
            for engine, api in mapping.write_fields.as_dict().items()
            if learned or engine not in LEARNED_FIELDS
        }
        self._converted_contacts: set[str] = set()  # 15-char ids of Contacts made from Leads read for outcomes
        self.account = account
        self._configured_token = token
        self._oauth = oauth
        self._policy = retry_policy
        self._redis = redis
        self._tokens = TokenStore(redis, account, session_key(token, oauth, account))
        self._usage_key = f"leadscore:salesforce:{account}:api_usage"
        self._limiter = SlidingWindowLimiter(
            client=redis,
            key=f"leadscore:salesforce:{account}:rate",
            limit=mapping.rate_limit.calls,
            window=mapping.rate_limit.seconds,
        )
        # A worker's threads share one adapter: check() and setup() exempt only their
        # own calls from the API floor, so the flag is per thread.
        self._local = threading.local()
        self.usage: tuple[int, int] | None = None
        self._session = ApiSession(timeout=timeout, before=self._before_call, after=self._after_call)
        if ca_bundle is not None:
            # The bundle counts even with REQUESTS_CA_BUNDLE set; HTTPS_PROXY / NO_PROXY still apply.
            self._session.use_ca_bundle(str(ca_bundle))
        self._token = self._tokens.get(token) or token
        self._sf = self._client(self._token)
        self._query_headers = {"Sforce-Query-Options": f"batchSize={mapping.page_size}"}

    # ------------------------------------------------------------------ plumbing

    def _client(self, token: str) -> Salesforce:
        return Salesforce(
            instance_url=self.instance_url,
            session_id=token,
            session=self._session,
            version=API_VERSION,
            object_pairs_hook=dict,
        )

    def _before_call(self, url: str) -> None:
        if url.startswith(self._token_url()):
            return
        if not getattr(self._local, "floor_exempt", False):
            self._check_floor()
        self._limiter.acquire()

    def _after_call(self, response: Any) -> None:
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.usage = usage
            self._redis.set(self._usage_key, f"{usage[0]}/{usage[1]}", ex=3600)

    def _shared_usage(self) -> tuple[int, int] | None:
        raw = self._redis.get(self._usage_key)
        if raw is None:
            return self.usage
        return parse_limit_info(f"api-usage={redis_text(raw)}") or self.usage

    def _floor_limit(self, total: int) -> int:
        return math.floor(total * (1 - self.mapping.api_floor_percent / 100))

    def _check_floor(self) -> None:
        usage = self._shared_usage()
        if usage is None:
            return
        used, total = usage
        if total > 0 and used >= self._floor_limit(total):
            raise StopSync(self._floor_sentence(used, total), resume_at=time.time() + 3600)

    def _floor_sentence(self, used: int, total: int) -> str:
        floor = self.mapping.api_floor_percent
        return (
            f"Salesforce API usage is at {used:,} of the org's {total:,} calls for the last 24 hours; "
            f"the connector stops at {100 - floor:g}% to leave {floor:g}% for other integrations "
            "(api_floor_percent in mappings/salesforce.yaml), and syncing can resume once older calls "
            "age out of the rolling 24-hour window"
        )

    def _token_url(self) -> str:
        if self._oauth is not None and self._oauth.token_url:
            return self._oauth.token_url
        return f"{self.instance_url}/services/oauth2/token"

    def _run(
        self,
        fn: Callable[[Salesforce], T],
        *,
        record_id: str | None = None,
        query: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> T:
        """One logical call: retried when transient, refreshed once on an expired session."""

        def attempt() -> T:
            for refreshed in (False, True):
                used_token = self._token
                try:
                    return fn(self._sf)
                except Exception as exc:
                    err = classify(
                        exc, instance_url=self.instance_url, record_id=record_id, query=query, usage=self.usage
                    )
                    if err is exc:
                        raise
                    if isinstance(err, RetryLater) and err.status == 403:  # the concurrency limit
                        self.calls.pushed_back()
                    # Keep the cause for the traceback, but not its frames' locals: they
                    # hold the HTTP response and with it an open connection.
                    traceback.clear_frames(exc.__traceback__)
                    if isinstance(err, SessionExpired) and not refreshed:
                        self._refresh(used_token)
                        continue
                    if isinstance(err, SessionExpired):
                        raise StopSync(SESSION_EXPIRED) from None
                    raise err from exc
            raise AssertionError("unreachable")

        return call_with_retry(attempt, policy or self._policy)

    def _refresh(self, expired: str) -> None:
        """Get a new session: another worker's (from Redis), else a refresh under a shared lock."""
        shared = self._tokens.get(self._configured_token)
        if shared and shared != expired:
            self._use(shared)
            return
        if self._oauth is None:
            raise StopSync(SESSION_EXPIRED)
        with self._tokens.lock():
            shared = self._tokens.get(self._configured_token)
            if shared and shared != expired:
                self._use(shared)
                return
            token = self._request_token(self._oauth)
            self._tokens.put(self._configured_token, token)
            self._use(token)

    def _request_token(self, oauth: OAuthCredentials) -> str:
        try:
            response = self._session.post(self._token_url(), data=oauth.form())
        except requests.RequestException as exc:
            raise classify(exc, instance_url=self.instance_url) from None
        if response.status_code >= 500:
            raise RetryLater(f"the Salesforce token endpoint answered {response.status_code}")
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = {}
        token = body.get("access_token") if isinstance(body, Mapping) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            code, message = error_detail(body)
            raise StopSync(
                f"{SESSION_EXPIRED} (the {oauth.grant} refresh was refused: {code or response.status_code}"
                f"{': ' + message if message else ''})"
            )
        return token

    def _use(self, token: str) -> None:
        self._token = token
        self._sf = self._client(token)

    # ------------------------------------------------------------------ SOQL helpers

    def _object(self, stream: str) -> str:
        if stream not in OBJECTS:
            raise ValueError(f"unknown Salesforce stream {stream!r}; expected one of {', '.join(OBJECTS)}")
        return stream

    def _select_list(self, stream: str) -> list[str]:
        fields = ["Id", "OwnerId", "SystemModstamp"]
        fields += self.mapping.objects[stream].read_fields().values()  # type: ignore[index]
        fields += self._score_fields.values()
        return list(dict.fromkeys(fields))

    def _base_where(self, stream: str) -> list[str]:
        return ["IsConverted = false"] if stream == "Lead" else []

    def _query_page(self, soql: str) -> dict[str, Any]:
        result: dict[str, Any] = self._run(lambda sf: sf.query(soql, headers=self._query_headers), query=soql)
        return result

    def _query_more(self, locator: str, soql: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._run(
            lambda sf: sf.query_more(locator, identifier_is_url=True, headers=self._query_headers),
            query=soql or locator,
        )
        return result

    def _query_all(self, soql: str) -> Iterator[dict[str, Any]]:
        """query_all_iter, one retried call per batch."""
        result = self._query_page(soql)
        while True:
            yield from result["records"]
            if result.get("done", True) or not result.get("nextRecordsUrl"):
                return
            result = self._query_more(result["nextRecordsUrl"], soql)

    # ------------------------------------------------------------------ reading

    def read_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        obj = self._object(stream)
        if cursor is None:
            where = self._base_where(obj)
            order = None
            if since is not None:
                # Inclusive: records stamped in the same second as the last high-water
                # mark are read again, and the caller dedupes by id.
                where.append(f"SystemModstamp >= {soql_datetime(since)}")
                order = "SystemModstamp ASC"
            result = self._query_page(build_soql(self._select_list(obj), obj, where, order_by=order))
        else:
            self._check_cursor(obj, cursor)
            result = self._query_more(cursor)
        leads: list[Lead] = []
        problems: list[tuple[str, str]] = []
        for record in result["records"]:
            try:
                leads.append(self._lead(obj, record))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append((str(record.get("Id", "?")), f"cannot be read: {exc}"))
        stamps = [lead.modified_at for lead in leads if lead.modified_at is not None]
        next_cursor = None if result.get("done", True) else result.get("nextRecordsUrl")
        total = result.get("totalSize") if cursor is None else None
        return Page(leads=leads, next_cursor=next_cursor, high_water=max(stamps) if stamps else None, problems=problems,
                    total=int(total) if isinstance(total, int) else None)

    # ------------------------------------------------------------------ outcomes (read for learning, never written)

    def _outcomes_config(self) -> SalesforceOutcomes:
        if self.mapping.outcomes is None:
            raise UserError(
                "mappings/salesforce.yaml has no outcomes: section, so nothing says what counts as won or lost; "
                "add one (the shipped file shows lead conversion, contact roles and a field)."
            )
        return self.mapping.outcomes

    def _outcome_defining_fields(self, obj: str) -> set[str]:
        outcomes = self.mapping.outcomes
        if outcomes is None:
            return set()
        out: set[str] = set()
        if outcomes.lead_conversion is not None and obj == "Lead":
            out.add("status")  # "Closed - Converted" says the Lead converted
        if outcomes.field is not None and obj in outcomes.field.objects:
            out.add(outcomes.field.name.lower())
        return out

    def outcome_profile_fields(self) -> frozenset[str]:
        fields: set[str] = set()
        for obj in OBJECTS:
            defining = self._outcome_defining_fields(obj)
            mapped = self.mapping.objects[obj].read_fields().items()  # type: ignore[index]
            fields |= {engine for engine, api in mapped if api.lower() in defining}
        return frozenset(fields)

    def _outcome_select(self, obj: str, outcomes: SalesforceOutcomes) -> list[str]:
        fields = self._select_list(obj)
        if obj == "Lead":
            fields += ["IsConverted", "ConvertedContactId"]
        conversion = outcomes.lead_conversion
        if obj == "Lead" and conversion is not None:
            fields += ["IsConverted", "ConvertedDate"]
            if conversion.won == "opportunity_won":
                fields += ["ConvertedOpportunity.IsWon", "ConvertedOpportunity.IsClosed"]
        rule = outcomes.field
        if rule is not None and obj in rule.objects:
            fields += [rule.name, *([rule.date] if rule.date else [])]
        return list(dict.fromkeys(fields))

    def read_outcome_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        """A page of Leads (converted ones included) or Contacts with their outcomes: conversion and field
        values ride along the page's query; Contacts' opportunities cost one OpportunityContactRole query
        per page (ids in IN lists).

        A converted Lead and the Contact it became are one person: read as the Lead (which has the
        history before the conversion), so Contacts named as a ConvertedContactId on Lead pages read
        earlier through this adapter are left out of Contact pages."""
        obj = self._object(stream)
        outcomes = self._outcomes_config()
        if cursor is None:
            where: list[str] = []
            order = None
            if since is not None:
                where.append(f"SystemModstamp >= {soql_datetime(since)}")
                order = "SystemModstamp ASC"
            result = self._query_page(build_soql(self._outcome_select(obj, outcomes), obj, where, order_by=order))
        else:
            self._check_cursor(obj, cursor)
            result = self._query_more(cursor)
        leads: list[Lead] = []
        problems: list[tuple[str, str]] = []
        found: dict[str, list[tuple[str, float | None]]] = {}
        for record in result["records"]:
            if obj == "Lead" and record.get("IsConverted") and record.get("ConvertedContactId"):
                self._converted_contacts.add(str(record["ConvertedContactId"])[:15])
            if obj == "Contact" and str(record.get("Id", ""))[:15] in self._converted_contacts:
                continue
            try:
                lead = self._lead(obj, record)
            except (KeyError, TypeError, ValueError) as exc:
                problems.append((str(record.get("Id", "?")), f"cannot be read: {exc}"))
                continue
            leads.append(lead)
            found[lead.id] = self._record_outcomes(obj, outcomes, record)
        if obj == "Contact" and outcomes.contact_roles is not None and leads:
            for contact_id, hits in self._role_outcomes(outcomes, [lead.id for lead in leads]).items():
                found.setdefault(contact_id, []).extend(hits)
        stamps = [lead.modified_at for lead in leads if lead.modified_at is not None]
        page = Page(
            leads=leads, next_cursor=None if result.get("done", True) else result.get("nextRecordsUrl"),
            high_water=max(stamps) if stamps else None, problems=problems,
        )  # fmt: skip
        for lead_id, hits in found.items():
            what, at = combine(hits)
            if what is not None:
                page.outcomes[lead_id] = LeadOutcome(what, at)
        return page

    @staticmethod
    def _record_outcomes(
        obj: str, outcomes: SalesforceOutcomes, record: Mapping[str, Any]
    ) -> list[tuple[str, float | None]]:
        hits: list[tuple[str, float | None]] = []
        conversion = outcomes.lead_conversion
        if obj == "Lead" and conversion is not None and record.get("IsConverted"):
            at = parse_time(record.get("ConvertedDate"))
            if conversion.won == "converted":
                hits.append(("won", at))
            else:
                opp = record.get("ConvertedOpportunity") or {}
                if opp.get("IsWon"):
                    hits.append(("won", at))
                elif opp.get("IsClosed"):
                    hits.append(("lost", at))
        rule = outcomes.field
        if rule is not None and obj in rule.objects:
            value = get_path(record, rule.name)
            at = parse_time(get_path(record, rule.date)) if rule.date else None
            if value is not None and str(value) in rule.won:
                hits.append(("won", at))
            elif value is not None and str(value) in rule.lost:
                hits.append(("lost", at))
        return hits

    def _role_outcomes(
        self, outcomes: SalesforceOutcomes, ids: Sequence[str]
    ) -> dict[str, list[tuple[str, float | None]]]:
        """Contact id -> outcome from its Opportunities (OpportunityContactRole): won when one IsWon (the
        earliest such CloseDate), lost when all are closed (the latest CloseDate)."""
        roles = outcomes.contact_roles
        assert roles is not None
        where = ["ContactId IN ({ids})"]
        if roles.roles:
            where.append("Role IN (" + ", ".join(soql_string(r) for r in roles.roles) + ")")
        template = build_soql(
            ["ContactId", "Opportunity.IsWon", "Opportunity.IsClosed", "Opportunity.CloseDate"],
            "OpportunityContactRole", where,
        )  # fmt: skip
        opps: dict[str, list[tuple[bool, bool, float | None]]] = {}
        by_prefix = {i[:15]: i for i in ids}
        for soql in in_list_queries(template, ids):
            for record in self._query_all(soql):
                contact = by_prefix.get(str(record.get("ContactId") or "")[:15])
                opp = record.get("Opportunity") or {}
                if contact is not None:
                    opps.setdefault(contact, []).append(
                        (bool(opp.get("IsWon")), bool(opp.get("IsClosed")), parse_time(opp.get("CloseDate")))
                    )
        out: dict[str, list[tuple[str, float | None]]] = {}
        for contact, rows in opps.items():
            won = [at for is_won, _, at in rows if is_won]
            if won:
                dated = [at for at in won if at is not None]
                out[contact] = [("won", min(dated) if dated else None)]
            elif all(closed for _, closed, _ in rows):
                dated = [at for _, _, at in rows if at is not None]
                out[contact] = [("lost", max(dated) if dated else None)]
        return out

    def _check_cursor(self, stream: str, cursor: str) -> None:
        # The cursor is a nextRecordsUrl from this API: a path under /services/data/.
        if not cursor.startswith("/services/data/") or "/query" not in cursor or "?" in cursor or "//" in cursor:
            raise ValueError(f"{cursor!r} is not a Salesforce query cursor for {stream}")

    def _lead(self, stream: str, record: Mapping[str, Any]) -> Lead:
        profile: dict[str, Any] = {}
        spec = self.mapping.objects[stream]  # type: ignore[index]
        for engine, api in spec.fields.items():
            value = get_path(record, api)
            if value is not None and value != "":
                profile[engine] = value
        for name, custom in spec.custom.items():
            value = normalise(get_path(record, custom.field), custom.type)
            if value is not None:
                profile[name] = value
        owner = record.get("OwnerId") or None
        written: dict[str, str] = {}
        for engine, api in self._score_fields.items():
            text = canonical_written(engine, record.get(api))
            if text is not None:
                written[engine] = text
        return Lead(
            crm="salesforce",
            object_type=stream,
            id=str(record["Id"]),
            profile=profile,
            # every Salesforce record has an owner; the integration user and queues mean "nobody yet"
            owner_id=None if self.mapping.owners.is_unassigned(owner) else owner,
            written=written,
            modified_at=parse_time(record.get("SystemModstamp")),
        )

    def get_leads(self, stream: str, ids: Sequence[str]) -> list[Lead]:
        obj = self._object(stream)
        template = build_soql(self._select_list(obj), obj, [*self._base_where(obj), "Id IN ({ids})"])
        leads: list[Lead] = []
        for soql in in_list_queries(template, ids):
            leads.extend(self._lead(obj, r) for r in self._query_all(soql))
        return leads

    # ------------------------------------------------------------------ activities

    def load_activities(self, leads: Sequence[Lead], now: float) -> None:
        acts = self.mapping.activities
        oldest = now - acts.lookback_days * 86400
        by_id: dict[str, Lead] = {}
        for lead in leads:
            lead.activities = []
            by_id[lead.id[:15]] = lead
        ids_by_stream: dict[str, list[str]] = {s: [ld.id for ld in leads if ld.object_type == s] for s in OBJECTS}
        for source_name, source in acts.sources.items():
            fields = source_fields(source_name, source, acts.rules)
            links = LINK_FIELDS[source_name]
            # Task and Event link either object through WhoId: one IN list for both.
            groups: dict[str, list[str]] = {}
            for stream, ids in ids_by_stream.items():
                groups.setdefault(links[stream], []).extend(ids)
            for link_field, ids in groups.items():
                if not ids:
                    continue
                template = build_soql(
                    fields, source_name, [f"{link_field} IN ({{ids}})", f"CreatedDate >= {soql_datetime(oldest)}"]
                )
                for soql in in_list_queries(template, ids):
                    for record in self._query_all(soql):
                        owner = by_id.get(str(record.get(link_field) or "")[:15])
                        if owner is None:
                            continue
                        activity = activity_from(source_name, source, acts.rules, record, oldest=oldest, now=now)
                        if activity is not None:
                            owner.activities.append(activity)
        for lead in leads:
            lead.activities.sort(key=lambda a: a.ts)

    # ------------------------------------------------------------------ writing

    def write_scores(
        self, stream: str, updates: Mapping[str, Mapping[str, str]], *, bulk: bool | None = None
    ) -> WriteReport:
        """Composite PATCH, 200 records a call; Bulk API 2.0 above `bulk_threshold` (or bulk=True)."""
        obj = self._object(stream)
        report = WriteReport()
        rows: list[tuple[str, dict[str, Any]]] = []
        names = self.mapping.write_fields
        for record_id, values in updates.items():
            if not SALESFORCE_ID.match(record_id):
                report.failed.append((record_id, "not a Salesforce record id"))
                continue
            try:
                fields = {
                    names.api(engine): to_salesforce(engine, value)
                    for engine, value in values.items()
                    if engine in WRITE_FIELDS
                }
            except ValueError as exc:
                report.failed.append((record_id, str(exc)))
                continue
            unknown = sorted(set(values) - set(WRITE_FIELDS))
            if unknown:
                report.failed.append((record_id, f"not score fields: {', '.join(unknown)}"))
                continue
            if fields:
                rows.append((record_id, fields))
        def write_once(batch: Mapping[str, Mapping[str, Any]]) -> WriteReport:
            once = WriteReport()
            todo = [(rid, dict(fields)) for rid, fields in batch.items()]
            use_bulk = bulk if bulk is not None else len(todo) > self.mapping.bulk_threshold
            try:
                if use_bulk and todo:
                    self._write_bulk(obj, todo, once)
                    return once
            except RetryLater as exc:
                once.retry.extend((rid, f"not written: {exc}") for rid, _ in todo)
                return once
            for chunk in chunked(todo, COMPOSITE_MAX):
                try:
                    self._write_composite(obj, chunk, once)
                except RetryLater as exc:
                    # Retries used up, nothing known of this call: its records are written again later.
                    once.retry.extend((rid, f"not written: {exc}") for rid, _ in chunk)
            return once

        report.merge(write_with_record_retries(write_once, dict(rows)))
        return report

    def _write_composite(self, obj: str, rows: Sequence[tuple[str, dict[str, Any]]], report: WriteReport) -> None:
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": obj}, "id": rid, **fields} for rid, fields in rows],
        }
        try:
            results = self._run(
                lambda sf: sf.restful("composite/sobjects", method="PATCH", json=body, headers=NO_AUTO_ASSIGN)
            )
        except RecordError as exc:
            # The whole request was refused (400): every record in it failed with that reason.
            report.failed.extend((rid, exc.message) for rid, _ in rows)
            return
        # Results come in request order; a failed one carries no id, so pair by position.
        for (rid, _), result in zip(rows, results or [], strict=False):
            if result.get("success"):
                report.written.append(rid)
            else:
                errors = result.get("errors") or []
                message = "; ".join(f"{e.get('statusCode', 'ERROR')}: {e.get('message', '')}".strip() for e in errors)
                passes = bool(errors) and all(e.get("statusCode") in TRANSIENT_RECORD_CODES for e in errors)
                said = message or "Salesforce did not save the record"
                (report.retry if passes else report.failed).append((rid, said))
        answered = len(results or [])
        # no result at all: whether it was saved is not known, and saving the same values again is harmless
        report.retry.extend((rid, "Salesforce gave no result for this record") for rid, _ in rows[answered:])

    def _write_bulk(self, obj: str, rows: Sequence[tuple[str, dict[str, Any]]], report: WriteReport) -> None:
        """One Bulk API 2.0 update job (CSV).

        A row is written when successfulResults lists it. Rows the job refused come back in
        failedResults (a row lock among them passes, the rest do not). Rows a Failed or Aborted
        job never reached are in neither, "not the same as failed rows" (Bulk API 2.0 Developer
        Guide, "Get Job Unprocessed Record Results"): not written, they go to report.retry.
        """
        columns = list(dict.fromkeys(name for _, fields in rows for name in fields))
        # In a Bulk API CSV an empty cell leaves the field as it is, which is what a
        # record that does not update that field wants.
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["Id", *columns])
        writer.writerows([rid, *(self._csv_value(fields.get(c)) for c in columns)] for rid, fields in rows)
        data = buf.getvalue()

        def job(sf: Salesforce) -> tuple[set[str], list[tuple[str, str]], str]:
            handler = SFBulk2Handler(sf.session_id, sf.bulk2_url, session=self._session)
            # The job's steps one by one: SFBulk2Type.update raises on a Failed job without its id,
            # and the id is what tells which rows were written.
            client = getattr(handler, obj)._client
            job_id = client.create_job(Operation.update)["id"]
            client.upload_job_data(job_id, data)
            client.close_job(job_id)
            info = self._wait_for_job(client, job_id)
            text = client.get_ingest_results(job_id, "successfulResults")
            written = {(row.get("sf__Id") or "")[:15] for row in csv.DictReader(io.StringIO(text))}
            failed: list[tuple[str, str]] = []
            if int(info.get("numberRecordsFailed") or 0):
                text = client.get_ingest_results(job_id, "failedResults")
                for row in csv.DictReader(io.StringIO(text)):
                    failed.append((row.get("sf__Id") or row.get("Id") or "?", row.get("sf__Error") or ""))
            return written, failed, str(info.get("errorMessage") or info.get("state") or "")

        written, failed, why = self._run(job)
        by_prefix = {rid[:15]: rid for rid, _ in rows}
        refused: set[str] = set()
        for rid, message in failed:
            full = by_prefix.get(rid[:15], rid)
            refused.add(full[:15])
            code = message.partition(":")[0]
            (report.retry if code in TRANSIENT_RECORD_CODES else report.failed).append((full, _bulk_message(message)))
        for rid, _ in rows:
            if rid[:15] in written:
                report.written.append(rid)
            elif rid[:15] not in refused:
                # Neither written nor refused: a row the job never processed (listed by unprocessedrecords).
                report.retry.append((rid, f"not processed: the bulk job stopped ({why})"))

    def _wait_for_job(self, client: Any, job_id: str) -> dict[str, Any]:
        """Poll a closed ingest job until it ends (JobComplete, Failed or Aborted)."""
        deadline = time.monotonic() + BULK_WAIT_SECONDS
        pause = 0.2
        while True:
            info: dict[str, Any] = client.get_job(job_id, False)
            if info.get("state") in ("JobComplete", "Failed", "Aborted"):
                return info
            if time.monotonic() > deadline:
                raise RetryLater(f"the Salesforce bulk job {job_id} did not finish within {BULK_WAIT_SECONDS} s")
            time.sleep(pause)
            pause = min(5.0, pause * 2)

    @staticmethod
    def _csv_value(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    # ------------------------------------------------------------------ reps and owners

    def list_reps(self) -> list[Rep]:
        region = self.mapping.reps.region_field
        fields = list(dict.fromkeys(["Id", "Name", "Email", "IsActive", "TimeZoneSidKey", region]))
        reps: list[Rep] = []
        for r in self._query_all(build_soql(fields, "User")):
            division = (r.get(region) or "").strip() or None
            reps.append(
                Rep(
                    id=r["Id"],
                    email=r.get("Email") or "",
                    name=r.get("Name") or "",
                    region=division,
                    active=bool(r.get("IsActive")),
                    timezone=r.get("TimeZoneSidKey") or "UTC",
                    teams=(division,) if division else (),
                )
            )
        return reps

    def _owner_of(self, obj: str, lead_id: str) -> str | None:
        soql = build_soql(["Id", "OwnerId"], obj, [f"Id = {soql_id(lead_id)}"])
        records = self._query_page(soql)["records"]
        if not records:
            raise RecordError(lead_id, f"no {obj} with this id")
        owner = records[0].get("OwnerId")
        return str(owner) if owner else None

    def set_owner(self, stream: str, lead_id: str, rep_id: str, *, expected: str | None = None) -> bool:
        obj = self._object(stream)
        if not SALESFORCE_ID.match(lead_id) or not SALESFORCE_ID.match(rep_id):
            raise RecordError(lead_id, "not a Salesforce record id")
        current = self._owner_of(obj, lead_id)
        if _same_id(current, rep_id):
            return True
        allowed = self.mapping.owners.is_unassigned(current) if expected is None else _same_id(current, expected)
        if not allowed:
            return False
        # Sforce-Auto-Assign: FALSE keeps the org's assignment rules from overriding us.
        self._run(
            lambda sf: sf.restful(
                f"sobjects/{obj}/{lead_id}",
                method="PATCH",
                json={"OwnerId": rep_id},
                headers=NO_AUTO_ASSIGN,
            ),
            record_id=lead_id,
        )
        return True

    # ------------------------------------------------------------------ tasks

    def create_task(self, stream: str, lead_id: str, rep_id: str, *, subject: str, body: str, due: float) -> str:
        self._object(stream)
        if not SALESFORCE_ID.match(lead_id) or not SALESFORCE_ID.match(rep_id):
            raise RecordError(lead_id, "not a Salesforce record id")
        task = {
            "WhoId": lead_id,
            "OwnerId": rep_id,
            "Subject": subject[:255],
            "Description": body,
            "ActivityDate": time.strftime("%Y-%m-%d", time.gmtime(due)),
            "Status": "Not Started",
            "Priority": "High",
        }
        attempts = 0

        def create(sf: Salesforce) -> str:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # Creating is not idempotent: after a failure the first POST may still
                # have landed (a timeout), so look for it before sending another: by the
                # routing reference in the body when there is one, else by the subject.
                ref = task_ref_in(body)
                existing = (
                    self._find_task(sf, lead_id, rep_id, ref)
                    if ref
                    else self._find_open_task(sf, lead_id, rep_id, task["Subject"])
                )
                if existing:
                    return existing
            result: Any = sf.restful("sobjects/Task", method="POST", json=task)
            return str(result["id"])

        return self._run(create, record_id=lead_id)

    def _find_open_task(self, sf: Salesforce, lead_id: str, rep_id: str, subject: str) -> str | None:
        soql = build_soql(
            ["Id"],
            "Task",
            [
                f"WhoId = {soql_id(lead_id)}",
                f"OwnerId = {soql_id(rep_id)}",
                f"Subject = {soql_string(subject)}",
                "Status = 'Not Started'",
            ],
            limit=1,
        )
        records = sf.query(soql)["records"]
        return str(records[0]["Id"]) if records else None

    def _find_task(self, sf: Salesforce, lead_id: str, rep_id: str, ref: str) -> str | None:
        # Description is a long text area, which SOQL cannot filter on: read the rep's tasks
        # on the record, newest first, and look for the reference in their text.
        soql = build_soql(
            ["Id", "Description"],
            "Task",
            [f"WhoId = {soql_id(lead_id)}", f"OwnerId = {soql_id(rep_id)}"],
            order_by="CreatedDate DESC",
            limit=FIND_TASK_LIMIT,
        )
        for record in sf.query(soql)["records"]:
            if task_ref_in(record.get("Description")) == ref:
                return str(record["Id"])
        return None

    def find_task(self, stream: str, lead_id: str, rep_id: str, ref: str) -> str | None:
        self._object(stream)
        if not SALESFORCE_ID.match(lead_id) or not SALESFORCE_ID.match(rep_id):
            return None
        return self._run(lambda sf: self._find_task(sf, lead_id, rep_id, ref), record_id=lead_id)

    def open_task(self, stream: str, lead_id: str, rep_id: str, subject_prefixes: Sequence[str]) -> str | None:
        self._object(stream)
        if not SALESFORCE_ID.match(lead_id) or not SALESFORCE_ID.match(rep_id) or not subject_prefixes:
            return None
        # the prefixes are routing's own headlines: plain words, no LIKE wildcards in them
        like = " OR ".join(f"Subject LIKE {soql_string(p + '%')}" for p in subject_prefixes)
        soql = build_soql(
            ["Id"],
            "Task",
            [f"WhoId = {soql_id(lead_id)}", f"OwnerId = {soql_id(rep_id)}", "IsClosed = false", f"({like})"],
            limit=1,
        )
        records = self._query_page(soql)["records"]
        return str(records[0]["Id"]) if records else None

    def open_routing_tasks(self, subject_prefixes: Sequence[str], since: float) -> list[OpenTask]:
        """Open Tasks created since `since` on a Lead or Contact whose subject starts with a prefix (one query)."""
        if not subject_prefixes:
            return []
        like = " OR ".join(f"Subject LIKE {soql_string(p + '%')}" for p in subject_prefixes)
        soql = build_soql(
            ["Id", "WhoId", "OwnerId", "Subject", "CreatedDate"],
            "Task",
            ["IsClosed = false", f"CreatedDate >= {soql_datetime(since)}", f"({like})"],
            order_by="CreatedDate",
        )
        streams = {"00Q": "Lead", "003": "Contact"}  # WhoId prefixes
        out: list[OpenTask] = []
        for record in self._query_all(soql):
            who, owner = str(record.get("WhoId") or ""), str(record.get("OwnerId") or "")
            stream = streams.get(who[:3])
            if stream is None or stream not in self.streams or not owner.startswith("005"):
                continue  # a task on something else, or owned by a queue
            out.append(
                OpenTask(
                    stream=stream,
                    lead_id=who,
                    rep_id=owner,
                    task_id=str(record["Id"]),
                    subject=str(record.get("Subject") or ""),
                    created_at=parse_time(record.get("CreatedDate")) or since,
                )
            )
        return out

    def task_is_open(self, task_id: str) -> bool:
        soql = build_soql(["Id", "IsClosed"], "Task", [f"Id = {soql_id(task_id)}"])
        records = self._query_page(soql)["records"]
        return bool(records) and not records[0].get("IsClosed")

    def rep_acted_since(self, stream: str, lead_id: str, rep_id: str, since: float) -> bool:
        """A closed Task (a logged call or email, or our task done) or an Event by the rep since `since`."""
        self._object(stream)
        who, owner, at = soql_id(lead_id), soql_id(rep_id), soql_datetime(since)
        queries = (
            build_soql(
                ["Id"],
                "Task",
                [f"WhoId = {who}", f"OwnerId = {owner}", "IsClosed = true", f"LastModifiedDate >= {at}"],
                limit=1,
            ),
            build_soql(["Id"], "Event", [f"WhoId = {who}", f"OwnerId = {owner}", f"CreatedDate >= {at}"], limit=1),
        )
        return any(self._query_page(soql)["records"] for soql in queries)

    def record_url(self, stream: str, lead_id: str) -> str:
        return f"{self.instance_url}/lightning/r/{self._object(stream)}/{lead_id}/view"

    # ------------------------------------------------------------------ setup and check

    def _describe(self, obj: str, policy: RetryPolicy | None = None) -> dict[str, dict[str, Any]]:
        result = self._run(lambda sf: sf.restful(f"sobjects/{obj}/describe"), policy=policy)
        return {f["name"].lower(): f for f in (result or {}).get("fields", [])}

    def _outcome_lines(self, described: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """What the `outcomes:` section needs and the integration user cannot read, one sentence each
        (`described`: the describes of Lead and Contact already read)."""
        outcomes = self.mapping.outcomes
        if outcomes is None:
            return []
        lines: list[str] = []
        needed: list[str] = []
        if outcomes.lead_conversion is not None and outcomes.lead_conversion.won == "opportunity_won":
            needed.append("Opportunity")
        if outcomes.contact_roles is not None:
            needed += ["Opportunity", "OpportunityContactRole"]
        for obj in dict.fromkeys(needed):
            try:
                self._describe(obj, _CHECK_POLICY)
            except RecordError:
                lines.append(
                    f"The outcomes: section of mappings/salesforce.yaml reads {obj}, which the integration user "
                    f"cannot see; give it Read access to {obj} (profile or permission set)"
                )
        rule = outcomes.field
        if rule is not None:
            for obj in rule.objects:
                fields = described[obj] if obj in described else self._describe(obj, _CHECK_POLICY)
                for name in (rule.name, rule.date):
                    if name is not None and name.lower() not in fields:
                        lines.append(
                            f"{obj}: the outcomes: section of mappings/salesforce.yaml reads the field {name}, "
                            f"which {obj} does not have; fix outcomes.field"
                        )
        return lines

    def _field_lines(self, obj: str, fields: Mapping[str, Mapping[str, Any]], *, all_lines: bool) -> list[str]:
        lines: list[str] = []
        for engine, api in self._score_fields.items():
            types, spec, label = FIELD_SPECS[engine]
            found = fields.get(api.lower())
            if found is None:
                lines.append(
                    f'{obj}: create the field {api} ({spec}), labelled "{label}", '
                    "and give the integration user Edit access to it"
                )
            elif found.get("type") not in types:
                lines.append(
                    f"{obj}: the field {api} is of type {found.get('type')}, but the connector writes {spec} "
                    f"values into it; change its type to {spec} or name another field in mappings/salesforce.yaml"
                )
            elif not found.get("updateable", False):
                lines.append(
                    f"{obj}: the field {api} ({spec}) is read-only for the integration user; "
                    "give that user Edit access to it in field-level security"
                )
            elif all_lines:
                lines.append(f"{obj}: the field {api} ({spec}) is in place")
        for engine, api in self.mapping.objects[obj].fields.items():  # type: ignore[index]
            name = api.split(".")[0]
            present = name.lower() in fields or any(
                str(f.get("relationshipName") or "").lower() == name.lower() for f in fields.values()
            )
            if not present:
                lines.append(
                    f"{obj}: mappings/salesforce.yaml reads {engine} from {api}, but {obj} has no field "
                    f"{name}; fix objects.{obj}.fields.{engine}"
                )
        for name, custom in self.mapping.objects[obj].custom.items():  # type: ignore[index]
            lines += _custom_field_lines(obj, name, custom.field, custom.type, fields)
        return lines

    def setup(self) -> list[str]:
        """Create the missing score fields (Tooling API) and the integration user's Edit access to them;
        one line per thing created or in place (connector/crm/salesforce_setup.py)."""
        self._local.floor_exempt = True
        try:
            return SalesforceSetup(self, FIELD_SPECS).run()
        finally:
            self._local.floor_exempt = False

    def check(self) -> list[str]:
        problems: list[str] = []
        self._local.floor_exempt = True
        try:
            described: dict[str, dict[str, dict[str, Any]]] = {
                obj: self._describe(obj, _CHECK_POLICY) for obj in OBJECTS
            }
            for obj in OBJECTS:
                problems += self._field_lines(obj, described[obj], all_lines=False)
            problems += self._outcome_lines(described)
        except (StopSync, RetryLater) as exc:
            return [*problems, _sentence(str(exc))]
        finally:
            self._local.floor_exempt = False
        if self.usage is not None:
            used, total = self.usage
            if total > 0 and used >= self._floor_limit(total):
                problems.append(_sentence(self._floor_sentence(used, total)))
        return problems

    def api_budget(self) -> tuple[int, int | None, str]:
        """(calls used, the org's allocation, its window) as Salesforce last reported in Sforce-Limit-Info."""
        usage = self._shared_usage()
        if usage is None:
            return 0, None, "last 24 h (not reported yet)"
        return usage[0], usage[1], "last 24 h"

    def preparing(self) -> str | None:
        return None  # every page reads its own activities

    def usage_line(self) -> str | None:
        """API usage as last seen, for the CLI: 'Salesforce API usage: 1,234 of 15,000 calls (8%) ...'."""
        if self.usage is None:
            return None
        used, total = self.usage
        share = 100 * used / total if total else 0.0
        return (
            f"Salesforce API usage: {used:,} of {total:,} calls in the last 24 hours ({share:.0f}%); "
            f"the connector stops at {100 - self.mapping.api_floor_percent:g}%"
        )

    @property
    def calls(self) -> CallCounter:
        """HTTP calls made (retries and token refreshes included), in total and per thread."""
        return self._session.calls

    @property
    def api_calls(self) -> int:
        return self._session.calls.total

    def close(self) -> None:
        self._session.close()


def _custom_field_lines(
    obj: str, name: str, api: str, declared: str, fields: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """What is wrong with a custom profile field the mapping reads, from the object's describe."""
    base = api.split(".")[0]
    if "." in api:
        if any(str(f.get("relationshipName") or "").lower() == base.lower() for f in fields.values()):
            return []  # a parent's field: its type is not in this describe
        return [f"{obj}: mappings/salesforce.yaml reads {name} from {api}, but {obj} has no relationship {base}; "
                f"fix objects.{obj}.custom.{name}"]
    found = fields.get(api.lower())
    if found is None:
        return [f"{obj}: mappings/salesforce.yaml reads {name} from {api}, but {obj} has no field {api} "
                f"(or the integration user cannot read it); fix objects.{obj}.custom.{name} or create the field"]
    kind = str(found.get("type") or "")
    if kind not in SALESFORCE_TYPES[declared]:
        return [f"{obj}: {name} is declared as {declared} in mappings/salesforce.yaml, but {api} is a {kind} field; "
                f"fix objects.{obj}.custom.{name}.type"]
    return []


def _same_id(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and str(a)[:15] == str(b)[:15]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _bulk_message(error: str) -> str:
    # sf__Error looks like "FIELD_CUSTOM_VALIDATION_EXCEPTION:Score too high:Lead_Score__c --".
    code, _, rest = error.partition(":")
    message = rest.rsplit(":", 1)[0] if rest.count(":") >= 1 else rest
    return f"{code}: {message}".strip(": ") if rest else error


__all__ = ["FIELD_SPECS", "OAuthCredentials", "SalesforceAdapter", "iso_utc"]
