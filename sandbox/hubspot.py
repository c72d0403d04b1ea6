"""The sandbox HubSpot: CRM v3 objects, properties, owners, associations v4 and events v3 over HTTP.

`build_app(population, store, token, ...)` returns the Starlette app. It follows
docs/crm-api-notes.md; where the real API and this disagree, this is wrong.

Records
- contacts: person i is contact id i + 1; contacts created through the API get ids
  after n. Values come from the Population, overlaid by the Store ("contacts", key i).
  Roll-ups (page views, visits, conversions, email opens...) are computed from the
  person's activities.
- engagements (emails, calls, meetings, notes): one object per email_* / call / meeting /
  note activity, id ENGAGEMENT_ID_BASE + activity id, associated with its contact.
- tasks: only those created through the API (Store "tasks", id TASK_ID_BASE + key).
- lifecycle stages with dates: `lifecyclestage` and `hs_lifecyclestage_<stage>_date` (the moment the
  contact entered each stage it passed through; sandbox.data.lifecycle_dates), and `hs_lead_status`,
  follow the population's hidden outcome (won: customer since the outcome; lost: a closed-lost deal,
  or UNQUALIFIED without a date; open: neither).
- deals (0-3): one per person who reached the opportunity stage, id DEAL_ID_BASE + person index,
  associated with its contact (HUBSPOT_DEFINED 3 deal->contact, 4 contact->deal): pipeline
  "default", dealstage closedwon / closedlost with `closedate` the outcome's moment, or an open stage
  with a closedate ahead. Deal ids, pipeline and stage ids are HubSpot's defaults (the "default"
  pipeline and its closedwon/closedlost stages, Deals and Pipelines specs under PublicApiSpecs/CRM/);
  `hs_is_closed_won` / `hs_is_closed` are HubSpot's calculated flags (names from HubSpot's default deal
  properties, not in the spec files: unverified).
- owners: the Population's reps; inactive reps are archived owners.
- events (/events/v3/events): page views (e_visited_page), form submissions
  (e_submitted_form) and webinar/event attendance (custom event types pe<portal>_...),
  of one contact (objectId) or, without objectId, of every contact in a time window, paged.
  Enterprise only: a portal of a lower tier
  (`Portal.tier`, `--hubspot-tier`) answers 403 (see EVENTS_TIER_STATUS).
- account details (/account-info/v3/details): the portal's id and time zone.

Limits: a rolling 10 s window per token (`rate`) with a daily budget that resets at
midnight in the portal's time zone (`Portal.time_zone`, reported by GET
/account-info/v3/details), rate-limit headers on every answer except search; search
has its own `search_rate` per second per account and sends no rate-limit headers.
Extra admin endpoint: `POST /__sandbox__/tokens {"token": "...", "scopes": [...]}`
adds a token with only those scopes (omit scopes for all).
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import heapq
import random
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.common import (
    Admission,
    Clock,
    DailyBudget,
    Faults,
    JsonResponse,
    RollingWindow,
    SandboxMiddleware,
    Stats,
    bearer_token,
    index_router,
    record_fault,
)
from sandbox.data import ACTIVITY_ID_STRIDE, DAY_MS, BaseIndex, Population, SandboxActivity, Store, lifecycle_dates
from sandbox.hubspot_ids import ENGAGEMENT_ID_BASE, ENGAGEMENT_KINDS
from sandbox.webhooks import WebhookEmitter, admin_routes

DEFAULT_RATE: Final = 190
DEFAULT_DAILY: Final = 500_000
DEFAULT_SEARCH_RATE: Final = 5
PORTAL_ID: Final = 24_681_357
DEFAULT_TIMEZONE: Final = "Europe/Berlin"  # the sandbox company's portal (its reps sit mostly in DACH)
# Search lags writes: "fresh changes take a few moments to show up in search" (docs/crm-api-notes.md;
# HubSpot documents no figure). Each contact write becomes searchable after a delay drawn between
# these bounds, so writes can also show up out of order. Unverified figures, kept easy to change.
DEFAULT_SEARCH_LAG_S: Final = (0.0, 3.0)
WINDOW_MS: Final = 10_000

LIST_LIMIT: Final = 100
SEARCH_LIMIT: Final = 200
SEARCH_CAP: Final = 10_000
BATCH_LIMIT: Final = 100
# v4 association batch read: at most 1,000 inputs per call (HubSpot Developer Changelog, "Bug Fix: Batch
# Read Limit for HubSpot Associations API", effective 2025-02-10).
ASSOC_BATCH_LIMIT: Final = 1000
# Associations returned per input before `paging.next.after` asks for the rest (sent back with the id).
# Unverified for batch read: the spec (PublicApiSpecs/CRM/Associations/Rollouts/130902/v4/associations.json)
# documents "Limit 500 per call" for GET /crm/v4/objects/{type}/{id}/associations/{toType} only.
ASSOC_PAGE_SIZE: Final = 500
# Calls HubSpot does not count in the ten-second window (the daily budget still counts them): v4
# association batch reads, per docs/crm-api-notes.md ("Found by holding the sandbox to the published
# specs"); not confirmed from the specs or docs reachable here.
TEN_SECOND_EXEMPT: Final = frozenset({"/crm/v4/associations/{from_type}/{to_type}/batch/read"})
OWNERS_LIMIT: Final = 500
EVENTS_LIMIT: Final = 1000  # unverified: events.json gives `limit` no maximum; the real one may differ
EVENT_POSITIONS: Final = 4096  # generated activities per contact the all-contacts event index can address
MAX_FILTER_GROUPS: Final = 5
MAX_FILTERS_PER_GROUP: Final = 6
MAX_FILTERS: Final = 18

# batch/update: a property that does not exist or is read-only, or an option an enumeration lacks,
# refuses the whole batch with 400 (confirmed: docs/crm-api-notes.md). Whether a value of the wrong
# type (a word for a number) does the same or fails only its record (207) is unverified: assumed
# to refuse the batch too. With False, such a record gets its own VALIDATION_ERROR in a 207.
VALUE_ERRORS_REFUSE_BATCH: Final = True
PROPERTY_ERRORS: Final = frozenset({"PROPERTY_DOESNT_EXIST", "READ_ONLY_VALUE", "INVALID_OPTION"})

TASK_ID_BASE: Final = 90_000_000_000

EVENT_PAGE_VIEW: Final = "e_visited_page"
EVENT_FORM: Final = "e_submitted_form"  # unverified name of the standard form-submission event
EVENT_CUSTOM: Final = {
    "webinar_registered": f"pe{PORTAL_ID}_webinar_registered",
    "webinar_attended": f"pe{PORTAL_ID}_webinar_attended",
    "event_attended": f"pe{PORTAL_ID}_event_attended",
}

OBJECT_TYPES: Final = ("contacts", "emails", "calls", "meetings", "notes", "tasks", "deals")
DEAL_ID_BASE: Final = 70_000_000_000
DEAL_PIPELINE: Final = "default"
OPEN_DEAL_STAGES: Final = ("appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
                           "contractsent")  # fmt: skip
DEAL_STAGES: Final = (*OPEN_DEAL_STAGES, "closedwon", "closedlost")
DEAL_PROPERTIES: Final = (
    "dealname", "pipeline", "dealstage", "closedate", "amount", "createdate", "hs_lastmodifieddate", "hs_object_id",
    "hs_is_closed_won", "hs_is_closed",
)  # fmt: skip
DEAL_DEFAULTS: Final = ("amount", "closedate", "createdate", "dealname", "dealstage", "hs_lastmodifieddate",
                        "hs_object_id", "pipeline")  # fmt: skip
_SINGULAR: Final = {
    "contacts": "contact",
    "emails": "email",
    "calls": "call",
    "meetings": "meeting",
    "notes": "note",
    "tasks": "task",
    "deals": "deal",
}
_OBJECT_TYPE_IDS: Final = {
    "0-1": "contacts",
    "0-49": "emails",
    "0-48": "calls",
    "0-47": "meetings",
    "0-46": "notes",
    "0-27": "tasks",
    "0-3": "deals",
    "deal": "deals",
    "contact": "contacts",
    "email": "emails",
    "call": "calls",
    "meeting": "meetings",
    "note": "notes",
    "task": "tasks",
}
# (from, to) -> default association type id
ASSOCIATION_TYPES: Final = {
    ("contacts", "emails"): 197,
    ("emails", "contacts"): 198,
    ("contacts", "calls"): 193,
    ("calls", "contacts"): 194,
    ("contacts", "meetings"): 199,
    ("meetings", "contacts"): 200,
    ("contacts", "notes"): 201,
    ("notes", "contacts"): 202,
    ("contacts", "tasks"): 203,
    ("tasks", "contacts"): 204,
    ("deals", "contacts"): 3,
    ("contacts", "deals"): 4,
}

CALL_DISPOSITIONS: Final = {  # HubSpot's default call outcome ids
    "Busy": "9d9162e7-6cf3-4944-bf63-4dff82258764",
    "Connected": "f240bbac-87c9-4f6e-bf70-924b57d47db7",
    "Left live message": "a4c4c377-d246-4b32-a13b-75a56a4cd0ff",
    "Left voicemail": "b2cf5968-551e-4856-9783-52b3da59a7d0",
    "No answer": "73a0d17f-1163-4015-bdd5-ec830791da20",
    "Wrong number": "17b47fee-58de-441e-a44c-c6300d46f273",
}

READ_SCOPES: Final = {
    "contacts": "crm.objects.contacts.read",
    "properties": "crm.schemas.contacts.read",
    "owners": "crm.objects.owners.read",
    "schemas": "crm.schemas.custom.read",
    "events": "crm.objects.contacts.read",
    "deals": "crm.objects.deals.read",
}
WRITE_SCOPES: Final = {"contacts": "crm.objects.contacts.write", "properties": "crm.schemas.contacts.write"}


# --------------------------------------------------------------------------- formatting


_ISO_DAYS: dict[int, str] = {}  # day number -> "YYYY-MM-DDT" (bounded below)
_ISO_SECONDS: dict[int, str] = {}  # second of the day -> "HH:MM:SS" (at most 86,400)
_ISO_MILLIS: Final = tuple(f".{m:03d}Z" for m in range(1000))


def iso_ms(ms: int) -> str:
    """HubSpot's datetime format: 2024-05-01T12:34:56.789Z."""
    day, rem = divmod(ms, 86_400_000)
    prefix = _ISO_DAYS.get(day)
    if prefix is None:
        t = time.gmtime(day * 86_400)
        prefix = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        if len(_ISO_DAYS) >= 100_000:
            _ISO_DAYS.clear()
        _ISO_DAYS[day] = prefix
    secs, milli = divmod(rem, 1000)
    clock = _ISO_SECONDS.get(secs)
    if clock is None:
        hours, rest = divmod(secs, 3600)
        mins, rest = divmod(rest, 60)
        clock = _ISO_SECONDS[secs] = f"{hours:02d}:{mins:02d}:{rest:02d}"
    return prefix + clock + _ISO_MILLIS[milli]


def iso_date(ms: int) -> str:
    t = time.gmtime(ms // 1000)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"


def parse_time_ms(value: Any) -> int | None:
    """Epoch ms from a number, a numeric string, an ISO datetime or a date; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return int(float(text))
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def error_body(
    message: str,
    category: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    context: Mapping[str, list[str]] | None = None,
    sub_category: str | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "error", "message": message, "correlationId": str(uuid.uuid4())}
    if errors is not None:
        body["errors"] = errors
    if context is not None:
        body["context"] = dict(context)
    if sub_category is not None:
        body["subCategory"] = sub_category
    if links is not None:
        body["links"] = dict(links)
    body["category"] = category
    return body


def error(status: int, message: str, category: str, **kw: Any) -> JsonResponse:
    return JsonResponse(error_body(message, category, **kw), status_code=status)


def validation_error(message: str, **kw: Any) -> JsonResponse:
    return error(400, message, "VALIDATION_ERROR", **kw)


def batch_error(
    category: str, message: str, context: Mapping[str, list[str]], sub: str | None = None
) -> dict[str, Any]:
    """One entry of a batch answer's `errors` (the SDK's StandardError needs every field)."""
    out: dict[str, Any] = {
        "status": "error",
        "category": category,
        "message": message,
        "context": dict(context),
        "errors": [],
        "links": {},
    }
    if sub is not None:
        out["subCategory"] = sub
    return out



def _not_found(object_type: str, missing: list[str]) -> dict[str, Any]:
    """HubSpot's batch error for ids that do not exist (batch read and batch update say the same)."""
    return batch_error(
        "OBJECT_NOT_FOUND",
        f"Could not get some {_SINGULAR[object_type].upper()} "
        "objects, they may be deleted or not exist. Check that ids are valid.",
        {"ids": missing},
    )

# A record of a valid batch that HubSpot could not write this time (an injected per-record fault).
# Shaped as the spec's StandardError (BatchResponseSimplePublicObjectWithErrors.errors[]), whose
# `status` is "the HTTP status code associated with the error"; the category and message HubSpot
# sends for a per-record server error are unverified.
RECORD_UNAVAILABLE_STATUS: Final = "503"
RECORD_UNAVAILABLE_CATEGORY: Final = "SERVICE_UNAVAILABLE"  # unverified


def _record_unavailable(object_id: str) -> dict[str, Any]:
    out = batch_error(
        RECORD_UNAVAILABLE_CATEGORY,
        f"The update of {object_id} could not be completed right now; try again later.",
        {"ids": [object_id]},
    )
    out["status"] = RECORD_UNAVAILABLE_STATUS
    return out


class ApiError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("api error")
        self.response = response


# --------------------------------------------------------------------------- properties


@dataclass
class PropertyDef:
    name: str
    label: str
    type: str
    field_type: str
    group_name: str
    description: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    read_only: bool = False
    calculated: bool = False
    hubspot_defined: bool = True
    has_unique_value: bool = False
    created_ms: int = 0
    display_order: int = -1

    def to_json(self) -> dict[str, Any]:
        created = iso_ms(self.created_ms or 1_500_000_000_000)
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group_name,
            "options": self.options,
            "displayOrder": self.display_order,
            "calculated": self.calculated,
            "externalOptions": False,
            "hasUniqueValue": self.has_unique_value,
            "hidden": False,
            "hubspotDefined": self.hubspot_defined,
            "archived": False,
            "createdAt": created,
            "updatedAt": created,
            "formField": not self.read_only,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
        }

    def option_values(self) -> set[str]:
        return {str(o["value"]) for o in self.options}


