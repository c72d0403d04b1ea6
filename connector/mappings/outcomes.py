"""The `outcomes:` section of mappings/hubspot.yaml and mappings/salesforce.yaml: what counts as won and lost.

Outcomes are read (never written) for learning from the past (`leadscore backtest`, `suggest`, `train`;
connector/learn/dataset.py). Each CRM offers a few sources; any number may be given and they combine:
a record is **won** when any source says won (at the earliest dated won moment), else **lost** when any
source says lost (at the earliest dated lost moment), else open. A source without a date gives an
undated outcome: it is counted, but the lead cannot be scored "as it was before", so its activities
all count (the reports say how many such leads there are).

HubSpot (contacts):
- `lifecycle`: lifecycle stages that count as won (e.g. customer), dated by HubSpot's own
  `hs_lifecyclestage_<stage>_date` property of the stage reached.
- `property`: any contact property with won and/or lost values, optionally a date(time) property.
- `deals`: the contact's associated deals; closed won / closed lost by deal stage id, dated by closedate.

Salesforce (Lead and Contact):
- `lead_conversion`: a converted Lead (IsConverted, dated by ConvertedDate) is won; with
  `won: opportunity_won` only when its converted Opportunity IsWon, and lost when that Opportunity is
  closed and not won. Converted Leads are read for this; the sync never scores them.
- `contact_roles`: a Contact's Opportunities through OpportunityContactRole: won when one IsWon,
  lost when all of them are closed; dated by CloseDate.
- `field`: a field of Lead and Contact with won and/or lost values, optionally a date(time) field.

The profile fields these sources read (lifecycle_stage when `lifecycle` reads lifecyclestage, ...)
are removed from every example's profile: they describe the outcome, not the lead before it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from connector.mapfile import Strict

_HS_PROPERTY = re.compile(r"^[a-z0-9_][a-z0-9_.]*$")
_SF_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_STAGE = re.compile(r"^[a-z0-9_]+$")


def _hs_property(name: str) -> str:
    if not _HS_PROPERTY.match(name):
        raise ValueError(f"'{name}' is not a HubSpot property name (lowercase letters, digits, underscores)")
    return name


def _sf_field(name: str) -> str:
    if not _SF_FIELD.match(name):
        raise ValueError(f"'{name}' is not a Salesforce field API name (letters, digits, underscores)")
    return name


def _stage(name: str) -> str:
    if not _STAGE.match(name):
        raise ValueError(
            f"'{name}' is not a lifecycle stage's internal value (lowercase letters, digits, underscores, "
            "e.g. customer)"
        )
    return name


HsProperty = Annotated[str, AfterValidator(_hs_property)]
SfField = Annotated[str, AfterValidator(_sf_field)]
Stage = Annotated[str, AfterValidator(_stage)]


SfObject = Literal["Lead", "Contact"]
SF_OBJECTS: tuple[SfObject, ...] = ("Lead", "Contact")


def _won_lost(won: list[str], lost: list[str]) -> None:
    if not won and not lost:
        raise ValueError("give won values, lost values or both")
    both = sorted(set(won) & set(lost))
    if both:
        raise ValueError(f"{', '.join(repr(v) for v in both)} cannot be both won and lost")


def lifecycle_date_property(stage: str) -> str:
    """HubSpot's date property for entering a lifecycle stage ("Became a customer date")."""
    return f"hs_lifecyclestage_{stage}_date"


class HubSpotLifecycle(Strict):
    """Won when the contact's lifecycle stage is one of `won`, at the date it entered that stage."""

    won: list[Stage] = Field(min_length=1)
    property: HsProperty = "lifecyclestage"

    def date_properties(self) -> list[str]:
        return [lifecycle_date_property(stage) for stage in self.won]


