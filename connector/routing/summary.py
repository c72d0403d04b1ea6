"""What routing did, per region and rep, and what it would do at another moment: pure, for summaries.

Used by `leadscore demo`:

- `busiest_hour`: the first whole hour from a moment on when the most reps are in working
  hours (the demo routes as at that hour by default, so that the rotation shows whatever the
  time of day it is run at);
- `by_region`: from routing's decision records, per region the hot leads, each rep with
  weight, capacity, leads received and why they were passed over, and where the rest went;
- `replay`: the same leads routed again at another moment (the real time), on a fresh pool
  with the same rules, counted by where they would have gone.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from connector.domain import Rep
from connector.mappings.routing import RoutingConfig
from connector.routing.policy import (
    AwayMark,
    MemoryPool,
    RepView,
    availability,
    choose,
    fallback_owner_of,
    region_attempts,
    rep_view,
)

HOUR = 3600.0
SEARCH_DAYS = 8  # a full week and a day: every weekday hour is a candidate


def routable(config: RoutingConfig, reps: Iterable[Rep]) -> list[RepView]:
    """The reps routing can ever choose: active, not excluded, serving at least one region.

    One view per person: a rep who is a HubSpot owner and a Salesforce user (same e-mail) counts once.
    """
    views: dict[str, RepView] = {}
    for rep in reps:
        v = rep_view(config, rep)
        if v.rep.active and not v.excluded and v.regions:
            views.setdefault(rep.email.lower() or rep.id, v)
    return list(views.values())


def in_hours_count(views: Sequence[RepView], at: float) -> int:
    """Reps inside their working hours at `at` (and not away by routing.yaml)."""
    return sum(1 for v in views if availability(v, at) is None)


def busiest_hour(views: Sequence[RepView], start: float) -> tuple[float, int]:
    """(the first whole hour from `start`'s hour on with the most reps in working hours, how many)."""
    first = start - start % HOUR
    best, best_n = first, -1
    for i in range(SEARCH_DAYS * 24):
        at = first + i * HOUR
        n = in_hours_count(views, at)
        if n > best_n:
            best, best_n = at, n
    return best, max(best_n, 0)


def local_times(views: Sequence[RepView], at: float) -> list[str]:
    """The moment in each of the reps' time zones, east to west: ["15:00 Berlin", "09:00 New York"]."""
    moments = {v.tz.key: dt.datetime.fromtimestamp(at, ZoneInfo(v.tz.key)) for v in views}
    ordered = sorted(moments.items(), key=lambda kv: -(kv[1].utcoffset() or dt.timedelta()).total_seconds())
    return [f"{moment:%H:%M} {zone.rsplit('/', 1)[-1].replace('_', ' ')}" for zone, moment in ordered]


def utc_text(at: float) -> str:
    return f"{dt.datetime.fromtimestamp(at, dt.UTC):%a %Y-%m-%d %H:%M} UTC"


@dataclass
class RepLine:
    id: str
    name: str
    weight: int
    capacity: int | None
    received: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "weight": self.weight, "capacity": self.capacity,
                "received": self.received, "skipped": dict(sorted(self.skipped.items()))}  # fmt: skip


@dataclass
class RegionLine:
    name: str
    hot_leads: int = 0
    reps: list[RepLine] = field(default_factory=list)
    to_fallback_regions: Counter[str] = field(default_factory=Counter)
    from_other_regions: Counter[str] = field(default_factory=Counter)  # leads of regions that fell back here
    to_fallback_owner: int = 0
    unassigned: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hot_leads": self.hot_leads,
            "reps": [r.as_dict() for r in self.reps],
            "to_fallback_regions": dict(sorted(self.to_fallback_regions.items())),
            "from_other_regions": dict(sorted(self.from_other_regions.items())),
            "to_fallback_owner": self.to_fallback_owner,
            "unassigned": self.unassigned,
        }


ROUTED = ("assigned", "fallback_owner", "unassigned")


