"""The routing summary the demo prints: the busiest working hour, and the same leads routed at another moment."""

from __future__ import annotations

import datetime as dt
from typing import Any

from connector.domain import Rep
from connector.mappings.routing import parse_routing
from connector.routing.summary import busiest_hour, replay, routable

WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00"}


def config(**extra: Any) -> Any:
    data: dict[str, Any] = {
        "version": 1,
        "regions": {"DACH": {"countries": ["Germany"], "teams": ["DACH"], "fallback": ["Americas"]},
                    "Americas": {"countries": ["United States"], "teams": ["Americas"]}},
        "default_region": "DACH",
        "defaults": {"hours": WEEKDAYS, "capacity": 1},
        "fallback_owner": "queue@corp.example",
    }
    data.update(extra)
    return parse_routing(data)


def rep(rid: str, team: str, tz: str) -> Rep:
    return Rep(id=rid, email=f"{rid}@corp.example", name=f"Rep {rid}", region=None, active=True, timezone=tz,
               teams=(team,))  # fmt: skip


REPS = [rep("b1", "DACH", "Europe/Berlin"), rep("n1", "Americas", "America/New_York"),
        rep("queue", "Ops", "UTC")]  # fmt: skip


def test_the_busiest_hour_is_the_first_one_when_both_sides_of_the_ocean_work() -> None:
    saturday = dt.datetime(2026, 12, 5, 3, 0, tzinfo=dt.UTC).timestamp()
    at, n = busiest_hour(routable(config(), REPS), saturday)
    # Monday: Berlin works 07:00-17:00 UTC, New York 13:00-23:00 UTC
    assert (dt.datetime.fromtimestamp(at, dt.UTC), n) == (dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.UTC), 2)


def test_replayed_at_another_moment_the_leads_are_counted_by_where_they_would_have_gone() -> None:
    monday_noon = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC).timestamp()  # Berlin works, New York sleeps
    got = replay(config(), "hubspot", REPS, ["DACH", "DACH", "Americas"], monday_noon)
    assert dict(got.outcomes) == {"own region": 1, "fallback owner": 2}  # capacity 1: the second DACH lead too
    assert got.sentence() == (
        "At the real time (Mon 2026-12-07 12:00 UTC) 1 of 2 reps are in working hours: 1 of the 3 hot leads "
        "would have gone to a rep of their region, 2 to the fallback owner Rep queue."
    )
    night = replay(config(), "hubspot", REPS, ["DACH"], monday_noon - 12 * 3600)
    assert night.sentence() == (
        "At the real time (Mon 2026-12-07 00:00 UTC) nobody is in working hours: the hot lead would have gone to "
        "the fallback owner Rep queue."
    )
