"""The sandbox's Salesforce org: REST API v59.0 (any vXX.X) over the shared population.

Person i is a Lead (unconverted) or a Contact (with an Account, its company) as
`Person.sf_type` says; ids are Salesforce-shaped and derived from indexes (see sf_ids):
Lead/Contact `00Q`/`003` + i, Account `001` + company index, User `005` + rep index,
Task `00T`, Event `00U`, CampaignMember `00v` + activity id (i * 1000 + j), Campaign `701`.

Activities become native objects:
- email_open / email_click / email_reply / email_bounce / call / note -> Task, Subject
  "Email Opened: s", "Email Clicked: s", "Email: Re: s", "Bounced: s", "Call: disposition",
  "Note: text"; Type Email / Call / Other; TaskSubtype Email / Call / Task.
- meeting -> Event (Type "Meeting", 30 or 60 minutes).
- webinar_registered / webinar_attended / event_attended / form_submission -> CampaignMember
  (Status Registered / Attended / Attended / Responded) of a Campaign named after the
  webinar, event or form (Type Webinar / Trade Show / Conference / Other).
- page views have no native object (that is Pardot) and are left out.

Outcomes (the population's hidden truth, sandbox/data.py): a Lead person who won, or lost with a
dated outcome, is a converted Lead (IsConverted, ConvertedDate the outcome's day, ConvertedAccountId,
ConvertedContactId `003` + i, ConvertedOpportunityId `006` + i) whose Opportunity is Closed Won or
Closed Lost; a Lead lost without a date has Status "Closed - Not Converted". A Contact person who
reached a decision has an Opportunity (`006` + i) closed won or lost at the outcome's day, an open
Contact at the opportunity stage an open one; OpportunityContactRole `00K` + i links each Opportunity
to its Contact (the converted Contact for a converted Lead), IsPrimary. Field names and shapes:
Salesforce Object Reference (Lead, Opportunity, OpportunityContactRole). Updating a converted Lead
answers 400 CANNOT_UPDATE_CONVERTED_LEAD "cannot reference converted lead" (the error Salesforce
returns; Help article 000384333). The Contact a Lead was converted into is a Contact like any other
(`Org.in_scan`), so `--contacts N` stays N people who are unconverted Leads or Contacts; its
activities stay on the converted Lead (the sandbox does not move them).

Records nobody owns belong to the integration user ("Sandbox Integration", `UNASSIGNED`);
about two thirds of the unowned Leads sit in a queue instead (`QUEUES`: Groups of Type Queue,
ids `00G`), which Lead.OwnerId can reference as well as a User.

Lead assignment: the org has an active lead assignment rule (`ASSIGNMENT_RULE_NUMBER`, id `01Q`)
whose catch-all entry hands a Lead to the first queue. As in Salesforce, REST runs it on every Lead
update (single record or composite) that does not carry `Sforce-Auto-Assign: FALSE`, whatever the
update changes (REST API Developer Guide, "Assignment Rule Header"); Bulk API 2.0 runs it only
for a job created with its `assignmentRuleId` ("Create a Job", Bulk API 2.0 Developer Guide).
`GET /__sandbox__/salesforce/info` counts how often it ran (`auto_assign_applied`).

Setup as `leadscore setup` does it (sandbox/sf_setup.py): `tooling/sobjects/CustomField` creates a
field that stays hidden until a permission set assigned to the integration user grants it through
FieldPermissions; PermissionSet, FieldPermissions and PermissionSetAssignment are REST sobjects;
`/services/oauth2/userinfo` names the token's user. `POST /__sandbox__/salesforce/permissions`
takes permissions away from that user; `POST /__sandbox__/salesforce/fields` adds visible fields of
any shape at once, for tests of the API itself.

Queries never scan more than they must: `Id`/`WhoId`/`LeadId`/`ContactId` = / IN look
records up by id; `SystemModstamp`/`LastModifiedDate` ranges and ORDER BY walk the
store's modified-time index (bisection over the base population merged with the
written overlay); other scans walk people in index order and a query locator keeps a
position, never a list. `totalSize` is exact except for unindexed scans of more than
`EXACT_COUNT_LIMIT` candidates with extra conditions, where it is the candidate count.

Injected faults: "429" answers 403 REQUEST_LIMIT_EXCEEDED "ConcurrentPerOrgLongTxn Limit
exceeded." (Salesforce has no 429; this transient refusal is its closest analogue and, unlike
"TotalRequests Limit exceeded.", goes away by itself), "500" answers 500 UNKNOWN_EXCEPTION,
"timeout" hangs then answers 503 SERVER_UNAVAILABLE.
"""

from __future__ import annotations

import base64
import bisect
import csv
import hashlib
import hmac
import io
import itertools
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox import sf_ids, sf_setup, soql
from sandbox.common import (
    Admission,
    Clock,
    Faults,
    JsonResponse,
    RollingBudget,
    SandboxMiddleware,
    Stats,
    record_fault,
)
from sandbox.common import bearer_token as _bearer
from sandbox.data import ACTIVITY_ID_STRIDE, BaseIndex, Person, Population, SandboxActivity, Store
from sandbox.soql import Field, FieldType, SObjectType, SoqlError
from sandbox.webhooks import WebhookEmitter

API_VERSION = "59.0"
DEFAULT_DAILY_LIMIT = 100_000
MAX_URI_BYTES = 16_384
DEFAULT_BATCH = 2000
MIN_BATCH = 200
EXACT_COUNT_LIMIT = 20_000
SORT_LIMIT = 200_000
# Query locators (the id in nextRecordsUrl, "01g...-2000" as the REST API Developer Guide's examples
# show) and their results are available for two days after the initial query since API 56.0, with no
# limit on open cursors ("API Query Cursor Limits", Salesforce App Limits Cheatsheet; Knowledge article
# 000384958, which gives the locator an 0r8 prefix where the REST examples show 01g: the sandbox keeps
# 01g). Using an expired locator answers 400 INVALID_QUERY_LOCATOR.
LOCATOR_LIFETIME_S = 2 * 86_400
MAX_CURSORS = 10_000  # the sandbox's own memory bound (Salesforce has none); the oldest go first
COMPOSITE_MAX = 200
TYPE_BLOCK = 4096

SANDBOX_CLIENT_ID = "3MVG9sandbox.leadscore.client"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret-5f2c8e1a"  # noqa: S105 - a fixed sandbox credential
SANDBOX_REFRESH_TOKEN = "5Aep861sandbox.refresh.token"  # noqa: S105 - a fixed sandbox credential

T = FieldType
PERSON_OBJECTS = ("Lead", "Contact")
ACTIVITY_OBJECTS = ("Task", "Event", "CampaignMember")
UNASSIGNED_USER = 999  # User number of the integration user that owns unassigned records
# Queues (Groups of Type Queue, ids 00G...) that own Leads nobody works yet: (number, name, developer name).
# Some unowned Leads sit in one of them, the others with the integration user, as in orgs where an
# assignment rule or a web-to-lead form fills a queue and reps pick from it.
QUEUES: tuple[tuple[int, str, str], ...] = ((1, "Inbound Leads", "Inbound_Leads"), (2, "Event Leads", "Event_Leads"))
# The org's active lead assignment rule (AssignmentRule, id 01Q...): its catch-all entry sends every
# Lead it evaluates to the first queue. It runs on Lead creates and updates over REST unless the request
# says `Sforce-Auto-Assign: FALSE`, and in Bulk API 2.0 jobs only when the job names it (assignmentRuleId).
ASSIGNMENT_RULE_NUMBER = 1
OPPORTUNITY_STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Proposal/Price Quote", "Negotiation/Review",
                      "Closed Won", "Closed Lost")  # Salesforce's default sales process  # fmt: skip
# Injected per-record faults (common.Faults `record` / `records`). In a composite write the record
# fails alone with Salesforce's row-lock error, as when another transaction holds the row (StatusCode
# UNABLE_TO_LOCK_ROW, "unable to obtain exclusive access to this record or N records: <ids>").
# In a Bulk API 2.0 job the faulted row stops the job: "If the batch still can't be processed after
# 20 retries, the entire ingest job is moved to the Failed state and remaining job data isn't
# processed" (Bulk API 2.0 Developer Guide, "Understanding Bulk API 2.0 Ingest"); the rows from it
# on are listed by unprocessedrecords. The job's errorMessage text is unverified.
ROW_LOCK = "UNABLE_TO_LOCK_ROW"
BULK_FAILED_MESSAGE = "InternalServerError : Failed to process the batch after the maximum number of retries"
ROLLED_BACK = "Record rolled back because not all records were valid and the request was using AllOrNone header"

SCORE_FIELDS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Lead_Score__c", "double", {"precision": 18, "scale": 0}),
    ("Lead_Fit_Score__c", "double", {"precision": 18, "scale": 0}),
    ("Lead_Engagement_Score__c", "double", {"precision": 18, "scale": 0}),
    ("Lead_Band__c", "picklist", {"values": ["cold", "warm", "hot"]}),
    ("Lead_Grade__c", "picklist", {"values": ["A", "B", "C", "D"]}),
    ("Lead_Score_Reasons__c", "textarea", {"length": 32768}),
    ("Lead_Scored_At__c", "datetime", {}),
    ("Lead_Score_Model__c", "string", {"length": 80}),
    ("Lead_Conversion_Probability__c", "double", {"precision": 3, "scale": 0}),
    ("Lead_Probability_Factors__c", "textarea", {"length": 32768}),
)


