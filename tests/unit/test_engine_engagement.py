"""Engagement (implicit) rules: activities by kind and attributes, decayed by age, windowed, capped."""

from __future__ import annotations

import pytest
import yaml

from connector.domain import Activity
from connector.engine import ScoreResult, ScoringModel, model_version
from connector.mappings.scoring import ScoringFile

NOW = 1_800_000_000.0  # a frozen "now": every age below is exact
DAY = 86400.0

HEAD = """
model:
  label: test
  half_life_days: 30
  bands: {warm: 40, hot: 70}
  grades: {A: 40, B: 25, C: 10}
  caps: {total: {min: -100, max: 100}}
"""

PRICING = """
engagement:
  - name: Pricing page viewed
    kind: page_view
    where:
      url: {contains: /pricing}
    points: 6
"""


def model(body: str) -> ScoringModel:
    spec = ScoringFile.model_validate(yaml.safe_load(HEAD + body))
    return ScoringModel(spec, model_version(spec))


def view(url: str, days_ago: float = 0.0) -> Activity:
    return Activity("page_view", NOW - days_ago * DAY, {"url": url})


def points(m: ScoringModel, *activities: Activity) -> float:
    result = m.score({}, list(activities), NOW)
    return sum(c.points for c in result.contributions)


def scored(m: ScoringModel, *activities: Activity) -> ScoreResult:
    return m.score({}, list(activities), NOW)


def test_an_activity_of_the_rule_kind_earns_its_points() -> None:
    m = model("engagement:\n  - {name: Meeting, kind: meeting, points: 20, decay: false}\n")
    assert points(m, Activity("meeting", NOW)) == 20


def test_an_activity_of_another_kind_earns_nothing() -> None:
    m = model("engagement:\n  - {name: Meeting, kind: meeting, points: 20, decay: false}\n")
    assert points(m, Activity("call", NOW)) == 0


def test_a_rule_may_list_several_kinds() -> None:
    m = model("engagement:\n  - {name: Event, kind: [webinar_attended, event_attended], points: 5, decay: false}\n")
    assert points(m, Activity("webinar_attended", NOW), Activity("event_attended", NOW)) == 10


def test_a_condition_selects_activities_by_attribute() -> None:
    m = model(PRICING)
    assert points(m, view("https://x.example/en/pricing"), view("https://x.example/blog")) == 6


def test_an_activity_without_the_attribute_does_not_match_a_condition() -> None:
    m = model(PRICING)
    assert points(m, Activity("page_view", NOW, {})) == 0


def test_all_conditions_of_a_rule_must_hold() -> None:
    m = model(
        "engagement:\n"
        "  - name: Webinar click\n"
        "    kind: email_click\n"
        "    where:\n"
        "      url: {contains: /webinar}\n"
        "      campaign: {equals: spring}\n"
        "    points: 3\n"
    )
    both = Activity("email_click", NOW, {"url": "/webinar/1", "campaign": "Spring"})
    one = Activity("email_click", NOW, {"url": "/webinar/1", "campaign": "autumn"})
    assert points(m, both, one) == 3


def test_a_form_title_matching_a_pattern_scores() -> None:
    m = model(
        "engagement:\n  - name: Whitepaper\n    kind: form_submission\n"
        "    where: {form: {matches: 'white ?paper'}}\n    points: 10\n"
    )
    assert points(m, Activity("form_submission", NOW, {"form": "Download the Whitepaper: DAQ basics"})) == 10


def test_an_activity_loses_half_its_points_every_half_life() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    half_life_days: 14"))
    assert points(m, view("/pricing", days_ago=14)) == pytest.approx(3.0)


def test_two_half_lives_leave_a_quarter() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    half_life_days: 14"))
    assert points(m, view("/pricing", days_ago=28)) == pytest.approx(1.5)


def test_a_rule_without_a_half_life_decays_at_the_model_default() -> None:
    m = model(PRICING)
    assert points(m, view("/pricing", days_ago=30)) == pytest.approx(3.0)


def test_a_rule_with_decay_off_keeps_its_points_at_any_age() -> None:
    m = model("engagement:\n  - {name: Bounce, kind: email_bounce, points: -15, decay: false}\n")
    assert points(m, Activity("email_bounce", NOW - 300 * DAY)) == -15


def test_an_activity_dated_in_the_future_counts_as_new_not_more() -> None:
    m = model(PRICING)
    assert points(m, view("/pricing", days_ago=-3)) == 6


def test_future_and_past_activities_count_together() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    half_life_days: 14"))
    assert points(m, view("/pricing", days_ago=-1), view("/pricing", days_ago=14)) == pytest.approx(9.0)


def test_the_window_ignores_older_activities() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    window_days: 90\n    decay: false"))
    assert points(m, view("/pricing", days_ago=91), view("/pricing", days_ago=89)) == 6


