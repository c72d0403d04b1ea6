"""The schema of mappings/routing.yaml: who gets a hot lead, and when.

A closed vocabulary: every key is known, every choice is one of a fixed set,
every region named anywhere is defined, every time zone is a real one.
`load_routing(path)` returns a `RoutingConfig` or raises one `MappingError`
naming the file, the line and the key.

Layout of the file (see mappings/routing.yaml for a commented example):

    version:         1
    countries:       canonical country name -> the other spellings CRMs use (ISO codes, local names)
    regions:         name -> countries / states / profile fields that put a lead there,
                     CRM teams and e-mails that put a rep there, fallback regions, fallback owner
    default_region:  where a lead goes that no region claims
    defaults:        weight, capacity, working hours, time zone for every rep
    reps:            per-rep overrides by e-mail (weight, capacity, hours, time zone, away, regions, exclude)
    fallback_owner:  the queue owner when no rep of the region or its fallbacks is available
    sla:             minutes to act, how often to reassign, then escalate
    existing_owner, rehot:   what happens when an owned lead becomes hot
    notifications:   which optional channels to use
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from connector.domain import PROFILE_FIELDS
from connector.mapfile import (
    MappingError,
    Strict,
    _Positions,
    dotted,
    not_yaml_bool,
    read_yaml,
    time_zone_name,
    validate,
)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WORKDAYS: tuple[Weekday, ...] = WEEKDAYS[:5]

_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._&/()+'-]{0,59}$")


def norm(text: str) -> str:
    """How names are compared everywhere in routing: case and surrounding spaces ignored."""
    return " ".join(text.split()).casefold()


def _time_text(value: Any) -> Any:
    # YAML 1.1 reads 18:00 as the base-60 number 1080; 08:00 stays text. Ask for quotes.
    if isinstance(value, int) and not isinstance(value, bool):
        return_hint = f"{value // 60:02d}:{value % 60:02d}"
        raise ValueError(f'write the time in quotes, like "{return_hint}" (YAML reads {return_hint} as a number)')
    if isinstance(value, str) and not _TIME.match(value):
        raise ValueError(f"'{value}' is not a time of day; write HH:MM, like \"08:00\"")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"'{value}' is not an e-mail address")
    return value.lower()


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"'{value}' is not a usable name (letters, digits, spaces and . _ & / ( ) + ' -)")
    return value


Text = Annotated[str, BeforeValidator(not_yaml_bool)]
TimeOfDay = Annotated[str, BeforeValidator(_time_text)]
ZoneName = Annotated[str, AfterValidator(time_zone_name)]
Email = Annotated[str, AfterValidator(_email)]
Name = Annotated[str, BeforeValidator(not_yaml_bool), AfterValidator(_name)]


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class Hours(Strict):
    """Working hours in the rep's own time zone: available from `start` (inclusive) to `end` (exclusive)."""

    days: list[Weekday] = Field(default_factory=lambda: list(WORKDAYS))
    start: TimeOfDay = "08:00"
    end: TimeOfDay = "18:00"

    @model_validator(mode="after")
    def _order(self) -> Hours:
        if _minutes(self.end) <= _minutes(self.start):
            raise ValueError(f"end {self.end} must be after start {self.start} (overnight shifts are not supported)")
        if not self.days:
            raise ValueError("days must name at least one weekday")
        return self

    @property
    def start_minute(self) -> int:
        return _minutes(self.start)

    @property
    def end_minute(self) -> int:
        return _minutes(self.end)


