"""What a model change would do, without writing anything: `leadscore preview FILE`.

Both models score the same leads (the current ones, read as a full sync reads them, at the
same `now`); nothing is written to the CRM or to Redis. Shown:

- the band move matrix (rows: band today, columns: band with the proposed model);
- the distribution of bands, grades and scores before and after;
- the leads that would newly be hot, per region (routing.yaml's regions, as routing
  resolves them) and per rep: a lead with an owner keeps it (routing's `existing_owner`
  policy); the others are shared among the region's active, not excluded reps by the same
  smooth weighted round robin routing uses, from an empty pool, ignoring working hours
  and absences (they depend on when each lead turns hot), with each rep's daily capacity
  beside their share;
- the top movers, with their reasons before and after.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.domain import Lead, Rep
from connector.engine import ScoreResult, ScoringModel
from connector.learn.evaluate import BANDS, GRADES
from connector.mappings.routing import RoutingConfig
from connector.routing.policy import MemoryPool, Slot, rep_view, resolve_region

if TYPE_CHECKING:
    from connector.bootstrap import Runtime
    from connector.domain import CrmName

TOP_MOVERS = 10


@dataclass(slots=True)
class Mover:
    key: str
    before: ScoreResult
    after: ScoreResult

    @property
    def delta(self) -> int:
        return self.after.score - self.before.score


@dataclass(slots=True)
class RegionPlan:
    region: str
    new_hot: int = 0
    no_longer_hot: int = 0
    kept_owner: int = 0  # new hot leads that already have an owner
    to_route: int = 0
    per_rep: dict[str, int] = field(default_factory=dict)  # rep id -> new hot leads
    capacity: dict[str, int | None] = field(default_factory=dict)  # rep id -> daily capacity
    names: dict[str, str] = field(default_factory=dict)  # rep id -> name, for the terminal only
    unrouted: int = 0  # no active rep serves the region


@dataclass(slots=True)
class Preview:
    crm: str
    now: float
    current: str
    proposed: str
    leads: int
    moves: dict[str, dict[str, int]]
    bands: dict[str, dict[str, int]]  # "before"/"after" -> band -> leads
    grades: dict[str, dict[str, int]]
    scores: dict[str, dict[str, float]]  # "before"/"after" -> mean, p50, p90
    regions: list[RegionPlan]
    movers: list[Mover]

    @property
    def new_hot(self) -> int:
        return sum(r.new_hot for r in self.regions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "crm": self.crm, "now": self.now, "current_model": self.current, "proposed_model": self.proposed,
            "leads": self.leads, "moves": self.moves, "bands": self.bands, "grades": self.grades,
            "scores": self.scores, "new_hot": self.new_hot,
            "regions": {r.region: {"new_hot": r.new_hot, "no_longer_hot": r.no_longer_hot, "kept_owner": r.kept_owner,
                                   "to_route": r.to_route, "per_rep": r.per_rep, "unrouted": r.unrouted}
                        for r in self.regions},
            "movers": [{"key": m.key, "before": m.before.score, "after": m.after.score, "band_before": m.before.band,
                        "band_after": m.after.band} for m in self.movers],
        }


def _quantile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _scores(results: Sequence[ScoreResult]) -> dict[str, float]:
    values = sorted(r.score for r in results)
    mean = sum(values) / len(values) if values else 0.0
    return {"mean": round(mean, 1), "p50": _quantile(values, 0.5), "p90": _quantile(values, 0.9)}


def share_by_round_robin(region: str, leads: int, reps: Sequence[Rep], cfg: RoutingConfig) -> dict[str, int]:
    """How `leads` new hot leads of a region would be shared by its active, not excluded reps
    (routing's smooth weighted round robin, from an empty pool)."""
    views = [v for v in (rep_view(cfg, r) for r in reps) if region in v.regions and v.rep.active and not v.excluded]
    if not views or leads == 0:
        return {}
    pool = MemoryPool()
    slots = [Slot(v.id, v.weight, None, f"preview:{v.id}") for v in views]
    out: Counter[str] = Counter()
    for i in range(leads):
        pick = pool.pick(region, slots, f"preview-{i}")
        assert pick.turn is not None  # no capacity in the preview's slots
        out[pick.turn.chosen] += 1
    return dict(out)


def compare(
    current: ScoringModel,
    proposed: ScoringModel,
    leads: Sequence[Lead],
    now: float,
    *,
    crm: str,
    routing: RoutingConfig,
    reps: Sequence[Rep],
    top: int = TOP_MOVERS,
) -> Preview:
    """Score every lead with both models at `now` and say what would change."""
    before = [current.score(lead.profile, lead.activities, now) for lead in leads]
    after = [proposed.score(lead.profile, lead.activities, now) for lead in leads]
    moves = {b: dict.fromkeys(BANDS, 0) for b in BANDS}
    regions: dict[str, RegionPlan] = {name: RegionPlan(name) for name in routing.regions}
    for lead, b, a in zip(leads, before, after, strict=True):
        moves[b.band][a.band] += 1
        if (a.band == "hot") == (b.band == "hot"):
            continue
        region = resolve_region(routing, lead.profile)
        plan = regions.setdefault(region, RegionPlan(region))
        if a.band == "hot":
            plan.new_hot += 1
            if lead.owner_id is not None:
                plan.kept_owner += 1
            else:
                plan.to_route += 1
        else:
            plan.no_longer_hot += 1
    by_id = {r.id: r for r in reps}
    for plan in regions.values():
        plan.per_rep = share_by_round_robin(plan.region, plan.to_route, reps, routing)
        plan.unrouted = plan.to_route - sum(plan.per_rep.values())
        for rep_id in plan.per_rep:
            plan.capacity[rep_id] = rep_view(routing, by_id[rep_id]).capacity
            plan.names[rep_id] = by_id[rep_id].name or by_id[rep_id].email or rep_id
    order = sorted(range(len(leads)), key=lambda i: (-abs(after[i].score - before[i].score), leads[i].key))
    movers = [Mover(leads[i].key, before[i], after[i]) for i in order[:top] if after[i].score != before[i].score]
    return Preview(
        crm=crm, now=now, current=current.version, proposed=proposed.version, leads=len(leads), moves=moves,
        bands={"before": dict(Counter(r.band for r in before)), "after": dict(Counter(r.band for r in after))},
        grades={"before": dict(Counter(r.grade for r in before)), "after": dict(Counter(r.grade for r in after))},
        scores={"before": _scores(before), "after": _scores(after)},
        regions=[p for p in regions.values() if p.new_hot or p.no_longer_hot],
        movers=movers,
    )


def read_current_leads(
    rt: Runtime, crm: CrmName, now: float, progress: Callable[[int], None] | None = None
) -> list[Lead]:
    """Every record a full sync scores, with its activities, read and never written."""
    adapter = rt.adapter(crm)
    leads: list[Lead] = []
    for stream in adapter.streams:
        cursor: str | None = None
        while True:
            page = adapter.read_page(stream, cursor, since=None)
            if page.leads:
                adapter.load_activities(page.leads, now)
                leads.extend(page.leads)
                if progress is not None:
                    progress(len(leads))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return leads


# --------------------------------------------------------------------------- showing


def _capacity(n: int, capacity: int | None) -> str:
    if not capacity:
        return ""
    return f" (capacity {capacity}/day" + (", more than a day's worth)" if n > capacity else ")")


def show(p: Preview, *, plain: bool) -> None:
    from connector.console import table

    print(f"{p.crm}: {p.leads:,} current leads scored at the same moment; nothing was written.")
    print(f"current  {p.current}\nproposed {p.proposed}")
    table("band moves (rows: today, columns: proposed)", ["today \\ proposed", *BANDS, "total"],
          [[b, *(p.moves[b][a] for a in BANDS), sum(p.moves[b].values())] for b in BANDS], plain=plain)
    table("distribution", ["", *BANDS, *GRADES, "mean score", "median", "90th pct"],
          [[when, *(p.bands[when].get(b, 0) for b in BANDS), *(p.grades[when].get(g, 0) for g in GRADES),
            p.scores[when]["mean"], p.scores[when]["p50"], p.scores[when]["p90"]] for when in ("before", "after")],
          plain=plain)
    if p.regions:
        rows = []
        for r in p.regions:
            reps = ", ".join(
                f"{r.names[rid]} +{n}" + _capacity(n, r.capacity[rid])
                for rid, n in sorted(r.per_rep.items(), key=lambda kv: (-kv[1], r.names[kv[0]]))
            ) or ("-" if not r.unrouted else f"{r.unrouted} with no active rep: fallback")
            rows.append([r.region, r.new_hot, r.kept_owner, r.to_route, r.no_longer_hot, reps])
        table("new hot leads for routing", ["region", "new hot", "keep their owner", "to route", "no longer hot",
                                            "per rep (round robin)"], rows, plain=plain)
    else:
        print("new hot leads for routing: none")
    print("(a lead with an owner keeps it; the rest go round robin to the region's active reps; working hours and "
          "absences decide the real order when each lead turns hot)")
    if p.movers:
        table(f"top {len(p.movers)} movers", ["lead", "score", "band", "reasons today", "reasons proposed"],
              [[m.key, f"{m.before.score} -> {m.after.score} ({m.delta:+d})", f"{m.before.band} -> {m.after.band}",
                m.before.reasons, m.after.reasons] for m in p.movers], plain=plain)