VALID_FIELD_TYPES: Final = {
    "string": {"text", "textarea", "html", "phonenumber", "file"},
    "number": {"number", "calculation_equation"},
    "date": {"date"},
    "datetime": {"date"},
    "enumeration": {"booleancheckbox", "checkbox", "radio", "select", "calculation_equation"},
    "bool": {"booleancheckbox"},
    "phone_number": {"phonenumber"},
}


def _opts(*values: str, labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return [
        {"label": (labels[k] if labels else v), "value": v, "displayOrder": k, "hidden": False}
        for k, v in enumerate(values)
    ]


LIFECYCLE_STAGES: Final = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)
# The date a contact entered each lifecycle stage (HubSpot's default contact properties).
LIFECYCLE_DATE_PROPERTIES: Final = {
    stage: f"hs_lifecyclestage_{stage}_date"
    for stage in ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                  "evangelist", "other")
}  # fmt: skip
_STAGE_LABELS: Final = {
    "subscriber": "Subscriber", "lead": "Lead", "marketingqualifiedlead": "Marketing Qualified Lead",
    "salesqualifiedlead": "Sales Qualified Lead", "opportunity": "Opportunity", "customer": "Customer",
    "evangelist": "Evangelist", "other": "Other",
}  # fmt: skip
LEAD_STATUSES: Final = (
    "NEW",
    "OPEN",
    "IN_PROGRESS",
    "OPEN_DEAL",
    "UNQUALIFIED",
    "ATTEMPTED_TO_CONTACT",
    "CONNECTED",
    "BAD_TIMING",
)


def _contact_properties(owner_options: list[dict[str, Any]]) -> dict[str, PropertyDef]:
    info, analytics, email, sales = "contactinformation", "analyticsinformation", "emailinformation", "sales_properties"
    defs = [
        PropertyDef("firstname", "First Name", "string", "text", info),
        PropertyDef("lastname", "Last Name", "string", "text", info),
        PropertyDef("email", "Email", "string", "text", info, has_unique_value=False),
        PropertyDef("jobtitle", "Job Title", "string", "text", info),
        PropertyDef("company", "Company Name", "string", "text", info),
        PropertyDef("industry", "Industry", "string", "text", info),
        PropertyDef("numberofemployees", "Number of Employees", "string", "text", info),
        PropertyDef("annualrevenue", "Annual Revenue", "string", "text", info),
        PropertyDef("country", "Country/Region", "string", "text", info),
        PropertyDef("state", "State/Region", "string", "text", info),
        PropertyDef("city", "City", "string", "text", info),
        PropertyDef("phone", "Phone Number", "string", "phonenumber", info),
        PropertyDef("website", "Website URL", "string", "text", info),
        PropertyDef("hs_lead_source", "Lead source", "string", "text", info),
        PropertyDef(
            "lifecyclestage", "Lifecycle Stage", "enumeration", "radio", info, options=_opts(*LIFECYCLE_STAGES)
        ),
        PropertyDef("hs_lead_status", "Lead Status", "enumeration", "radio", sales, options=_opts(*LEAD_STATUSES)),
        *(
            PropertyDef(name, f"Became a {_STAGE_LABELS[stage]} Date", "datetime", "date", info)
            for stage, name in LIFECYCLE_DATE_PROPERTIES.items()
        ),
        PropertyDef("hubspot_owner_id", "Contact owner", "enumeration", "select", sales, options=owner_options),
        PropertyDef("hs_object_id", "Record ID", "number", "number", info, read_only=True),
        PropertyDef("createdate", "Create Date", "datetime", "date", info, read_only=True),
        PropertyDef("lastmodifieddate", "Last Modified Date", "datetime", "date", info, read_only=True),
        PropertyDef(
            "hs_analytics_num_page_views",
            "Number of Pageviews",
            "number",
            "number",
            analytics,
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "hs_analytics_num_visits",
            "Number of Sessions",
            "number",
            "number",
            analytics,
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "hs_analytics_last_visit_timestamp",
            "Time of Last Session",
            "datetime",
            "date",
            analytics,
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "num_conversion_events",
            "Number of Form Submissions",
            "number",
            "number",
            "conversioninformation",
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "recent_conversion_date",
            "Recent Conversion Date",
            "datetime",
            "date",
            "conversioninformation",
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "recent_conversion_event_name",
            "Recent Conversion",
            "string",
            "text",
            "conversioninformation",
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "hs_email_open", "Marketing emails opened", "number", "number", email, read_only=True, calculated=True
        ),
        PropertyDef(
            "hs_email_click", "Marketing emails clicked", "number", "number", email, read_only=True, calculated=True
        ),
        PropertyDef(
            "hs_email_bounce", "Marketing emails bounced", "number", "number", email, read_only=True, calculated=True
        ),
        PropertyDef(
            "hs_email_last_open_date",
            "Last marketing email open date",
            "datetime",
            "date",
            email,
            read_only=True,
            calculated=True,
        ),
        PropertyDef(
            "hs_sales_email_last_replied",
            "Recent Sales Email Replied Date",
            "datetime",
            "date",
            email,
            read_only=True,
            calculated=True,
        ),
    ]
    for k, d in enumerate(defs):
        d.display_order = k
    return {d.name: d for d in defs}


DEFAULT_CONTACT_PROPERTIES: Final = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname")
ROLLUP_PROPERTIES: Final = frozenset(
    {
        "hs_analytics_num_page_views",
        "hs_analytics_num_visits",
        "hs_analytics_last_visit_timestamp",
        "num_conversion_events",
        "recent_conversion_date",
        "recent_conversion_event_name",
        "hs_email_open",
        "hs_email_click",
        "hs_email_bounce",
        "hs_email_last_open_date",
        "hs_sales_email_last_replied",
    }
)

_LIFECYCLE_DATE_NAMES: Final = frozenset(LIFECYCLE_DATE_PROPERTIES.values())

TASK_PROPERTIES: Final = {
    "hs_timestamp": ("datetime", None),
    "hs_task_subject": ("string", None),
    "hs_task_body": ("string", None),
    "hs_task_status": ("enumeration", ("NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED")),
    "hs_task_priority": ("enumeration", ("NONE", "LOW", "MEDIUM", "HIGH")),
    "hs_task_type": ("enumeration", ("EMAIL", "CALL", "TODO", "LINKED_IN")),
    "hubspot_owner_id": ("enumeration", None),
}
ENGAGEMENT_DEFAULTS: Final = {
    "emails": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
    "calls": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
    "meetings": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
    "notes": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
    "tasks": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
}


# --------------------------------------------------------------------------- the guard


TIERS: Final = ("free", "starter", "professional", "enterprise")
# What the events API (/events/v3/events, its event types too) answers a portal without an Enterprise
# subscription. The spec marks the API Enterprise-only (PublicApiSpecs/Events/Events/Rollouts/147897/v3/
# events.json: x-hubspot-product-tier-requirements ENTERPRISE for every hub); live portals below that tier
# were reported to answer 403 with a message asking for the event-detail-read or web-analytics-api-access
# scope, which private apps cannot be given there (public reports, e.g. PipedreamHQ/pipedream#11810).
# The status and that message are what is known; the category and the exact wording are unverified.
EVENTS_TIER_STATUS: Final = 403
EVENTS_TIER_MESSAGE: Final = "Insufficient scopes, requires one of: [event-detail-read,web-analytics-api-access]"
EVENTS_TIER_CATEGORY: Final = "MISSING_SCOPES"  # unverified


@dataclass(frozen=True)
class Portal:
    """The sandbox portal's account, as GET /account-info/v3/details reports it.

    Source: HubSpot's Account Info spec (PublicApiSpecs/Account/Account Info/Rollouts/144923/v3/
    accountInfo.json, PortalInformationResponse). The daily API limit resets at midnight in
    `time_zone`, the portal's own zone, not UTC.
    """

    portal_id: int = PORTAL_ID
    time_zone: str = DEFAULT_TIMEZONE
    # The highest subscription tier of the portal's hubs: the events API answers only on enterprise.
    tier: str = "enterprise"

    @property
    def has_events_api(self) -> bool:
        return self.tier == "enterprise"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def details(self, now: float) -> dict[str, Any]:
        offset = self.zone.utcoffset(dt.datetime.fromtimestamp(now, self.zone)) or dt.timedelta(0)
        ms = int(offset.total_seconds() * 1000)
        sign = "-" if ms < 0 else "+"
        hours, minutes = divmod(abs(ms) // 60_000, 60)
        return {
            "portalId": self.portal_id,
            "accountType": "STANDARD",
            "timeZone": self.time_zone,
            "companyCurrency": "EUR",
            "additionalCurrencies": ["USD", "GBP", "CHF"],
            "utcOffset": f"{sign}{hours:02d}:{minutes:02d}",
            "utcOffsetMilliseconds": ms,
            "uiDomain": "app-eu1.hubspot.com",
            "dataHostingLocation": "eu1",
        }


class HubSpotGuard:
    """Bearer tokens with scopes, the 10-second window, the daily budget and search's own limit."""

    def __init__(
        self, token: str, *, rate: int, daily: int, search_rate: int, zone: dt.tzinfo = dt.UTC
    ) -> None:
        self.tokens: dict[str, frozenset[str] | None] = {token: None}
        self.window = RollingWindow(rate, WINDOW_MS / 1000)
        self.daily = DailyBudget(daily, zone=zone)  # the portal's day: midnight in its own time zone
        self.search = RollingWindow(search_rate, 1.0)
        self.lock = threading.Lock()

    def add_token(self, token: str, scopes: Iterable[str] | None) -> None:
        with self.lock:
            self.tokens[token] = None if scopes is None else frozenset(scopes)

    def reset(self) -> None:
        self.window.reset()
        self.search.reset()
        self.daily.reset()

    def _limit_headers(self, remaining: int, daily_remaining: int) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Max": str(self.window.max_requests),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(WINDOW_MS),
            "X-HubSpot-RateLimit-Daily": str(self.daily.max_requests),
            "X-HubSpot-RateLimit-Daily-Remaining": str(daily_remaining),
        }

    @staticmethod
    def required_scope(method: str, template: str) -> str | None:
        if template.startswith("/crm/v3/properties"):
            return READ_SCOPES["properties"] if method == "GET" else WRITE_SCOPES["properties"]
        if template.startswith("/crm/v3/owners"):
            return READ_SCOPES["owners"]
        if template.startswith(("/crm/v3/schemas", "/crm-object-schemas/")):
            return READ_SCOPES["schemas"]
        if template.startswith("/events/"):
            return READ_SCOPES["events"]
        if template.startswith(("/crm/v3/objects/deals", "/crm/v3/objects/0-3")):
            return READ_SCOPES["deals"] if method == "GET" or template.endswith(("/search", "/batch/read")) else (
                "crm.objects.deals.write")
        if template.startswith(("/crm/v3/objects", "/crm/v4/")):
            reading = method == "GET" or template.endswith(("/search", "/batch/read"))
            return READ_SCOPES["contacts"] if reading else WRITE_SCOPES["contacts"]
        return None

    def admit(self, method: str, template: str, headers: Headers) -> Admission:
        token = bearer_token(headers)
        with self.lock:
            known = token is not None and token in self.tokens
            scopes = self.tokens.get(token) if token is not None else None
        if not known:
            return Admission(
                error(
                    401,
                    "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
                    "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                    "INVALID_AUTHENTICATION",
                )
            )
        assert token is not None
        needed = self.required_scope(method, template)
        if scopes is not None and needed is not None and needed not in scopes:
            return Admission(
                error(
                    403,
                    "This app hasn't been granted all required scopes to make this call. Read more about "
                    "required scopes here: https://developers.hubspot.com/scopes.",
                    "MISSING_SCOPES",
                    errors=[
                        {
                            "message": "One or more of the following scopes are required.",
                            "context": {"requiredGranularScopes": [needed]},
                        }
                    ],
                    links={"scopes": "https://developers.hubspot.com/scopes"},
                )
            )
        if template.endswith("/search"):
            allowed, _ = self.search.try_acquire("account")
            if not allowed:
                return Admission(self._rate_limited("secondly", "SECONDLY"), rate_limited=True)
            ok_daily, _ = self.daily.try_acquire("account")
            if not ok_daily:
                return Admission(self._rate_limited("daily", "DAILY"), rate_limited=True)
            return Admission()
        daily_left = self.daily.max_requests - self.daily.used("account")
        if daily_left <= 0:
            headers_out = self._limit_headers(self.window.remaining(token), 0)
            return Admission(self._rate_limited("daily", "DAILY"), headers_out, rate_limited=True)
        if template in TEN_SECOND_EXEMPT:
            _, daily_left = self.daily.try_acquire("account")
            return Admission(None, self._limit_headers(self.window.remaining(token), daily_left))
        allowed, remaining = self.window.try_acquire(token)
        if not allowed:
            headers_out = self._limit_headers(0, daily_left)
            return Admission(
                self._rate_limited("ten_secondly_rolling", "TEN_SECONDLY_ROLLING"), headers_out, rate_limited=True
            )
        _, daily_left = self.daily.try_acquire("account")
        return Admission(None, self._limit_headers(remaining, daily_left))

    @staticmethod
    def _rate_limited(name: str, policy: str) -> JsonResponse:
        return JsonResponse(
            {
                "status": "error",
                "message": f"You have reached your {name} limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": str(uuid.uuid4()),
                "policyName": policy,
            },
            status_code=429,
        )

    def fault(self, kind: str) -> Response:
        if kind == "429":
            return self._rate_limited("ten_secondly_rolling", "TEN_SECONDLY_ROLLING")
        if kind == "timeout":
            return error(504, "The request timed out.", "GATEWAY_TIMEOUT")
        return error(500, "internal error", "INTERNAL_ERROR")


# --------------------------------------------------------------------------- the CRM


@dataclass
class _Query:
    properties: list[str]
    archived: bool


_Shown = tuple[int, dict[str, str | None]] | None  # what search shows of a lately written contact