class AwayPeriod(Strict):
    """An out-of-office period in the rep's time zone, from `from` (that whole day) through `until`:
    a date means through that whole day; a date and time with its zone (2026-12-24T17:00:00Z) means
    until that instant."""

    start: dt.date = Field(alias="from")
    until: dt.date | dt.datetime

    @model_validator(mode="after")
    def _order(self) -> AwayPeriod:
        last_day = self.until
        if isinstance(self.until, dt.datetime):
            if self.until.tzinfo is None:
                raise ValueError(f"give the time zone with the time, like {self.until.date()}T17:00:00Z")
            last_day = self.until.date()
        if last_day < self.start:
            raise ValueError(f"until {self.until} is before from {self.start}")
        return self

    def covers(self, local_now: dt.datetime) -> bool:
        """Whether the rep is away at `local_now` (an aware time in the rep's zone)."""
        if local_now.date() < self.start:
            return False
        if isinstance(self.until, dt.datetime):
            return local_now < self.until
        return local_now.date() <= self.until

    def ended_before(self, day: dt.date) -> bool:
        end = self.until.date() if isinstance(self.until, dt.datetime) else self.until
        return end < day

    def as_yaml(self) -> dict[str, Any]:
        return {"from": self.start, "until": self.until}


class FallbackOwner(Strict):
    """The queue owner: one CRM user id per CRM, or one e-mail looked up among the CRM's users."""

    email: Email | None = None
    hubspot: Text | None = None
    salesforce: Text | None = None

    @model_validator(mode="after")
    def _one(self) -> FallbackOwner:
        if self.email is None and self.hubspot is None and self.salesforce is None:
            raise ValueError("give an email, or a hubspot and/or salesforce user id")
        return self

    def id_for(self, crm: str) -> str | None:
        return self.hubspot if crm == "hubspot" else self.salesforce if crm == "salesforce" else None


def _owner_shorthand(value: Any) -> Any:
    # `fallback_owner: queue@example.com` is short for `fallback_owner: {email: queue@example.com}`.
    if isinstance(value, str):
        return {"email": value}
    return value


Owner = Annotated[FallbackOwner, BeforeValidator(_owner_shorthand)]


class Region(Strict):
    """Which leads belong here (any listed country, or state; and every listed field), and its reps."""

    countries: list[Text] = Field(default_factory=list)
    # canonical country name -> states/provinces of that country that belong here
    states: dict[Text, list[Text]] = Field(default_factory=dict)
    # profile field -> accepted values; all listed fields must match (in addition to the geography, if any)
    fields: dict[str, list[Text]] = Field(default_factory=dict)
    # reps: CRM teams (HubSpot owner team names; Salesforce User field value, e.g. Division) and e-mails
    teams: list[Text] = Field(default_factory=list)
    reps: list[Email] = Field(default_factory=list)
    fallback: list[Text] = Field(default_factory=list)
    fallback_owner: Owner | None = None

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in value:
            if name not in PROFILE_FIELDS:
                close = difflib.get_close_matches(name, sorted(PROFILE_FIELDS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"'{name}' is not a profile field{hint}")
        return value


class RepDefaults(Strict):
    weight: int = Field(default=1, ge=1, le=100)
    # new hot leads per rep per day (the rep's local day); null = no limit
    capacity: int | None = Field(default=None, ge=0)
    hours: Hours = Hours()
    # used when the CRM gives no time zone for a rep
    timezone: ZoneName = "UTC"


class RepOverride(Strict):
    weight: int | None = Field(default=None, ge=1, le=100)
    capacity: int | None = Field(default=None, ge=0)
    hours: Hours | None = None
    timezone: ZoneName | None = None
    away: list[AwayPeriod] = Field(default_factory=list)
    # put the rep in exactly these regions (instead of what their CRM teams say)
    regions: list[Text] | None = None
    exclude: bool = False


class Sla(Strict):
    enabled: bool = True
    minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)
    max_reassignments: int = Field(default=2, ge=0, le=20)


class Notifications(Strict):
    email: bool = True
    chat: bool = True


class RoutingConfig(Strict):
    version: Literal[1]
    countries: dict[Text, list[Text]] = Field(default_factory=dict)
    regions: dict[Name, Region]
    default_region: Text
    defaults: RepDefaults = RepDefaults()
    reps: dict[Email, RepOverride] = Field(default_factory=dict)
    fallback_owner: Owner | None = None
    sla: Sla = Sla()
    existing_owner: Literal["notify", "silent"] = "notify"
    rehot: Literal["notify_owner", "reassign", "silent"] = "notify_owner"
    notifications: Notifications = Notifications()

    def alias_table(self) -> dict[str, str]:
        """Normalised spelling -> canonical country name (the canonical name maps to itself)."""
        table: dict[str, str] = {}
        for canonical, aliases in self.countries.items():
            table[norm(canonical)] = canonical
            for alias in aliases:
                table[norm(alias)] = canonical
        return table

    def override_for(self, email: str) -> RepOverride | None:
        return self.reps.get(email.lower())

    def fallback_owner_for(self, region: str) -> FallbackOwner | None:
        reg = self.regions.get(region)
        if reg is not None and reg.fallback_owner is not None:
            return reg.fallback_owner
        return self.fallback_owner