class ApiError(Exception):
    """An answer in Salesforce's error shape: [{"message", "errorCode", "fields"?}]."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def response(self) -> Response:
        body: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            body["fields"] = self.fields
        return JsonResponse([body], status_code=self.status)


# --------------------------------------------------------------------------- schema


def _f(name: str, ftype: FieldType, label: str = "", **kw: Any) -> Field:
    return Field(name=name, type=ftype, label=label or name, **kw)


def _system_fields() -> list[Field]:
    return [
        _f("Id", T.ID, "Record ID", nillable=False, length=18),
        _f("IsDeleted", T.BOOLEAN, "Deleted", nillable=False),
        _f("CreatedDate", T.DATETIME, "Created Date", nillable=False),
        _f("LastModifiedDate", T.DATETIME, "Last Modified Date", nillable=False),
        _f("SystemModstamp", T.DATETIME, "System Modstamp", nillable=False),
    ]


def _owner(*, queues: bool = False) -> Field:
    # A Lead's owner is a User or a Queue (a Group of Type Queue, id 00G...): Lead.OwnerId
    # references Group and User in Salesforce's object reference.
    return _f("OwnerId", T.REFERENCE, "Owner ID", updateable=True, nillable=False, length=18,
              reference_to=("User", "Group") if queues else ("User",), relationship_name="Owner")  # fmt: skip


def _s(name: str, length: int, label: str = "", updateable: bool = True, ftype: FieldType = T.STRING) -> Field:
    return _f(name, ftype, label, updateable=updateable, length=length)


def build_catalog() -> dict[str, SObjectType]:
    """The standard objects the sandbox org has (custom fields are added later)."""
    objs: dict[str, SObjectType] = {}

    def obj(name: str, prefix: str, label: str, fields: Iterable[Field]) -> None:
        o = SObjectType(name, prefix, label)
        for f in itertools.chain(_system_fields(), fields):
            o.add(f)
        objs[name] = o

    person_common = [
        _s("FirstName", 40, "First Name"),
        _s("LastName", 80, "Last Name"),
        _s("Name", 121, "Full Name", updateable=False),
        _s("Email", 80, "Email", ftype=T.EMAIL),
        _s("Title", 128, "Title"),
        _s("Phone", 40, "Phone", ftype=T.PHONE),
        _f("LeadSource", T.PICKLIST, "Lead Source", updateable=True, length=255),
        _owner(),
    ]
    obj("Lead", sf_ids.LEAD, "Lead", [
        *(f for f in person_common if f.name != "OwnerId"),
        _owner(queues=True),
        _s("Company", 255, "Company"),
        _f("Industry", T.PICKLIST, "Industry", updateable=True, length=255),
        _f("NumberOfEmployees", T.INT, "Employees", updateable=True, precision=8),
        _f("AnnualRevenue", T.CURRENCY, "Annual Revenue", updateable=True, precision=18, scale=0),
        _s("Country", 80), _s("State", 80, "State/Province"), _s("City", 40),
        _s("Website", 255, ftype=T.URL),
        _f("Status", T.PICKLIST, "Status", updateable=True, nillable=False, length=255,
           picklist=("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted")),
        _f("Rating", T.PICKLIST, "Rating", updateable=True, length=255, picklist=("Hot", "Warm", "Cold")),
        _f("IsConverted", T.BOOLEAN, "Converted", nillable=False),
        _f("ConvertedContactId", T.REFERENCE, "Converted Contact ID", length=18, reference_to=("Contact",),
           relationship_name="ConvertedContact"),
        _f("ConvertedDate", T.DATE, "Converted Date"),
        _f("ConvertedAccountId", T.REFERENCE, "Converted Account ID", length=18, reference_to=("Account",),
           relationship_name="ConvertedAccount"),
        _f("ConvertedOpportunityId", T.REFERENCE, "Converted Opportunity ID", length=18,
           reference_to=("Opportunity",), relationship_name="ConvertedOpportunity"),
    ])  # fmt: skip
    obj("Contact", sf_ids.CONTACT, "Contact", [
        *person_common,
        _f("AccountId", T.REFERENCE, "Account ID", updateable=True, length=18, reference_to=("Account",),
           relationship_name="Account"),
        _s("Department", 80),
        _s("MailingCountry", 80, "Mailing Country"), _s("MailingState", 80, "Mailing State/Province"),
        _s("MailingCity", 40, "Mailing City"),
    ])  # fmt: skip
    obj("Account", sf_ids.ACCOUNT, "Account", [
        _s("Name", 255, "Account Name"),
        _f("Industry", T.PICKLIST, "Industry", updateable=True, length=255),
        _f("NumberOfEmployees", T.INT, "Employees", updateable=True, precision=8),
        _f("AnnualRevenue", T.CURRENCY, "Annual Revenue", updateable=True, precision=18, scale=0),
        _s("BillingCountry", 80, "Billing Country"), _s("BillingState", 80, "Billing State/Province"),
        _s("BillingCity", 40, "Billing City"), _s("Website", 255, ftype=T.URL),
        _owner(),
    ])  # fmt: skip
    obj("Opportunity", sf_ids.OPPORTUNITY, "Opportunity", [
        _s("Name", 120, "Name"),
        _f("AccountId", T.REFERENCE, "Account ID", updateable=True, length=18, reference_to=("Account",),
           relationship_name="Account"),
        _f("StageName", T.PICKLIST, "Stage", updateable=True, nillable=False, length=255, picklist=OPPORTUNITY_STAGES),
        _f("IsClosed", T.BOOLEAN, "Closed", nillable=False),
        _f("IsWon", T.BOOLEAN, "Won", nillable=False),
        _f("CloseDate", T.DATE, "Close Date", updateable=True, nillable=False),
        _f("Amount", T.CURRENCY, "Amount", updateable=True, precision=18, scale=2),
        _owner(),
    ])  # fmt: skip
    obj("OpportunityContactRole", sf_ids.OPPORTUNITY_CONTACT_ROLE, "Opportunity Contact Role", [
        _f("OpportunityId", T.REFERENCE, "Opportunity ID", length=18, reference_to=("Opportunity",),
           relationship_name="Opportunity"),
        _f("ContactId", T.REFERENCE, "Contact ID", updateable=True, length=18, reference_to=("Contact",),
           relationship_name="Contact"),
        _f("Role", T.PICKLIST, "Role", updateable=True, length=255,
           picklist=("Business User", "Decision Maker", "Economic Buyer", "Technical Buyer", "Evaluator",
                     "Influencer", "Other")),
        _f("IsPrimary", T.BOOLEAN, "Primary", updateable=True, nillable=False),
    ])  # fmt: skip
    activity_common = [
        _f("WhoId", T.REFERENCE, "Name ID", updateable=True, length=18, reference_to=("Contact", "Lead")),
        _f("WhatId", T.REFERENCE, "Related To ID", updateable=True, length=18, reference_to=("Account",)),
        _owner(),
        _s("Subject", 255, "Subject", ftype=T.STRING),
        _f("ActivityDate", T.DATE, "Due Date Only", updateable=True),
        _f("Type", T.PICKLIST, "Type", updateable=True, length=40, picklist=("Call", "Email", "Meeting", "Other")),
        _f("Description", T.TEXTAREA, "Description", updateable=True, length=32000),
    ]
    obj("Task", sf_ids.TASK, "Task", [
        *activity_common,
        _f("Status", T.PICKLIST, "Status", updateable=True, nillable=False, length=40,
           picklist=("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")),
        _f("Priority", T.PICKLIST, "Priority", updateable=True, nillable=False, length=40,
           picklist=("High", "Normal", "Low")),
        _f("TaskSubtype", T.PICKLIST, "Task Subtype", length=40, picklist=("Task", "Email", "Call")),
        _s("CallDisposition", 255, "Call Result"),
        _f("IsClosed", T.BOOLEAN, "Closed", nillable=False),
    ])  # fmt: skip
    obj("Event", sf_ids.EVENT, "Event", [
        *activity_common,
        _f("StartDateTime", T.DATETIME, "Start", updateable=True),
        _f("EndDateTime", T.DATETIME, "End", updateable=True),
        _f("ActivityDateTime", T.DATETIME, "Due Date Time", updateable=True),
        _f("DurationInMinutes", T.INT, "Duration", updateable=True, precision=8),
    ])  # fmt: skip
    obj("Campaign", sf_ids.CAMPAIGN, "Campaign", [
        _s("Name", 80, "Name"),
        _f("Type", T.PICKLIST, "Type", updateable=True, length=255,
           picklist=("Webinar", "Trade Show", "Conference", "Email", "Other")),
        _f("Status", T.PICKLIST, "Status", updateable=True, length=255,
           picklist=("Planned", "In Progress", "Completed", "Aborted")),
        _f("IsActive", T.BOOLEAN, "Active", updateable=True, nillable=False),
        _owner(),
    ])  # fmt: skip
    obj("CampaignMember", sf_ids.CAMPAIGN_MEMBER, "Campaign Member", [
        _f("CampaignId", T.REFERENCE, "Campaign ID", length=18, reference_to=("Campaign",),
           relationship_name="Campaign"),
        _f("LeadId", T.REFERENCE, "Lead ID", length=18, reference_to=("Lead",), relationship_name="Lead"),
        _f("ContactId", T.REFERENCE, "Contact ID", length=18, reference_to=("Contact",),
           relationship_name="Contact"),
        _f("Status", T.PICKLIST, "Status", updateable=True, length=40,
           picklist=("Sent", "Registered", "Attended", "Responded")),
        _f("HasResponded", T.BOOLEAN, "Responded", nillable=False),
        _f("FirstRespondedDate", T.DATE, "First Responded Date"),
    ])  # fmt: skip
    obj("Group", sf_ids.GROUP, "Group", [
        _s("Name", 40, "Name"), _s("DeveloperName", 80, "Developer Name"),
        _f("Type", T.PICKLIST, "Type", updateable=False, length=40, picklist=("Queue", "Regular", "Role")),
        _s("Email", 80, ftype=T.EMAIL),
    ])  # fmt: skip
    obj("User", sf_ids.USER, "User", [
        _s("Username", 80, updateable=False), _s("Name", 121, "Full Name", updateable=False),
        _s("FirstName", 40, "First Name"), _s("LastName", 80, "Last Name"),
        _s("Email", 128, ftype=T.EMAIL), _f("IsActive", T.BOOLEAN, "Active", updateable=True, nillable=False),
        _s("Country", 80), _s("State", 80, "State/Province"), _s("City", 40),
        _s("Division", 80), _s("Department", 80), _s("Title", 80),
        _f("TimeZoneSidKey", T.PICKLIST, "Time Zone", updateable=True, length=40),
        _f("UserRoleId", T.REFERENCE, "Role ID", updateable=True, length=18, reference_to=("UserRole",)),
    ])  # fmt: skip
    objs.update(sf_setup.catalog())
    return objs


_CUSTOM_TYPES = {
    "double": T.DOUBLE, "number": T.DOUBLE, "int": T.INT, "integer": T.INT, "percent": T.PERCENT,
    "currency": T.CURRENCY, "string": T.STRING, "text": T.STRING, "textarea": T.TEXTAREA,
    "longtextarea": T.TEXTAREA, "picklist": T.PICKLIST, "datetime": T.DATETIME, "date": T.DATE,
    "boolean": T.BOOLEAN, "checkbox": T.BOOLEAN, "email": T.EMAIL, "url": T.URL, "phone": T.PHONE,
}  # fmt: skip


def custom_field(name: str, type_name: str, **kw: Any) -> Field:
    """A custom field definition; raises ValueError with a sentence for a bad one."""
    if not name.endswith("__c") or not name[:-3].replace("_", "a").isalnum() or not name[0].isalpha():
        raise ValueError(f"custom field name {name!r} must be letters, digits and underscores ending in __c")
    ftype = _CUSTOM_TYPES.get(type_name.lower())
    if ftype is None:
        raise ValueError(f"unknown field type {type_name!r}: use one of {', '.join(sorted(_CUSTOM_TYPES))}")
    length = int(kw.get("length", 255 if ftype in soql.STRING_TYPES else 0))
    if ftype == T.TEXTAREA and "length" not in kw:
        length = 32768
    return Field(
        name=name, type=ftype, label=str(kw.get("label") or name[:-3].replace("_", " ")), custom=True,
        updateable=True, length=length, precision=int(kw.get("precision", 18 if ftype in soql.NUMBER_TYPES else 0)),
        scale=int(kw.get("scale", 0)), picklist=tuple(str(v) for v in kw.get("values", ())),
    )  # fmt: skip


_SOAP = {
    T.ID: "tns:ID", T.REFERENCE: "tns:ID", T.BOOLEAN: "xsd:boolean", T.INT: "xsd:int", T.DOUBLE: "xsd:double",
    T.CURRENCY: "xsd:double", T.PERCENT: "xsd:double", T.DATE: "xsd:date", T.DATETIME: "xsd:dateTime",
}  # fmt: skip


def describe_field(f: Field) -> dict[str, Any]:
    digits = f.precision if f.type == T.INT else 0
    return {
        "name": f.name, "label": f.label, "type": f.type.value, "soapType": _SOAP.get(f.type, "xsd:string"),
        "custom": f.custom, "updateable": f.updateable, "createable": f.updateable or f.name in ("OwnerId",),
        "nillable": f.nillable, "length": f.length if f.type not in _SOAP or f.type in (T.ID, T.REFERENCE) else 0,
        "precision": f.precision if f.type in (T.DOUBLE, T.CURRENCY, T.PERCENT) else 0,
        "scale": f.scale if f.type in (T.DOUBLE, T.CURRENCY, T.PERCENT) else 0, "digits": digits,
        "picklistValues": [
            {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v} for v in f.picklist
        ],
        "referenceTo": list(f.reference_to), "relationshipName": f.relationship_name,
        "filterable": True, "sortable": f.type != T.TEXTAREA, "groupable": f.type not in (T.TEXTAREA, T.DOUBLE),
        "calculated": False, "unique": False, "externalId": False, "idLookup": f.name == "Id",
        "defaultedOnCreate": f.name in ("Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "OwnerId"),
    }  # fmt: skip


# --------------------------------------------------------------------------- mapping the population

_STATUS = {
    "": "Open - Not Contacted", "NEW": "Open - Not Contacted", "OPEN": "Open - Not Contacted",
    "IN_PROGRESS": "Working - Contacted", "ATTEMPTED_TO_CONTACT": "Working - Contacted",
    "CONNECTED": "Working - Contacted", "OPEN_DEAL": "Working - Contacted",
    "UNQUALIFIED": "Closed - Not Converted", "BAD_TIMING": "Working - Contacted",
}  # fmt: skip
_RATING = {"marketingqualifiedlead": "Warm", "salesqualifiedlead": "Hot", "opportunity": "Hot"}
_TASK_KINDS = frozenset({"email_open", "email_click", "email_reply", "email_bounce", "call", "note"})
_CM_KINDS = frozenset({"webinar_registered", "webinar_attended", "event_attended", "form_submission"})


def _department(title: str) -> str | None:
    t = title.lower()
    if any(w in t for w in ("purchas", "buyer", "procurement")):
        return "Purchasing"
    if "marketing" in t:
        return "Marketing"
    if any(w in t for w in ("ceo", "managing director", "cto", "vp ")):
        return "Management"
    if any(w in t for w in ("engineer", "technician", "r&d", "test", "lab")):
        return "Engineering"
    return None


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def _campaign_number(name: str) -> int:
    return int(int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "big") % sf_ids.MAX_NUMBER)


def _campaign_type(name: str) -> str:
    low = name.lower()
    if low.startswith("webinar:"):
        return "Webinar"
    if "trade show" in low or "messe" in low:
        return "Trade Show"
    if "conference" in low:
        return "Conference"
    return "Other"


class TypeIndex:
    """Which people are Leads, in blocks computed on demand, with counts per block.

    It replays the population's own draw for `sf_type` (cheap: no person is built) and
    every person the org builds is checked against it, so a change in the generator shows
    up as an error rather than as wrong counts."""

    def __init__(self, population: Population) -> None:
        self.pop = population
        self.n = population.n
        nblocks = (self.n + TYPE_BLOCK - 1) // TYPE_BLOCK
        self._blocks: list[bytearray | None] = [None] * nblocks
        self._leads: list[int] = [0] * nblocks
        self._lock = threading.Lock()
        self._fast: Callable[[int], bool] | None = getattr(population, "is_lead", None)

    def _draw(self, i: int) -> bool:
        if self._fast is not None:
            return self._fast(i)
        r = random.Random(self.pop.seed * 1_000_003 + i)
        r.random()
        return r.random() < 0.7

    def _block(self, b: int) -> bytearray:
        blk = self._blocks[b]
        if blk is None:
            with self._lock:  # one thread computes a block; the warm-up thread and requests share it
                blk = self._blocks[b]
                if blk is None:
                    lo, hi = b * TYPE_BLOCK, min(self.n, (b + 1) * TYPE_BLOCK)
                    blk = bytearray(1 if self._draw(i) else 0 for i in range(lo, hi))
                    self._leads[b] = sum(blk)
                    self._blocks[b] = blk
        return blk

    def is_lead(self, i: int) -> bool:
        return bool(self._block(i // TYPE_BLOCK)[i % TYPE_BLOCK])

    def type_of(self, i: int) -> str:
        return "Lead" if self.is_lead(i) else "Contact"

    def count(self, obj: str, start: int = 0, stop: int | None = None) -> int:
        """How many people of `obj` ("Lead"/"Contact") have start <= i < stop."""
        stop = self.n if stop is None else min(stop, self.n)
        if start >= stop:
            return 0
        leads = 0
        b0, b1 = start // TYPE_BLOCK, (stop - 1) // TYPE_BLOCK
        for b in range(b0, b1 + 1):
            blk = self._block(b)
            lo, hi = b * TYPE_BLOCK, b * TYPE_BLOCK + len(blk)
            if start <= lo and hi <= stop:
                leads += self._leads[b]
            else:
                leads += sum(blk[max(start, lo) - lo : min(stop, hi) - lo])
        return leads if obj == "Lead" else (stop - start) - leads

    def warm(self) -> None:
        for b in range(len(self._blocks)):
            self._block(b)


@dataclass(slots=True)
class User:
    number: int
    values: dict[str, Any]


# --------------------------------------------------------------------------- the org


@dataclass(slots=True)
class Cursor:
    query: soql.Query
    plan: Plan
    total: int
    batch: int
    endpoint: str
    positions: dict[int, Any] = field(default_factory=dict)  # records delivered -> where to resume
    created: float = 0.0  # the org clock at the initial query: the locator lives LOCATOR_LIFETIME_S from then


@dataclass(slots=True)
class Plan:
    """Where a query's candidates come from, in output order."""

    iterate: Callable[[Any], Iterator[tuple[Any, Record]]]  # from a position (inclusive): (position, record)
    start: Any
    count: Callable[[], int]  # exact number of matches (may be costly)
    estimate: int  # candidates: an upper bound for the matches
    exact: bool  # the candidates are exactly the matches


