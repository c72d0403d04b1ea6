"""The pure routing decision: regions, availability, fallbacks, owners. No Redis, no clock."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from connector.domain import Rep
from connector.mappings.routing import RoutingConfig, parse_routing
from connector.routing.policy import (
    UNASSIGNED_NOTE,
    AwayMark,
    Candidate,
    Decision,
    MemoryPool,
    RegionCandidates,
    availability,
    choose,
    owner_plan,
    rep_view,
    resolve_region,
)


def at(y: int, mo: int, d: int, h: int, mi: int = 0, tz: str = "UTC") -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).timestamp()


def config(**extra: Any) -> RoutingConfig:
    data: dict[str, Any] = {
        "version": 1,
        "countries": {"Germany": ["DE", "Deutschland"], "Norway": ["NO"], "United States": ["US", "USA"]},
        "regions": {
            "US East": {"states": {"United States": ["NY", "MA"]}, "teams": ["US East"]},
            "DACH Software": {"countries": ["Germany"], "fields": {"industry": ["software"]}, "teams": ["DACH SW"]},
            "DACH": {"countries": ["Germany", "Austria", "Switzerland"], "teams": ["DACH"], "fallback": ["Benelux"]},
            "Nordics": {"countries": ["Norway", "Sweden"], "teams": ["Nordics"]},
            "Benelux": {"countries": ["Netherlands", "Belgium"], "teams": ["Benelux"], "reps": ["x@corp.example"]},
            "Rest of World": {"teams": ["Rest of World"]},
        },
        "default_region": "Rest of World",
        "defaults": {"capacity": 3},
    }
    data.update(extra)
    return parse_routing(data)


def rep(rid: str, team: str = "DACH", tz: str = "Europe/Berlin", active: bool = True, email: str = "") -> Rep:
    return Rep(
        id=rid,
        email=email or f"{rid}@corp.example",
        name=f"Rep {rid}",
        region=None,
        active=active,
        timezone=tz,
        teams=(team,),
    )


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    ("profile", "region"),
    [
        ({"country": "Germany"}, "DACH"),
        ({"country": "DE"}, "DACH"),
        ({"country": " deutschland "}, "DACH"),
        ({"country": "Austria", "state": "Tirol"}, "DACH"),
        ({"country": "NO"}, "Nordics"),
        ({"country": "sweden"}, "Nordics"),
        ({"country": "Belgium"}, "Benelux"),
        ({"country": "USA", "state": "NY"}, "US East"),
        ({"country": "United States", "state": "ca"}, "Rest of World"),
        ({"country": "Japan"}, "Rest of World"),
        ({}, "Rest of World"),
        ({"country": None}, "Rest of World"),
    ],
)
def test_a_lead_is_placed_in_the_first_region_that_claims_its_country_or_state(
    profile: dict[str, Any], region: str
) -> None:
    assert resolve_region(config(), profile) == region


def test_a_region_that_also_lists_fields_claims_only_leads_that_match_them() -> None:
    cfg = config()
    assert resolve_region(cfg, {"country": "DE", "industry": "Software"}) == "DACH Software"
    assert resolve_region(cfg, {"country": "DE", "industry": "automotive"}) == "DACH"


def test_reps_belong_to_regions_by_team_by_listed_email_or_by_override() -> None:
    cfg = config(reps={"moved@corp.example": {"regions": ["Nordics", "DACH"]}})
    assert rep_view(cfg, rep("a", team="dach")).regions == ("DACH",)
    assert rep_view(cfg, rep("x", team="Sales")).regions == ("Benelux",)
    assert rep_view(cfg, rep("m", team="Benelux", email="Moved@corp.example")).regions == ("Nordics", "DACH")
    # a Salesforce adapter may put the Division in Rep.region instead of teams
    sf = Rep(id="005", email="s@corp.example", name="S", region="Nordics", teams=())
    assert rep_view(cfg, sf).regions == ("Nordics",)


# --------------------------------------------------------------------------- availability


def test_working_hours_are_read_in_each_reps_own_time_zone() -> None:
    cfg = config()
    berlin, new_york = rep_view(cfg, rep("b")), rep_view(cfg, rep("n", tz="America/New_York"))
    monday_9_berlin = at(2026, 3, 2, 9, 0, "Europe/Berlin")  # 03:00 in New York
    assert availability(berlin, monday_9_berlin) is None
    assert availability(new_york, monday_9_berlin) == (
        "outside hours",
        "Mon 03:00 America/New_York; works mon,tue,wed,thu,fri 08:00-18:00",
    )
    monday_9_new_york = at(2026, 3, 2, 9, 0, "America/New_York")  # 15:00 in Berlin
    assert availability(berlin, monday_9_new_york) is None
    assert availability(new_york, monday_9_new_york) is None


def test_the_working_day_starts_at_start_and_ends_just_before_end() -> None:
    view = rep_view(config(), rep("b"))
    assert availability(view, at(2026, 3, 2, 7, 59, "Europe/Berlin")) is not None
    assert availability(view, at(2026, 3, 2, 8, 0, "Europe/Berlin")) is None
    assert availability(view, at(2026, 3, 2, 17, 59, "Europe/Berlin")) is None
    assert availability(view, at(2026, 3, 2, 18, 0, "Europe/Berlin")) is not None


def test_weekends_are_outside_hours_unless_configured() -> None:
    saturday = at(2026, 3, 7, 10, 0, "Europe/Berlin")
    assert availability(rep_view(config(), rep("b")), saturday) is not None
    cfg = config(reps={"b@corp.example": {"hours": {"days": ["sat", "sun"], "start": "10:00", "end": "14:00"}}})
    assert availability(rep_view(cfg, rep("b")), saturday) is None


def test_hours_follow_daylight_saving_time() -> None:
    london = rep_view(config(), rep("l", tz="Europe/London"))
    # 07:30 UTC is 07:30 in London in winter (outside) and 08:30 in summer (inside)
    assert availability(london, at(2026, 3, 2, 7, 30)) is not None
    assert availability(london, at(2026, 7, 6, 7, 30)) is None


def test_an_out_of_office_period_from_the_file_covers_both_days_in_the_reps_zone() -> None:
    cfg = config(reps={"b@corp.example": {"away": [{"from": dt.date(2026, 3, 2), "until": dt.date(2026, 3, 3)}]}})
    view = rep_view(cfg, rep("b"))
    assert availability(view, at(2026, 3, 2, 9, 0, "Europe/Berlin")) == (
        "away",
        "out of office until 2026-03-03 (routing.yaml)",
    )
    assert availability(view, at(2026, 3, 3, 17, 0, "Europe/Berlin"))[0] == "away"  # type: ignore[index]
    assert availability(view, at(2026, 3, 4, 8, 0, "Europe/Berlin")) is None


def test_an_away_mark_with_a_date_lasts_through_that_day_and_with_a_time_until_that_moment() -> None:
    view = rep_view(config(), rep("b"))
    day = [AwayMark(dt.date(2026, 3, 2))]
    assert availability(view, at(2026, 3, 2, 17, 0, "Europe/Berlin"), day) == ("away", "away until 2026-03-02")
    assert availability(view, at(2026, 3, 3, 8, 0, "Europe/Berlin"), day) is None
    instant = [AwayMark(dt.datetime(2026, 3, 2, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")))]
    assert availability(view, at(2026, 3, 2, 11, 59, "Europe/Berlin"), instant) is not None
    assert availability(view, at(2026, 3, 2, 12, 0, "Europe/Berlin"), instant) is None


def test_inactive_and_excluded_reps_are_never_available() -> None:
    cfg = config(reps={"e@corp.example": {"exclude": True}})
    now = at(2026, 3, 2, 10, 0, "Europe/Berlin")
    assert availability(rep_view(cfg, rep("i", active=False)), now) == ("inactive", "inactive CRM user")
    assert availability(rep_view(cfg, rep("e")), now) == ("excluded", "excluded in routing.yaml")


def test_capacity_counts_per_day_in_the_reps_own_time_zone() -> None:
    cfg = config()
    berlin, new_york = rep_view(cfg, rep("b")), rep_view(cfg, rep("n", tz="America/New_York"))
    late = at(2026, 3, 3, 2, 0)  # Tuesday in Berlin, still Monday evening in New York
    assert (berlin.day(late), new_york.day(late)) == ("2026-03-03", "2026-03-02")
    noon = at(2026, 3, 2, 12, 0, "Europe/Berlin")
    assert availability(berlin, noon, used_today=2) is None
    assert availability(berlin, noon, used_today=3) == ("at capacity", "3 of 3 today")


# --------------------------------------------------------------------------- decisions


def cands(region: str, *specs: tuple[str, str | None]) -> RegionCandidates:
    return RegionCandidates(
        region,
        f"hubspot:{region}",
        tuple(Candidate(r, 1, None, f"hubspot:{r}:2026-03-02", skip, "") for r, skip in specs),  # type: ignore[arg-type]
    )


NOW = at(2026, 3, 2, 10, 0, "Europe/Berlin")


def test_the_first_region_with_an_available_rep_wins() -> None:
    d = choose(MemoryPool(), [cands("DACH", ("a", "away"), ("b", None))], NOW, turn_id="t1")
    assert (d.outcome, d.chosen, d.chosen_region, d.fallback) == ("assigned", "b", "DACH", None)
    assert d.eligible == ("b",)
    assert [(s.rep_id, s.reason) for s in d.skipped] == [("a", "away")]


def test_with_nobody_available_the_next_region_in_the_configured_order_is_tried() -> None:
    d = choose(
        MemoryPool(),
        [cands("DACH", ("a", "outside hours")), cands("Benelux", ("c", "inactive")), cands("UK&I", ("d", None))],
        NOW,
        turn_id="t1",
        fallback_owner="queue",
    )
    assert (d.region, d.outcome, d.chosen, d.chosen_region, d.fallback) == (
        "DACH",
        "assigned",
        "d",
        "UK&I",
        "region:UK&I",
    )
    assert [(s.rep_id, s.region, s.reason) for s in d.skipped] == [
        ("a", "DACH", "outside hours"),
        ("c", "Benelux", "inactive"),
    ]


def test_with_nobody_in_any_region_the_fallback_owner_gets_the_lead() -> None:
    d = choose(MemoryPool(), [cands("DACH", ("a", "away"))], NOW, turn_id="t1", fallback_owner="queue")
    assert (d.outcome, d.chosen, d.fallback, d.sla) == ("fallback_owner", "queue", "owner", False)


def test_with_nobody_at_all_and_no_fallback_owner_the_decision_says_so() -> None:
    d = choose(MemoryPool(), [cands("DACH", ("a", "away"))], NOW, turn_id="t1")
    assert (d.outcome, d.chosen) == ("unassigned", None)
    assert d.note == UNASSIGNED_NOTE == "unassigned: no rep available and no fallback owner configured"
    assert "unassigned: no rep available and no fallback owner configured" in d.summary()


def test_a_region_with_no_reps_at_all_falls_through_too() -> None:
    d = choose(MemoryPool(), [cands("Nordics"), cands("DACH", ("a", None))], NOW, turn_id="t1")
    assert (d.chosen, d.fallback) == ("a", "region:DACH")


def test_a_decision_survives_a_round_trip_through_json_and_summarises_in_one_line() -> None:
    d = choose(MemoryPool(), [cands("DACH", ("a", "away"), ("b", None))], NOW, turn_id="t1")
    assert Decision.from_json(d.to_json()) == d
    assert d.summary() == "2026-03-02 09:00 UTC: hot lead in DACH routed to rep b (1 eligible, 1 skipped: a away)"
    assert "\n" not in d.summary()


# --------------------------------------------------------------------------- owners


def test_a_lead_that_already_has_an_owner_keeps_it_and_the_owner_is_told() -> None:
    plan = owner_plan(config(), owner="o1", previously_assigned=None, rehot=False)
    assert (plan.action, plan.notify, plan.reason) == ("keep", True, "existing owner")
    silent = owner_plan(config(existing_owner="silent"), owner="o1", previously_assigned=None, rehot=False)
    assert (silent.action, silent.notify) == ("keep", False)


def test_an_unowned_lead_is_routed() -> None:
    assert owner_plan(config(), owner=None, previously_assigned=None, rehot=False).action == "route"


def test_a_lead_owned_by_an_inactive_user_is_routed_replacing_only_that_owner() -> None:
    plan = owner_plan(config(), owner="gone", previously_assigned=None, rehot=False, owner_inactive=True)
    assert (plan.action, plan.reason, plan.expected_owner) == ("route", "owner inactive", "gone")


def test_by_default_a_re_hot_lead_stays_with_its_owner_who_is_notified() -> None:
    plan = owner_plan(config(), owner="o1", previously_assigned="o1", rehot=True)
    assert (plan.action, plan.notify, plan.reason) == ("keep", True, "re-hot")


def test_re_hot_can_be_configured_to_reassign_or_to_stay_silent() -> None:
    plan = owner_plan(config(rehot="reassign"), owner="o1", previously_assigned="o1", rehot=True)
    assert (plan.action, plan.expected_owner, plan.exclude) == ("route", "o1", ("o1",))
    silent = owner_plan(config(rehot="silent"), owner="o1", previously_assigned="o1", rehot=True)
    assert (silent.action, silent.notify) == ("keep", False)


def test_a_re_hot_lead_someone_moved_by_hand_is_treated_as_an_existing_owners_lead() -> None:
    plan = owner_plan(config(rehot="reassign"), owner="o2", previously_assigned="o1", rehot=True)
    assert (plan.action, plan.reason) == ("keep", "existing owner")