class SearchIndex:
    """What contact search sees: each write becomes searchable some moments after it is made.

    Until then search finds the contact as it was indexed before the write: at its previous
    `lastmodifieddate` with the values it had then (a contact created meanwhile is not found at
    all). Reads by id (GET, batch/read, list) see every write at once, as in HubSpot. Each write's
    delay is drawn between `lag_s` bounds (seeded); `clock` is the index's own, which
    `POST /__sandbox__/search` can move forward (`{"advance_s": N}`) or re-bound (`{"lag_s": [lo, hi]}`).
    """

    def __init__(self, lag_s: tuple[float, float] = DEFAULT_SEARCH_LAG_S, seed: int = 0) -> None:
        self.lag_s = lag_s
        self.clock = Clock()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # key -> writes not yet searchable, oldest first: (searchable at ms, modified ms)
        self._pending: dict[int, list[tuple[int, int]]] = {}
        # key -> what search shows meanwhile: (modified ms, values by name) or None (not indexed at all)
        self._shown: dict[int, tuple[int, dict[str, str | None]] | None] = {}

    def configure(self, lag_s: tuple[float, float]) -> None:
        with self._lock:
            self.lag_s = lag_s

    def written(self, key: int, before: tuple[int, dict[str, str | None]] | None, at_ms: int) -> None:
        """A write at `at_ms`; `before` is what search showed until now (None: nothing, a new contact)."""
        with self._lock:
            lo, hi = self.lag_s
            if hi <= 0 and key not in self._pending:
                return
            delay_ms = int(self._rng.uniform(lo, hi) * 1000) if hi > lo else int(lo * 1000)
            now_ms = int(self.clock() * 1000)
            if key not in self._pending:
                self._shown[key] = before
            else:  # still showing an older version: it keeps the old values of what this write changes too
                shown = self._shown.get(key)
                for name, value in (before[1] if before else {}).items():
                    if shown is not None:
                        shown[1].setdefault(name, value)
            self._pending.setdefault(key, []).append((now_ms + delay_ms, at_ms))

    def hidden(self) -> dict[int, tuple[int, dict[str, str | None]] | None]:
        """Contacts whose latest write search does not show yet -> what it shows instead: the
        modified ms and the values it had before (None: the contact is not found at all)."""
        now_ms = int(self.clock() * 1000)
        with self._lock:
            out: dict[int, tuple[int, dict[str, str | None]] | None] = {}
            for key in list(self._pending):
                waiting = self._pending[key]
                if all(visible <= now_ms for visible, _ in waiting):
                    del self._pending[key]
                    self._shown.pop(key, None)
                    continue
                if any(visible <= now_ms for visible, _ in waiting):
                    # a later write became searchable before an earlier one: search shows the later one
                    newest = max(modified for visible, modified in waiting if visible <= now_ms)
                    self._pending[key] = [(v, m) for v, m in waiting if m > newest]
                    self._shown[key] = (newest, {})  # (its values: the sandbox shows the current ones)
                out[key] = self._shown.get(key)
            return out

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