Record = dict[str, Any]


class Org:
    """The sandbox org's data and behaviour, independent of HTTP."""

    def __init__(
        self,
        population: Population,
        store: Store,
        *,
        org_id: str,
        score_fields: bool = False,
        version: str = API_VERSION,
    ) -> None:
        self.pop = population
        self.store = store
        self.org_id = org_id
        self.version = version
        self.objects = build_catalog()
        self.types = TypeIndex(population)
        self.base = BaseIndex.of(population)
        self.lock = threading.RLock()
        self.auto_assign_applied = 0
        self.queues: dict[int, Record] = self._build_queues(population.anchor)
        self.assignment_rule_id = sf_ids.make_id(sf_ids.ASSIGNMENT_RULE, ASSIGNMENT_RULE_NUMBER)
        self.assignment_rule_owner = sf_ids.make_id(sf_ids.GROUP, QUEUES[0][0])
        self.cursors: OrderedDict[str, Cursor] = OrderedDict()
        self.clock = Clock()  # for query-locator lifetimes and the rolling API allowance
        self._cursor_seq = itertools.count(1)
        self._created_tasks_by_who: dict[int, list[int]] = {}
        self.task_key_base = population.n * ACTIVITY_ID_STRIDE
        self.users = self._build_users()
        self.campaigns: dict[int, Record] = {}
        self._register_known_campaigns()
        self.jobs: dict[str, BulkJob] = {}
        self.setup = sf_setup.SetupObjects(sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER))
        if score_fields:
            for obj in PERSON_OBJECTS:
                self.add_fields(obj, [{"name": n, "type": t, **kw} for n, t, kw in SCORE_FIELDS])

    # ---- catalog
    def sobject(self, name: str) -> SObjectType | None:
        for key, o in self.objects.items():
            if key.lower() == name.lower():
                return o
        return None

    def add_fields(self, obj: str, specs: Iterable[Mapping[str, Any]]) -> list[str]:
        o = self.sobject(obj)
        if o is None or o.name not in PERSON_OBJECTS + ACTIVITY_OBJECTS + ("Account",):
            raise ValueError(f"cannot add fields to {obj!r}")
        made = []
        with self.lock:
            for spec in specs:
                extra = {k: v for k, v in spec.items() if k not in ("name", "type")}
                f = custom_field(str(spec.get("name", "")), str(spec.get("type", "")), **extra)
                o.add(f)
                made.append(f.name)
        return made

    # ---- users and campaigns
    def _build_users(self) -> dict[int, Record]:
        users: dict[int, Record] = {}
        created = self.pop.anchor - 2 * 365 * 86400
        for rep in self.pop.reps():
            users[rep.index] = {
                "Id": sf_ids.make_id(sf_ids.USER, rep.index), "IsDeleted": False,
                "Username": rep.email.replace("@", ".sf@"), "Name": rep.name, "FirstName": rep.first_name,
                "LastName": rep.last_name, "Email": rep.email, "IsActive": rep.active, "Country": rep.country,
                "State": None, "City": None, "Division": rep.team, "Department": "Sales",
                "Title": "Account Executive", "TimeZoneSidKey": rep.timezone,
                "UserRoleId": sf_ids.make_id("00E", 1 + sum(rep.team.encode())),
                "CreatedDate": created, "LastModifiedDate": created, "SystemModstamp": created,
            }  # fmt: skip
        users[UNASSIGNED_USER] = {
            "Id": sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER), "IsDeleted": False,
            "Username": "integration@sandbox-corp.example.sf", "Name": "Sandbox Integration",
            "FirstName": "Sandbox", "LastName": "Integration", "Email": "integration@sandbox-corp.example",
            "IsActive": True, "Country": None, "State": None, "City": None, "Division": None,
            "Department": "Integration", "Title": None, "TimeZoneSidKey": "Europe/Berlin", "UserRoleId": None,
            "CreatedDate": created, "LastModifiedDate": created, "SystemModstamp": created,
        }  # fmt: skip
        return users

    def _register_known_campaigns(self) -> None:
        from sandbox import data  # the generator's private vocabularies, if any

        names: list[str] = [*getattr(data, "_WEBINARS", ()), *getattr(data, "_EVENTS", ())]
        names += [title for _, title in getattr(data, "_FORMS", {}).values()]
        for name in names:
            self.campaign_for(name)

    def campaign_for(self, name: str) -> Record:
        number = _campaign_number(name)
        rec = self.campaigns.get(number)
        if rec is None:
            created = self.pop.anchor - 200 * 86400
            rec = {
                "Id": sf_ids.make_id(sf_ids.CAMPAIGN, number), "IsDeleted": False, "Name": name,
                "Type": _campaign_type(name), "Status": "In Progress", "IsActive": True,
                "OwnerId": sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER),
                "CreatedDate": created, "LastModifiedDate": created, "SystemModstamp": created,
            }  # fmt: skip
            with self.lock:
                self.campaigns.setdefault(number, rec)
        return rec

    def owner_id(self, p: Person) -> str:
        return sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER if p.owner is None else p.owner)

    @staticmethod
    def _build_queues(anchor: float) -> dict[int, Record]:
        created = anchor - 2 * 365 * 86400
        return {
            number: {
                "Id": sf_ids.make_id(sf_ids.GROUP, number), "IsDeleted": False, "Name": name,
                "DeveloperName": dev, "Type": "Queue", "Email": None,
                "CreatedDate": created, "LastModifiedDate": created, "SystemModstamp": created,
            }
            for number, name, dev in QUEUES
        }  # fmt: skip

    def lead_owner_id(self, p: Person) -> str:
        """A Lead's owner: its rep, else (nobody works it yet) one of the queues or the integration user."""
        if p.owner is not None:
            return sf_ids.make_id(sf_ids.USER, p.owner)
        slot = (p.index * 2_654_435_761 >> 7) % (len(QUEUES) + 1)
        if slot < len(QUEUES):
            return sf_ids.make_id(sf_ids.GROUP, QUEUES[slot][0])
        return sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER)

    # ---- records
    def _overlay(self, obj: str, key: int, rec: Record) -> Record:
        values = self.store.values(obj, key)
        if values:
            rec.update(values)
            if obj in PERSON_OBJECTS and ("FirstName" in values or "LastName" in values):
                rec["Name"] = " ".join(x for x in (rec.get("FirstName"), rec.get("LastName")) if x)
            ms = self.store.modified_ms(obj, key)
            if ms is not None:
                rec["LastModifiedDate"] = rec["SystemModstamp"] = ms / 1000
        return rec

    # ---- outcomes
    def in_scan(self, obj: str, i: int) -> bool:
        """Whether person i has a record of `obj`: every Lead person a Lead (converted or not); a Contact
        for every Contact person and every converted Lead (the Contact it was converted into)."""
        if self.types.is_lead(i):
            return obj == "Lead" or (obj == "Contact" and self.converted(i))
        return obj == "Contact"

    def converted(self, i: int) -> bool:
        """Whether person i is a converted Lead (won, or lost with a dated outcome)."""
        if not self.types.is_lead(i):
            return False
        p = self.pop.person(i)
        return p.outcome == "won" or (p.outcome == "lost" and p.outcome_dated)

    def has_opportunity(self, i: int) -> bool:
        if self.types.is_lead(i):
            return self.converted(i)
        p = self.pop.person(i)
        return p.outcome is not None or p.lifecycle_stage == "opportunity"

    def opportunity_record(self, i: int) -> Record:
        p = self.pop.person(i)
        anchor = self.pop.anchor
        if p.outcome is not None and p.outcome_ms is not None:
            stage = "Closed Won" if p.outcome == "won" else "Closed Lost"
            close = p.outcome_ms / 1000
        else:
            stage = OPPORTUNITY_STAGES[i % 5]
            close = anchor + (14 + i % 60) * 86400
        created = max(p.created_ms / 1000, min(close, anchor) - 45 * 86400)
        modified = max(created, min(close, anchor - 60))
        employees = p.employees if isinstance(p.employees, int) else 50
        rec: Record = {
            "Id": sf_ids.make_id(sf_ids.OPPORTUNITY, i), "IsDeleted": False,
            "Name": f"{p.company} - measurement system",
            "AccountId": sf_ids.make_id(sf_ids.ACCOUNT, p.company_index), "StageName": stage,
            "IsClosed": stage.startswith("Closed"), "IsWon": stage == "Closed Won", "CloseDate": _date(close),
            "Amount": float(5_000 + (min(employees, 5000) * 37 + i * 131) % 120_000), "OwnerId": self.owner_id(p),
            "CreatedDate": created, "LastModifiedDate": modified, "SystemModstamp": modified,
        }  # fmt: skip
        return self._overlay("Opportunity", i, rec)

    def contact_role_record(self, i: int) -> Record:
        p = self.pop.person(i)
        opp = self.opportunity_record(i)
        rec: Record = {
            "Id": sf_ids.make_id(sf_ids.OPPORTUNITY_CONTACT_ROLE, i), "IsDeleted": False,
            "OpportunityId": opp["Id"], "ContactId": sf_ids.make_id(sf_ids.CONTACT, i),
            "Role": "Technical Buyer" if "engineer" in p.job_title.lower() else "Decision Maker", "IsPrimary": True,
            "CreatedDate": opp["CreatedDate"], "LastModifiedDate": opp["CreatedDate"],
            "SystemModstamp": opp["CreatedDate"],
        }  # fmt: skip
        return self._overlay("OpportunityContactRole", i, rec)

    def person_record(self, i: int, as_obj: str | None = None) -> Record:
        p = self.pop.person(i)
        obj = self.types.type_of(i)
        if p.sf_type != obj:
            raise RuntimeError(f"person {i}: the type index says {obj}, the population says {p.sf_type}")
        converted = obj == "Lead" and self.converted(i)
        if as_obj == "Contact" and converted:
            obj = "Contact"  # the Contact this Lead was converted into
        created, modified = p.created_ms / 1000, p.modified_ms / 1000
        rec: Record = {
            "Id": sf_ids.make_id(sf_ids.LEAD if obj == "Lead" else sf_ids.CONTACT, i), "IsDeleted": False,
            "FirstName": p.first_name, "LastName": p.last_name, "Name": f"{p.first_name} {p.last_name}",
            "Email": p.email, "Title": p.job_title or None, "Phone": p.phone, "LeadSource": p.lead_source,
            "OwnerId": self.lead_owner_id(p) if obj == "Lead" else self.owner_id(p),
            "CreatedDate": created, "LastModifiedDate": modified,
            "SystemModstamp": modified,
        }  # fmt: skip
        if obj == "Lead":
            rec.update(
                Company=p.company, Industry=p.industry,
                NumberOfEmployees=p.employees if isinstance(p.employees, int) else None,
                AnnualRevenue=float(p.annual_revenue) if p.annual_revenue is not None else None,
                Country=p.country, State=p.state, City=p.city, Website=p.website,
                Status=_STATUS.get(p.lead_status, "Open - Not Contacted"), Rating=_RATING.get(p.lifecycle_stage),
                IsConverted=False, ConvertedContactId=None, ConvertedDate=None, ConvertedAccountId=None,
                ConvertedOpportunityId=None,
            )  # fmt: skip
            if converted:
                assert p.outcome_ms is not None
                rec.update(
                    IsConverted=True, ConvertedDate=_date(p.outcome_ms / 1000), Status="Closed - Converted",
                    ConvertedContactId=sf_ids.make_id(sf_ids.CONTACT, i),
                    ConvertedAccountId=sf_ids.make_id(sf_ids.ACCOUNT, p.company_index),
                    ConvertedOpportunityId=sf_ids.make_id(sf_ids.OPPORTUNITY, i),
                )  # fmt: skip
        else:
            rec.update(
                AccountId=sf_ids.make_id(sf_ids.ACCOUNT, p.company_index), Department=_department(p.job_title),
                MailingCountry=p.country, MailingState=p.state, MailingCity=p.city,
            )  # fmt: skip
        return self._overlay(obj, i, rec)

    def account_record(self, c: int) -> Record:
        co = self.pop.company(c)
        created = self.pop.anchor - 3 * 365 * 86400
        rec: Record = {
            "Id": sf_ids.make_id(sf_ids.ACCOUNT, c), "IsDeleted": False, "Name": co.name, "Industry": co.industry,
            "NumberOfEmployees": co.employees,
            "AnnualRevenue": float(co.annual_revenue) if co.annual_revenue is not None else None,
            "BillingCountry": co.country, "BillingState": co.state, "BillingCity": co.city,
            "Website": f"https://www.{co.domain}", "OwnerId": sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER),
            "CreatedDate": created, "LastModifiedDate": created, "SystemModstamp": created,
        }  # fmt: skip
        return self._overlay("Account", c, rec)

    def activity_object(self, kind: str) -> str | None:
        if kind in _TASK_KINDS:
            return "Task"
        if kind == "meeting":
            return "Event"
        if kind in _CM_KINDS:
            return "CampaignMember"
        return None

    def activity_record(self, p: Person, a: SandboxActivity) -> tuple[str, Record] | None:
        obj = self.activity_object(a.kind)
        if obj is None:
            return None
        ts = a.ts
        who = sf_ids.make_id(sf_ids.LEAD if p.sf_type == "Lead" else sf_ids.CONTACT, p.index)
        what = None if p.sf_type == "Lead" else sf_ids.make_id(sf_ids.ACCOUNT, p.company_index)
        base: Record = {"IsDeleted": False, "CreatedDate": ts, "LastModifiedDate": ts, "SystemModstamp": ts}
        attrs = a.attrs
        if obj == "Task":
            subject = attrs.get("subject", "")
            kind_fields: dict[str, tuple[str, str, str, str | None]] = {
                "email_open": (f"Email Opened: {subject}", "Email", "Email", "Opened by the recipient."),
                "email_click": (f"Email Clicked: {subject}", "Email", "Email", f"Clicked {attrs.get('url', '')}"),
                "email_reply": (f"Email: {subject}", "Email", "Email", "Reply received."),
                "email_bounce": (f"Bounced: {subject}", "Email", "Email", "The message could not be delivered."),
                "call": (f"Call: {attrs.get('disposition', '')}", "Call", "Call", None),
                "note": (f"Note: {attrs.get('body', '')}", "Other", "Task", attrs.get("body")),
            }
            subj, typ, subtype, desc = kind_fields[a.kind]
            base.update(
                Id=sf_ids.make_id(sf_ids.TASK, a.id), WhoId=who, WhatId=what, OwnerId=self.owner_id(p),
                Subject=subj, ActivityDate=_date(ts), Type=typ, TaskSubtype=subtype, Description=desc,
                Status="Completed", Priority="Normal", IsClosed=True,
                CallDisposition=attrs.get("disposition") if a.kind == "call" else None,
            )  # fmt: skip
        elif obj == "Event":
            minutes = 60 if a.id % 2 else 30
            base.update(
                Id=sf_ids.make_id(sf_ids.EVENT, a.id), WhoId=who, WhatId=what, OwnerId=self.owner_id(p),
                Subject=attrs.get("title", "Meeting"), ActivityDate=_date(ts), Type="Meeting",
                Description=None, StartDateTime=ts, ActivityDateTime=ts, EndDateTime=ts + minutes * 60,
                DurationInMinutes=minutes,
            )  # fmt: skip
        else:
            name = attrs.get("campaign") or attrs.get("form_title") or "Website form"
            status = {"webinar_registered": "Registered", "form_submission": "Responded"}.get(a.kind, "Attended")
            responded = status != "Registered"
            base.update(
                Id=sf_ids.make_id(sf_ids.CAMPAIGN_MEMBER, a.id), CampaignId=self.campaign_for(name)["Id"],
                LeadId=who if p.sf_type == "Lead" else None, ContactId=who if p.sf_type == "Contact" else None,
                Status=status, HasResponded=responded, FirstRespondedDate=_date(ts) if responded else None,
            )  # fmt: skip
        return obj, self._overlay(obj, a.id, base)

    def created_task_record(self, key: int) -> Record | None:
        values = self.store.values("Task", key)
        created = self.store.created_ms("Task", key)
        if not values or created is None:
            return None
        modified = self.store.modified_ms("Task", key) or created
        rec: Record = {
            "Id": sf_ids.make_id(sf_ids.TASK, key), "IsDeleted": False, "WhoId": None, "WhatId": None,
            "OwnerId": sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER), "Subject": None, "ActivityDate": None,
            "Type": None, "Description": None, "Status": "Not Started", "Priority": "Normal",
            "TaskSubtype": "Task", "CallDisposition": None, "IsClosed": False,
            "CreatedDate": created / 1000, "LastModifiedDate": modified / 1000, "SystemModstamp": modified / 1000,
        }  # fmt: skip
        rec.update(values)
        rec["IsClosed"] = rec.get("Status") == "Completed"
        return rec

    def activities_of(self, obj: str, i: int) -> list[tuple[int, Record]]:
        """(activity key, record) of person i's records of one activity object, oldest first."""
        p = self.pop.person(i)
        out: list[tuple[int, Record]] = []
        for a in self.pop.activities(i):
            if self.activity_object(a.kind) == obj:
                made = self.activity_record(p, a)
                if made is not None:
                    out.append((a.id, made[1]))
        if obj == "Task":
            for key in self._created_tasks_by_who.get(i, ()):
                rec = self.created_task_record(key)
                if rec is not None:
                    out.append((key, rec))
        return out

    # ---- id resolution
    def locate(self, record_id: str) -> tuple[str, int] | None:
        """(object, key) of an existing record, or None."""
        parsed = sf_ids.parse(record_id)
        if parsed is None:
            return None
        prefix, number = parsed
        if prefix in (sf_ids.LEAD, sf_ids.CONTACT):
            obj = "Lead" if prefix == sf_ids.LEAD else "Contact"
            if number < self.pop.n and self.types.type_of(number) == obj:
                return obj, number
            if obj == "Contact" and number < self.pop.n and self.converted(number):
                return obj, number  # the Contact a Lead was converted into
            return None
        if prefix in (sf_ids.OPPORTUNITY, sf_ids.OPPORTUNITY_CONTACT_ROLE):
            obj = "Opportunity" if prefix == sf_ids.OPPORTUNITY else "OpportunityContactRole"
            return (obj, number) if number < self.pop.n and self.has_opportunity(number) else None
        if prefix == sf_ids.ACCOUNT:
            return ("Account", number) if number < self.pop.n_companies else None
        if prefix == sf_ids.USER:
            return ("User", number) if number in self.users else None
        if prefix == sf_ids.GROUP:
            return ("Group", number) if number in self.queues else None
        if prefix == sf_ids.CAMPAIGN:
            return ("Campaign", number) if number in self.campaigns else None
        setup_obj = sf_setup.OBJECT_OF_PREFIX.get(prefix)
        if setup_obj is not None:
            return (setup_obj, number) if number in self.setup.records[setup_obj] else None
        activity = {sf_ids.TASK: "Task", sf_ids.EVENT: "Event", sf_ids.CAMPAIGN_MEMBER: "CampaignMember"}.get(prefix)
        if activity is None:
            return None
        obj = activity
        if obj == "Task" and number >= self.task_key_base:
            return ("Task", number) if self.store.created_ms("Task", number) is not None else None
        i, j = divmod(number, ACTIVITY_ID_STRIDE)
        if i >= self.pop.n:
            return None
        acts = self.pop.activities(i)
        if j < len(acts) and self.activity_object(acts[j].kind) == obj:
            return obj, number
        return None

    def record(self, obj: str, key: int) -> Record | None:
        if obj in PERSON_OBJECTS:
            return self.person_record(key, obj)
        if obj == "Opportunity":
            return self.opportunity_record(key)
        if obj == "OpportunityContactRole":
            return self.contact_role_record(key)
        if obj == "Account":
            return self.account_record(key)
        if obj == "User":
            return dict(self.users[key])
        if obj == "Group":
            return dict(self.queues[key])
        if obj == "Campaign":
            return dict(self.campaigns[key])
        if obj in sf_setup.PREFIXES:
            return self.setup.record(obj, key)
        if obj == "Task" and key >= self.task_key_base:
            return self.created_task_record(key)
        i, j = divmod(key, ACTIVITY_ID_STRIDE)
        made = self.activity_record(self.pop.person(i), self.pop.activities(i)[j])
        return None if made is None else made[1]

    def by_id(self, record_id: str) -> tuple[str, int, Record] | None:
        loc = self.locate(record_id)
        if loc is None:
            return None
        rec = self.record(*loc)
        return None if rec is None else (loc[0], loc[1], rec)

    # ---- relationships
    def attach(self, obj: str, rec: Record, tree: Mapping[str, Any]) -> Record:
        """Adds parent records for the relationship paths in `tree` ({"Account": {"Owner": {}}})."""
        sobject = self.objects[obj]
        for rel, sub in tree.items():
            ref = sobject.relationship(rel)
            parent = None
            if ref is not None and rec.get(ref.name):
                found = self.by_id(rec[ref.name])
                if found is not None:
                    parent = self.attach(found[0], found[2], sub)
            rec[rel] = parent
        return rec