def _check_refs(cfg: RoutingConfig, pos: _Positions, file: str) -> None:
    """Cross-references pydantic cannot see: region names, aliases, ambiguous spellings."""

    def fail(loc: tuple[str | int, ...], problem: str) -> MappingError:
        return MappingError(file, pos.line_of(loc), dotted(loc), problem)

    names = list(cfg.regions)
    by_norm = {norm(n): n for n in names}

    def known(name: str, loc: tuple[str | int, ...]) -> None:
        if name not in cfg.regions:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (defined: {', '.join(names)})"
            raise fail(loc, f"'{name}' is not a region defined under regions{hint}")

    if len(by_norm) != len(names):
        raise fail(("regions",), "two regions differ only in case or spaces")
    known(cfg.default_region, ("default_region",))

    seen: dict[str, str] = {}
    for canonical, aliases in cfg.countries.items():
        for i, spelling in enumerate((canonical, *aliases)):
            key = norm(spelling)
            loc: tuple[str | int, ...] = ("countries", canonical) if i == 0 else ("countries", canonical, i - 1)
            if key in seen and seen[key] != canonical:
                raise fail(loc, f"'{spelling}' already stands for {seen[key]}")
            seen[key] = canonical

    for name, region in cfg.regions.items():
        for i, other in enumerate(region.fallback):
            known(other, ("regions", name, "fallback", i))
            if other == name:
                raise fail(("regions", name, "fallback", i), "a region cannot fall back to itself")
        if len(set(region.fallback)) != len(region.fallback):
            raise fail(("regions", name, "fallback"), "a region is listed twice")
        if name != cfg.default_region and not (region.countries or region.states or region.fields):
            raise fail(
                ("regions", name),
                "give countries, states or fields that put a lead in this region (only default_region may have none)",
            )
    for email, override in cfg.reps.items():
        for i, other in enumerate(override.regions or ()):
            known(other, ("reps", email, "regions", i))


# --------------------------------------------------------------------------- away.yaml

AWAY_FILE = "away.yaml"


class AwayEntry(Strict):
    away: list[AwayPeriod] = Field(default_factory=list)


class AwayFile(Strict):
    """mappings/away.yaml: the periods `leadscore reps away` set, in routing.yaml's `reps: ... away:` format."""

    version: Literal[1]
    reps: dict[Email, AwayEntry] = Field(default_factory=dict)


def load_away(path: Path | str) -> dict[str, list[AwayPeriod]]:
    """e-mail -> away periods from mappings/away.yaml; {} when there is no such file. Raises MappingError."""
    path = Path(path)
    if not path.is_file():
        return {}
    data, pos = read_yaml(path)
    if data == {}:
        return {}
    parsed = validate(data, pos, AwayFile, str(path))
    return {email: list(entry.away) for email, entry in parsed.reps.items() if entry.away}


def parse_routing(data: Any, file: str = "routing.yaml", pos: _Positions | None = None) -> RoutingConfig:
    pos = pos or _Positions()
    cfg = validate(data, pos, RoutingConfig, file)
    _check_refs(cfg, pos, file)
    return cfg


def load_routing(path: Path | str) -> RoutingConfig:
    """Read and check mappings/routing.yaml (and away.yaml beside it); raise MappingError naming file, line and key.

    The periods of away.yaml are read by the router as it routes (they change while it runs),
    so they are checked here, not merged into the configuration.
    """
    path = Path(path)
    data, pos = read_yaml(path)
    config = parse_routing(data, str(path), pos)
    load_away(path.parent / AWAY_FILE)
    return config