class HubSpotCrm:
    """The records behind the API: contacts, engagements, tasks, owners, properties."""

    webhooks: WebhookEmitter | None = None  # set by build_app; told about contact changes
    portal: Portal = Portal()  # set by build_app

    def __init__(self, population: Population, store: Store) -> None:
        self.pop = population
        self.store = store
        self.base = BaseIndex.of(population)
        self.reps = population.reps()
        self.owner_by_id = {r.id: r for r in self.reps}
        self.lock = threading.RLock()
        owner_options = _opts(*(r.id for r in self.reps), labels=[f"{r.name} ({r.email})" for r in self.reps])
        self.contact_props = _contact_properties(owner_options)
        self.groups: dict[str, dict[str, Any]] = {}
        for k, (name, label) in enumerate(
            (
                ("contactinformation", "Contact information"),
                ("analyticsinformation", "Web analytics history"),
                ("emailinformation", "Email information"),
                ("sales_properties", "Sales properties"),
                ("conversioninformation", "Conversion information"),
            )
        ):
            self.groups[name] = {"name": name, "label": label, "displayOrder": k, "archived": False}
        self.task_contacts: dict[int, list[int]] = {}  # task key -> contact keys
        self.contact_tasks: dict[int, list[int]] = {}  # contact key -> task keys
        self.search_index = SearchIndex((0.0, 0.0))  # build_app sets the portal's lag

    def write_contact(self, key: int, values: Mapping[str, str]) -> int:
        """Merge values into a contact (its lastmodifieddate moves); search sees it some moments later."""
        index = self.search_index
        before = (self.contact_modified_ms(key), self.contact_values(key, list(values))) if index.lag_s[1] > 0 else None
        at = self.store.write("contacts", key, dict(values))
        if before is not None:
            index.written(key, before, at)
        return at

    def create_contact(self, values: Mapping[str, str]) -> int:
        key = self.store.create("contacts", dict(values), first_key=self.pop.n)
        if self.search_index.lag_s[1] > 0:
            self.search_index.written(key, None, self.contact_created_ms(key))
        return key

    # ---- ids

    def contact_key(self, object_id: str) -> int | None:
        """The store key of a contact id, None when no such (live) contact exists."""
        if not object_id.isdigit():
            return None
        key = int(object_id) - 1
        if 0 <= key < self.pop.n:
            return key
        if self.store.created_ms("contacts", key) is not None:
            return key
        return None

    def contact_exists(self, key: int, archived: bool = False) -> bool:
        return self.store.is_archived("contacts", key) == archived

    @staticmethod
    def contact_id(key: int) -> str:
        return str(key + 1)

    def engagement(self, object_type: str, object_id: str) -> SandboxActivity | None:
        if not object_id.isdigit():
            return None
        raw = int(object_id) - ENGAGEMENT_ID_BASE
        if raw < 0:
            return None
        person, j = divmod(raw, ACTIVITY_ID_STRIDE)
        if person >= self.pop.n:
            return None
        acts = self.pop.activities(person)
        if j >= len(acts) or acts[j].kind not in ENGAGEMENT_KINDS[object_type]:
            return None
        return acts[j]

    def task_key(self, object_id: str) -> int | None:
        if not object_id.isdigit():
            return None
        key = int(object_id) - TASK_ID_BASE
        if key < 0 or self.store.created_ms("tasks", key) is None:
            return None
        return key

    # ---- contact values

    def contact_modified_ms(self, key: int) -> int:
        written = self.store.modified_ms("contacts", key)
        if written is not None:
            return written
        return self.pop.base_modified_ms(key)

    def contact_created_ms(self, key: int) -> int:
        if key < self.pop.n:
            return self.pop.person(key).created_ms
        created = self.store.created_ms("contacts", key)
        return created if created is not None else 0

    def base_contact_values(self, key: int, names: Iterable[str]) -> dict[str, str | None]:
        p = self.pop.person(key)
        rep_id = self.reps[p.owner].id if p.owner is not None else None
        values: dict[str, str | None] = {
            "firstname": p.first_name,
            "lastname": p.last_name,
            "email": p.email,
            "jobtitle": p.job_title or None,
            "company": p.company,
            "industry": p.industry,
            "numberofemployees": str(p.employees),
            "annualrevenue": None if p.annual_revenue is None else str(p.annual_revenue),
            "country": p.country,
            "state": p.state or None,
            "city": p.city,
            "phone": p.phone,
            "website": p.website,
            "lifecyclestage": p.lifecycle_stage,
            "hs_lead_status": p.lead_status or None,
            "hs_lead_source": p.lead_source,
            "hubspot_owner_id": rep_id,
        }
        if not ROLLUP_PROPERTIES.isdisjoint(names):
            values.update(self.rollups(key))
        if not _LIFECYCLE_DATE_NAMES.isdisjoint(names):
            dates = lifecycle_dates(p)
            for stage, name in LIFECYCLE_DATE_PROPERTIES.items():
                values[name] = iso_ms(dates[stage]) if stage in dates else None
        return values

    def rollups(self, key: int) -> dict[str, str | None]:
        visits_last = conv_last = open_last = reply_last = 0
        n_views = n_forms = n_open = n_click = n_bounce = 0
        days: set[int] = set()
        conv_name = None
        for a in self.pop.activities(key):
            kind = a.kind
            if kind == "page_view":
                n_views += 1
                ts = a.ts_ms
                days.add(ts // 86_400_000)
                if ts > visits_last:
                    visits_last = ts
            elif kind == "form_submission":
                n_forms += 1
                if a.ts_ms >= conv_last:
                    conv_last, conv_name = a.ts_ms, a.attrs.get("form_title")
            elif kind == "email_open":
                n_open += 1
                if a.ts_ms > open_last:
                    open_last = a.ts_ms
            elif kind == "email_click":
                n_click += 1
                n_open += 1
                if a.ts_ms > open_last:
                    open_last = a.ts_ms
            elif kind == "email_bounce":
                n_bounce += 1
            elif kind == "email_reply" and a.ts_ms > reply_last:
                reply_last = a.ts_ms
        return {
            "hs_analytics_num_page_views": str(n_views),
            "hs_analytics_num_visits": str(len(days)),
            "hs_analytics_last_visit_timestamp": iso_ms(visits_last) if visits_last else None,
            "num_conversion_events": str(n_forms),
            "recent_conversion_date": iso_ms(conv_last) if conv_last else None,
            "recent_conversion_event_name": conv_name,
            "hs_email_open": str(n_open),
            "hs_email_click": str(n_click),
            "hs_email_bounce": str(n_bounce),
            "hs_email_last_open_date": iso_ms(open_last) if open_last else None,
            "hs_sales_email_last_replied": iso_ms(reply_last) if reply_last else None,
        }

    def contact_values(self, key: int, names: Sequence[str]) -> dict[str, str | None]:
        """The named properties of one contact (None for no value); unknown names are left out."""
        written = self.store.values("contacts", key)
        base: dict[str, str | None] = {}
        if key < self.pop.n:
            base = self.base_contact_values(key, names)
        out: dict[str, str | None] = {}
        for name in names:
            if name == "hs_object_id":
                out[name] = self.contact_id(key)
            elif name == "lastmodifieddate":
                out[name] = iso_ms(self.contact_modified_ms(key))
            elif name == "createdate":
                out[name] = iso_ms(self.contact_created_ms(key))
            elif name in written:
                value = written[name]
                out[name] = None if value in ("", None) else str(value)
            elif name in base:
                out[name] = base[name]
            elif name in self.contact_props or name in ROLLUP_PROPERTIES:
                out[name] = None
        return out

    def contact_json(self, key: int, names: Sequence[str] | None, archived: bool = False) -> dict[str, Any]:
        props = self.contact_values(key, names or DEFAULT_CONTACT_PROPERTIES)
        body: dict[str, Any] = {
            "id": self.contact_id(key),
            "properties": props,
            "createdAt": iso_ms(self.contact_created_ms(key)),
            "updatedAt": iso_ms(self.contact_modified_ms(key)),
            "archived": archived,
        }
        if archived:
            body["archivedAt"] = iso_ms(self.contact_modified_ms(key))
        return body

    # ---- engagements

    def engagement_values(self, object_type: str, a: SandboxActivity) -> dict[str, str | None]:
        p = self.pop.person(a.person)
        owner = self.reps[p.owner].id if p.owner is not None else None
        at = iso_ms(a.ts_ms)
        values: dict[str, str | None] = {
            "hs_timestamp": at,
            "hs_createdate": at,
            "hs_lastmodifieddate": at,
            "hs_object_id": str(ENGAGEMENT_ID_BASE + a.id),
            "hubspot_owner_id": owner,
        }
        if object_type == "emails":
            incoming = a.kind == "email_reply"
            values.update(
                {
                    "hs_email_direction": "INCOMING_EMAIL" if incoming else "EMAIL",
                    "hs_email_subject": a.attrs.get("subject"),
                    "hs_email_status": "BOUNCED" if a.kind == "email_bounce" else "SENT",
                    "hs_email_open_count": "1" if a.kind in ("email_open", "email_click") else "0",
                    "hs_email_click_count": "1" if a.kind == "email_click" else "0",
                    "hs_email_text": None,
                }
            )
        elif object_type == "calls":
            disposition = a.attrs.get("disposition", "Connected")
            values.update(
                {
                    "hs_call_title": "Call with " + p.first_name + " " + p.last_name,
                    "hs_call_disposition": CALL_DISPOSITIONS.get(disposition, CALL_DISPOSITIONS["Connected"]),
                    "hs_call_direction": "OUTBOUND",
                    "hs_call_status": "COMPLETED",
                    "hs_call_duration": "300000" if disposition == "Connected" else "20000",
                }
            )
        elif object_type == "meetings":
            values.update(
                {
                    "hs_meeting_title": a.attrs.get("title"),
                    "hs_meeting_outcome": "COMPLETED",
                    "hs_meeting_start_time": at,
                    "hs_meeting_end_time": iso_ms(a.ts_ms + 1_800_000),
                }
            )
        elif object_type == "notes":
            values["hs_note_body"] = a.attrs.get("body")
        return values

    def engagement_json(self, object_type: str, a: SandboxActivity, names: Sequence[str] | None) -> dict[str, Any]:
        values = self.engagement_values(object_type, a)
        wanted = names or ENGAGEMENT_DEFAULTS[object_type]
        props = {n: values.get(n) for n in wanted if n in values or not names}
        at = iso_ms(a.ts_ms)
        return {
            "id": str(ENGAGEMENT_ID_BASE + a.id),
            "properties": props,
            "createdAt": at,
            "updatedAt": at,
            "archived": False,
        }

    def task_json(self, key: int, names: Sequence[str] | None) -> dict[str, Any]:
        written = self.store.values("tasks", key)
        created = self.store.created_ms("tasks", key) or 0
        modified = self.store.modified_ms("tasks", key) or created
        values: dict[str, str | None] = {k: (None if v in ("", None) else str(v)) for k, v in written.items()}
        values.update(
            {
                "hs_createdate": iso_ms(created),
                "hs_lastmodifieddate": iso_ms(modified),
                "hs_object_id": str(TASK_ID_BASE + key),
            }
        )
        wanted = names or ENGAGEMENT_DEFAULTS["tasks"]
        props = {n: values.get(n) for n in wanted if n in values or n in TASK_PROPERTIES}
        return {
            "id": str(TASK_ID_BASE + key),
            "properties": props,
            "createdAt": iso_ms(created),
            "updatedAt": iso_ms(modified),
            "archived": False,
        }

    def object_json(self, object_type: str, object_id: str, names: Sequence[str] | None) -> dict[str, Any] | None:
        if object_type == "contacts":
            key = self.contact_key(object_id)
            if key is None or self.store.is_archived("contacts", key):
                return None
            return self.contact_json(key, names)
        if object_type == "tasks":
            tkey = self.task_key(object_id)
            return None if tkey is None else self.task_json(tkey, names)
        if object_type == "deals":
            dkey = self.deal_key(object_id)
            return None if dkey is None else self.deal_json(dkey, names)
        a = self.engagement(object_type, object_id)
        return None if a is None else self.engagement_json(object_type, a, names)

    # ---- deals

    def has_deal(self, i: int) -> bool:
        """Whether person i has a deal: everyone who reached the opportunity stage (or beyond)."""
        p = self.pop.person(i)
        return p.lifecycle_stage in ("opportunity", "customer", "evangelist")

    def deal_key(self, object_id: str) -> int | None:
        if not object_id.isdigit():
            return None
        key = int(object_id) - DEAL_ID_BASE
        return key if 0 <= key < self.pop.n and self.has_deal(key) else None

    def deal_values(self, key: int) -> dict[str, str | None]:
        p = self.pop.person(key)
        anchor = self.pop.anchor_ms
        if p.outcome is not None and p.outcome_ms is not None and (p.outcome == "won" or p.outcome_dated):
            stage = "closedwon" if p.outcome == "won" else "closedlost"
            close = p.outcome_ms
            created = max(p.created_ms, close - 45 * DAY_MS)
        else:  # open: a stage on the way, closing some weeks ahead
            stage = OPEN_DEAL_STAGES[key % len(OPEN_DEAL_STAGES)]
            close = anchor + (14 + key % 60) * DAY_MS
            created = max(p.created_ms, anchor - (10 + key % 80) * DAY_MS)
        modified = max(created, min(close, anchor - 60_000))
        employees = p.employees if isinstance(p.employees, int) else 50
        values: dict[str, str | None] = {
            "dealname": f"{p.company} - measurement system",
            "pipeline": DEAL_PIPELINE,
            "dealstage": stage,
            "closedate": iso_ms(close),
            "amount": str(5_000 + (min(employees, 5000) * 37 + key * 131) % 120_000),
            "createdate": iso_ms(created),
            "hs_lastmodifieddate": iso_ms(modified),
            "hs_object_id": str(DEAL_ID_BASE + key),
            "hs_is_closed_won": "true" if stage == "closedwon" else "false",
            "hs_is_closed": "true" if stage in ("closedwon", "closedlost") else "false",
        }
        for name, value in self.store.values("deals", key).items():
            values[name] = None if value in ("", None) else str(value)
        return values

    def deal_json(self, key: int, names: Sequence[str] | None) -> dict[str, Any]:
        values = self.deal_values(key)
        wanted = names or DEAL_DEFAULTS
        return {
            "id": str(DEAL_ID_BASE + key),
            "properties": {n: values.get(n) for n in wanted if n in values},
            "createdAt": values["createdate"],
            "updatedAt": values["hs_lastmodifieddate"],
            "archived": False,
        }

    # ---- associations

    def associated(self, from_type: str, object_id: str, to_type: str) -> list[str] | None:
        """Ids associated with one object (None when the object does not exist)."""
        if from_type == "deals":
            dkey = self.deal_key(object_id)
            if dkey is None:
                return None
            return [self.contact_id(dkey)] if to_type == "contacts" else []
        if from_type == "contacts":
            key = self.contact_key(object_id)
            if key is None:
                return None
            if to_type == "deals":
                return [str(DEAL_ID_BASE + key)] if key < self.pop.n and self.has_deal(key) else []
            if to_type in ENGAGEMENT_KINDS:
                if key >= self.pop.n:
                    return []
                kinds = ENGAGEMENT_KINDS[to_type]
                return [str(ENGAGEMENT_ID_BASE + a.id) for a in self.pop.activities(key) if a.kind in kinds]
            if to_type == "tasks":
                with self.lock:
                    return [str(TASK_ID_BASE + t) for t in self.contact_tasks.get(key, [])]
            return []
        if to_type != "contacts":
            return [] if self.object_exists(from_type, object_id) else None
        if from_type == "tasks":
            tkey = self.task_key(object_id)
            if tkey is None:
                return None
            with self.lock:
                return [self.contact_id(c) for c in self.task_contacts.get(tkey, [])]
        a = self.engagement(from_type, object_id)
        return None if a is None else [self.contact_id(a.person)]

    def object_exists(self, object_type: str, object_id: str) -> bool:
        if object_type == "contacts":
            return self.contact_key(object_id) is not None
        if object_type == "tasks":
            return self.task_key(object_id) is not None
        if object_type == "deals":
            return self.deal_key(object_id) is not None
        return object_type in ENGAGEMENT_KINDS and self.engagement(object_type, object_id) is not None

    # ---- validation of writes

    def validate_contact_values(self, values: Mapping[str, Any]) -> tuple[dict[str, str], list[dict[str, str]]]:
        clean: dict[str, str] = {}
        problems: list[dict[str, str]] = []
        for name, raw in values.items():
            d = self.contact_props.get(name)
            if d is None:
                problems.append(
                    {
                        "isValid": "false",
                        "message": f'Property "{name}" does not exist',
                        "error": "PROPERTY_DOESNT_EXIST",
                        "name": name,
                    }
                )
                continue
            if d.read_only:
                problems.append(
                    {
                        "isValid": "false",
                        "message": f'"{name}" is a read only property; its value cannot be set.',
                        "error": "READ_ONLY_VALUE",
                        "name": name,
                    }
                )
                continue
            problem = check_value(
                d.type, d.field_type, d.option_values() if d.type == "enumeration" else None, name, raw
            )
            if problem is not None:
                problems.append(problem)
                continue
            clean[name] = "" if raw is None else _as_text(raw)
        return clean, problems


def _as_text(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def check_value(ptype: str, field_type: str, options: set[str] | None, name: str, raw: Any) -> dict[str, str] | None:
    """None when `raw` is a valid value for the property, else HubSpot's per-property problem."""
    if raw is None or raw == "":
        return None
    text = _as_text(raw)

    def bad(message: str, code: str = "INVALID_VALUE") -> dict[str, str]:
        return {"isValid": "false", "message": message, "error": code, "name": name}

    if ptype == "number":
        try:
            float(text)
        except ValueError:
            return bad(f"{text} is not a valid number", "INVALID_FLOAT")
    elif ptype == "bool":
        if text.lower() not in ("true", "false"):
            return bad(f"{text} is not a valid boolean (true or false)", "INVALID_BOOLEAN")
    elif ptype in ("date", "datetime"):
        if parse_time_ms(text) is None:
            return bad(f"{text} is not a valid {ptype}", "INVALID_DATE")
    elif ptype == "enumeration" and options is not None:
        chosen = text.split(";") if field_type == "checkbox" else [text]
        for value in chosen:
            if value not in options:
                allowed = ", ".join(sorted(options))
                return bad(f"{value} was not one of the allowed options: [{allowed}]", "INVALID_OPTION")
    return None


def _validation_message(problems: list[dict[str, str]]) -> str:
    """HubSpot's 400 message for invalid property values: the problems as JSON after a fixed prefix
    (as real answers show, e.g. `Property values were not valid: [{"isValid":false,"message":"Property
    \\"x\\" does not exist","error":"PROPERTY_DOESNT_EXIST","name":"x","localizedErrorMessage":...,
    "portalId":...}]`), each problem once."""
    seen: set[tuple[str, str, str]] = set()
    items = []
    for p in problems:
        key = (p["name"], p["error"], p["message"])
        if key in seen:
            continue
        seen.add(key)
        items.append({"isValid": False, "message": p["message"], "error": p["error"], "name": p["name"],
                      "localizedErrorMessage": p["message"], "portalId": PORTAL_ID})  # fmt: skip
    return "Property values were not valid: " + orjson.dumps(items).decode()


# --------------------------------------------------------------------------- search


_OPERATORS: Final = frozenset(
    {
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    }
)
_TIME_PROPS: Final = frozenset(
    {"lastmodifieddate", "createdate", "hs_lastmodifieddate", "hs_createdate", "hs_timestamp"}
)
_NUMERIC_PROPS: Final = frozenset({"hs_object_id"})


@dataclass
class Filter:
    prop: str
    op: str
    value: Any = None
    high: Any = None
    values: list[Any] = field(default_factory=list)

    def _norm(self, v: Any) -> Any:
        if v is None:
            return None
        if self.prop in _TIME_PROPS:
            return parse_time_ms(v)
        if self.prop in _NUMERIC_PROPS:
            try:
                return int(float(str(v)))
            except ValueError:
                return None
        return _as_text(v)

    def matches(self, actual: str | None) -> bool:
        if self.op == "HAS_PROPERTY":
            return actual not in (None, "")
        if self.op == "NOT_HAS_PROPERTY":
            return actual in (None, "")
        if actual in (None, ""):
            return self.op in ("NEQ", "NOT_IN", "NOT_CONTAINS_TOKEN")
        have = self._norm(actual)
        if have is None:
            return False
        if self.op in ("IN", "NOT_IN"):
            inside = any(self._eq(have, self._norm(v)) for v in self.values)
            return inside if self.op == "IN" else not inside
        if self.op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            token = str(self.value).strip("*").lower()
            found = token in str(actual).lower()
            return found if self.op == "CONTAINS_TOKEN" else not found
        want = self._norm(self.value)
        if want is None:
            return False
        if self.op == "EQ":
            return self._eq(have, want)
        if self.op == "NEQ":
            return not self._eq(have, want)
        try:
            if self.op == "BETWEEN":
                high = self._norm(self.high)
                return high is not None and bool(want <= have <= high)
            return bool({"LT": have < want, "LTE": have <= want, "GT": have > want, "GTE": have >= want}[self.op])
        except TypeError:
            return False

    @staticmethod
    def _eq(a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str):
            return a.lower() == b.lower()
        return bool(a == b)

    def time_range(self) -> tuple[int | None, int | None] | None:
        """The inclusive ms range this filter allows on a time property (None: not a range)."""
        want = parse_time_ms(self.value)
        if self.op == "EQ" and want is not None:
            return want, want
        if self.op == "GT" and want is not None:
            return want + 1, None
        if self.op == "GTE" and want is not None:
            return want, None
        if self.op == "LT" and want is not None:
            return None, want - 1
        if self.op == "LTE" and want is not None:
            return None, want
        if self.op == "BETWEEN":
            high = parse_time_ms(self.high)
            if want is not None and high is not None:
                return want, high
        return None


def parse_search(body: Any) -> tuple[list[list[Filter]], tuple[str, bool] | None, int, int, list[str] | None, str]:
    """(groups, (sort property, descending) or None, limit, offset, properties, query); raises ApiError."""
    if not isinstance(body, dict):
        raise ApiError(validation_error("Invalid input JSON on line 1, column 1: the body must be a JSON object"))
    groups_raw = body.get("filterGroups") or []
    if not isinstance(groups_raw, list):
        raise ApiError(validation_error("filterGroups must be a list"))
    if len(groups_raw) > MAX_FILTER_GROUPS:
        raise ApiError(
            validation_error(f"Too many filter groups ({len(groups_raw)}); the maximum is {MAX_FILTER_GROUPS}.")
        )
    groups: list[list[Filter]] = []
    total = 0
    for g in groups_raw:
        filters_raw = (g or {}).get("filters") or [] if isinstance(g, dict) else []
        if len(filters_raw) > MAX_FILTERS_PER_GROUP:
            raise ApiError(
                validation_error(
                    f"Too many filters in a group ({len(filters_raw)}); the maximum is {MAX_FILTERS_PER_GROUP}."
                )
            )
        total += len(filters_raw)
        group = []
        for f in filters_raw:
            if not isinstance(f, dict) or not f.get("propertyName"):
                raise ApiError(validation_error("Each filter needs a propertyName and an operator"))
            op = str(f.get("operator", "EQ")).upper()
            if op not in _OPERATORS:
                raise ApiError(validation_error(f"Unknown filter operator '{op}'"))
            if op in ("IN", "NOT_IN") and not isinstance(f.get("values"), list):
                raise ApiError(validation_error(f"Operator {op} needs a list of values"))
            if op == "BETWEEN" and f.get("highValue") is None:
                raise ApiError(validation_error("Operator BETWEEN needs a value and a highValue"))
            group.append(
                Filter(str(f["propertyName"]), op, f.get("value"), f.get("highValue"), list(f.get("values") or []))
            )
        groups.append(group)
    if total > MAX_FILTERS:
        raise ApiError(validation_error(f"Too many filters ({total}); the maximum is {MAX_FILTERS} in total."))
    sorts = body.get("sorts") or []
    sort: tuple[str, bool] | None = None
    if sorts:
        if len(sorts) > 1:
            raise ApiError(validation_error("Only one sort is supported"))
        s = sorts[0]
        if isinstance(s, str):
            sort = (s.lstrip("-"), s.startswith("-"))
        elif isinstance(s, dict) and s.get("propertyName"):
            sort = (str(s["propertyName"]), str(s.get("direction", "ASCENDING")).upper() == "DESCENDING")
        else:
            raise ApiError(validation_error("A sort needs a propertyName"))
    try:
        raw_limit = body.get("limit")
        limit = int(raw_limit) if raw_limit is not None else 10
        offset = int(body.get("after") or 0)
    except (TypeError, ValueError):
        raise ApiError(validation_error("limit and after must be numbers")) from None
    if limit < 1 or limit > SEARCH_LIMIT:
        raise ApiError(validation_error(f"limit must be between 1 and {SEARCH_LIMIT}, not {limit}"))
    if offset < 0:
        raise ApiError(validation_error("after must not be negative"))
    if offset + limit > SEARCH_CAP:
        raise ApiError(
            validation_error(
                f"The search API returns at most {SEARCH_CAP} results per query; after={offset} with limit={limit} "
                "goes past that. Narrow the query (for example on lastmodifieddate) instead of paging further."
            )
        )
    props = body.get("properties")
    properties = [str(p) for p in props] if isinstance(props, list) and props else None
    return groups, sort, limit, offset, properties, str(body.get("query") or "")


# --------------------------------------------------------------------------- the app


class HubSpotApi:
    association_page_size: int = ASSOC_PAGE_SIZE  # per input of a v4 association batch read

    def __init__(self, crm: HubSpotCrm) -> None:
        self.crm = crm
        self._events_lock = threading.Lock()
        self._event_order: dict[str, list[int]] | None = None  # see _event_index
        self._event_added: set[int] = set()
        self.stats: Stats | None = None  # set by build_app: record writes are counted there

    # ---- helpers

    @staticmethod
    def _properties_param(request: Request) -> list[str] | None:
        names: list[str] = []
        for raw in request.query_params.getlist("properties"):
            names.extend(p.strip() for p in raw.split(",") if p.strip())
        return names or None

    @staticmethod
    def _bool_param(request: Request, name: str) -> bool:
        return request.query_params.get(name, "false").lower() == "true"

    @staticmethod
    def _int_param(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ApiError(validation_error(f"{name} must be an integer, not '{raw}'")) from None

    @staticmethod
    async def _json(request: Request) -> Any:
        body = await request.body()
        try:
            return orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as exc:
            raise ApiError(validation_error(f"Invalid input JSON: {exc}")) from None

    @staticmethod
    def _object_type(request: Request) -> str:
        raw = request.path_params.get("object_type", "contacts")
        object_type = _OBJECT_TYPE_IDS.get(raw, raw)
        if object_type not in OBJECT_TYPES:
            raise ApiError(error(400, f"Unable to infer object type from: {raw}", "VALIDATION_ERROR"))
        return str(object_type)

    def _not_found(self, object_type: str, object_id: str) -> JsonResponse:
        return error(
            404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND", context={"id": [object_id]}
        )

    # ---- list / get

    async def list_objects(self, request: Request) -> Response:
        object_type = self._object_type(request)
        limit = self._int_param(request, "limit", 10)
        if limit < 1 or limit > LIST_LIMIT:
            return validation_error(
                f"limit must be between 1 and {LIST_LIMIT}, not {limit}", context={"limit": [str(limit)]}
            )
        names = self._properties_param(request)
        archived = self._bool_param(request, "archived")
        after = request.query_params.get("after")
        start = 0
        if after:
            if not after.isdigit():
                return validation_error(f"after must be a paging cursor from a previous page, not '{after}'")
            start = int(after)
        if object_type == "contacts":
            results, next_after = self._list_contacts(start, limit, names, archived)
        elif object_type == "tasks":
            results, next_after = self._list_tasks(start, limit, names, archived)
        elif object_type == "deals":
            results, next_after = self._list_deals(start, limit, names, archived)
        else:
            results, next_after = self._list_engagements(object_type, start, limit, names, archived)
        for result in results:
            self._add_associations(request, object_type, result)
        body: dict[str, Any] = {"results": results}
        if next_after is not None:
            link = f"{request.url.path}?after={next_after}"
            body["paging"] = {"next": {"after": next_after, "link": link}}
        return JsonResponse(body)

    def _list_contacts(
        self, start: int, limit: int, names: list[str] | None, archived: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Contacts in id order from key `start` (the cursor is the next key)."""
        crm = self.crm
        results: list[dict[str, Any]] = []
        created = crm.store.created_keys("contacts")
        key = start
        n = crm.pop.n
        ci = 0
        while len(results) < limit:
            if key < n:
                candidate = key
            else:
                while ci < len(created) and created[ci] < key:
                    ci += 1
                if ci >= len(created):
                    return results, None
                candidate = created[ci]
            if crm.store.is_archived("contacts", candidate) == archived:
                results.append(crm.contact_json(candidate, names, archived))
            key = candidate + 1
        more = key < n or any(c >= key for c in created)
        return results, (str(key) if more else None)

    def _list_tasks(
        self, start: int, limit: int, names: list[str] | None, archived: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        if archived:
            return [], None
        keys = [k for k in self.crm.store.created_keys("tasks") if k >= start]
        page = keys[:limit]
        results = [self.crm.task_json(k, names) for k in page]
        return results, (str(keys[limit]) if len(keys) > limit else None)

    def _list_deals(
        self, start: int, limit: int, names: list[str] | None, archived: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Deals in id order; the cursor is the next person index."""
        if archived:
            return [], None
        crm = self.crm
        results: list[dict[str, Any]] = []
        key = start
        while key < crm.pop.n:
            if crm.has_deal(key):
                if len(results) == limit:
                    return results, str(key)
                results.append(crm.deal_json(key, names))
            key += 1
        return results, None

    def _list_engagements(
        self, object_type: str, start: int, limit: int, names: list[str] | None, archived: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Engagements in id order; the cursor is the next raw activity id."""
        if archived:
            return [], None
        crm = self.crm
        kinds = ENGAGEMENT_KINDS[object_type]
        results: list[dict[str, Any]] = []
        person, j0 = divmod(start, ACTIVITY_ID_STRIDE)
        while person < crm.pop.n:
            for a in crm.pop.activities(person)[j0:]:
                if a.kind in kinds:
                    if len(results) == limit:
                        return results, str(a.id)
                    results.append(crm.engagement_json(object_type, a, names))
            person += 1
            j0 = 0
        return results, None

    async def get_object(self, request: Request) -> Response:
        object_type = self._object_type(request)
        object_id = request.path_params["object_id"]
        names = self._properties_param(request)
        id_property = request.query_params.get("idProperty")
        if object_type == "contacts" and id_property == "email":
            return error(400, "Lookup by email is not supported by the sandbox", "VALIDATION_ERROR")
        if object_type == "contacts" and self._bool_param(request, "archived"):
            key = self.crm.contact_key(object_id)
            if key is None or not self.crm.store.is_archived("contacts", key):
                return self._not_found(object_type, object_id)
            return JsonResponse(self.crm.contact_json(key, names, archived=True))
        body = self.crm.object_json(object_type, object_id, names)
        if body is None:
            return self._not_found(object_type, object_id)
        self._add_associations(request, object_type, body)
        return JsonResponse(body)

    def _add_associations(self, request: Request, object_type: str, body: dict[str, Any]) -> None:
        """`?associations=a,b` on a read or a list: each object's associated ids by type (v3 shape)."""
        wanted = request.query_params.getlist("associations")
        if not wanted:
            return
        object_id = str(body["id"])
        body["associations"] = {}
        for to_raw in (t for w in wanted for t in w.split(",")):
            to_type = _OBJECT_TYPE_IDS.get(to_raw.strip(), to_raw.strip())
            ids = self.crm.associated(object_type, object_id, to_type) or []
            if ids:
                type_id = ASSOCIATION_TYPES.get((object_type, to_type), 0)
                body["associations"][to_type] = {
                    "results": [
                        {
                            "id": i,
                            "type": f"{_SINGULAR[object_type]}_to_{_SINGULAR.get(to_type, to_type)}",
                            "typeId": type_id,
                        }
                        for i in ids
                    ]
                }

    # ---- writes

    def _apply_contact_update(self, key: int, props: Mapping[str, Any]) -> list[dict[str, str]]:
        clean, problems = self.crm.validate_contact_values(props)
        if problems:
            return problems
        self._write_contact(key, clean)
        return []

    def _write_contact(self, key: int, clean: Mapping[str, str]) -> None:
        if self.stats is not None:
            self.stats.count_writes("contacts", clean)
        hooks = self.crm.webhooks
        before = self.crm.contact_values(key, list(clean)) if hooks is not None else None
        self.crm.write_contact(key, clean)
        if hooks is not None:
            hooks.hubspot_contact_changed(self.crm.contact_id(key), clean, before)

    async def update_object(self, request: Request) -> Response:
        object_type = self._object_type(request)
        object_id = request.path_params["object_id"]
        body = await self._json(request)
        props = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(props, dict):
            return validation_error("The body needs a properties object")
        if object_type == "contacts":
            key = self.crm.contact_key(object_id)
            if key is None or self.crm.store.is_archived("contacts", key):
                return self._not_found(object_type, object_id)
            problems = self._apply_contact_update(key, props)
            if problems:
                return validation_error(
                    _validation_message(problems),
                    errors=[
                        {"message": p["message"], "code": p["error"], "context": {"propertyName": [p["name"]]}}
                        for p in problems
                    ],
                )
            return JsonResponse(self.crm.contact_json(key, list(props) + list(DEFAULT_CONTACT_PROPERTIES)))
        if object_type == "tasks":
            tkey = self.crm.task_key(object_id)
            if tkey is None:
                return self._not_found(object_type, object_id)
            clean, problems = self._validate_task(props, creating=False)
            if problems:
                return validation_error(_validation_message(problems))
            self.crm.store.write("tasks", tkey, clean)
            return JsonResponse(self.crm.task_json(tkey, list(props)))
        return error(400, f"The sandbox does not update {object_type}", "VALIDATION_ERROR")

    def _validate_task(
        self, props: Mapping[str, Any], *, creating: bool
    ) -> tuple[dict[str, str], list[dict[str, str]]]:
        problems: list[dict[str, str]] = []
        clean: dict[str, str] = {}
        for name, raw in props.items():
            spec = TASK_PROPERTIES.get(name)
            if spec is None:
                problems.append(
                    {"message": f'Property "{name}" does not exist', "error": "PROPERTY_DOESNT_EXIST", "name": name}
                )
                continue
            ptype, known = spec
            options: tuple[str, ...] | None = tuple(self.crm.owner_by_id) if name == "hubspot_owner_id" else known
            problem = check_value(ptype, "select", set(options) if options else None, name, raw)
            if problem is not None:
                problems.append(problem)
                continue
            clean[name] = "" if raw is None else _as_text(raw)
        if creating and not clean.get("hs_timestamp"):
            problems.append(
                {"message": 'Property "hs_timestamp" is required.', "error": "REQUIRED_FIELD", "name": "hs_timestamp"}
            )
        return clean, problems

    async def create_object(self, request: Request) -> Response:
        object_type = self._object_type(request)
        body = await self._json(request)
        result, status = self._create_one(object_type, body)
        return JsonResponse(result, status_code=status)

    def _create_one(self, object_type: str, body: Any) -> tuple[dict[str, Any], int]:
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            return error_body("The body needs a properties object", "VALIDATION_ERROR"), 400
        props: dict[str, Any] = body["properties"]
        associations = body.get("associations") or []
        crm = self.crm
        if object_type == "contacts":
            clean, problems = crm.validate_contact_values(props)
            if problems:
                return error_body(_validation_message(problems), "VALIDATION_ERROR"), 400
            key = crm.create_contact(clean)
            if crm.webhooks is not None:
                crm.webhooks.hubspot_contact_created(crm.contact_id(key))
            return crm.contact_json(key, list(props) + list(DEFAULT_CONTACT_PROPERTIES)), 201
        if object_type != "tasks":
            return error_body(f"The sandbox does not create {object_type}", "VALIDATION_ERROR"), 400
        clean, problems = self._validate_task(props, creating=True)
        if problems:
            return error_body(_validation_message(problems), "VALIDATION_ERROR"), 400
        contacts: list[int] = []
        for assoc in associations:
            to_id = str(((assoc or {}).get("to") or {}).get("id", ""))
            types = (assoc or {}).get("types") or []
            contact = crm.contact_key(to_id)
            type_ids = {int(t.get("associationTypeId", -1)) for t in types if isinstance(t, dict)}
            if contact is None:
                return error_body(
                    f"One or more associations are invalid: no contact with id {to_id!r}", "VALIDATION_ERROR"
                ), 400
            if type_ids != {ASSOCIATION_TYPES[("tasks", "contacts")]}:
                return error_body(
                    f"One or more associations are invalid: association type {sorted(type_ids)} "
                    "is not valid from task to contact (use 204)",
                    "VALIDATION_ERROR",
                ), 400
            contacts.append(contact)
        tkey = crm.store.create("tasks", clean)
        if self.stats is not None:
            self.stats.count_writes("tasks", clean)
        with crm.lock:
            crm.task_contacts[tkey] = contacts
            for c in contacts:
                crm.contact_tasks.setdefault(c, []).append(tkey)
        return crm.task_json(tkey, list(props)), 201

    async def archive_object(self, request: Request) -> Response:
        object_type = self._object_type(request)
        object_id = request.path_params["object_id"]
        if object_type != "contacts":
            return error(400, f"The sandbox does not archive {object_type}", "VALIDATION_ERROR")
        key = self.crm.contact_key(object_id)
        if key is not None and not self.crm.store.is_archived("contacts", key):
            self.crm.store.archive("contacts", key)
            if self.crm.webhooks is not None:
                self.crm.webhooks.hubspot_contact_deleted(self.crm.contact_id(key))
        return Response(status_code=204)

    # ---- batch

    def _batch_inputs(self, body: Any) -> list[Any]:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            raise ApiError(validation_error("The body needs a list of inputs"))
        if len(inputs) > BATCH_LIMIT:
            raise ApiError(
                validation_error(
                    f"Batch input is limited to {BATCH_LIMIT} inputs; got {len(inputs)}",
                    context={"inputs": [str(len(inputs))]},
                )
            )
        return inputs

    @staticmethod
    def _batch_answer(
        results: list[dict[str, Any]], errors: list[dict[str, Any]], started: str, ok_status: int = 200
    ) -> JsonResponse:
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_ms(int(time.time() * 1000)),
        }
        if errors:
            body["errors"] = errors
            body["numErrors"] = len(errors)
            return JsonResponse(body, status_code=207)
        return JsonResponse(body, status_code=ok_status)

    async def batch_read(self, request: Request) -> Response:
        started = iso_ms(int(time.time() * 1000))
        object_type = self._object_type(request)
        body = await self._json(request)
        inputs = self._batch_inputs(body)
        names = body.get("properties") or None
        if body.get("idProperty") not in (None, "", "hs_object_id"):
            return validation_error("The sandbox reads batches by hs_object_id only")
        results: list[dict[str, Any]] = []
        missing: list[str] = []
        for item in inputs:
            object_id = str((item or {}).get("id", "")) if isinstance(item, dict) else ""
            found = self.crm.object_json(object_type, object_id, names)
            if found is None:
                missing.append(object_id)
            else:
                results.append(found)
        errors = []
        if missing:
            errors.append(_not_found(object_type, missing))
        return self._batch_answer(results, errors, started)

    async def batch_update(self, request: Request) -> Response:
        """POST /crm/v3/objects/{type}/batch/update.

        Like HubSpot, invalid input refuses the whole batch before anything is written: a property
        that does not exist, a read-only one, a value that is not one of an enumeration's options
        (and, see VALUE_ERRORS_REFUSE_BATCH, one not of the property's type) answers 400
        VALIDATION_ERROR listing the problems without saying which inputs carry them, and nothing
        is written. 207 is for per-record outcomes of a valid batch: ids that do not exist
        (OBJECT_NOT_FOUND) while the others are written.
        """
        started = iso_ms(int(time.time() * 1000))
        object_type = self._object_type(request)
        if object_type not in ("contacts", "tasks"):
            return validation_error(f"The sandbox does not update {object_type}")
        body = await self._json(request)
        inputs = self._batch_inputs(body)
        problems: list[dict[str, str]] = []
        valid: list[tuple[str, int, dict[str, str], list[str]]] = []  # (id, key, clean values, names)
        refused: list[dict[str, Any]] = []  # per-record value errors, when they do not refuse the batch
        missing: list[str] = []
        seen: set[str] = set()
        for item in inputs:
            if not isinstance(item, dict) or not isinstance(item.get("properties"), dict):
                return validation_error("Each input needs an id and a properties object")
            object_id = str(item.get("id", ""))
            if object_id in seen:
                return validation_error(f"Duplicate IDs found in batch input: [{object_id}]. IDs must be unique")
            seen.add(object_id)
            props = item["properties"]
            if object_type == "contacts":
                clean, found = self.crm.validate_contact_values(props)
                key = self.crm.contact_key(object_id)
                gone = key is None or self.crm.store.is_archived("contacts", key)
            else:
                clean, found = self._validate_task(props, creating=False)
                key = self.crm.task_key(object_id)
                gone = key is None
            if found and not VALUE_ERRORS_REFUSE_BATCH and not any(p["error"] in PROPERTY_ERRORS for p in found):
                refused.append(batch_error("VALIDATION_ERROR", _validation_message(found), {"ids": [object_id]}))
                continue
            problems += found
            if gone or key is None:
                missing.append(object_id)
            elif not found:
                valid.append((object_id, key, clean, list(props)))
        if problems:
            return validation_error(_validation_message(problems))
        results: list[dict[str, Any]] = []
        faults = getattr(request.app.state, "faults", None)
        unavailable: list[str] = []  # injected per-record faults: not written, a 5xx item in the 207
        for object_id, key, clean, names in valid:
            if record_fault(faults, request, object_id):
                unavailable.append(object_id)
                continue
            if object_type == "contacts":
                self._write_contact(key, clean)
                results.append(self.crm.contact_json(key, names + list(DEFAULT_CONTACT_PROPERTIES)))
            else:
                self.crm.store.write("tasks", key, clean)
                results.append(self.crm.task_json(key, names))
        errors = refused + ([_not_found(object_type, missing)] if missing else [])
        errors += [_record_unavailable(i) for i in unavailable]
        return self._batch_answer(results, errors, started)

    async def batch_create(self, request: Request) -> Response:
        started = iso_ms(int(time.time() * 1000))
        object_type = self._object_type(request)
        body = await self._json(request)
        inputs = self._batch_inputs(body)
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for k, item in enumerate(inputs):
            made, status = self._create_one(object_type, item)
            if status == 201:
                results.append(made)
            else:
                errors.append(
                    batch_error(made.get("category", "VALIDATION_ERROR"), made["message"], {"inputIndex": [str(k)]})
                )
        return self._batch_answer(results, errors, started, ok_status=201)

    async def batch_archive(self, request: Request) -> Response:
        object_type = self._object_type(request)
        if object_type != "contacts":
            return validation_error(f"The sandbox does not archive {object_type}")
        body = await self._json(request)
        for item in self._batch_inputs(body):
            key = self.crm.contact_key(str((item or {}).get("id", "")))
            if key is not None and not self.crm.store.is_archived("contacts", key):
                self.crm.store.archive("contacts", key)
                if self.crm.webhooks is not None:
                    self.crm.webhooks.hubspot_contact_deleted(self.crm.contact_id(key))
        return Response(status_code=204)

    # ---- search

    async def search(self, request: Request) -> Response:
        object_type = self._object_type(request)
        body = await self._json(request)
        groups, sort, limit, offset, names, query = parse_search(body)
        if object_type == "deals":
            return validation_error("The sandbox does not search deals: read them through their contacts' associations")
        if object_type == "contacts":
            hidden = self.crm.search_index.hidden()
            total, page = self._search_contacts(groups, sort, limit, offset, query, hidden)
            results = [self._searched_json(k, names, hidden.get(k)) for k in page]
        else:
            total, ids = self._search_engagements(object_type, groups, sort, limit, offset)
            results = [r for r in (self.crm.object_json(object_type, i, names) for i in ids) if r is not None]
        out: dict[str, Any] = {"total": total, "results": results}
        if offset + limit < total:
            out["paging"] = {"next": {"after": str(offset + limit)}}
        return JsonResponse(out)

    def _searched_json(self, key: int, names: Sequence[str] | None, shown: _Shown) -> dict[str, Any]:
        """A search hit as the index has it: a contact written lately shows its previous version."""
        body = self.crm.contact_json(key, names)
        if shown is not None:
            at = iso_ms(shown[0])
            body["updatedAt"] = at
            props = body["properties"]
            for name in props:
                if name == "lastmodifieddate":
                    props[name] = at
                elif name in shown[1]:
                    props[name] = shown[1][name]
        return body

    def _contact_prop(self, key: int, name: str, shown: _Shown = None) -> str | None:
        if shown is not None:
            if name == "lastmodifieddate":
                return iso_ms(shown[0])
            if name in shown[1]:
                return shown[1][name]
        return self.crm.contact_values(key, [name]).get(name)

    def _matches(self, key: int, groups: list[list[Filter]], query: str, shown: _Shown = None) -> bool:
        if query:
            q = query.lower()
            vals = self.crm.contact_values(key, ["email", "firstname", "lastname", "company", "phone"])
            if shown is not None:
                vals.update({k: v for k, v in shown[1].items() if k in vals})
            if not any(v and q in v.lower() for v in vals.values()):
                return False
        if not groups:
            return True
        cache: dict[str, str | None] = {}
        for group in groups:
            ok = True
            for f in group:
                if f.prop not in cache:
                    cache[f.prop] = self._contact_prop(key, f.prop, shown)
                if not f.matches(cache[f.prop]):
                    ok = False
                    break
            if ok:
                return True
        return False

    def _modified_bounds(self, groups: list[list[Filter]]) -> tuple[int | None, int | None] | None:
        """A range containing every match when each group bounds lastmodifieddate (else None)."""
        if not groups:
            return None
        lows: list[int | None] = []
        highs: list[int | None] = []
        for group in groups:
            lo: int | None = None
            hi: int | None = None
            bounded = False
            for f in group:
                if f.prop != "lastmodifieddate":
                    continue
                r = f.time_range()
                if r is None:
                    continue
                bounded = True
                if r[0] is not None:
                    lo = r[0] if lo is None else max(lo, r[0])
                if r[1] is not None:
                    hi = r[1] if hi is None else min(hi, r[1])
            if not bounded:
                return None
            lows.append(lo)
            highs.append(hi)
        low = None if any(x is None for x in lows) else min(x for x in lows if x is not None)
        high = None if any(x is None for x in highs) else max(x for x in highs if x is not None)
        return low, high

    def _only_modified_filters(self, groups: list[list[Filter]]) -> bool:
        return len(groups) == 1 and all(f.prop == "lastmodifieddate" and f.time_range() for f in groups[0])

    def _id_candidates(self, groups: list[list[Filter]]) -> list[int] | None:
        """Contact keys when every group pins hs_object_id with EQ or IN (else None)."""
        if not groups:
            return None
        keys: set[int] = set()
        for group in groups:
            pinned: set[int] | None = None
            for f in group:
                if f.prop == "hs_object_id" and f.op in ("EQ", "IN"):
                    raw = [f.value] if f.op == "EQ" else f.values
                    found = {k for k in (self.crm.contact_key(str(v)) for v in raw) if k is not None}
                    pinned = found if pinned is None else pinned & found
            if pinned is None:
                return None
            keys |= pinned
        return sorted(keys)

    def _search_contacts(
        self,
        groups: list[list[Filter]],
        sort: tuple[str, bool] | None,
        limit: int,
        offset: int,
        query: str,
        hidden: Mapping[int, _Shown] | None = None,
    ) -> tuple[int, list[int]]:
        crm = self.crm
        store = crm.store
        hidden = hidden or {}

        def live(k: int) -> bool:
            return not store.is_archived("contacts", k) and not (k in hidden and hidden[k] is None)

        def matches(k: int) -> bool:
            return self._matches(k, groups, query, hidden.get(k))

        sort_prop, descending = sort if sort else ("hs_object_id", False)
        by_modified = sort_prop == "lastmodifieddate"
        ids = self._id_candidates(groups)
        if ids is not None:
            matched = [k for k in ids if live(k) and matches(k)]
            return len(matched), self._sorted(matched, sort_prop, descending, hidden)[offset : offset + limit]
        bounds = self._modified_bounds(groups)
        if by_modified or bounds is not None:
            lo, hi = bounds if bounds is not None else (None, None)
            stream = self._searchable_by_modified(lo, hi, descending, hidden)
            fast_total = not query and (not groups or self._only_modified_filters(groups))
            if by_modified:
                page: list[int] = []
                total = 0
                for k in stream:
                    if not live(k) or not matches(k):
                        continue
                    if offset <= total < offset + limit:
                        page.append(k)
                    total += 1
                    if fast_total and total >= offset + limit:
                        break
                if fast_total:
                    archived = sum(
                        1
                        for k in store.written_keys("contacts")
                        if store.is_archived("contacts", k)
                        and lo is not None
                        and lo <= crm.contact_modified_ms(k) <= (hi or 2**62)
                    )
                    total = store.count_modified("contacts", lo, hi, base=crm.base) - archived
                    total += self._hidden_shift(lo, hi, hidden)
                return total, page
            matched = [k for k in stream if live(k) and matches(k)]
            return len(matched), self._sorted(matched, sort_prop, descending, hidden)[offset : offset + limit]
        # a scan in id order: base people, then created contacts
        every = [*range(crm.pop.n), *(k for k in store.created_keys("contacts") if k >= crm.pop.n)]
        if sort_prop == "hs_object_id":
            order = reversed(every) if descending else iter(every)
            page = []
            total = 0
            for k in order:
                if live(k) and matches(k):
                    if offset <= total < offset + limit:
                        page.append(k)
                    total += 1
            return total, page
        matched = [k for k in every if live(k) and matches(k)]
        return len(matched), self._sorted(matched, sort_prop, descending, hidden)[offset : offset + limit]

    def _searchable_by_modified(
        self, lo: int | None, hi: int | None, descending: bool, hidden: Mapping[int, _Shown]
    ) -> Iterator[int]:
        """Contact keys by the modified time search knows (a contact written lately at its previous one)."""
        crm = self.crm
        stream: Iterable[tuple[int, int]] = crm.store.iter_modified(
            "contacts", lo, hi, base=crm.base, descending=descending
        )
        if not hidden:
            return (k for _, k in stream)
        shown_at = sorted(
            ((shown[0], k) for k, shown in hidden.items()
             if shown is not None and (lo is None or shown[0] >= lo) and (hi is None or shown[0] <= hi)),
            reverse=descending,
        )  # fmt: skip
        moved = (item for item in stream if item[1] not in hidden)
        return (k for _, k in heapq.merge(moved, shown_at, reverse=descending))

    def _hidden_shift(self, lo: int | None, hi: int | None, hidden: Mapping[int, _Shown]) -> int:
        """How the count of contacts modified in [lo, hi] differs in search from the store's."""
        shift = 0
        for k, shown in hidden.items():
            if self.crm.store.is_archived("contacts", k):
                continue
            now = self.crm.contact_modified_ms(k)
            shift -= (lo is None or now >= lo) and (hi is None or now <= hi)
            if shown is not None:
                shift += (lo is None or shown[0] >= lo) and (hi is None or shown[0] <= hi)
        return shift

    def _sorted(
        self, keys: list[int], prop: str, descending: bool, hidden: Mapping[int, _Shown] | None = None
    ) -> list[int]:
        if prop == "hs_object_id":
            return sorted(keys, reverse=descending)
        hidden = hidden or {}

        def sort_key(k: int) -> tuple[int, Any, int]:
            shown = hidden.get(k)
            if prop == "lastmodifieddate":
                return (0, shown[0] if shown is not None else self.crm.contact_modified_ms(k), k)
            if prop == "createdate":
                return (0, self.crm.contact_created_ms(k), k)
            v = self._contact_prop(k, prop, shown)
            return (1, "", k) if v is None else (0, v.lower(), k)

        return sorted(keys, key=sort_key, reverse=descending)

    def _search_engagements(
        self, object_type: str, groups: list[list[Filter]], sort: tuple[str, bool] | None, limit: int, offset: int
    ) -> tuple[int, list[str]]:
        """Engagement search: every group must pin associations.contact (or hs_object_id) in the sandbox."""
        crm = self.crm
        candidates: set[str] = set()
        for group in groups or [[]]:
            pinned: set[str] | None = None
            for f in group:
                if f.prop == "associations.contact" and f.op in ("EQ", "IN"):
                    raw = [f.value] if f.op == "EQ" else f.values
                    found: set[str] = set()
                    for v in raw:
                        found.update(crm.associated("contacts", str(v), object_type) or [])
                    pinned = found if pinned is None else pinned & found
                elif f.prop == "hs_object_id" and f.op in ("EQ", "IN"):
                    raw = [f.value] if f.op == "EQ" else f.values
                    found = {str(v) for v in raw if crm.object_exists(object_type, str(v))}
                    pinned = found if pinned is None else pinned & found
            if pinned is None and object_type == "tasks":
                # Tasks exist only when created through the API (a few): search them all, as HubSpot does.
                pinned = {str(TASK_ID_BASE + k) for k in crm.store.created_keys("tasks")}
            if pinned is None:
                raise ApiError(
                    validation_error(
                        "The sandbox searches engagements only by associations.contact or hs_object_id (EQ or IN)"
                    )
                )
            candidates |= pinned
        matched: list[tuple[Any, str]] = []
        for object_id in candidates:
            obj = crm.object_json(
                object_type,
                object_id,
                list({f.prop for g in groups for f in g if "." not in f.prop} | {"hs_timestamp"}),
            )
            if obj is None:
                continue
            props = obj["properties"]
            ok = not groups or any(
                all(f.prop.startswith("associations.") or f.matches(props.get(f.prop)) for f in g) for g in groups
            )
            if ok:
                sort_prop = sort[0] if sort else "hs_object_id"
                value = (
                    int(object_id)
                    if sort_prop == "hs_object_id"
                    else (parse_time_ms(props.get(sort_prop)) if sort_prop in _TIME_PROPS else props.get(sort_prop))
                )
                matched.append((value if value is not None else 0, object_id))
        matched.sort(key=lambda t: (t[0], int(t[1])), reverse=bool(sort and sort[1]))
        return len(matched), [i for _, i in matched[offset : offset + limit]]

    # ---- properties

    async def list_properties(self, request: Request) -> Response:
        if request.path_params["object_type"] not in ("contacts", "0-1", "contact"):
            return JsonResponse({"results": []})
        with self.crm.lock:
            return JsonResponse({"results": [d.to_json() for d in self.crm.contact_props.values()]})

    @staticmethod
    def _contact_properties_only(request: Request) -> None:
        if request.path_params.get("object_type") not in ("contacts", "0-1", "contact"):
            raise ApiError(validation_error("The sandbox keeps property definitions for contacts only"))

    async def get_property(self, request: Request) -> Response:
        self._contact_properties_only(request)
        name = request.path_params["name"]
        with self.crm.lock:
            d = self.crm.contact_props.get(name)
        if d is None:
            return error(
                404,
                f"Unable to find property {name} for object type contacts",
                "OBJECT_NOT_FOUND",
                context={"propertyName": [name]},
            )
        return JsonResponse(d.to_json())

    async def create_property(self, request: Request) -> Response:
        self._contact_properties_only(request)
        body = await self._json(request)
        if not isinstance(body, dict):
            return validation_error("The body must be a JSON object")
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return validation_error(
                f"Missing required fields: {', '.join(missing)}", context={"missingFields": missing}
            )
        name, ptype, ftype = str(body["name"]), str(body["type"]), str(body["fieldType"])
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            return validation_error(
                f"Property name '{name}' is invalid: use lowercase letters, digits and "
                "underscores, starting with a letter"
            )
        if ptype not in VALID_FIELD_TYPES:
            return validation_error(
                f"'{ptype}' is not a valid property type; use one of {', '.join(sorted(VALID_FIELD_TYPES))}"
            )
        if ftype not in VALID_FIELD_TYPES[ptype]:
            return validation_error(
                f"fieldType '{ftype}' is not valid for type '{ptype}'; use one of "
                f"{', '.join(sorted(VALID_FIELD_TYPES[ptype]))}"
            )
        options: list[dict[str, Any]] = []
        if ptype == "enumeration" or ptype == "bool":
            raw_options = body.get("options") or []
            if ptype == "bool" and not raw_options:
                raw_options = [{"label": "Yes", "value": "true"}, {"label": "No", "value": "false"}]
            if not isinstance(raw_options, list) or (ftype in ("select", "radio", "checkbox") and not raw_options):
                return validation_error(f"Enumeration property '{name}' needs options")
            seen: set[str] = set()
            for k, o in enumerate(raw_options):
                if not isinstance(o, dict) or o.get("value") in (None, "") or not o.get("label"):
                    return validation_error(f"Option {k} of '{name}' needs a label and a value")
                if str(o["value"]) in seen:
                    return validation_error(f"Option values of '{name}' must be unique: '{o['value']}' repeats")
                seen.add(str(o["value"]))
                options.append(
                    {
                        "label": str(o["label"]),
                        "value": str(o["value"]),
                        "displayOrder": int(o.get("displayOrder", k)),
                        "hidden": bool(o.get("hidden")),
                    }
                )
        with self.crm.lock:
            if str(body["groupName"]) not in self.crm.groups:
                return validation_error(f"Property group '{body['groupName']}' does not exist")
            if name in self.crm.contact_props:
                return error(
                    409, f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS", context={"name": [name]}
                )
            d = PropertyDef(
                name,
                str(body["label"]),
                ptype,
                ftype,
                str(body["groupName"]),
                description=str(body.get("description", "")),
                options=options,
                hubspot_defined=False,
                has_unique_value=bool(body.get("hasUniqueValue")),
                created_ms=int(time.time() * 1000),
                display_order=int(body.get("displayOrder", -1)),
            )
            self.crm.contact_props[name] = d
        return JsonResponse(d.to_json(), status_code=201)

    async def list_groups(self, request: Request) -> Response:
        with self.crm.lock:
            return JsonResponse({"results": list(self.crm.groups.values())})

    async def create_group(self, request: Request) -> Response:
        self._contact_properties_only(request)
        body = await self._json(request)
        if not isinstance(body, dict) or not body.get("name") or not body.get("label"):
            return validation_error("A property group needs a name and a label")
        name = str(body["name"])
        with self.crm.lock:
            if name in self.crm.groups:
                return error(
                    409,
                    f"A property group named '{name}' already exists.",
                    "OBJECT_ALREADY_EXISTS",
                    context={"name": [name]},
                )
            group = {
                "name": name,
                "label": str(body["label"]),
                "displayOrder": int(body.get("displayOrder", -1)),
                "archived": False,
            }
            self.crm.groups[name] = group
        return JsonResponse(group, status_code=201)

    async def schemas(self, request: Request) -> Response:
        return JsonResponse({"results": []})

    # ---- owners

    def _owner_json(self, rep_index: int) -> dict[str, Any]:
        r = self.crm.reps[rep_index]
        created = iso_ms(1_600_000_000_000 + rep_index * 86_400_000)
        out: dict[str, Any] = {
            "id": r.id,
            "email": r.email,
            "type": "PERSON",
            "firstName": r.first_name,
            "lastName": r.last_name,
            "userId": r.user_id if r.active else None,
            "userIdIncludingInactive": r.user_id,
            "createdAt": created,
            "updatedAt": created,
            "archived": not r.active,
            "teams": [{"id": r.team_id, "name": r.team, "primary": True}],
        }
        return out

    async def list_owners(self, request: Request) -> Response:
        limit = self._int_param(request, "limit", 100)
        if limit < 1 or limit > OWNERS_LIMIT:
            return validation_error(f"limit must be between 1 and {OWNERS_LIMIT}")
        archived = self._bool_param(request, "archived")
        email = request.query_params.get("email")
        after = request.query_params.get("after") or "0"
        if not after.isdigit():
            return validation_error(f"after must be a paging cursor, not '{after}'")
        reps = [r for r in self.crm.reps if (not r.active) == archived]
        if email:
            reps = [r for r in reps if r.email.lower() == email.lower()]
        start = int(after)
        page = reps[start : start + limit]
        body: dict[str, Any] = {"results": [self._owner_json(r.index) for r in page]}
        if start + limit < len(reps):
            body["paging"] = {"next": {"after": str(start + limit), "link": f"/crm/v3/owners/?after={start + limit}"}}
        return JsonResponse(body)

    async def get_owner(self, request: Request) -> Response:
        owner_id = request.path_params["owner_id"]
        id_property = request.query_params.get("idProperty", "id")
        for r in self.crm.reps:
            if (id_property == "userId" and str(r.user_id) == owner_id) or (
                id_property != "userId" and r.id == owner_id
            ):
                if (not r.active) != self._bool_param(request, "archived"):
                    break
                return JsonResponse(self._owner_json(r.index))
        return error(404, f"No owner found with {id_property} {owner_id}", "OBJECT_NOT_FOUND")

    # ---- associations v4

    def _assoc_to(self, from_type: str, to_type: str, ids: list[str]) -> list[dict[str, Any]]:
        # toObjectId is a string (MultiAssociatedObjectWithLabel in the v4 associations spec)
        type_id = ASSOCIATION_TYPES.get((from_type, to_type))
        return [
            {
                "toObjectId": str(i),
                "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": None}],
            }
            for i in ids
        ]

    @staticmethod
    def _page_token(offset: int) -> str:
        """An opaque paging token, like HubSpot's (base64 text, not a number to do sums with)."""
        return base64.urlsafe_b64encode(f"assoc-{offset}".encode()).decode()

    @staticmethod
    def _page_offset(token: str) -> int | None:
        try:
            text = base64.urlsafe_b64decode(token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        head, _, number = text.partition("-")
        return int(number) if head == "assoc" and number.isdigit() else None

    async def associations(self, request: Request) -> Response:
        from_type = _OBJECT_TYPE_IDS.get(request.path_params["from_type"], request.path_params["from_type"])
        to_type = _OBJECT_TYPE_IDS.get(request.path_params["to_type"], request.path_params["to_type"])
        if from_type not in OBJECT_TYPES or to_type not in OBJECT_TYPES:
            return validation_error(f"Unknown object type in {from_type} -> {to_type}")
        object_id = request.path_params["object_id"]
        ids = self.crm.associated(from_type, object_id, to_type)
        if ids is None:
            return self._not_found(from_type, object_id)
        limit = self._int_param(request, "limit", ASSOC_PAGE_SIZE)
        if not 1 <= limit <= ASSOC_PAGE_SIZE:
            return validation_error(f"limit must be between 1 and {ASSOC_PAGE_SIZE}")
        after = request.query_params.get("after")
        start = 0 if not after else self._page_offset(after)
        if start is None:
            return validation_error(f"after must be a paging cursor from an earlier page, not '{after}'")
        page = ids[start : start + limit]
        body: dict[str, Any] = {"results": self._assoc_to(from_type, to_type, page)}
        if start + limit < len(ids):
            body["paging"] = {"next": {"after": self._page_token(start + limit)}}
        return JsonResponse(body)

    async def associations_batch_read(self, request: Request) -> Response:
        """POST /crm/v4/associations/{from}/{to}/batch/read: pages within each input.

        An input with more than `association_page_size` associations gets that many and a result-level
        `paging.next.after`, which a later call sends back as `{"id": ..., "after": ...}` for the next.
        """
        started = iso_ms(int(time.time() * 1000))
        from_type = _OBJECT_TYPE_IDS.get(request.path_params["from_type"], request.path_params["from_type"])
        to_type = _OBJECT_TYPE_IDS.get(request.path_params["to_type"], request.path_params["to_type"])
        if from_type not in OBJECT_TYPES or to_type not in OBJECT_TYPES:
            return validation_error(f"Unknown object type in {from_type} -> {to_type}")
        body = await self._json(request)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            return validation_error("The body needs a list of inputs")
        if len(inputs) > ASSOC_BATCH_LIMIT:
            return validation_error(f"Batch input is limited to {ASSOC_BATCH_LIMIT} inputs; got {len(inputs)}")
        size = self.association_page_size
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            object_id = str((item or {}).get("id", "")) if isinstance(item, dict) else ""
            after = item.get("after") if isinstance(item, dict) else None
            start = 0 if not after else self._page_offset(str(after))
            if start is None:
                return validation_error(f"after must be a paging cursor from an earlier page, not '{after}'")
            ids = self.crm.associated(from_type, object_id, to_type)
            if not ids:
                errors.append(
                    batch_error(
                        "OBJECT_NOT_FOUND",
                        f"No {_SINGULAR[to_type]} is associated with {_SINGULAR[from_type]} {object_id}.",
                        {"fromObjectId": [object_id]},
                        sub="crm.associations.NO_ASSOCIATIONS_FOUND",
                    )
                )
                continue
            result: dict[str, Any] = {
                "from": {"id": object_id}, "to": self._assoc_to(from_type, to_type, ids[start : start + size]),
            }  # fmt: skip
            if start + size < len(ids):
                result["paging"] = {"next": {"after": self._page_token(start + size)}}
            results.append(result)
        return self._batch_answer(results, errors, started)

    # ---- events v3

    @staticmethod
    def _web_event(a: SandboxActivity) -> tuple[str, dict[str, str]] | None:
        """(event type, properties) of an activity the events API reports, else None."""
        if a.kind == "page_view":
            url = "https://www.sandbox-corp.example" + a.attrs.get("url", "/")
            return EVENT_PAGE_VIEW, {
                "hs_url": url, "hs_title": a.attrs.get("title", ""), "hs_page_id": str(zlib.crc32(url.encode())),
            }
        if a.kind == "form_submission":
            return EVENT_FORM, {
                "hs_form_id": a.attrs.get("form_id", ""), "hs_form_title": a.attrs.get("form_title", ""),
            }
        if a.kind in EVENT_CUSTOM:
            return EVENT_CUSTOM[a.kind], {"campaign": a.attrs.get("campaign", "")}
        return None

    def _events_of(self, key: int) -> list[tuple[SandboxActivity, str, dict[str, str]]]:
        out = []
        for a in self.crm.pop.activities(key):
            mapped = self._web_event(a)
            if mapped is not None:
                out.append((a, *mapped))
        return out

    def _events_refused(self) -> JsonResponse | None:
        if self.crm.portal.has_events_api:
            return None
        return error(EVENTS_TIER_STATUS, EVENTS_TIER_MESSAGE, EVENTS_TIER_CATEGORY)

    def _event_json(self, key: int, a: SandboxActivity, etype: str, props: dict[str, str]) -> dict[str, Any]:
        return {
            "objectType": "CONTACT",
            "objectId": self.crm.contact_id(key),
            "eventType": etype,
            "occurredAt": iso_ms(a.ts_ms),
            "id": f"{a.id:x}-{etype}",
            "properties": props,
        }

    def _event_index(self, event_type: str | None) -> list[int]:
        """The generated and added web events of every contact, ordered by time, one list per event type
        ("" for all): each event as (ts_ms << 40) | (contact key << 12) | its position in the activities.

        Built when the app is built (build_app; 0.4 s per 10,000 contacts on an idle core), else on
        the first query without objectId; activities added later through the admin hook are inserted
        as they are first seen."""
        pop = self.crm.pop
        with self._events_lock:
            if self._event_order is None:
                order: dict[str, list[int]] = {"": []}
                for key in range(pop.n):
                    for pos, a in enumerate(pop.activities(key)):
                        mapped = self._web_event(a)
                        if mapped is not None and pos < EVENT_POSITIONS:
                            code = (a.ts_ms << 40) | (key << 12) | pos
                            order[""].append(code)
                            order.setdefault(mapped[0], []).append(code)
                for codes in order.values():
                    codes.sort()
                self._event_order = order
                self._event_added = {a.id for acts in list(pop._added.values()) for a in acts}
            for key, acts in list(pop._added.items()):
                for a in acts:
                    if a.id in self._event_added:
                        continue
                    self._event_added.add(a.id)
                    mapped = self._web_event(a)
                    pos = next((n for n, b in enumerate(pop.activities(key)) if b.id == a.id), EVENT_POSITIONS)
                    if mapped is None or pos >= EVENT_POSITIONS:
                        continue
                    code = (a.ts_ms << 40) | (key << 12) | pos
                    bisect.insort(self._event_order[""], code)
                    bisect.insort(self._event_order.setdefault(mapped[0], []), code)
            return self._event_order.get(event_type or "", [])

    def _events_of_all(
        self, lo: int | None, hi: int | None, event_type: str | None, offset: int, limit: int, descending: bool
    ) -> tuple[list[tuple[int, SandboxActivity, str, dict[str, str]]], bool]:
        """One page of the events of every contact with lo <= occurredAt <= hi, and whether more follow.

        The page is cut from the index by position, so an archived contact's events leave it shorter
        than `limit` rather than moving later pages."""
        order = self._event_index(event_type)
        start = 0 if lo is None else bisect.bisect_left(order, lo << 40)
        end = len(order) if hi is None else bisect.bisect_right(order, ((hi + 1) << 40) - 1)
        if descending:
            codes = order[max(start, end - offset - limit) : max(start, end - offset)][::-1]
        else:
            codes = order[start + offset : min(end, start + offset + limit)]
        more = offset + limit < end - start
        pop = self.crm.pop
        out = []
        for code in codes:
            key = (code >> 12) & 0xFFFFFFF
            if self.crm.store.is_archived("contacts", key):
                continue
            a = pop.activities(key)[code & 0xFFF]
            mapped = self._web_event(a)
            if mapped is not None:
                out.append((key, a, *mapped))
        return out, more

    async def events(self, request: Request) -> Response:
        """GET /events/v3/events (events.json, Events v3; Enterprise only: see EVENTS_TIER_STATUS).

        Every query parameter is optional in the spec. With objectId (which needs objectType, as the
        spec's collection says) the events of that one contact; without it, with objectType=contact,
        the events of every contact, filtered by eventType and occurredAfter/occurredBefore, oldest
        first unless sort=DESCENDING, `limit` per page (EVENTS_LIMIT at most: the spec states no
        maximum), paged by an opaque `paging.next.after` token.
        """
        refused = self._events_refused()
        if refused is not None:
            return refused
        q = request.query_params
        object_type = q.get("objectType")
        ids = q.getlist("objectId")
        if ids and not object_type:
            return validation_error("objectType is required with objectId")
        if object_type not in ("contact", "contacts", "0-1"):
            return validation_error("objectType is required; the sandbox has events for contact only")
        if len(ids) > 1:
            return validation_error("objectId takes one id")
        if ids and not ids[0].isdigit():
            return validation_error(f"objectId must be an integer, not '{ids[0]}'")
        limit = self._int_param(request, "limit", 100)
        if limit < 1 or limit > EVENTS_LIMIT:
            return validation_error(f"limit must be between 1 and {EVENTS_LIMIT}")
        bounds: list[int | None] = []
        for name in ("occurredAfter", "occurredBefore"):
            raw = q.get(name)
            parsed = parse_time_ms(raw) if raw else None
            if raw and parsed is None:
                return validation_error(f"{name} must be an ISO 8601 date-time, not '{raw}'")
            bounds.append(parsed)
        lo, hi = bounds
        event_type = q.get("eventType")
        descending = q.get("sort", "").upper() in ("DESCENDING", "-OCCURREDAT")
        after = q.get("after")
        start = 0 if not after else self._events_offset(after)
        if start is None:
            return validation_error(f"after must be a paging cursor from an earlier page, not '{after}'")
        if ids:
            key = self.crm.contact_key(ids[0])
            if key is None or key >= self.crm.pop.n:
                return JsonResponse({"results": []})
            found = [
                self._event_json(key, a, etype, props)
                for a, etype, props in self._events_of(key)
                if not (event_type and etype != event_type)
                and not ((lo is not None and a.ts_ms < lo) or (hi is not None and a.ts_ms > hi))
            ]
            if descending:
                found.reverse()
            page = found[start : start + limit]
            more = start + limit < len(found)
        else:
            chosen, more = self._events_of_all(lo, hi, event_type, start, limit, descending)
            page = [self._event_json(key, a, etype, props) for key, a, etype, props in chosen]
        body: dict[str, Any] = {"results": page}
        if more:
            token = self._events_token(start + limit)
            body["paging"] = {"next": {"after": token, "link": f"{request.url.path}?after={token}"}}
        return JsonResponse(body)

    @staticmethod
    def _events_token(offset: int) -> str:
        return base64.urlsafe_b64encode(f"events-{offset}".encode()).decode()

    @staticmethod
    def _events_offset(token: str) -> int | None:
        try:
            text = base64.urlsafe_b64decode(token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        head, _, number = text.partition("-")
        return int(number) if head == "events" and number.isdigit() else None

    async def event_types(self, request: Request) -> Response:
        refused = self._events_refused()
        if refused is not None:
            return refused
        return JsonResponse({"eventTypes": [EVENT_PAGE_VIEW, EVENT_FORM, *EVENT_CUSTOM.values()]})

    # ---- account info v3

    async def account_details(self, request: Request) -> Response:
        """GET /account-info/v3/details (accountInfo.json, PortalInformationResponse)."""
        return JsonResponse(self.crm.portal.details(time.time()))

    async def private_app_usage(self, request: Request) -> Response:
        """GET /account-info/v3/api-usage/daily/private-apps: today's usage and when it resets
        (the portal's midnight, as the spec's example shows: resetsAt 04:00Z for US/Eastern in summer)."""
        guard: HubSpotGuard = request.app.state.guard
        now = int(time.time() * 1000)
        return JsonResponse({"results": [{
            "name": "private-apps-api-calls-daily", "usageLimit": guard.daily.max_requests,
            "currentUsage": guard.daily.used("account"), "collectedAt": iso_ms(now), "fetchStatus": "SUCCESS",
            "resetsAt": iso_ms(int(guard.daily.resets_at() * 1000)).replace(".000Z", "Z"),
        }]})  # fmt: skip


def _wrap(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except ApiError as exc:
            return exc.response
        return response

    return endpoint


def build_app(
    population: Population,
    store: Store,
    token: str,
    *,
    rate: int = DEFAULT_RATE,
    daily: int = DEFAULT_DAILY,
    search_rate: int = DEFAULT_SEARCH_RATE,
    faults: Mapping[str, float] | None = None,
    timeout_s: float = 30.0,
    webhooks: WebhookEmitter | None = None,
    portal: Portal | None = None,
    search_lag_s: tuple[float, float] = DEFAULT_SEARCH_LAG_S,
    association_page_size: int = ASSOC_PAGE_SIZE,
) -> Starlette:
    """The sandbox HubSpot as a Starlette app (stats, faults and the guard included).

    `portal` sets the account's id and time zone (the daily limit resets at midnight there);
    `search_lag_s` the bounds of the delay before a contact write shows up in search."""
    crm = HubSpotCrm(population, store)
    crm.webhooks = webhooks
    crm.portal = portal or Portal()
    crm.search_index = SearchIndex(search_lag_s, seed=population.seed)
    api = HubSpotApi(crm)
    api.association_page_size = association_page_size
    if crm.portal.has_events_api:
        # Before the first request, not on the first query of every contact's events: built there, it
        # held the event loop (every request) for minutes on a million contacts, past the clients'
        # timeouts, which HubSpot's events API does not do.
        api._event_index("")
    guard = HubSpotGuard(token, rate=rate, daily=daily, search_rate=search_rate, zone=crm.portal.zone)
    stats = Stats()
    api.stats = stats
    fault_box = Faults(faults, timeout_s=timeout_s)

    async def add_token(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        if not isinstance(body, dict) or not isinstance(body.get("token"), str) or not body["token"]:
            return JsonResponse({"error": 'send {"token": "...", "scopes": [...]}'}, status_code=400)
        scopes = body.get("scopes")
        guard.add_token(body["token"], None if scopes is None else [str(s) for s in scopes])
        return JsonResponse({"token": body["token"], "scopes": scopes})

    async def reset_limits(request: Request) -> Response:
        guard.reset()
        return JsonResponse({"ok": True})

    async def search_index(request: Request) -> Response:
        """GET: the search index's lag and how many contacts it has not caught up with; POST
        `{"lag_s": [lo, hi]}` re-bounds the lag of later writes, `{"advance_s": N}` moves the index's
        clock (writes pending less than N seconds become searchable)."""
        index = crm.search_index
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body() or b"{}")
                if "lag_s" in body:
                    lo, hi = (float(x) for x in body["lag_s"])
                    if not 0 <= lo <= hi:
                        raise ValueError("lag_s must be [lo, hi] with 0 <= lo <= hi")
                    index.configure((lo, hi))
                if "advance_s" in body:
                    index.clock.advance(float(body["advance_s"]))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                return JsonResponse({"error": str(exc)}, status_code=400)
        index.hidden()
        return JsonResponse({"lag_s": list(index.lag_s), "pending": index.pending()})

    w = _wrap

    def typed(object_type: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            request.scope.setdefault("path_params", {})["object_type"] = object_type
            response: Response = await handler(request)
            return response

        return endpoint

    def object_routes(o: str, object_type: str | None) -> list[BaseRoute]:
        def h(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            return w(handler) if object_type is None else w(typed(object_type, handler))

        return [
            Route(o + "/search", h(api.search), methods=["POST"]),
            Route(o + "/batch/read", h(api.batch_read), methods=["POST"]),
            Route(o + "/batch/update", h(api.batch_update), methods=["POST"]),
            Route(o + "/batch/create", h(api.batch_create), methods=["POST"]),
            Route(o + "/batch/archive", h(api.batch_archive), methods=["POST"]),
            Route(o, h(api.list_objects), methods=["GET"]),
            Route(o, h(api.create_object), methods=["POST"]),
            Route(o + "/{object_id}", h(api.get_object), methods=["GET"]),
            Route(o + "/{object_id}", h(api.update_object), methods=["PATCH"]),
            Route(o + "/{object_id}", h(api.archive_object), methods=["DELETE"]),
        ]

    # concrete paths per object type first, so stats read "GET /crm/v3/objects/contacts"
    routes: list[BaseRoute] = [
        Route("/__sandbox__/tokens", add_token, methods=["POST"]),
        Route("/__sandbox__/limits/reset", reset_limits, methods=["POST"]),
        Route("/__sandbox__/search", search_index, methods=["GET", "POST"]),
        *(admin_routes(webhooks, crm) if webhooks is not None else []),  # /__sandbox__/webhooks, /activities
    ]
    for object_type in OBJECT_TYPES:
        routes += object_routes(f"/crm/v3/objects/{object_type}", object_type)
    routes += object_routes("/crm/v3/objects/{object_type}", None)
    routes += [
        Route("/crm/v3/properties/contacts/groups", w(typed("contacts", api.list_groups)), methods=["GET"]),
        Route("/crm/v3/properties/contacts/groups", w(typed("contacts", api.create_group)), methods=["POST"]),
        Route("/crm/v3/properties/contacts", w(typed("contacts", api.list_properties)), methods=["GET"]),
        Route("/crm/v3/properties/contacts", w(typed("contacts", api.create_property)), methods=["POST"]),
        Route("/crm/v3/properties/contacts/{name}", w(typed("contacts", api.get_property)), methods=["GET"]),
        Route("/crm/v3/properties/{object_type}/groups", w(api.list_groups), methods=["GET"]),
        Route("/crm/v3/properties/{object_type}/groups", w(api.create_group), methods=["POST"]),
        Route("/crm/v3/properties/{object_type}", w(api.list_properties), methods=["GET"]),
        Route("/crm/v3/properties/{object_type}", w(api.create_property), methods=["POST"]),
        Route("/crm/v3/properties/{object_type}/{name}", w(api.get_property), methods=["GET"]),
        Route("/crm/v3/schemas", w(api.schemas), methods=["GET"]),
        Route("/crm-object-schemas/v3/schemas", w(api.schemas), methods=["GET"]),
        Route("/crm/v3/owners", w(api.list_owners), methods=["GET"]),
        Route("/crm/v3/owners/", w(api.list_owners), methods=["GET"]),
        Route("/crm/v3/owners/{owner_id}", w(api.get_owner), methods=["GET"]),
        Route("/crm/v4/objects/{from_type}/{object_id}/associations/{to_type}", w(api.associations), methods=["GET"]),
        Route(
            "/crm/v4/associations/{from_type}/{to_type}/batch/read", w(api.associations_batch_read), methods=["POST"]
        ),
        Route("/events/v3/events", w(api.events), methods=["GET"]),
        Route("/events/v3/events/", w(api.events), methods=["GET"]),
        Route("/events/v3/events/event-types", w(api.event_types), methods=["GET"]),
        Route("/account-info/v3/details", w(api.account_details), methods=["GET"]),
        Route("/account-info/v3/api-usage/daily/private-apps", w(api.private_app_usage), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SandboxMiddleware, routes=routes, guard=guard, stats=stats, faults=fault_box)],
    )
    app.router.redirect_slashes = False
    index_router(app)
    app.state.crm = crm
    app.state.guard = guard
    app.state.stats = stats
    app.state.faults = fault_box
    return app