def _rel_tree(refs: Iterable[soql.FieldRef]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for ref in refs:
        node = tree
        for rel in ref.path[:-1]:
            node = node.setdefault(rel, {})
    return tree


def _refs_of(expr: soql.Expr | None) -> list[soql.FieldRef]:
    if expr is None:
        return []
    if isinstance(expr, soql.Compare | soql.InList | soql.Like):
        return [expr.ref]
    if isinstance(expr, soql.And | soql.Or):
        return [r for e in expr.items for r in _refs_of(e)]
    if isinstance(expr, soql.Not):
        return _refs_of(expr.item)
    return []


# --------------------------------------------------------------------------- query planning

_MODSTAMP = ("SystemModstamp", "LastModifiedDate")
# Fields with one value for every record the sandbox has (never writable): folded out of WHERE.
_CONSTANTS: dict[str, dict[str, Any]] = {
    "Lead": {"IsDeleted": False},  # IsConverted and the Converted* fields vary: converted Leads exist
    "Contact": {"IsDeleted": False},
    "Account": {"IsDeleted": False},
}


def _single_ref(expr: soql.Expr, names: Iterable[str]) -> str | None:
    ref = getattr(expr, "ref", None)
    if ref is not None and len(ref.path) == 1 and ref.path[0] in names:
        return str(ref.path[0])
    return None


def _id_values(expr: soql.Expr) -> list[str] | None:
    if isinstance(expr, soql.Compare) and expr.op == "=" and expr.value is not None:
        return [expr.value]
    if isinstance(expr, soql.InList) and not expr.negated:
        return [v for v in expr.values if v is not None]
    return None


def _ms_range(conds: Iterable[soql.Expr]) -> tuple[int | None, int | None, list[soql.Expr]]:
    """since/until (inclusive, ms) from modstamp comparisons, and the conjuncts used."""
    lo: int | None = None
    hi: int | None = None
    used: list[soql.Expr] = []
    for c in conds:
        if not isinstance(c, soql.Compare) or _single_ref(c, _MODSTAMP) is None or c.value is None:
            continue
        ms = round(c.value * 1000)
        if c.op in (">", ">="):
            v = ms + 1 if c.op == ">" else ms
            lo = v if lo is None else max(lo, v)
        elif c.op in ("<", "<="):
            v = ms - 1 if c.op == "<" else ms
            hi = v if hi is None else min(hi, v)
        elif c.op == "=":
            lo = ms if lo is None else max(lo, ms)
            hi = ms if hi is None else min(hi, ms)
        else:
            continue
        used.append(c)
    return lo, hi, used


class Planner:
    def __init__(self, org: Org) -> None:
        self.org = org

    def plan(self, q: soql.Query) -> tuple[Plan, Callable[[Record], bool]]:
        org = self.org
        obj = q.sobject.name
        where = soql.simplify(q.where, _CONSTANTS.get(obj, {}))
        pred = soql.compile_predicate(where)
        tree = _rel_tree([*q.select, *_refs_of(where), *(o.ref for o in q.order_by)])
        conds = soql.conjuncts(where)
        if isinstance(where, soql.Const) and not where.value:
            return self._materialized([], q), pred

        def build(o: str, key: int) -> Record | None:
            rec = org.record(o, key)
            if rec is not None and tree:
                org.attach(o, rec, tree)
            return rec

        order = [(o.ref.path, o.descending) for o in q.order_by]
        # direct lookups by id
        for c in conds:
            if _single_ref(c, ("Id",)) and (ids := _id_values(c)) is not None:
                recs = []
                for rid in dict.fromkeys(ids):
                    loc = org.locate(rid)
                    if loc is not None and loc[0] == obj and (r := build(obj, loc[1])) is not None:
                        recs.append(r)
                return self._materialized([r for r in recs if pred(r)], q), pred
        if obj in ACTIVITY_OBJECTS:
            who_fields = ("WhoId",) if obj != "CampaignMember" else ("LeadId", "ContactId")
            for c in conds:
                if _single_ref(c, who_fields) and (ids := _id_values(c)) is not None:
                    recs = []
                    for rid in dict.fromkeys(ids):
                        loc = org.locate(rid)
                        if loc is None or loc[0] not in PERSON_OBJECTS:
                            continue
                        for _, rec in org.activities_of(obj, loc[1]):
                            if tree:
                                org.attach(obj, rec, tree)
                            if pred(rec):
                                recs.append(rec)
                    return self._materialized(recs, q), pred
        if obj in ("Opportunity", "OpportunityContactRole"):
            return self._opportunities(obj, conds, build, pred, q), pred
        if obj in ("User", "Campaign", "Group", *sf_setup.PREFIXES):
            if obj in sf_setup.PREFIXES:
                keys = org.setup.keys(obj)
            else:
                keys = sorted(org.users if obj == "User" else org.campaigns if obj == "Campaign" else org.queues)
            recs = [r for k in keys if (r := build(obj, k)) is not None and pred(r)]
            return self._materialized(recs, q), pred
        lo, hi, used = _ms_range(conds)
        natural_modstamp = order in ([], [(("SystemModstamp",), False)], [(("LastModifiedDate",), False)]) or (
            len(order) == 2 and order[0] in ((("SystemModstamp",), False), (("LastModifiedDate",), False))
            and order[1] == (("Id",), False)
        )  # fmt: skip
        natural_index = order in ([], [(("Id",), False)])
        residual = [c for c in conds if c not in used]
        if obj in PERSON_OBJECTS and (used or (order and natural_modstamp)):
            plan = self._person_modstamp(obj, lo, hi, build, pred, exact=not residual)
            return self._ordered(plan, q, natural_modstamp), pred
        if obj in PERSON_OBJECTS:
            plan = self._person_scan(obj, build, pred, exact=not conds)
            return self._ordered(plan, q, natural_index), pred
        if obj == "Account":
            plan = self._index_scan(org.pop.n_companies, lambda k: build("Account", k), pred, exact=not conds)
            return self._ordered(plan, q, natural_index), pred
        plan = self._activity_scan(obj, lo, tree, pred)
        return self._ordered(plan, q, natural_index), pred

    # -- plan kinds
    def _opportunities(
        self, obj: str, conds: list[soql.Expr], build: Callable[[str, int], Record | None],
        pred: Callable[[Record], bool], q: soql.Query,
    ) -> Plan:  # fmt: skip
        """Opportunities and their contact roles: key i is person i's; by ContactId / OpportunityId when
        the query names them, else a scan of the people who have one."""
        org = self.org
        link = ("ContactId", "OpportunityId") if obj == "OpportunityContactRole" else ("AccountId",)
        for c in conds:
            name = _single_ref(c, link)
            if name in ("ContactId", "OpportunityId") and (ids := _id_values(c)) is not None:
                keys = []
                for rid in dict.fromkeys(ids):
                    parsed = sf_ids.parse(sf_ids.normalize(rid) or "")
                    if parsed is not None and parsed[1] < org.pop.n and org.has_opportunity(parsed[1]):
                        keys.append(parsed[1])
                recs = [r for k in keys if (r := build(obj, k)) is not None and pred(r)]
                return self._materialized(recs, q)
        recs = [r for k in range(org.pop.n) if org.has_opportunity(k) and (r := build(obj, k)) is not None and pred(r)]
        return self._materialized(recs, q)

    def _materialized(self, recs: list[Record], q: soql.Query) -> Plan:
        if q.order_by:
            recs.sort(key=soql.sort_key(q.order_by))
        return Plan(
            iterate=lambda start: ((k, recs[k]) for k in range(start, len(recs))),
            start=0, count=lambda: len(recs), estimate=len(recs), exact=True,
        )  # fmt: skip

    def _ordered(self, plan: Plan, q: soql.Query, natural: bool) -> Plan:
        if natural or not q.order_by:
            return plan
        if plan.estimate > SORT_LIMIT:
            raise ApiError(400, "QUERY_TIMEOUT", "Your query request was running for too long.")
        recs = [r for _, r in plan.iterate(plan.start)]
        return self._materialized(recs, q)

    def _person_modstamp(
        self, obj: str, lo: int | None, hi: int | None,
        build: Callable[[str, int], Record | None], pred: Callable[[Record], bool], *, exact: bool,
    ) -> Plan:  # fmt: skip
        org = self.org
        types = org.types

        def iterate(start: tuple[int, int] | None) -> Iterator[tuple[Any, Record]]:
            since = lo if start is None else start[0]
            for ms, key in org.store.iter_modified(obj, since, hi, base=org.base):
                if start is not None and (ms, key) < start:
                    continue
                if key >= org.pop.n or not org.in_scan(obj, key):
                    continue
                rec = build(obj, key)
                if rec is not None and pred(rec):
                    yield (ms, key), rec

        def candidates() -> int:
            lo_i = 0 if lo is None else org.pop.first_modified_at_or_after(lo)
            hi_i = org.pop.n if hi is None else org.pop.first_modified_after(hi)
            base = types.count(obj, lo_i, hi_i)
            if obj == "Contact":  # Contacts made by converting a Lead: an upper bound, counted when asked
                base += types.count("Lead", lo_i, hi_i)
            written = org.store.written_keys(obj)
            shadowed = bisect.bisect_left(written, hi_i) - bisect.bisect_left(written, lo_i)
            overlay = org.store.count_modified(obj, lo, hi)
            return base - shadowed + overlay

        estimate = candidates()
        exact = exact and obj == "Lead"

        def count() -> int:
            if exact:
                return estimate
            return sum(1 for _ in iterate(None))

        return Plan(iterate, None, count, estimate, exact)

    def _person_scan(
        self, obj: str, build: Callable[[str, int], Record | None], pred: Callable[[Record], bool], *, exact: bool
    ) -> Plan:
        org = self.org
        types = org.types
        n = org.pop.n

        def iterate(start: int) -> Iterator[tuple[Any, Record]]:
            for i in range(start, n):
                if not org.in_scan(obj, i):
                    continue
                rec = build(obj, i)
                if rec is not None and pred(rec):
                    yield i, rec

        estimate = types.count(obj) + (types.count("Lead") if obj == "Contact" else 0)
        exact = exact and obj == "Lead"
        return Plan(iterate, 0, lambda: estimate if exact else sum(1 for _ in iterate(0)), estimate, exact)

    def _index_scan(
        self, n: int, build: Callable[[int], Record | None], pred: Callable[[Record], bool], *, exact: bool
    ) -> Plan:
        def iterate(start: int) -> Iterator[tuple[Any, Record]]:
            for k in range(start, n):
                rec = build(k)
                if rec is not None and pred(rec):
                    yield k, rec

        return Plan(iterate, 0, lambda: n if exact else sum(1 for _ in iterate(0)), n, exact)

    def _activity_scan(self, obj: str, lo: int | None, tree: Mapping[str, Any], pred: Callable[[Record], bool]) -> Plan:
        org = self.org
        n = org.pop.n
        # base activities all happened before the anchor: a later lower bound needs only created tasks
        skip_base = lo is not None and lo >= org.pop.anchor_ms
        # only records written or created through the API can be that recent
        created = org.store.written_keys(obj) if skip_base else org.store.created_keys(obj)

        def iterate(start: tuple[int, int]) -> Iterator[tuple[Any, Record]]:
            i0, k0 = start
            if not skip_base:
                for i in range(i0, n):
                    for key, rec in org.activities_of(obj, i):
                        if key >= org.task_key_base or (i == i0 and key < k0):
                            continue
                        if tree:
                            org.attach(obj, rec, tree)
                        if pred(rec):
                            yield (i, key), rec
            for key in created:
                if (n, key) < (i0, k0) or (not skip_base and key < org.task_key_base):
                    continue
                extra = org.record(obj, key)
                if extra is not None:
                    rec = extra
                    if tree:
                        org.attach(obj, rec, tree)
                    if pred(rec):
                        yield (n, key), rec

        def count() -> int:
            return sum(1 for _ in iterate((0, 0)))

        if skip_base:
            estimate = len(created)
        else:
            sample = range(0, n, max(1, n // 200))
            per = sum(len(org.activities_of(obj, i)) for i in sample) / max(1, len(sample))
            estimate = round(per * n) + len(created)
        return Plan(iterate, (0, 0), count, estimate, exact=False)


# --------------------------------------------------------------------------- writes


def coerce(f: Field, value: Any) -> Any:
    """A JSON (or CSV) value as the field stores it; raises ApiError like Salesforce's deserializer."""
    if value is None or (isinstance(value, str) and value == "" and f.type not in soql.STRING_TYPES):
        return None

    def bad() -> ApiError:
        return ApiError(
            400, "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of {_SOAP.get(f.type, 'xsd:string').split(':')[1]} from "
            f"VALUE_STRING value {value} or request may be missing a required field",
        )  # fmt: skip

    t = f.type
    if t in soql.NUMBER_TYPES:
        if isinstance(value, bool):
            raise bad()
        try:
            num = float(value)
        except (TypeError, ValueError):
            raise bad() from None
        return int(num) if t == T.INT else num
    if t == T.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad()
    if t == T.DATETIME:
        if not isinstance(value, str):
            raise bad()
        try:
            return soql.parse_datetime(value)
        except ValueError:
            raise bad() from None
    if t == T.DATE:
        if not isinstance(value, str):
            raise bad()
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            raise bad() from None
    if t in (T.ID, T.REFERENCE):
        return str(value)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise bad()
    return str(value)


class Writer:
    webhooks: WebhookEmitter | None = None  # set by build_app; sends outbound messages for changes

    def __init__(self, org: Org) -> None:
        self.org = org

    def validate(self, obj: str, values: Mapping[str, Any], *, creating: bool = False) -> dict[str, Any]:
        """Canonical field name -> stored value; raises ApiError (400) for the first problem."""
        sobject = self.org.objects[obj]
        out: dict[str, Any] = {}
        for name, raw in values.items():
            if name in ("attributes", "id", "Id"):
                continue
            f = sobject.get(name)
            if f is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}", [])
            if not f.updateable and not (creating and f.name == "OwnerId"):
                raise ApiError(
                    400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {f.name}. Please check the security settings of this "
                    "field and verify that it is read/write for your profile or permission set.", [f.name],
                )  # fmt: skip
            value = coerce(f, raw)
            if isinstance(value, str) and f.length and len(value) > f.length and f.type not in (T.ID, T.REFERENCE):
                raise ApiError(
                    400, "STRING_TOO_LONG",
                    f"{f.label}: data value too large: {value[:40]}... (max length={f.length})", [f.name],
                )  # fmt: skip
            if f.type in (T.ID, T.REFERENCE) and value is not None:
                value = self._reference(f, value)
            if f.name == "OwnerId" and value is None:
                raise ApiError(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [OwnerId]", ["OwnerId"])
            out[f.name] = value
        return out

    def _reference(self, f: Field, value: str) -> str:
        full = sf_ids.normalize(value)
        if full is None:
            raise ApiError(400, "MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", [f.name])
        loc = self.org.locate(full)
        if loc is None or loc[0] not in f.reference_to:
            raise ApiError(
                400, "FIELD_INTEGRITY_EXCEPTION", f"{f.label}: id value of incorrect type: {value}", [f.name]
            )  # fmt: skip
        if loc[0] == "User" and not self.org.users[loc[1]]["IsActive"]:
            raise ApiError(
                400, "INACTIVE_OWNER_OR_USER", f"operation performed with inactive user [{full}] as owner", [f.name]
            )  # fmt: skip
        return full

    def target(self, obj_hint: str | None, record_id: Any) -> tuple[str, int, Record]:
        if not isinstance(record_id, str) or sf_ids.normalize(record_id) is None:
            raise ApiError(400, "MALFORMED_ID", f"malformed id {record_id}", [])
        found = self.org.by_id(record_id)
        if found is None or (obj_hint is not None and found[0] != obj_hint):
            if found is None and sf_ids.parse(record_id) is None:
                raise ApiError(400, "MALFORMED_ID", f"malformed id {record_id}", [])
            if found is not None:
                raise ApiError(400, "MALFORMED_ID", f"{obj_hint} ID: id value of incorrect type: {record_id}", ["Id"])
            raise ApiError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
        return found

    def prepare(
        self, obj_hint: str | None, record_id: Any, values: Mapping[str, Any], *, auto_assign: bool
    ) -> tuple[str, int, dict[str, Any], str]:
        obj, key, current = self.target(obj_hint, record_id)
        if obj in ("User", "Campaign", "Group"):
            raise ApiError(400, "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id", [])
        if obj == "Lead" and current.get("IsConverted"):
            # Salesforce refuses to update a converted Lead (the org permission "View and Edit Converted
            # Leads" aside, which the sandbox's integration user does not have).
            raise ApiError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", [])
        changes = self.validate(obj, values)
        if auto_assign and obj == "Lead":
            # Salesforce runs the org's active lead assignment rule on every Lead create and update
            # made over REST unless the request says `Sforce-Auto-Assign: FALSE` (REST API Developer
            # Guide, "Assignment Rule Header"), whatever fields the update touches: a score write
            # without the header hands the Lead to the rule's owner, and the rule has the last word.
            changes["OwnerId"] = self.org.assignment_rule_owner
            with self.org.lock:
                self.org.auto_assign_applied += 1
        return obj, key, changes, str(current["Id"])

    def apply(self, obj: str, key: int, changes: Mapping[str, Any]) -> None:
        hooks = self.webhooks if obj in ("Lead", "Contact") else None
        before = dict(self.org.record(obj, key) or {}) if hooks is not None else {}
        self.org.store.write(obj, key, dict(changes))
        after = self.org.record(obj, key) if hooks is not None else None
        if hooks is not None and after is not None:
            changed = [name for name, value in changes.items() if before.get(name) != value]
            hooks.salesforce_record_changed(obj, str(after["Id"]), after, changed)

    def create_task(self, values: Mapping[str, Any]) -> str:
        org = self.org
        changes = self.validate("Task", values, creating=True)
        changes.setdefault("Status", "Not Started")
        changes.setdefault("Priority", "Normal")
        changes.setdefault("OwnerId", sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER))
        if changes.get("Status") is None or changes.get("Priority") is None:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Status, Priority]")
        changes.setdefault("TaskSubtype", "Call" if changes.get("Type") == "Call" else "Task")
        with org.lock:
            key = org.store.create("Task", changes, first_key=org.task_key_base)
            who = changes.get("WhoId")
            if who:
                loc = org.locate(who)
                if loc is not None:
                    org._created_tasks_by_who.setdefault(loc[1], []).append(key)
        if self.webhooks is not None:
            self.webhooks.salesforce_activity_created("Task", sf_ids.make_id(sf_ids.TASK, key), changes.get("WhoId"))
        return sf_ids.make_id(sf_ids.TASK, key)


# --------------------------------------------------------------------------- bulk API 2.0


@dataclass(slots=True)
class BulkJob:
    id: str
    object: str
    operation: str
    line_ending: str
    delimiter: str
    created: float
    state: str = "Open"
    data: list[bytes] = field(default_factory=list)
    processed: int = 0
    failed: int = 0
    successes: list[list[str]] = field(default_factory=list)
    failures: list[list[str]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)  # rows a failed job never reached
    header: list[str] = field(default_factory=list)
    error: str | None = None
    modified: float = 0.0
    assignment_rule_id: str | None = None  # the job's assignmentRuleId: the rule to run on its Leads, if any

    def info(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object,
            "createdById": sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER),
            "createdDate": soql.format_datetime(self.created),
            "systemModstamp": soql.format_datetime(self.modified or self.created), "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(version),
            "jobType": "V2Ingest", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
            "numberRecordsProcessed": self.processed, "numberRecordsFailed": self.failed, "retries": 0,
            "totalProcessingTime": 0, "apiActiveProcessingTime": 0, "apexProcessingTime": 0,
        }  # fmt: skip
        if self.state == "Open":
            out["contentUrl"] = f"services/data/v{version}/jobs/ingest/{self.id}/batches"
        if self.error:
            out["errorMessage"] = self.error
        return out


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


