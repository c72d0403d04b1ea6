"""The routing decision, pure: which rep gets a hot lead, and why the others did not.

Nothing here does I/O and nothing reads the clock: `now` (epoch seconds) is
passed in. The only state is the pool of smooth weighted round robin turns and
capacity counters, reached through the small `Pool` protocol: `MemoryPool`
below is the Python twin of the Redis/Lua pool in `connector.routing.pool`,
and a test checks that both make the same choices on random sequences.

Fairness: smooth weighted round robin (as nginx does it). Every pick, each
eligible rep's current weight grows by its weight, the largest current weight
wins (ties: the smaller rep id), and the winner's current weight drops by the
sum of the eligible weights. A rep of weight 2 gets exactly twice the turns of
a rep of weight 1, interleaved (C A B C, C A B C, ...).

Returning reps: a rep who is not eligible (away, outside hours, at capacity,
inactive, excluded) takes no part in a pick: their current weight neither
grows nor shrinks. They earn no credit while away and re-enter at the
position they left, so a rep coming back from a week off does not get a
catch-up flood of leads, and is not sent to the back of the queue either.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from connector.domain import Rep
from connector.mappings.routing import WEEKDAYS, AwayPeriod, Hours, RoutingConfig, norm

SkipReason = Literal["inactive", "excluded", "away", "outside hours", "at capacity"]
Outcome = Literal["assigned", "fallback_owner", "unassigned", "kept_owner", "lost_race"]

UNASSIGNED_NOTE = "unassigned: no rep available and no fallback owner configured"


# --------------------------------------------------------------------------- regions


def resolve_region(cfg: RoutingConfig, profile: Mapping[str, Any]) -> str:
    """The lead's region: the first region (in file order) whose geography and fields match, else the default.

    A region matches when (it lists no countries or states, or the lead's
    country is one of its countries, or the lead's state is one of the states
    it lists for that country) and every field it lists has one of the given
    values. Country spellings go through `countries:` aliases (ISO codes, local
    names); all comparisons ignore case and surrounding spaces.
    """
    aliases = cfg.alias_table()
    raw_country = str(profile.get("country") or "")
    country = aliases.get(norm(raw_country), raw_country)
    state = norm(str(profile.get("state") or ""))
    for name, region in cfg.regions.items():
        geo_listed = bool(region.countries or region.states)
        geo_ok = not geo_listed
        if not geo_ok and country:
            wanted = {norm(aliases.get(norm(c), c)) for c in region.countries}
            geo_ok = norm(country) in wanted
            if not geo_ok and state:
                for c, states in region.states.items():
                    if norm(aliases.get(norm(c), c)) == norm(country) and state in {norm(s) for s in states}:
                        geo_ok = True
                        break
        if not geo_ok:
            continue
        if all(norm(str(profile.get(f) or "")) in {norm(v) for v in values} for f, values in region.fields.items()):
            if not geo_listed and not region.fields:
                continue  # the default region claims nothing by itself
            return name
    return cfg.default_region


# --------------------------------------------------------------------------- reps and availability


@dataclass(frozen=True, slots=True)
class AwayMark:
    """Set with `leadscore reps away`: a date means away through that whole day in the rep's time zone.

    `start` (a day, rep-local) is set for marks read from mappings/away.yaml, which may be planned ahead.
    """

    until: dt.date | dt.datetime
    start: dt.date | None = None

    def covers(self, local_now: dt.datetime) -> bool:
        if self.start is not None and local_now.date() < self.start:
            return False
        if isinstance(self.until, dt.datetime):
            return local_now < self.until
        return local_now.date() <= self.until


@dataclass(frozen=True, slots=True)
class RepView:
    """A CRM rep with the configuration that applies to them."""

    rep: Rep
    weight: int
    capacity: int | None
    hours: Hours
    tz: ZoneInfo
    away: tuple[AwayPeriod, ...]
    excluded: bool
    regions: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.rep.id

    def local(self, now: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(now, self.tz)

    def day(self, now: float) -> str:
        """The rep's local date, the unit of capacity."""
        return self.local(now).date().isoformat()


def _zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def rep_regions(cfg: RoutingConfig, rep: Rep) -> tuple[str, ...]:
    """Regions a rep serves: per-rep `regions` override, else CRM teams / region hint and listed e-mails."""
    override = cfg.override_for(rep.email) if rep.email else None
    if override is not None and override.regions is not None:
        return tuple(override.regions)
    tags = {norm(t) for t in (*rep.teams, rep.region or "") if t}
    email = rep.email.lower() if rep.email else ""
    return tuple(
        name
        for name, region in cfg.regions.items()
        if tags & {norm(t) for t in region.teams} or (email and email in region.reps)
    )