def test_the_model_window_applies_to_rules_without_their_own() -> None:
    spec = yaml.safe_load(HEAD + PRICING.replace("points: 6", "points: 6\n    decay: false"))
    spec["model"]["window_days"] = 365
    validated = ScoringFile.model_validate(spec)
    m = ScoringModel(validated, model_version(validated))
    assert points(m, view("/pricing", days_ago=400), view("/pricing", days_ago=10)) == 6


def test_max_points_caps_what_a_rule_gives() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    max_points: 18\n    decay: false"))
    assert points(m, *[view("/pricing") for _ in range(5)]) == 18


def test_max_points_caps_a_negative_rule_in_magnitude() -> None:
    m = model("engagement:\n  - {name: Careers, kind: page_view, points: -10, max_points: 15, decay: false}\n")
    assert points(m, *[view("/careers") for _ in range(3)]) == -15


def test_max_count_counts_only_the_newest_occurrences() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    max_count: 2\n    half_life_days: 14"))
    total = points(m, view("/pricing", days_ago=28), view("/pricing", days_ago=0), view("/pricing", days_ago=14))
    assert total == pytest.approx(6 + 3)


def test_max_count_one_makes_a_penalty_apply_once() -> None:
    m = model("engagement:\n  - {name: Careers, kind: page_view, points: -10, max_count: 1, decay: false}\n")
    assert points(m, *[view("/careers") for _ in range(4)]) == -10


def test_the_detail_says_how_often_and_the_date_of_the_newest() -> None:
    m = model(PRICING)
    result = scored(m, view("/pricing", 2.5), view("/pricing", 9), view("/pricing", 30))
    assert result.contributions[0].detail == "3x, last 2027-01-12"


def test_the_detail_of_a_single_occurrence_is_its_date() -> None:
    m = model(PRICING)
    assert scored(m, view("/pricing", 5)).contributions[0].detail == "2027-01-10"


def test_the_detail_of_an_activity_from_today_is_todays_date() -> None:
    m = model(PRICING)
    assert scored(m, view("/pricing", 0.2)).contributions[0].detail == "2027-01-15"


def test_an_activity_dated_in_the_future_is_shown_with_its_own_date() -> None:
    m = model(PRICING)
    assert scored(m, view("/pricing", -3)).contributions[0].detail == "2027-01-18"


def test_the_detail_does_not_change_from_one_day_to_the_next() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    decay: false").replace("half_life_days: 14\n", ""))
    acts = [view("/pricing", 2.5), view("/pricing", 9)]
    days = {m.score({}, acts, NOW + d * DAY).reasons for d in range(20)}
    assert days == {"+12 Pricing page viewed (2x, last 2027-01-12)"}


def test_the_occurrence_count_is_of_those_inside_the_window() -> None:
    m = model(PRICING.replace("points: 6", "points: 6\n    window_days: 30"))
    assert scored(m, view("/pricing", 1), view("/pricing", 60)).contributions[0].detail == "2027-01-14"


def test_activity_kinds_the_model_does_not_use_are_ignored() -> None:
    m = model(PRICING)
    assert scored(m, Activity("note", NOW, {"body": "called"}), Activity("fax_sent", NOW)).contributions == ()


def test_one_activity_may_feed_several_rules() -> None:
    m = model(PRICING + "  - {name: Visits, kind: page_view, points: 1, decay: false}\n")
    assert sorted(c.rule for c in scored(m, view("/pricing")).contributions) == ["Pricing page viewed", "Visits"]


def test_an_unreadable_activity_is_reported_and_the_rest_still_count() -> None:
    m = model(PRICING)
    bad = Activity("page_view", "yesterday", {"url": "/pricing"})  # type: ignore[arg-type]
    result = scored(m, bad, view("/pricing"))
    assert (result.engagement, result.problems) == (6, ("activity 0 (page_view): time 'yesterday' is not a number",))


def test_an_activity_with_a_nan_time_is_reported() -> None:
    m = model(PRICING)
    result = scored(m, Activity("page_view", float("nan"), {"url": "/pricing"}))
    assert result.problems == ("activity 0 (page_view): time nan is not a number",)


def test_attribute_values_that_are_not_text_do_not_stop_scoring() -> None:
    m = model(PRICING)
    odd = Activity("page_view", NOW, {"url": ["/pricing"]})  # type: ignore[dict-item]
    assert scored(m, odd, view("/pricing")).engagement == 6


def test_the_model_lists_the_activity_kinds_it_reads() -> None:
    m = model(PRICING + "  - {name: Meeting, kind: meeting, points: 20}\n")
    assert m.activity_kinds_used == frozenset({"page_view", "meeting"})


def test_the_same_url_scores_the_same_on_every_lead() -> None:
    m = model(PRICING)
    first = points(m, view("/pricing"))
    assert [points(m, view("/pricing")) for _ in range(3)] == [first] * 3