def run_bulk_job(org: Org, writer: Writer, job: BulkJob, stop_at: Callable[[str], bool] | None = None) -> None:
    """Process an uploaded update job at once (the sandbox does not queue).

    `stop_at(record id)` true for a row (an injected fault) fails the job there: that row and the
    rest are left unprocessed, as a job Salesforce gave up on (see BULK_FAILED_MESSAGE)."""
    text = b"".join(job.data).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS.get(job.delimiter, ",")))
    if not rows:
        job.state, job.error = "Failed", "InvalidBatch : The batch is empty"
        return
    header = rows[0]
    sobject = org.objects[job.object]
    lowered = [h.strip() for h in header]
    for h in lowered:
        if h.lower() != "id" and sobject.get(h) is None:
            job.state, job.error = "Failed", f"InvalidBatch : Field name not found : {h}"
            return
    if "id" not in [h.lower() for h in lowered]:
        job.state, job.error = "Failed", "InvalidBatch : Field name not provided: Id"
        return
    job.header = header
    body = [row for row in rows[1:] if row and row != [""]]
    for n, row in enumerate(body):
        values = dict(zip(lowered, row, strict=False))
        rid = next((v for k, v in values.items() if k.lower() == "id"), "")
        if stop_at is not None and stop_at(sf_ids.normalize(rid) or rid):
            job.unprocessed = body[n:]
            job.state, job.error = "Failed", BULK_FAILED_MESSAGE
            return
        changes = {k: (None if v == "#N/A" else v) for k, v in values.items() if k.lower() != "id" and v != ""}
        job.processed += 1
        try:
            # Bulk API 2.0 runs an assignment rule only when the job names one (assignmentRuleId,
            # "Create a Job" in the Bulk API 2.0 Developer Guide); no header applies here.
            obj, key, prepared, _ = writer.prepare(
                job.object, rid, changes, auto_assign=job.assignment_rule_id is not None
            )
        except ApiError as err:
            job.failed += 1
            job.failures.append([rid, f"{err.code}:{err.message}:{','.join(err.fields or [])} --", *row])
            continue
        writer.apply(obj, key, prepared)
        job.successes.append([sf_ids.normalize(rid) or rid, "false", *row])
    job.state = "JobComplete"