def rep_view(cfg: RoutingConfig, rep: Rep) -> RepView:
    d = cfg.defaults
    o = cfg.override_for(rep.email) if rep.email else None
    return RepView(
        rep=rep,
        weight=o.weight if o is not None and o.weight is not None else d.weight,
        capacity=o.capacity if o is not None and o.capacity is not None else d.capacity,
        hours=o.hours if o is not None and o.hours is not None else d.hours,
        tz=_zone(o.timezone if o is not None and o.timezone else rep.timezone, d.timezone),
        away=tuple(o.away) if o is not None else (),
        excluded=o.exclude if o is not None else False,
        regions=rep_regions(cfg, rep),
    )


def in_hours(hours: Hours, local_now: dt.datetime) -> bool:
    if WEEKDAYS[local_now.weekday()] not in hours.days:
        return False
    minute = local_now.hour * 60 + local_now.minute
    return hours.start_minute <= minute < hours.end_minute


def availability(
    view: RepView, now: float, marks: Iterable[AwayMark] = (), used_today: int = 0
) -> tuple[SkipReason, str] | None:
    """None when the rep can take a new hot lead at `now`; else the reason and a detail."""
    if not view.rep.active:
        return "inactive", "inactive CRM user"
    if view.excluded:
        return "excluded", "excluded in routing.yaml"
    local = view.local(now)
    for period in view.away:
        if period.covers(local):
            return "away", f"out of office until {period.until.isoformat()} (routing.yaml)"
    for mark in marks:
        if mark.covers(local):
            return "away", f"away until {mark.until.isoformat()}"
    if not in_hours(view.hours, local):
        days = ",".join(view.hours.days)
        return "outside hours", f"{local:%a %H:%M} {view.tz.key}; works {days} {view.hours.start}-{view.hours.end}"
    if view.capacity is not None and used_today >= view.capacity:
        return "at capacity", f"{used_today} of {view.capacity} today"
    return None


def region_attempts(
    cfg: RoutingConfig,
    views: Sequence[RepView],
    region: str,
    now: float,
    *,
    pool_prefix: str,
    cap_keys: Mapping[str, str],
    used: Mapping[str, int],
    marks: Mapping[str, Sequence[AwayMark]],
    exclude: Sequence[str] = (),
    exclude_detail: str = "the lead's previous owner",
) -> list[RegionCandidates]:
    """The lead's region and its fallback regions in order, each with its reps and whether each may take it.

    `cap_keys` and `used`: each rep's capacity counter for their local day and its count.
    """
    out = []
    for name in [region, *cfg.regions[region].fallback]:
        cands = []
        for v in views:
            if name not in v.regions:
                continue
            why: tuple[SkipReason, str] | None = (
                ("excluded", exclude_detail)
                if v.id in exclude
                else availability(v, now, marks.get(v.id, ()), used.get(v.id, 0))
            )
            cands.append(
                Candidate(v.id, v.weight, v.capacity, cap_keys[v.id], why[0] if why else None, why[1] if why else "")
            )
        out.append(RegionCandidates(name, f"{pool_prefix}{name}", tuple(cands)))
    return out


def fallback_owner_of(
    cfg: RoutingConfig, crm: str, region: str | None, reps: Sequence[Rep]
) -> tuple[str | None, str | None]:
    """(the fallback owner's CRM id, None) for a region, or (None, why there is none)."""
    owner = cfg.fallback_owner_for(region or cfg.default_region)
    if owner is None:
        return None, None
    by_id = owner.id_for(crm)
    if by_id:
        return by_id, None
    if owner.email:
        for rep in reps:
            if rep.email.lower() == owner.email and rep.active:
                return rep.id, None
        # no e-mail in the note: decisions are kept in Redis, which holds ids only
        return None, f"the fallback owner in routing.yaml is not an active {crm} user"
    return None, f"no fallback owner configured for {crm}"


# --------------------------------------------------------------------------- the pool


@dataclass(frozen=True, slots=True)
class Slot:
    """An eligible rep offered to a pick. `cap_key` names the rep's capacity counter for their local day."""

    rep_id: str
    weight: int
    capacity: int | None
    cap_key: str


@dataclass(frozen=True, slots=True)
class Turn:
    """One pick, with what is needed to give it back exactly."""

    pool: str
    turn_id: str
    chosen: str
    total: int
    participants: tuple[tuple[str, int], ...]
    cap_key: str
    seq: int


@dataclass(frozen=True, slots=True)
class Pick:
    turn: Turn | None
    at_capacity: tuple[str, ...] = ()


class Pool(Protocol):
    def pick(self, pool: str, slots: Sequence[Slot], turn_id: str) -> Pick:
        """Atomically: drop slots at capacity, smooth-WRR pick among the rest, count one unit of capacity."""
        ...

    def release(self, turn: Turn) -> bool:
        """Give a turn and its capacity unit back (once; later calls return False)."""
        ...


