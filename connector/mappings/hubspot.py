"""mappings/hubspot.yaml: how a HubSpot portal's contacts and activities become the engine's vocabulary.

`load_hubspot_mapping(path)` reads and validates the file (unknown keys, unknown
engine fields and kinds, bad operators and time zones are errors naming the
file, line and key) and returns a frozen `HubSpotMapping`.

Sections:
- `account`: the portal's API limits (tier or explicit requests per 10 s, daily
  budget, search requests per second) and, optionally, its portal id.
- `contact`: engine profile field -> contact property; custom profile fields
  (name -> property and type, see connector/mappings/custom.py); the owner and
  last-modified properties.
- `write`: engine WRITE_FIELDS -> contact property written back (defaults as in
  docs/product.md; only renames need to be listed).
- `activities`: engagement rules (emails/calls/meetings/notes objects),
  event rules (the events API) or roll-up rules (contact properties), each
  onto an engine activity kind and its attributes.
- `reps`: time zones for owners (HubSpot owners have none).
- `tasks`: the type and priority of the tasks created for hot leads.
- `outcomes`: what counts as won and lost (lifecycle stage, a property, deals); see
  connector/mappings/outcomes.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from connector.domain import ACTIVITY_KINDS, PROFILE_FIELDS, WRITE_FIELDS, is_activity_kind
from connector.mapfile import Strict, load_model, time_zone_name
from connector.mappings.custom import FieldType, check_custom_name
from connector.mappings.outcomes import HubSpotOutcomes
from connector.mappings.schedule import SyncSchedule

# HubSpot internal property names: lowercase letters, digits, underscores
# (custom ones may start with a digit or contain dots in a few legacy cases).
_PROPERTY = re.compile(r"^[a-z0-9_][a-z0-9_.]*$")
_ATTR = re.compile(r"^[a-z][a-z0-9_]*$")

TIER_RATES: dict[str, int] = {
    # private apps, requests per 10 s per portal
    "free": 100,
    "starter": 100,
    "professional": 190,
    "enterprise": 190,
    # public (OAuth) apps, per portal
    "oauth": 110,
}

BELOW_ENTERPRISE = frozenset({"free", "starter", "professional"})

DEFAULT_WRITE: dict[str, str] = {
    "score": "lead_score",
    "fit": "lead_fit_score",
    "engagement": "lead_engagement_score",
    "band": "lead_band",
    "grade": "lead_grade",
    "reasons": "lead_score_reasons",
    "scored_at": "lead_scored_at",
    "model": "lead_score_model",
    "probability": "lead_conversion_probability",
    "factors": "lead_probability_factors",
}

ENGAGEMENT_TYPES = ("emails", "calls", "meetings", "notes", "tasks", "communications")


def _check_property(name: str) -> str:
    if not _PROPERTY.match(name):
        raise ValueError(f"'{name}' is not a HubSpot property name (lowercase letters, digits, underscores)")
    return name


def _check_profile_field(name: str) -> str:
    if name not in PROFILE_FIELDS:
        raise ValueError(f"'{name}' is not an engine profile field (one of {', '.join(sorted(PROFILE_FIELDS))})")
    return name


def _check_write_field(name: str) -> str:
    if name not in WRITE_FIELDS:
        raise ValueError(f"'{name}' is not a written field (one of {', '.join(WRITE_FIELDS)})")
    return name


def _check_attr(name: str) -> str:
    if not _ATTR.match(name):
        raise ValueError(f"'{name}' is not an attribute name (lowercase letters, digits, underscores)")
    return name


# Validated where they stand, so an error names the entry's own line.
PropertyName = Annotated[str, AfterValidator(_check_property)]
ProfileField = Annotated[str, AfterValidator(_check_profile_field)]
WriteField = Annotated[str, AfterValidator(_check_write_field)]
AttrName = Annotated[str, AfterValidator(_check_attr)]
TimeZone = Annotated[str, AfterValidator(time_zone_name)]
CustomName = Annotated[str, AfterValidator(check_custom_name)]


class Account(Strict):
    # Either a tier (free/starter: 100 per 10 s, professional/enterprise: 190,
    # oauth: 110) or an explicit requests_per_10s, which wins.
    tier: Literal["free", "starter", "professional", "enterprise", "oauth"] = "professional"
    requests_per_10s: int | None = Field(default=None, ge=1, le=10_000)
    daily: int = Field(default=500_000, ge=0)  # 0 = no daily budget enforced here
    search_per_second: int = Field(default=5, ge=1, le=100)
    portal_id: str | None = None  # for record links; discovered from the API when absent
    # The portal's time zone (Settings > Account Defaults): HubSpot's daily limit resets at
    # midnight there. When absent it is read from the account details API (timeZone).
    timezone: TimeZone | None = None

    @property
    def rate_per_10s(self) -> int:
        return self.requests_per_10s if self.requests_per_10s is not None else TIER_RATES[self.tier]

    @field_validator("portal_id")
    @classmethod
    def _portal(cls, value: str | None) -> str | None:
        if value is not None and not value.isdigit():
            raise ValueError("must be the portal's number, in quotes (e.g. \"4512345\")")
        return value


class CustomField(Strict):
    """A contact property read as a profile field of its own (connector/mappings/custom.py)."""

    property: PropertyName
    type: FieldType


class ContactMap(Strict):
    fields: dict[ProfileField, PropertyName] = Field(default_factory=dict)  # engine field -> contact property
    # custom profile field (the name scoring rules read) -> contact property and type
    custom: dict[CustomName, CustomField] = Field(default_factory=dict)

    def read_fields(self) -> dict[str, str]:
        """Every profile field read from the contact, engine or custom name -> property."""
        return {**self.fields, **{name: c.property for name, c in self.custom.items()}}
    owner: PropertyName = "hubspot_owner_id"
    modified: PropertyName = "lastmodifieddate"


class Condition(Strict):
    """One test on one property; exactly one operator. Values are compared as strings."""

    equals: str | None = None
    not_equals: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None
    prefix: str | None = None
    contains: str | None = None
    exists: bool | None = None
    min: float | None = None  # numeric: the value parsed as a number is >= min

    @model_validator(mode="after")
    def _one(self) -> Condition:
        given = [k for k, v in self.__dict__.items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one operator: equals, not_equals, in, not_in, prefix, contains, exists or min"
            )
        return self

    def test(self, value: str | None) -> bool:
        if self.exists is not None:
            return (value not in (None, "")) == self.exists
        if value is None:
            return self.not_equals is not None or self.not_in is not None
        if self.equals is not None:
            return value == self.equals
        if self.not_equals is not None:
            return value != self.not_equals
        if self.in_ is not None:
            return value in self.in_
        if self.not_in is not None:
            return value not in self.not_in
        if self.prefix is not None:
            return value.startswith(self.prefix)
        if self.contains is not None:
            return self.contains in value
        if self.min is not None:
            try:
                return float(value) >= self.min
            except ValueError:
                return False
        return False


def _check_kind(kind: str) -> str:
    if not is_activity_kind(kind):
        raise ValueError(
            f"'{kind}' is not an engine activity kind (one of {', '.join(sorted(ACTIVITY_KINDS))}, "
            "or custom:NAME)"
        )
    return kind


class Rule(Strict):
    """Objects of `type` that pass every `when` test become one activity of `kind`.

    Every matching rule yields an activity (an email that was opened and
    clicked can give both), so make conditions exclusive where one object
    must count once.
    """

    type: str
    kind: str
    when: dict[PropertyName, Condition] = Field(default_factory=dict)
    attrs: dict[AttrName, PropertyName] = Field(default_factory=dict)  # engine attribute -> object property

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return _check_kind(value)

    def matches(self, props: dict[str, str | None]) -> bool:
        return all(cond.test(props.get(prop)) for prop, cond in self.when.items())


class EngagementRule(Rule):
    timestamp: str = "hs_timestamp"

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in ENGAGEMENT_TYPES:
            raise ValueError(f"'{value}' is not an engagement object type (one of {', '.join(ENGAGEMENT_TYPES)})")
        return value


class EventRule(Rule):
    pass


class Rollup(Strict):
    """A counter on the contact becomes `count` activities of `kind` at the time in `last`.

    Roll-ups say how often, not when: every synthetic activity carries the
    last-occurrence time, so decay treats them as recent as the latest one.
    At most `activities.rollup_max` are made per roll-up.
    """

    kind: str
    count: PropertyName
    last: PropertyName

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return _check_kind(value)


class Activities(Strict):
    # Where web activity (page views, form submissions) comes from:
    # events = the events API (Enterprise portals only; on others HubSpot answers 403,
    # and the adapter falls back to the roll-ups with one warning), rollups = counters
    # on the contact (any tier), none = engagements only.
    web: Literal["events", "rollups", "none"] = "events"
    # How web events are read (web: events): bulk = every contact's events of the look-back read once
    # and kept up to date in Redis per contact id (event type, time, and only the properties the
    # event rules read), so a sync page costs no events call (connector/crm/hubspot_events.py);
    # per_contact = one events call per contact whose gate property lies in the look-back, and
    # nothing of the events kept outside HubSpot (many more calls: about 500 per 1,000 contacts).
    events_read: Literal["bulk", "per_contact"] = "bulk"
    lookback_days: int = Field(default=180, ge=1, le=3650)
    engagements: list[EngagementRule] = Field(default_factory=list)
    events: list[EventRule] = Field(default_factory=list)
    # The events API answers for one contact per call: only contacts whose
    # gate property (a last-visit / last-conversion date) falls inside the
    # lookback are asked. Empty: ask for every contact.
    event_gates: list[PropertyName] = Field(default_factory=list)
    rollups: list[Rollup] = Field(default_factory=list)
    rollup_max: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _sources(self) -> Activities:
        if self.web == "events" and not self.events:
            raise ValueError("web is 'events' but no events rules are given")
        if self.web == "rollups" and not self.rollups:
            raise ValueError("web is 'rollups' but no rollups are given")
        return self


class Reps(Strict):
    default_timezone: TimeZone = "UTC"
    timezones: dict[str, TimeZone] = Field(default_factory=dict)  # owner id or email -> time zone
    team_timezones: dict[str, TimeZone] = Field(default_factory=dict)  # team name -> time zone


class Tasks(Strict):
    type: Literal["CALL", "TODO", "EMAIL"] = "CALL"
    priority: Literal["LOW", "MEDIUM", "HIGH"] = "HIGH"


class HubSpotMapping(Strict):
    account: Account = Field(default_factory=Account)
    contact: ContactMap = Field(default_factory=ContactMap)
    write: dict[WriteField, PropertyName] = Field(default_factory=lambda: dict(DEFAULT_WRITE))
    activities: Activities = Field(default_factory=lambda: Activities(web="none"))
    reps: Reps = Field(default_factory=Reps)
    tasks: Tasks = Field(default_factory=Tasks)
    schedule: SyncSchedule = Field(default_factory=SyncSchedule)
    # What counts as won and lost, for learning from past outcomes (connector/mappings/outcomes.py).
    outcomes: HubSpotOutcomes | None = None

    @field_validator("activities")
    @classmethod
    def _events_need_enterprise(cls, value: Activities, info: ValidationInfo) -> Activities:
        # The events API is Enterprise-only (HubSpot's events spec: x-hubspot-product-tier-requirements
        # ENTERPRISE): a portal below that answers 403 to every call.
        account = info.data.get("account")
        if value.web == "events" and isinstance(account, Account) and account.tier in BELOW_ENTERPRISE:
            raise ValueError(
                f"web is 'events', but the events API needs an Enterprise portal and account.tier is "
                f"'{account.tier}': set web: rollups, or tier: enterprise if one of the portal's hubs is Enterprise"
            )
        return value

    @field_validator("write")
    @classmethod
    def _write(cls, value: dict[str, str]) -> dict[str, str]:
        merged = {**DEFAULT_WRITE, **value}
        if len(set(merged.values())) != len(merged):
            raise ValueError("two written fields share one property")
        return merged

    def property_for(self, engine_field: str) -> str:
        return self.write[engine_field]


def load_hubspot_mapping(path: Path | str) -> HubSpotMapping:
    """Read and validate mappings/hubspot.yaml; MappingError names file, line and key on a problem."""
    return load_model(Path(path), HubSpotMapping)