def _csv(rows: Iterable[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- auth, limits, faults


@dataclass
class OAuthClient:
    client_id: str = SANDBOX_CLIENT_ID
    client_secret: str = SANDBOX_CLIENT_SECRET
    refresh_token: str = SANDBOX_REFRESH_TOKEN


class SalesforceGuard:
    """Bearer tokens (expirable), the org's daily API budget, and Salesforce-shaped faults."""

    OPEN = frozenset({"/services/oauth2/token", "/services/data"})

    def __init__(self, token: str, org_id: str, daily_limit: int, clock: Clock | None = None) -> None:
        self.org_id = org_id
        self.valid: set[str] = {token}
        self.current = token
        self.clock = clock or Clock()
        # the org's API allocation: requests in the last 24 hours, a rolling window, not a calendar day
        self.budget = RollingBudget(daily_limit, clock=self.clock)
        self.daily_limit = daily_limit
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(48)}"
        with self._lock:
            self.valid.add(token)
            self.current = token
        return token

    def expire(self, token: str | None = None) -> list[str]:
        with self._lock:
            gone = [token] if token else sorted(self.valid)
            for t in gone:
                self.valid.discard(t)
        return gone

    def limit_info(self) -> str:
        return f"api-usage={self.budget.used(self.org_id)}/{self.daily_limit}"

    def admit(self, method: str, template: str, headers: Headers) -> Admission:
        if template in self.OPEN:
            return Admission()
        token = _bearer(headers)
        if token is None or token not in self.valid:
            return Admission(ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid").response())
        allowed, _ = self.budget.try_acquire(self.org_id)
        info = {"Sforce-Limit-Info": self.limit_info()}
        if not allowed:
            return Admission(ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.").response(), info)
        return Admission(None, info)

    def fault(self, kind: str) -> Response:
        if kind == "429":
            return ApiError(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.").response()
        if kind == "500":
            return ApiError(
                500, "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: "
                f"{random.randrange(10**9, 10**10)}-{random.randrange(10**4, 10**5)} (-{random.randrange(10**9)})",
            ).response()  # fmt: skip
        return ApiError(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable. Please try again.").response()


class _Edge:
    """Outermost: Salesforce's URI and header size limits, then one spelling per route (no trailing slash)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            uri = len(scope.get("raw_path") or scope["path"].encode()) + 1 + len(scope.get("query_string", b""))
            head = uri + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            status = 414 if uri > MAX_URI_BYTES else 431 if head > MAX_URI_BYTES else 0
            if status:
                phrase = "URI Too Long" if status == 414 else "Request Header Fields Too Large"
                await Response(f"Bad Message {status}\nreason: {phrase}\n", status, media_type="text/plain")(
                    scope, receive, send
                )
                return
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope = dict(scope)
                scope["path"] = path.rstrip("/")
                scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- HTTP


class SalesforceState:
    """What `app.state.salesforce` holds: the org, the guard and the OAuth client."""

    def __init__(self, org: Org, guard: SalesforceGuard, oauth: OAuthClient, stats: Stats, faults: Faults) -> None:
        self.org, self.guard, self.oauth, self.stats, self.faults = org, guard, oauth, stats, faults
        self.planner = Planner(org)
        self.writer = Writer(org)


def _version(request: Request) -> str:
    v = str(request.path_params.get("version", ""))
    if len(v) < 3 or v[0] != "v" or not v[1:].replace(".", "", 1).isdigit() or "." not in v:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return v[1:]


def _state(request: Request) -> SalesforceState:
    st: SalesforceState = request.app.state.salesforce
    return st


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character at [line:1, column:{exc.pos + 1}]") from None


def _endpoint(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def wrapped(request: Request) -> Response:
        try:
            result: Response = await fn(request)
        except ApiError as err:
            return err.response()
        except SoqlError as err:
            return ApiError(400, err.error_code, err.message).response()
        return result

    wrapped.__name__ = fn.__name__
    return wrapped


@_endpoint
async def versions(request: Request) -> Response:
    return JsonResponse([
        {"label": label, "url": f"/services/data/v{v}", "version": v}
        for v, label in (("57.0", "Spring '23"), ("58.0", "Summer '23"), ("59.0", "Winter '24"), ("60.0", "Spring '24"))
    ])  # fmt: skip


@_endpoint
async def limits(request: Request) -> Response:
    _version(request)
    guard = _state(request).guard
    used = guard.budget.used(guard.org_id)
    return JsonResponse({
        "DailyApiRequests": {"Max": guard.daily_limit, "Remaining": max(0, guard.daily_limit - used)},
        "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
        "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
    })  # fmt: skip


def _batch_size(request: Request) -> int:
    raw = request.headers.get("sforce-query-options", "")
    for part in raw.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "batchsize":
            try:
                size = int(value.strip())
            except ValueError:
                raise ApiError(400, "INVALID_QUERY_LOCATOR", f"invalid batch size: {value.strip()}") from None
            return max(MIN_BATCH, min(DEFAULT_BATCH, size))
    return DEFAULT_BATCH


def _page(st: SalesforceState, version: str, cursor_id: str, cursor: Cursor, delivered: int) -> Response:
    q = cursor.query
    if delivered not in cursor.positions:
        raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    start = cursor.positions[delivered]
    remaining = cursor.total - delivered if q.limit is not None else None
    want = cursor.batch if remaining is None else min(cursor.batch, remaining)
    it = cursor.plan.iterate(start)
    records: list[dict[str, Any]] = []
    nxt: Any = None
    more = False
    for pos, rec in it:
        if len(records) >= want:
            nxt, more = pos, True
            break
        records.append(soql.project(q, rec, version))
    if remaining is not None and len(records) >= remaining:
        more = False
    body: dict[str, Any] = {"totalSize": cursor.total, "done": not more}
    if more:
        done_now = delivered + len(records)
        cursor.positions[done_now] = nxt
        body["nextRecordsUrl"] = f"/services/data/v{version}/{cursor.endpoint}/{cursor_id}-{done_now}"
    body["records"] = records
    return JsonResponse(body)


def _run_query(request: Request, endpoint: str) -> Response:
    st = _state(request)
    version = _version(request)
    text = request.query_params.get("q")
    if text is None:
        raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
    q = soql.parse(text, st.org)
    plan, _ = st.planner.plan(q)
    if q.count_only:
        total = plan.count()
        if q.limit is not None:
            total = min(total, q.limit)
        return JsonResponse({"totalSize": total, "done": True, "records": []})
    total = plan.count() if plan.exact or plan.estimate <= EXACT_COUNT_LIMIT else plan.estimate
    if q.offset:
        it = plan.iterate(plan.start)
        skipped = list(itertools.islice(it, q.offset + 1))
        start = skipped[q.offset][0] if len(skipped) > q.offset else None
        total = max(0, total - q.offset)
        if start is None:
            return JsonResponse({"totalSize": 0, "done": True, "records": []})
    else:
        start = plan.start
    if q.limit is not None:
        total = min(total, q.limit)
    org = st.org
    cursor = Cursor(q, plan, total, _batch_size(request), endpoint, created=org.clock())
    cursor.positions[0] = start
    with org.lock:
        cursor_id = sf_ids.make_id("01g", next(org._cursor_seq))
    response = _page(st, version, cursor_id, cursor, 0)
    if len(cursor.positions) > 1:  # more to come: the locator is kept (a one-batch answer has none)
        with org.lock:
            org.cursors[cursor_id] = cursor
            while len(org.cursors) > MAX_CURSORS:
                org.cursors.popitem(last=False)
    return response


@_endpoint
async def query(request: Request) -> Response:
    return _run_query(request, "query")


@_endpoint
async def query_all(request: Request) -> Response:
    return _run_query(request, "queryAll")


@_endpoint
async def query_more(request: Request) -> Response:
    st = _state(request)
    version = _version(request)
    locator = str(request.path_params["locator"])
    cursor_id, _, offset = locator.rpartition("-")
    org = st.org
    cursor = org.cursors.get(cursor_id)
    if cursor is not None and org.clock() - cursor.created > LOCATOR_LIFETIME_S:
        with org.lock:
            org.cursors.pop(cursor_id, None)
        cursor = None
    if cursor is None or not offset.isdigit():
        raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    return _page(st, version, cursor_id, cursor, int(offset))


@_endpoint
async def describe_global(request: Request) -> Response:
    version = _version(request)
    org = _state(request).org
    return JsonResponse({
        "encoding": "UTF-8", "maxBatchSize": 200,
        "sobjects": [
            {"name": o.name, "label": o.label, "keyPrefix": o.key_prefix, "custom": False, "queryable": True,
             "updateable": o.name not in ("User",), "urls": {"sobject": f"/services/data/v{version}/sobjects/{o.name}"}}
            for o in org.objects.values()
        ],
    })  # fmt: skip


def _sobject_or_404(org: Org, name: str) -> SObjectType:
    o = org.sobject(name)
    if o is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return o


@_endpoint
async def describe(request: Request) -> Response:
    version = _version(request)
    org = _state(request).org
    o = _sobject_or_404(org, str(request.path_params["sobject"]))
    base = f"/services/data/v{version}/sobjects/{o.name}"
    return JsonResponse({
        "name": o.name, "label": o.label, "labelPlural": o.label + "s", "keyPrefix": o.key_prefix,
        "custom": False, "createable": o.name in ("Task", *sf_setup.PREFIXES), "updateable": o.name not in ("User",),
        "queryable": True, "retrieveable": True, "searchable": True, "deletable": False,
        "fields": [describe_field(f) for f in o.fields.values()],
        "urls": {"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"},
    })  # fmt: skip


@_endpoint
async def sobject_root(request: Request) -> Response:
    version = _version(request)
    st = _state(request)
    o = _sobject_or_404(st.org, str(request.path_params["sobject"]))
    if request.method == "GET":
        return JsonResponse({"objectDescribe": {"name": o.name, "label": o.label, "keyPrefix": o.key_prefix},
                             "recentItems": []})  # fmt: skip
    del version
    if o.name in sf_setup.PREFIXES:
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        try:
            new_id = st.org.setup.create(o.name, body)
        except sf_setup.SetupError as exc:
            raise ApiError(exc.status, exc.code, exc.message, exc.fields) from None
        st.org.setup.publish(st.org.objects)
        return JsonResponse({"id": new_id, "success": True, "errors": []}, status_code=201)
    if o.name != "Task":
        raise ApiError(400, "INSUFFICIENT_ACCESS_OR_READONLY", f"You cannot create {o.name} records in the sandbox.")
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    new_id = st.writer.create_task(body)
    return JsonResponse({"id": new_id, "success": True, "errors": []}, status_code=201)


def _auto_assign(request: Request) -> bool:
    return request.headers.get("sforce-auto-assign", "TRUE").strip().upper() not in ("FALSE", "0")


@_endpoint
async def sobject_record(request: Request) -> Response:
    version = _version(request)
    st = _state(request)
    o = _sobject_or_404(st.org, str(request.path_params["sobject"]))
    rid = str(request.path_params["record_id"])
    found = st.org.by_id(rid)
    if found is None or found[0] != o.name:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    obj, key, rec = found
    if request.method == "GET":
        wanted = request.query_params.get("fields")
        fields = list(o.fields.values())
        if wanted:
            fields = [f for name in wanted.split(",") if (f := o.get(name.strip())) is not None]
        out: dict[str, Any] = {"attributes": {"type": obj, "url": soql.record_url(version, obj, rec["Id"])}}
        for f in fields:
            out[f.name] = soql.format_value(f, rec.get(f.name))
        return JsonResponse(out)
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    obj, key, changes, _ = st.writer.prepare(obj, rec["Id"], body, auto_assign=_auto_assign(request))
    st.writer.apply(obj, key, changes)
    return Response(status_code=204)


@_endpoint
async def composite_sobjects(request: Request) -> Response:
    _version(request)
    st = _state(request)
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body must have a records list")
    records = body["records"]
    if len(records) > COMPOSITE_MAX:
        raise ApiError(
            400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call"
        )
    all_or_none = bool(body.get("allOrNone", False))
    auto = _auto_assign(request)
    faults: Faults | None = getattr(request.app.state, "faults", None)
    results: list[dict[str, Any]] = []
    prepared: list[tuple[str, int, dict[str, Any], str] | None] = []
    for raw in records:
        attrs = raw.get("attributes") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or not isinstance(attrs, dict) or not attrs.get("type"):
            raise ApiError(400, "INVALID_FIELD", "No SObject Type defined in attributes")
        hint = st.org.sobject(str(raw["attributes"]["type"]))
        if hint is None:
            raise ApiError(400, "INVALID_TYPE", f"sObject type '{raw['attributes']['type']}' is not supported.")
        try:
            item = st.writer.prepare(hint.name, raw.get("id", raw.get("Id")), raw, auto_assign=auto)
        except ApiError as err:
            if err.code == "JSON_PARSER_ERROR":
                raise
            prepared.append(None)
            results.append({"success": False, "errors": [
                {"statusCode": err.code, "message": err.message, "fields": err.fields or []}]})  # fmt: skip
            continue
        if record_fault(faults, request, item[3]):
            prepared.append(None)
            results.append({"success": False, "errors": [{
                "statusCode": ROW_LOCK, "message": f"unable to obtain exclusive access to this record or 1 records: "
                f"{item[3]}", "fields": []}]})  # fmt: skip
            continue
        prepared.append(item)
        results.append({"id": item[3], "success": True, "errors": []})
    failed = any(p is None for p in prepared)
    if all_or_none and failed:
        rolled = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": ROLLED_BACK, "fields": []}
        results = [r if not r["success"] else {"success": False, "errors": [rolled]} for r in results]
        return JsonResponse(results)
    with st.org.store.lock:
        for done in prepared:
            if done is not None:
                st.writer.apply(done[0], done[1], done[2])
    return JsonResponse(results)


# ---- bulk


@_endpoint
async def bulk_create(request: Request) -> Response:
    version = _version(request)
    st = _state(request)
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    o = st.org.sobject(str(body.get("object", "")))
    if o is None:
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid object: {body.get('object')}")
    operation = str(body.get("operation", ""))
    if operation != "update":
        raise ApiError(400, "FEATURENOTENABLED", f"The sandbox supports only the update operation, not {operation!r}")
    line_ending = str(body.get("lineEnding", "LF"))
    delimiter = str(body.get("columnDelimiter", "COMMA"))
    if line_ending not in ("LF", "CRLF") or delimiter not in _DELIMITERS:
        raise ApiError(400, "INVALIDJOB", "InvalidJob : invalid lineEnding or columnDelimiter")
    rule = body.get("assignmentRuleId")
    if rule is not None and (
        not isinstance(rule, str) or sf_ids.normalize(rule) != st.org.assignment_rule_id or o.name != "Lead"
    ):
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : invalid assignmentRuleId: {rule}")
    with st.org.lock:
        job_id = sf_ids.make_id(sf_ids.BULK_JOB, len(st.org.jobs) + 1)
        job = BulkJob(job_id, o.name, operation, line_ending, delimiter, time.time(),
                      assignment_rule_id=None if rule is None else st.org.assignment_rule_id)  # fmt: skip
        st.org.jobs[job_id] = job
    return JsonResponse(job.info(version))


def _job(st: SalesforceState, request: Request) -> BulkJob:
    job = st.org.jobs.get(str(request.path_params["job_id"]))
    if job is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return job


@_endpoint
async def bulk_upload(request: Request) -> Response:
    _version(request)
    st = _state(request)
    job = _job(st, request)
    if job.state != "Open":
        raise ApiError(409, "INVALIDJOBSTATE", f"Job [{job.id}] is {job.state}; data can only be added while Open")
    job.data.append(await request.body())
    return Response(status_code=201)


@_endpoint
async def bulk_job(request: Request) -> Response:
    version = _version(request)
    st = _state(request)
    job = _job(st, request)
    if request.method == "GET":
        return JsonResponse(job.info(version))
    if request.method == "DELETE":
        st.org.jobs.pop(job.id, None)
        return Response(status_code=204)
    body = await _json(request)
    state = body.get("state") if isinstance(body, dict) else None
    if state == "UploadComplete" and job.state == "Open":
        job.state = "UploadComplete"
        answer = job.info(version)
        faults: Faults | None = getattr(request.app.state, "faults", None)
        run_bulk_job(st.org, st.writer, job, stop_at=lambda rid: record_fault(faults, request, rid))
        job.modified = time.time()
        return JsonResponse(answer)
    if state == "Aborted" and job.state in ("Open", "UploadComplete"):
        job.state = "Aborted"
        return JsonResponse(job.info(version))
    raise ApiError(400, "INVALIDJOBSTATE", f"Cannot change the state of job {job.id} from {job.state} to {state}")


@_endpoint
async def bulk_results(request: Request) -> Response:
    _version(request)
    st = _state(request)
    job = _job(st, request)
    kind = str(request.path_params["kind"])
    if kind == "successfulResults":
        rows = [["sf__Id", "sf__Created", *job.header], *job.successes]
    elif kind == "failedResults":
        rows = [["sf__Id", "sf__Error", *job.header], *job.failures]
    elif kind.lower() == "unprocessedrecords":  # the guide spells it unprocessedrecords, simple-salesforce camel case
        rows = [job.header, *job.unprocessed]
    else:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return Response(_csv(rows), media_type="text/csv")


# ---- OAuth and sandbox admin


async def oauth_token(request: Request) -> Response:
    st = _state(request)
    # application/x-www-form-urlencoded, parsed without python-multipart
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    grant = str(form.get("grant_type", ""))
    client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
    if client_id != st.oauth.client_id or (secret and secret != st.oauth.client_secret):
        return JsonResponse({"error": "invalid_client_id", "error_description": "client identifier invalid"}, 400)
    if grant == "refresh_token":
        if str(form.get("refresh_token", "")) != st.oauth.refresh_token:
            return JsonResponse({"error": "invalid_grant", "error_description": "expired access/refresh token"}, 400)
    elif grant == "client_credentials":
        if secret != st.oauth.client_secret:
            return JsonResponse({"error": "invalid_client", "error_description": "invalid client credentials"}, 400)
    else:
        return JsonResponse({"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400)
    token = st.guard.issue()
    issued = str(int(time.time() * 1000))
    user = sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER)
    ident = f"{str(request.base_url).rstrip('/')}/id/{st.org.org_id}/{user}"
    sig = base64.b64encode(hmac.new(st.oauth.client_secret.encode(), (ident + issued).encode(), "sha256").digest())
    return JsonResponse({
        "access_token": token, "instance_url": str(request.base_url).rstrip("/"), "id": ident,
        "token_type": "Bearer", "issued_at": issued, "signature": sig.decode(), "scope": "api refresh_token",
    })  # fmt: skip


async def admin_expire(request: Request) -> Response:
    st = _state(request)
    body = await request.body()
    token = None
    if body.strip():
        data = orjson.loads(body)
        token = data.get("token") if isinstance(data, dict) else None
    return JsonResponse({"expired": len(st.guard.expire(token))})


async def admin_fields(request: Request) -> Response:
    """Add visible, editable fields of any shape at once (tests of the API; the score fields come from setup)."""
    st = _state(request)
    try:
        data = orjson.loads(await request.body())
        made = st.org.add_fields(str(data["object"]), data["fields"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return JsonResponse({"error": str(exc)}, 400)
    return JsonResponse({"object": data["object"], "created": made})


# Tooling API: CustomField (see sandbox/sf_setup.py for what is and is not confirmed).
_TOOLING_TYPES = {"Number": "double", "Text": "string", "LongTextArea": "textarea", "TextArea": "textarea",
                  "DateTime": "datetime", "Date": "date", "Picklist": "picklist", "Checkbox": "boolean"}


@_endpoint
async def tooling_custom_field(request: Request) -> Response:
    """POST tooling/sobjects/CustomField: a field the integration user sees once field-level security allows."""
    _version(request)
    st = _state(request)
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("Metadata"), dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object with FullName and Metadata")
    obj, _, name = str(body.get("FullName", "")).partition(".")
    meta: dict[str, Any] = body["Metadata"]
    o = st.org.sobject(obj)
    if o is None or o.name not in PERSON_OBJECTS + ACTIVITY_OBJECTS + ("Account",):
        raise ApiError(400, "INVALID_FIELD", f"No such object {obj!r} for FullName {body.get('FullName')!r}")
    kind = _TOOLING_TYPES.get(str(meta.get("type", "")))
    if kind is None:
        raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION", f"Unsupported field type: {meta.get('type')!r}")
    spec: dict[str, Any] = {k: meta[k] for k in ("precision", "scale", "length") if k in meta}
    values = ((meta.get("valueSet") or {}).get("valueSetDefinition") or {}).get("value") or []
    if values:
        spec["values"] = [v.get("fullName") for v in values]
    try:
        f = custom_field(name, kind, label=meta.get("label") or name, **spec)
        new_id = st.org.setup.add_field(o, f)
    except ValueError as exc:
        raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION", str(exc)) from None
    except sf_setup.SetupError as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.fields) from None
    st.org.setup.publish(st.org.objects)
    return JsonResponse({"id": new_id, "success": True, "errors": [], "warnings": [], "infos": []}, status_code=201)


@_endpoint
async def userinfo(request: Request) -> Response:
    """GET /services/oauth2/userinfo (OpenID Connect): who the token belongs to."""
    st = _state(request)
    user = st.org.users[UNASSIGNED_USER]
    return JsonResponse({
        "sub": f"{request.base_url}id/{st.org.org_id}/{user['Id']}", "user_id": user["Id"],
        "organization_id": st.org.org_id, "preferred_username": user["Username"], "name": user["Name"],
        "email": user["Email"], "active": True, "user_type": "STANDARD",
    })  # fmt: skip


async def admin_permissions(request: Request) -> Response:
    """`{"customize_application": false, "manage_permission_sets": false}`: what the integration user loses."""
    setup = _state(request).org.setup
    try:
        data = orjson.loads(await request.body())
        setup.customize_application = bool(data.get("customize_application", setup.customize_application))
        setup.manage_permission_sets = bool(data.get("manage_permission_sets", setup.manage_permission_sets))
    except (orjson.JSONDecodeError, AttributeError) as exc:
        return JsonResponse({"error": str(exc)}, 400)
    return JsonResponse({"customize_application": setup.customize_application,
                         "manage_permission_sets": setup.manage_permission_sets})


async def admin_limits(request: Request) -> Response:
    """Set the daily API budget (`{"daily": N, "used": M}`), e.g. to watch REQUEST_LIMIT_EXCEEDED."""
    guard = _state(request).guard
    try:
        data = orjson.loads(await request.body())
        daily = int(data.get("daily", guard.daily_limit))
        used = min(int(data.get("used", 0)), daily)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        return JsonResponse({"error": str(exc)}, 400)
    budget = RollingBudget(daily, clock=guard.clock)
    if used:
        budget.record(guard.org_id, used)
    guard.budget, guard.daily_limit = budget, daily
    return JsonResponse({"api_usage": guard.limit_info()})


async def admin_clock(request: Request) -> Response:
    """Move the org's clock forward (`{"advance_s": N}`): the rolling 24-hour API usage and query
    locators' two-day lifetime go by it, so both can be watched running out."""
    st = _state(request)
    try:
        data = orjson.loads(await request.body() or b"{}")
        seconds = float(data.get("advance_s", 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        return JsonResponse({"error": str(exc)}, 400)
    if seconds < 0:
        return JsonResponse({"error": "advance_s must not be negative"}, 400)
    offset = st.org.clock.advance(seconds)
    return JsonResponse({"offset_s": offset, "api_usage": st.guard.limit_info()})


async def admin_info(request: Request) -> Response:
    st = _state(request)
    return JsonResponse({
        "org_id": st.org.org_id, "oauth": vars(st.oauth), "api_usage": st.guard.limit_info(),
        "auto_assign_applied": st.org.auto_assign_applied,
        "assignment_rule_owner": st.org.assignment_rule_owner,
        "assignment_rule_id": st.org.assignment_rule_id,
        "queues": {q["Name"]: q["Id"] for q in st.org.queues.values()},
        "unassigned_owner": sf_ids.make_id(sf_ids.USER, UNASSIGNED_USER),
    })  # fmt: skip


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 405:
        return ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed.").response()
    if status == 404:
        return ApiError(404, "NOT_FOUND", "The requested resource does not exist").response()
    return ApiError(status, "UNKNOWN_EXCEPTION", str(getattr(exc, "detail", "error"))).response()


def routes() -> list[Route]:
    d = "/services/data/{version}"
    rw = ["GET", "PATCH"]
    return [
        Route("/services/data", versions, methods=["GET"]),
        Route("/services/oauth2/token", oauth_token, methods=["POST"]),
        Route("/services/oauth2/userinfo", userinfo, methods=["GET"]),
        Route(d + "/limits", limits, methods=["GET"]),
        Route(d + "/query", query, methods=["GET"]),
        Route(d + "/queryAll", query_all, methods=["GET"]),
        Route(d + "/query/{locator}", query_more, methods=["GET"]),
        Route(d + "/queryAll/{locator}", query_more, methods=["GET"]),
        Route(d + "/sobjects", describe_global, methods=["GET"]),
        Route(d + "/sobjects/{sobject}/describe", describe, methods=["GET"]),
        Route(d + "/sobjects/{sobject}", sobject_root, methods=["GET", "POST"]),
        Route(d + "/sobjects/{sobject}/{record_id}", sobject_record, methods=rw),
        Route(d + "/composite/sobjects", composite_sobjects, methods=["PATCH"]),
        Route(d + "/tooling/sobjects/CustomField", tooling_custom_field, methods=["POST"]),
        Route(d + "/jobs/ingest", bulk_create, methods=["POST"]),
        Route(d + "/jobs/ingest/{job_id}", bulk_job, methods=["GET", "PATCH", "DELETE"]),
        Route(d + "/jobs/ingest/{job_id}/batches", bulk_upload, methods=["PUT"]),
        Route(d + "/jobs/ingest/{job_id}/{kind}", bulk_results, methods=["GET"]),
        Route("/__sandbox__/salesforce/expire", admin_expire, methods=["POST"]),
        Route("/__sandbox__/salesforce/fields", admin_fields, methods=["POST"]),
        Route("/__sandbox__/salesforce/info", admin_info, methods=["GET"]),
        Route("/__sandbox__/salesforce/limits", admin_limits, methods=["POST"]),
        Route("/__sandbox__/salesforce/clock", admin_clock, methods=["POST"]),
        Route("/__sandbox__/salesforce/permissions", admin_permissions, methods=["POST"]),
    ]


def build_app(
    population: Population,
    store: Store,
    token: str,
    *,
    org_id: str,
    limits: Mapping[str, int] | None = None,
    score_fields: bool = False,
    faults: Mapping[str, float] | None = None,
    timeout_s: float = 30.0,
    oauth: OAuthClient | None = None,
    warm: bool = True,
    webhooks: WebhookEmitter | None = None,
) -> Starlette:
    """The Salesforce half of the sandbox: an ASGI app to serve over TLS.

    `limits={"daily": N}` sets the org's daily API budget (default 100,000); `score_fields`
    starts the org with the Lead_*__c score fields on Lead and Contact; `faults` and
    `timeout_s` configure injected faults as in common.Faults; `warm` computes the
    Lead/Contact index in a background thread so the first full scan does not wait for it."""
    daily = int((limits or {}).get("daily", DEFAULT_DAILY_LIMIT))
    org = Org(population, store, org_id=org_id, score_fields=score_fields)
    guard = SalesforceGuard(token, org_id, daily, clock=org.clock)
    stats = Stats()
    fault_box = Faults(faults or {}, timeout_s=timeout_s)
    table = routes()
    app = Starlette(
        routes=table,
        exception_handlers={HTTPException: _http_error},
        middleware=[
            Middleware(_Edge),
            Middleware(SandboxMiddleware, routes=table, guard=guard, stats=stats, faults=fault_box),
        ],
    )
    state = SalesforceState(org, guard, oauth or OAuthClient(), stats, fault_box)
    state.writer.webhooks = webhooks
    app.state.salesforce = state
    app.state.stats = stats
    app.state.faults = fault_box
    app.state.oauth = vars(state.oauth)
    app.state.org_id = org_id
    if warm and population.n > TYPE_BLOCK:
        threading.Thread(target=org.types.warm, name="salesforce-type-index", daemon=True).start()
    return app