def ordered(slots: Sequence[Slot]) -> list[Slot]:
    """The order both pools walk slots in: by rep id, so ties break the same way on every worker."""
    return sorted(slots, key=lambda s: s.rep_id)


def swrr_step(current: Mapping[str, int], participants: Sequence[tuple[str, int]]) -> tuple[str, dict[str, int]]:
    """One smooth weighted round robin pick: (winner, the participants' new current weights)."""
    total = 0
    best: str | None = None
    best_cur = 0
    new: dict[str, int] = {}
    for rep_id, weight in participants:
        cur = current.get(rep_id, 0) + weight
        new[rep_id] = cur
        total += weight
        if best is None or cur > best_cur:
            best, best_cur = rep_id, cur
    assert best is not None
    new[best] -= total
    return best, new


@dataclass
class MemoryPool:
    """The Python twin of the Redis pool (same order, same arithmetic, same capacity rule)."""

    current: dict[str, dict[str, int]] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    open_turns: set[str] = field(default_factory=set)

    def pick(self, pool: str, slots: Sequence[Slot], turn_id: str) -> Pick:
        full: list[str] = []
        live: list[Slot] = []
        for s in ordered(slots):
            if s.capacity is not None and self.used.get(s.cap_key, 0) >= s.capacity:
                full.append(s.rep_id)
            else:
                live.append(s)
        if not live:
            return Pick(None, tuple(full))
        parts = tuple((s.rep_id, s.weight) for s in live)
        cur = self.current.setdefault(pool, {})
        chosen, new = swrr_step(cur, parts)
        cur.update(new)
        slot = next(s for s in live if s.rep_id == chosen)
        self.used[slot.cap_key] = self.used.get(slot.cap_key, 0) + 1
        self.seq[pool] = self.seq.get(pool, 0) + 1
        self.open_turns.add(turn_id)
        turn = Turn(pool, turn_id, chosen, sum(w for _, w in parts), parts, slot.cap_key, self.seq[pool])
        return Pick(turn, tuple(full))

    def release(self, turn: Turn) -> bool:
        if turn.turn_id not in self.open_turns:
            return False
        self.open_turns.discard(turn.turn_id)
        cur = self.current.setdefault(turn.pool, {})
        cur[turn.chosen] = cur.get(turn.chosen, 0) + turn.total
        for rep_id, weight in turn.participants:
            cur[rep_id] = cur.get(rep_id, 0) - weight
        if self.used.get(turn.cap_key, 0) > 0:
            self.used[turn.cap_key] -= 1
        return True


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True, slots=True)
class Skipped:
    rep_id: str
    region: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A rep of a region with the outcome of the availability check (`skip` None = eligible)."""

    rep_id: str
    weight: int
    capacity: int | None
    cap_key: str
    skip: SkipReason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RegionCandidates:
    region: str
    pool: str
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What routing decided for one lead at one moment, and why. Ids and scores only, no lead names."""

    region: str | None
    at: float
    outcome: Outcome
    chosen: str | None
    chosen_region: str | None = None
    eligible: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    fallback: str | None = None  # None, "region:<name>" or "owner"
    reason: str = "hot"  # why routing ran: hot, re-hot, existing owner, sla, sla escalation
    note: str = ""
    turn: Turn | None = None
    expected_owner: str | None = None  # the owner this decision replaces (None: the lead was unowned)
    notify: bool = True
    sla: bool = False  # the SLA clock runs for the chosen rep
    replayed: bool = False  # returned again by a later call for the same episode: nothing was done this time

    @property
    def rep_id(self) -> str | None:
        return self.chosen

    @property
    def assigned_now(self) -> bool:
        """This call gave the lead an owner (not a replay, not a kept owner)."""
        return self.outcome in ("assigned", "fallback_owner") and not self.replayed

    def summary(self) -> str:
        """One line for the CRM record and `leadscore explain`."""
        when = dt.datetime.fromtimestamp(self.at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        skipped = ", ".join(f"{s.rep_id} {s.reason}" for s in self.skipped)
        counts = f"{len(self.eligible)} eligible, {len(self.skipped)} skipped" + (f": {skipped}" if skipped else "")
        if self.outcome == "assigned":
            via = f" via fallback {self.chosen_region}" if self.fallback else ""
            return f"{when}: {self.reason} lead in {self.region} routed to rep {self.chosen}{via} ({counts})"
        if self.outcome == "fallback_owner":
            return f"{when}: {self.reason} lead in {self.region} sent to fallback owner {self.chosen} ({counts})"
        if self.outcome == "kept_owner":
            return f"{when}: {self.reason} lead kept by owner {self.chosen}" + (f"; {self.note}" if self.note else "")
        if self.outcome == "lost_race":
            return f"{when}: {self.reason} lead in {self.region} was taken by {self.chosen} before routing set an owner"
        return f"{when}: {self.reason} lead in {self.region} {self.note or UNASSIGNED_NOTE} ({counts})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        data = json.loads(text)
        data["skipped"] = tuple(Skipped(**s) for s in data["skipped"])
        data["eligible"] = tuple(data["eligible"])
        if data["turn"] is not None:
            t = data["turn"]
            t["participants"] = tuple((p[0], p[1]) for p in t["participants"])
            data["turn"] = Turn(**t)
        return cls(**data)

    def with_(self, **changes: Any) -> Decision:
        return replace(self, **changes)


def choose(
    pool: Pool,
    attempts: Sequence[RegionCandidates],
    now: float,
    *,
    turn_id: str,
    fallback_owner: str | None = None,
    fallback_problem: str | None = None,
    reason: str = "hot",
    expected_owner: str | None = None,
    sla: bool = True,
) -> Decision:
    """Try the lead's region, then its fallback regions in order, then the fallback owner.

    `attempts[0]` is the lead's own region. The pool picks among each region's
    eligible reps (it may still find some at capacity: another worker took
    the last unit a moment ago). Never silent: with nobody at all, the
    decision says "unassigned" and why.
    """
    region = attempts[0].region if attempts else None
    eligible: list[str] = []
    skipped: list[Skipped] = []
    for i, attempt in enumerate(attempts):
        slots = []
        for c in attempt.candidates:
            if c.skip is None:
                slots.append(Slot(c.rep_id, c.weight, c.capacity, c.cap_key))
            else:
                skipped.append(Skipped(c.rep_id, attempt.region, c.skip, c.detail))
        picked = pool.pick(attempt.pool, slots, turn_id) if slots else Pick(None)
        skipped.extend(
            Skipped(r, attempt.region, "at capacity", "capacity used up a moment ago") for r in picked.at_capacity
        )
        eligible.extend(s.rep_id for s in slots if s.rep_id not in picked.at_capacity)
        if picked.turn is not None:
            return Decision(
                region=region,
                at=now,
                outcome="assigned",
                chosen=picked.turn.chosen,
                chosen_region=attempt.region,
                eligible=tuple(eligible),
                skipped=tuple(skipped),
                fallback=f"region:{attempt.region}" if i else None,
                reason=reason,
                turn=picked.turn,
                expected_owner=expected_owner,
                sla=sla,
            )
    if fallback_owner is not None:
        return Decision(
            region=region,
            at=now,
            outcome="fallback_owner",
            chosen=fallback_owner,
            eligible=tuple(eligible),
            skipped=tuple(skipped),
            fallback="owner",
            reason=reason,
            note="no rep of the region or its fallback regions available",
            expected_owner=expected_owner,
        )
    note = UNASSIGNED_NOTE
    if fallback_problem:
        note = f"unassigned: no rep available and {fallback_problem}"
    return Decision(
        region=region,
        at=now,
        outcome="unassigned",
        chosen=None,
        eligible=tuple(eligible),
        skipped=tuple(skipped),
        reason=reason,
        note=note,
        expected_owner=expected_owner,
        notify=True,
    )


@dataclass(frozen=True, slots=True)
class OwnerPlan:
    """What to do with a hot lead given its current owner: route it, or keep the owner (and maybe notify)."""

    action: Literal["route", "keep"]
    reason: str
    notify: bool = False
    expected_owner: str | None = None
    exclude: tuple[str, ...] = ()


def owner_plan(
    cfg: RoutingConfig,
    owner: str | None,
    previously_assigned: str | None,
    rehot: bool,
    owner_inactive: bool = False,
) -> OwnerPlan:
    """A lead that has an owner keeps it; a re-hot lead we routed before follows `rehot:`.

    `previously_assigned` is the rep routing gave this lead in an earlier hot
    episode; `rehot` is true when this is a later episode than that one.
    An owner who is an inactive CRM user cannot act on the lead: it is routed
    as if unowned, replacing that owner only if they still own it.
    """
    reason = "re-hot" if rehot else "hot"
    if owner is None:
        return OwnerPlan("route", reason)
    if owner_inactive:
        return OwnerPlan("route", "owner inactive", expected_owner=owner)
    if rehot and previously_assigned is not None and owner == previously_assigned:
        if cfg.rehot == "reassign":
            return OwnerPlan("route", "re-hot", expected_owner=owner, exclude=(owner,))
        return OwnerPlan("keep", "re-hot", notify=cfg.rehot == "notify_owner")
    return OwnerPlan("keep", "existing owner", notify=cfg.existing_owner == "notify")


def kept(region: str | None, owner: str, now: float, plan: OwnerPlan) -> Decision:
    note = "owner notified" if plan.notify else "owner not notified (silent)"
    return Decision(
        region=region, at=now, outcome="kept_owner", chosen=owner, reason=plan.reason, note=note, notify=plan.notify
    )