class HubSpotProperty(Strict):
    """Won/lost by the values of one contact property, dated by `date` when given."""

    name: HsProperty
    won: list[str] = Field(default_factory=list)
    lost: list[str] = Field(default_factory=list)
    date: HsProperty | None = None

    @model_validator(mode="after")
    def _values(self) -> HubSpotProperty:
        _won_lost(self.won, self.lost)
        return self


class HubSpotDeals(Strict):
    """Won/lost by the contact's associated deals: their stage ids (Settings > Objects > Deals >
    Pipelines: each stage's internal id), dated by `date` (closedate)."""

    won: list[str] = Field(default_factory=lambda: ["closedwon"])
    lost: list[str] = Field(default_factory=lambda: ["closedlost"])
    pipelines: list[str] = Field(default_factory=list)  # only deals in these pipelines; empty: any
    date: HsProperty = "closedate"

    @model_validator(mode="after")
    def _values(self) -> HubSpotDeals:
        _won_lost(self.won, self.lost)
        return self


class HubSpotOutcomes(Strict):
    lifecycle: HubSpotLifecycle | None = None
    property: HubSpotProperty | None = None
    deals: HubSpotDeals | None = None

    @model_validator(mode="after")
    def _some(self) -> HubSpotOutcomes:
        if self.lifecycle is None and self.property is None and self.deals is None:
            raise ValueError("give at least one outcome source: lifecycle, property or deals")
        return self

    def contact_properties(self) -> list[str]:
        """The contact properties a read must ask for."""
        props: list[str] = []
        if self.lifecycle is not None:
            props += [self.lifecycle.property, *self.lifecycle.date_properties()]
        if self.property is not None:
            props.append(self.property.name)
            if self.property.date is not None:
                props.append(self.property.date)
        return list(dict.fromkeys(props))

    def defining_properties(self) -> set[str]:
        """Contact properties whose values say the outcome: profile fields mapped to them are removed."""
        out: set[str] = set()
        if self.lifecycle is not None:
            out.add(self.lifecycle.property)
        if self.property is not None:
            out.add(self.property.name)
        return out


class SalesforceLeadConversion(Strict):
    """A converted Lead: won at its ConvertedDate (`converted`), or by its converted Opportunity
    (`opportunity_won`: won when IsWon, lost when closed and not won, open otherwise)."""

    won: Literal["converted", "opportunity_won"] = "converted"


class SalesforceContactRoles(Strict):
    """A Contact's Opportunities through OpportunityContactRole: won when one IsWon (its CloseDate),
    lost when all are closed (the latest CloseDate). `roles` limits the roles counted (empty: any)."""

    roles: list[str] = Field(default_factory=list)


class SalesforceField(Strict):
    """Won/lost by the values of one field of Lead and Contact (both must have it), dated by `date`."""

    name: SfField
    won: list[str] = Field(default_factory=list)
    lost: list[str] = Field(default_factory=list)
    date: SfField | None = None
    objects: list[SfObject] = Field(default_factory=lambda: list(SF_OBJECTS), min_length=1)

    @model_validator(mode="after")
    def _values(self) -> SalesforceField:
        _won_lost(self.won, self.lost)
        return self

    @field_validator("objects")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("name each object once")
        return value


class SalesforceOutcomes(Strict):
    lead_conversion: SalesforceLeadConversion | None = None
    contact_roles: SalesforceContactRoles | None = None
    field: SalesforceField | None = None

    @model_validator(mode="after")
    def _some(self) -> SalesforceOutcomes:
        if self.lead_conversion is None and self.contact_roles is None and self.field is None:
            raise ValueError("give at least one outcome source: lead_conversion, contact_roles or field")
        return self


def combine(found: list[tuple[str, float | None]]) -> tuple[str | None, float | None]:
    """(outcome, when) from what each source found: won beats lost, the earliest dated moment wins."""
    for wanted in ("won", "lost"):
        hits = [at for what, at in found if what == wanted]
        if hits:
            dated = [at for at in hits if at is not None]
            return wanted, (min(dated) if dated else None)
    return None, None
