"""The engine's vocabulary: what every CRM adapter translates its objects into.

Nothing vendor-shaped crosses this line. The engine and routing only ever see
these types; adapters build them from HubSpot and Salesforce records and turn
`WriteBack` values into vendor fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

CrmName = Literal["hubspot", "salesforce"]
CRMS: tuple[CrmName, ...] = ("hubspot", "salesforce")

# Activity kinds the engine understands. Adapters map vendor activities onto
# these in mappings/hubspot.yaml and mappings/salesforce.yaml.
ACTIVITY_KINDS: frozenset[str] = frozenset(
    {
        "page_view",
        "form_submission",
        "download",
        "email_open",
        "email_click",
        "email_reply",
        "email_bounce",
        "email_unsubscribe",
        "meeting",
        "call",
        "note",
        "webinar_registered",
        "webinar_attended",
        "event_attended",
        # messages and sessions
        "sms",
        "chat",
        "visit",  # a web session; attrs: duration (seconds), pages, url (the landing page)
        # the person asked not to be contacted (a flag set in the CRM, dated when it was set);
        # attrs: channel (email, phone, sms, all)
        "do_not_contact",
    }
)

# Any other activity the CRM carries (a custom behavioural event, a custom object) is
# mapped onto `custom:<name>` and matched by that name in scoring rules.
CUSTOM_KIND = re.compile(r"^custom:[a-z][a-z0-9_]{0,59}$")


def is_activity_kind(kind: str) -> bool:
    """A kind the engine understands: one of ACTIVITY_KINDS, or custom:<name>."""
    return kind in ACTIVITY_KINDS or CUSTOM_KIND.match(kind) is not None


# Profile fields the engine's fit rules may read. Values are whatever the CRM
# gave (usually strings); the engine parses numbers itself and reports what it
# could not read. Besides these, the CRM mapping files may declare custom fields
# (any CRM property, with a type: CUSTOM_FIELD_TYPES), read by rules by their name.
PROFILE_FIELDS: frozenset[str] = frozenset(
    {
        "email",
        "first_name",
        "last_name",
        "job_title",
        "seniority",
        "company",
        "industry",
        "employees",
        "annual_revenue",
        "country",
        "state",
        "city",
        "lifecycle_stage",
        "lead_status",
        "lead_source",
        "budget",
        "need",
        "timeline",
        "authority",
        "phone",
        "website",
    }
)


# The types a custom profile field is declared with in hubspot.yaml / salesforce.yaml.
# Adapters hand the engine: text and enumeration as text, number as a float (or the
# text when it is no number, for the engine to report), date as 'YYYY-MM-DD',
# boolean as 'true' / 'false'.
CUSTOM_FIELD_TYPES: tuple[str, ...] = ("text", "number", "date", "boolean", "enumeration")


class Activity(NamedTuple):
    """One behavioural signal.

    `ts` is seconds since the Unix epoch, UTC. A float rather than a datetime
    because the engine scores millions of these a second.
    `attrs` holds the activity's details in engine terms (url, form, campaign,
    subject, direction, ...), all strings; never changed once made (the default
    is one empty dict, shared).

    A NamedTuple (immutable, as the frozen dataclass it was): the compiled engine
    reads its fields by index instead of by attribute look-up, about 8 % of its
    instructions per lead (callgrind over bench/engine.py).
    """

    kind: str
    ts: float
    attrs: Mapping[str, str] = {}  # shared by all made without attrs, never mutated


@dataclass(slots=True)
class Lead:
    """A person to score, as read from one CRM.

    `key` is stable across syncs: "hubspot:contact:123", "salesforce:Lead:00Q...".
    `written` holds the score fields as they are in the CRM now (engine names:
    score, fit, engagement, band, grade, reasons, model), so the pipeline can
    skip writes that would change nothing.
    """

    crm: CrmName
    object_type: str
    id: str
    profile: dict[str, Any]
    activities: list[Activity] = field(default_factory=list)
    owner_id: str | None = None
    written: dict[str, str] = field(default_factory=dict)
    modified_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.crm}:{self.object_type}:{self.id}"


# The fields the connector writes back, in engine names. The mapping files give
# each its CRM name (lead_score / Lead_Score__c, ...).
WRITE_FIELDS: tuple[str, ...] = (
    "score",
    "fit",
    "engagement",
    "band",
    "grade",
    "reasons",
    "scored_at",
    "model",
    # the learned conversion probability (0-100) and its factors, written while a trained model is active
    "probability",
    "factors",
)

# Written by connector.sync from the learned model (connector.learn), not by the rules' engine.
LEARNED_FIELDS: tuple[str, ...] = ("probability", "factors")

# `scored_at` changes on every computation; it is written only together with a
# change in one of these.
CHANGE_FIELDS: tuple[str, ...] = (
    "score", "fit", "engagement", "band", "grade", "reasons", "model", "probability", "factors",
)


@dataclass(frozen=True, slots=True)
class Rep:
    """A sales rep as routing sees them: a CRM owner/user plus our configuration."""

    id: str  # CRM owner id (HubSpot) or User Id (Salesforce)
    email: str
    name: str
    region: str | None
    active: bool = True
    timezone: str = "UTC"
    teams: tuple[str, ...] = ()
