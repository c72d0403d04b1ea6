"""The schema of mappings/salesforce.yaml: how a Salesforce org speaks the engine's vocabulary.

Layout of the file (see mappings/salesforce.yaml for a commented example):

    objects:        Lead and Contact: engine profile field -> Salesforce API field, and
                    custom profile fields (name -> field and type)
    write_fields:   the score fields written back (engine name -> API name)
    activities:     which Task / Event / CampaignMember fields to read, and rules
                    that turn those records into engine activity kinds
    owners:         the owners that count as "nobody" (queues, the integration user)
    reps:           the User field that names a rep's region
    page_size, bulk_threshold, api_floor_percent, rate_limit: how hard to use the API

Every API name is checked to be a plain Salesforce name (`Field`, `Custom__c`, or one
parent hop such as `Account.Name`), so nothing from this file can change the shape of
a SOQL query. Activity rules use a closed set of operators evaluated in Python, never
in SOQL. Loading goes through `connector.mapfile.load_model`, so every problem names
the file, the line and the key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from connector.domain import ACTIVITY_KINDS, PROFILE_FIELDS, WRITE_FIELDS, is_activity_kind
from connector.mapfile import Strict, load_model, not_yaml_bool
from connector.mappings.custom import FieldType, check_custom_name
from connector.mappings.outcomes import SalesforceOutcomes
from connector.mappings.schedule import SyncSchedule

ActivitySource = Literal["Task", "Event", "CampaignMember"]
ACTIVITY_SOURCES: tuple[ActivitySource, ...] = ("Task", "Event", "CampaignMember")
ObjectName = Literal["Lead", "Contact"]
OBJECTS: tuple[ObjectName, ...] = ("Lead", "Contact")

# A field on the object itself, or one hop up a relationship (Account.Name, Campaign.Type).
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}(\.[A-Za-z][A-Za-z0-9_]{0,79})?$")
# Salesforce ids: 15 or 18 alphanumerics.
SALESFORCE_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_ATTR = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# Fields the adapter selects itself; mapping them again would be a mistake.
_RESERVED = frozenset({"id", "ownerid", "systemmodstamp", "isconverted"})


def _suggest(word: str, known: frozenset[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _api_name(value: str) -> str:
    if not _API_NAME.match(value):
        raise ValueError(
            f"'{value}' is not a Salesforce API name (letters, digits and underscores, "
            "such as Title, Lead_Score__c or Account.Name)"
        )
    return value


def _plain_api_name(value: str) -> str:
    _api_name(value)
    if "." in value:
        raise ValueError(f"'{value}' must be a field of the object itself, not of a related record")
    return value


ApiName = Annotated[str, BeforeValidator(not_yaml_bool), Field(min_length=1)]
Text = Annotated[str, BeforeValidator(not_yaml_bool)]


def _profile_field(value: str) -> str:
    if value not in PROFILE_FIELDS:
        raise ValueError(f"'{value}' is not a profile field the engine knows{_suggest(value, PROFILE_FIELDS)}")
    return value


def _readable_field(value: str) -> str:
    _api_name(value)
    if value.lower() in _RESERVED:
        raise ValueError(f"{value} is read by the connector itself; do not map it")
    return value


ProfileField = Annotated[str, AfterValidator(_profile_field)]
ReadableField = Annotated[str, BeforeValidator(not_yaml_bool), AfterValidator(_readable_field)]


CustomName = Annotated[str, AfterValidator(check_custom_name)]


class CustomField(Strict):
    """A Salesforce field read as a profile field of its own (connector/mappings/custom.py)."""

    field: ReadableField
    type: FieldType


class ObjectMapping(Strict):
    """One object (Lead or Contact): engine profile field -> Salesforce API field."""

    fields: dict[ProfileField, ReadableField]
    # custom profile field (the name scoring rules read) -> API field and type
    custom: dict[CustomName, CustomField] = Field(default_factory=dict)

    def read_fields(self) -> dict[str, str]:
        """Every profile field read from the object, engine or custom name -> API field."""
        return {**self.fields, **{name: c.field for name, c in self.custom.items()}}

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("map at least one profile field (for example email: Email)")
        return value


class WriteFields(Strict):
    """The API names of the score fields on Lead and Contact (defaults as documented)."""

    score: ApiName = "Lead_Score__c"
    fit: ApiName = "Lead_Fit_Score__c"
    engagement: ApiName = "Lead_Engagement_Score__c"
    band: ApiName = "Lead_Band__c"
    grade: ApiName = "Lead_Grade__c"
    reasons: ApiName = "Lead_Score_Reasons__c"
    scored_at: ApiName = "Lead_Scored_At__c"
    model: ApiName = "Lead_Score_Model__c"
    probability: ApiName = "Lead_Conversion_Probability__c"
    factors: ApiName = "Lead_Probability_Factors__c"

    @model_validator(mode="after")
    def _distinct(self) -> WriteFields:
        seen: dict[str, str] = {}
        for name in WRITE_FIELDS:
            api: str = getattr(self, name)
            _plain_api_name(api)
            if api.lower() in seen:
                raise ValueError(f"{name} and {seen[api.lower()]} both name the field {api}")
            seen[api.lower()] = name
        return self

    def api(self, engine_name: str) -> str:
        return str(getattr(self, engine_name))

    def as_dict(self) -> dict[str, str]:
        return {name: self.api(name) for name in WRITE_FIELDS}


class Condition(Strict):
    """One test on one field of the activity record; exactly one operator is set.

    Comparisons ignore case. Booleans (HasResponded) compare as 'true' / 'false'.
    """

    field: ApiName
    equals: Text | None = None
    not_equals: Text | None = None
    in_: list[Text] | None = Field(default=None, alias="in")
    starts_with: Text | None = None
    contains: Text | None = None
    present: Literal[True] | None = None
    missing: Literal[True] | None = None

    @field_validator("field")
    @classmethod
    def _field_name(cls, value: str) -> str:
        return _api_name(value)

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        ops = [
            name
            for name in ("equals", "not_equals", "in_", "starts_with", "contains", "present", "missing")
            if getattr(self, name) is not None
        ]
        if len(ops) != 1:
            raise ValueError(
                "give exactly one of equals, not_equals, in, starts_with, contains, present, missing"
                + (f" (found {', '.join(o.rstrip('_') for o in ops)})" if ops else "")
            )
        if self.in_ is not None and not self.in_:
            raise ValueError("the list after 'in' is empty")
        return self

    def test(self, value: str | None) -> bool:
        if self.present is not None:
            return bool(value)
        if self.missing is not None:
            return not value
        v = (value or "").casefold()
        if self.equals is not None:
            return v == self.equals.casefold()
        if self.not_equals is not None:
            return v != self.not_equals.casefold()
        if self.in_ is not None:
            return v in {x.casefold() for x in self.in_}
        if self.starts_with is not None:
            return v.startswith(self.starts_with.casefold())
        assert self.contains is not None
        return self.contains.casefold() in v


class Rule(Strict):
    """Records of `source` passing every condition in `when` become activities of `kind`."""

    source: ActivitySource
    kind: str
    when: list[Condition] = Field(default_factory=list)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if not is_activity_kind(value):
            raise ValueError(
                f"'{value}' is not an activity kind the engine knows{_suggest(value, ACTIVITY_KINDS)} "
                "(or custom:NAME)"
            )
        return value


class Source(Strict):
    """What to read from one activity object.

    time_fields: the first one with a value dates the activity (dates count as midnight UTC).
    attrs: engine attribute name -> API field, passed on to the engine as text.
    """

    time_fields: list[ApiName]
    attrs: dict[str, ApiName] = Field(default_factory=dict)

    @field_validator("time_fields")
    @classmethod
    def _times(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one date or datetime field (for example CreatedDate)")
        for name in value:
            _plain_api_name(name)
        return value

    @field_validator("attrs")
    @classmethod
    def _attrs(cls, value: dict[str, str]) -> dict[str, str]:
        for attr, api in value.items():
            if not _ATTR.match(attr):
                raise ValueError(f"'{attr}' is not an attribute name (lower case letters, digits, _)")
            _api_name(api)
        return value


class Activities(Strict):
    lookback_days: int = Field(default=365, ge=1, le=3650)
    sources: dict[ActivitySource, Source]
    rules: list[Rule]

    @field_validator("rules")
    @classmethod
    def _rules_have_sources(cls, rules: list[Rule], info: ValidationInfo) -> list[Rule]:
        sources = info.data.get("sources") or {}
        for i, rule in enumerate(rules):
            if rule.source not in sources:
                raise ValueError(
                    f"rule {i + 1} reads {rule.source}, but activities.sources does not list {rule.source}"
                )
        return rules


class Owners(Strict):
    """Owners that count as "no owner".

    Every Salesforce record has an owner, so "unassigned" means: owned by one of
    these ids (the integration user, a catch-all user), or by a queue when
    `queues_are_unassigned` is true (queue ids start with 00G).
    """

    unassigned: list[ApiName] = Field(default_factory=list)
    queues_are_unassigned: bool = True

    @field_validator("unassigned")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for v in value:
            if not SALESFORCE_ID.match(v):
                raise ValueError(f"'{v}' is not a Salesforce id (15 or 18 letters and digits)")
        return value

    def is_unassigned(self, owner_id: str | None) -> bool:
        if not owner_id:
            return True
        if self.queues_are_unassigned and owner_id.startswith("00G"):
            return True
        return any(owner_id[:15] == u[:15] for u in self.unassigned)


class Reps(Strict):
    region_field: ApiName = "Division"

    @field_validator("region_field")
    @classmethod
    def _region(cls, value: str) -> str:
        return _plain_api_name(value)


class RateLimit(Strict):
    """At most `calls` API calls in any `seconds`, shared by every worker on this org."""

    calls: int = Field(default=50, ge=1, le=10_000)
    seconds: float = Field(default=1.0, gt=0, le=3600)


class SalesforceMapping(Strict):
    objects: dict[ObjectName, ObjectMapping]
    write_fields: WriteFields = WriteFields()
    activities: Activities
    owners: Owners = Owners()
    reps: Reps = Reps()
    page_size: int = Field(default=2000, ge=200, le=2000)
    bulk_threshold: int = Field(default=10_000, ge=1)
    api_floor_percent: float = Field(default=10.0, ge=0, le=90)
    rate_limit: RateLimit = RateLimit()
    schedule: SyncSchedule = SyncSchedule()
    # What counts as won and lost, for learning from past outcomes (connector/mappings/outcomes.py).
    outcomes: SalesforceOutcomes | None = None

    @field_validator("objects")
    @classmethod
    def _both(cls, value: dict[str, ObjectMapping]) -> dict[str, ObjectMapping]:
        missing = [o for o in OBJECTS if o not in value]
        if missing:
            raise ValueError(f"map {' and '.join(missing)} too (both are read and scored)")
        return value


def load_salesforce_mapping(path: Path) -> SalesforceMapping:
    """Read and validate mappings/salesforce.yaml; raises MappingError naming file, line and key."""
    return load_model(path, SalesforceMapping)