def by_region(config: RoutingConfig, reps: Sequence[Rep], records: Iterable[Mapping[str, Any]]) -> list[RegionLine]:
    """Per region with hot leads (in routing.yaml's order): its reps and where its leads went.

    `records`: routing's decision records (Router.routing_record entries); a rep's
    `received` counts the leads routed to them through that region's rotation, `skipped` the
    times they were passed over there, by reason.
    """
    views = {v.id: v for v in (rep_view(config, r) for r in reps)}
    lines = {name: RegionLine(name) for name in config.regions}
    members: dict[str, dict[str, RepLine]] = {name: {} for name in config.regions}
    for v in views.values():
        for name in v.regions:
            members[name][v.id] = RepLine(v.id, v.rep.name or v.rep.email or v.id, v.weight, v.capacity)
    for rec in records:
        if rec.get("outcome") not in ROUTED or rec.get("region") not in lines:
            continue
        line = lines[rec["region"]]
        line.hot_leads += 1
        if rec["outcome"] == "fallback_owner":
            line.to_fallback_owner += 1
        elif rec["outcome"] == "unassigned":
            line.unassigned += 1
        elif rec.get("chosen_region") not in (None, rec["region"]):
            line.to_fallback_regions[rec["chosen_region"]] += 1
            if rec["chosen_region"] in lines:
                lines[rec["chosen_region"]].from_other_regions[rec["region"]] += 1
        via = rec.get("chosen_region")
        if rec["outcome"] == "assigned" and via in members and rec.get("chosen") in members[via]:
            members[via][rec["chosen"]].received += 1
        for skip in rec.get("skipped") or []:
            rep_line = members.get(skip.get("region"), {}).get(skip.get("rep_id"))
            if rep_line is not None:
                rep_line.skipped[str(skip.get("reason"))] += 1
    out = []
    for name, line in lines.items():
        line.reps = sorted(members[name].values(), key=lambda r: (-r.received, r.name))
        if line.hot_leads or line.from_other_regions:
            out.append(line)
    return out


@dataclass
class Replay:
    at: float
    in_hours: int
    reps: int
    outcomes: Counter[str]  # own region, fallback region, fallback owner, unassigned
    fallback_owner: str | None

    @property
    def leads(self) -> int:
        return sum(self.outcomes.values())

    def sentence(self) -> str:
        n = self.leads
        when = f"At the real time ({utc_text(self.at)})"
        owner = f"the fallback owner {self.fallback_owner}" if self.fallback_owner else "the fallback owner"
        if n == 0:
            return f"{when} {self.in_hours} of {self.reps} reps are in working hours."
        if self.outcomes["fallback owner"] == n:
            all_of = f"all {n} hot leads" if n > 1 else "the hot lead"
            if self.in_hours == 0:
                return f"{when} nobody is in working hours: {all_of} would have gone to {owner}."
            return (f"{when} {self.in_hours} of {self.reps} reps are in working hours, none of them where the "
                    f"leads are: {all_of} would have gone to {owner}.")  # fmt: skip
        parts = []
        for key, words in (("own region", "to a rep of their region"), ("fallback region", "to a fallback region"),
                           ("fallback owner", f"to {owner}"), ("unassigned", "unassigned")):  # fmt: skip
            if self.outcomes[key]:
                parts.append(f"{self.outcomes[key]} {words}")
        parts[0] = parts[0].replace(" ", f" of the {n} hot leads would have gone ", 1)
        if parts[0].endswith(" would have gone unassigned"):
            parts[0] = parts[0].replace(" would have gone unassigned", " would have stayed unassigned")
        return f"{when} {self.in_hours} of {self.reps} reps are in working hours: {', '.join(parts)}."


def replay(
    config: RoutingConfig,
    crm: str,
    reps: Sequence[Rep],
    lead_regions: Sequence[str],
    at: float,
    marks: Mapping[str, Sequence[AwayMark]] | None = None,
) -> Replay:
    """Route leads of these regions again at `at`, on a fresh pool (no capacity used yet), with the same rules."""
    views = [rep_view(config, r) for r in reps]
    keys = {v.id: f"{crm}:{v.id}:{v.day(at)}" for v in views}
    pool = MemoryPool()
    outcomes: Counter[str] = Counter()
    names = {r.id: r.name or r.email for r in reps}
    owner_name: str | None = None
    for i, region in enumerate(lead_regions):
        used = {rid: pool.used.get(key, 0) for rid, key in keys.items()}
        attempts = region_attempts(config, views, region, at, pool_prefix=f"{crm}:", cap_keys=keys, used=used,
                                   marks=marks or {})  # fmt: skip
        owner, problem = fallback_owner_of(config, crm, region, reps)
        d = choose(pool, attempts, at, turn_id=f"replay-{i}", fallback_owner=owner, fallback_problem=problem)
        if d.outcome == "assigned":
            outcomes["fallback region" if d.fallback else "own region"] += 1
        elif d.outcome == "fallback_owner":
            outcomes["fallback owner"] += 1
            owner_name = names.get(owner or "", owner)
        else:
            outcomes["unassigned"] += 1
    live = routable(config, reps)
    if owner_name is None:
        owner_id, _ = fallback_owner_of(config, crm, config.default_region, reps)
        owner_name = names.get(owner_id or "", owner_id)
    return Replay(at, in_hours_count(live, at), len(live), outcomes, owner_name)
