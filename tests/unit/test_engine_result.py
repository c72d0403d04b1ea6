"""From contributions to a result: caps, weights, bands, grades, BANT, reasons, write-back, version."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.domain import LEARNED_FIELDS, WRITE_FIELDS, Activity
from connector.engine import ScoreResult, ScoringModel, load_scoring, model_version
from connector.mappings.scoring import ScoringFile

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ROOT = Path(__file__).resolve().parents[2]

FIT = """
fit:
  - {name: Decision-maker title, field: job_title, words: [ceo, cto], points: 25, bant: authority}
  - {name: Target industry, field: industry, words: [automotive], points: 15}
  - {name: Budget confirmed, field: budget, words: [approved], points: 10, bant: budget}
  - {name: Free-mail address, field: email, domain_in: [gmail.com], points: -10}
engagement:
  - {name: Meeting held, kind: meeting, points: 20, decay: false, bant: need}
  - {name: Careers page visit, kind: page_view, where: {url: {contains: /careers}}, points: -10, decay: false}
  - {name: Email opened, kind: email_open, points: 0.4, decay: false}
"""


def model(settings: dict[str, Any] | None = None, rules: str = FIT) -> ScoringModel:
    data = yaml.safe_load(rules)
    data["model"] = {"label": "test", "bands": {"warm": 40, "hot": 70}, "grades": {"A": 40, "B": 25, "C": 10}}
    data["model"].update(settings or {})
    spec = ScoringFile.model_validate(data)
    return ScoringModel(spec, model_version(spec))


CEO = {"job_title": "CEO", "industry": "Automotive", "budget": "approved"}  # fit 50


def meetings(n: int) -> list[Activity]:
    return [Activity("meeting", NOW - 3600) for _ in range(n)]


def score(m: ScoringModel, profile: dict[str, Any], activities: list[Activity] | None = None) -> ScoreResult:
    return m.score(profile, activities or [], NOW)


def test_the_total_is_fit_plus_engagement() -> None:
    result = score(model(), CEO, meetings(1))
    assert (result.fit, result.engagement, result.score) == (50, 20, 70)


def test_the_fit_cap_holds_fit_at_its_max() -> None:
    result = score(model({"caps": {"fit": {"max": 40}}}), CEO)
    assert result.fit == 40


def test_a_capped_group_still_lists_each_rule_with_its_own_points() -> None:
    result = score(model({"caps": {"fit": {"max": 40}}}), CEO)
    assert sum(c.points for c in result.contributions) == 50


def test_the_engagement_floor_limits_how_far_negatives_pull_down() -> None:
    careers = [Activity("page_view", NOW, {"url": "/careers"}) for _ in range(5)]
    result = score(model({"caps": {"engagement": {"min": -20}}}), {}, careers)
    assert result.engagement == -20


def test_weights_scale_fit_and_engagement_in_the_total() -> None:
    result = score(model({"weights": {"fit": 0.5, "engagement": 2}}), CEO, meetings(1))
    assert result.score == 25 + 40


def test_the_total_is_capped_at_its_max() -> None:
    assert score(model(), CEO, meetings(5)).score == 100


def test_the_total_is_floored_at_its_min() -> None:
    assert score(model(), {"email": "kid@gmail.com"}).score == 0


@pytest.mark.parametrize(
    ("profile", "band"),
    [
        ({"job_title": "CEO", "industry": "automotive"}, "warm"),  # 40: warm starts at warm
        ({"job_title": "CEO"}, "cold"),  # 25
        ({"job_title": "CEO", "industry": "automotive", "budget": "approved"}, "warm"),  # 50
    ],
)
def test_the_band_follows_the_thresholds(profile: dict[str, Any], band: str) -> None:
    assert score(model(), profile).band == band


def test_a_score_at_the_hot_threshold_is_hot() -> None:
    assert score(model(), CEO, meetings(1)).band == "hot"


@pytest.mark.parametrize(
    ("profile", "grade"),
    [
        (CEO, "A"),
        ({"job_title": "CTO"}, "B"),
        ({"industry": "automotive"}, "C"),
        ({"budget": "approved"}, "C"),
        ({}, "D"),
        ({"email": "a@gmail.com"}, "D"),
    ],
)
def test_the_grade_follows_the_fit_thresholds(profile: dict[str, Any], grade: str) -> None:
    assert score(model(), profile).grade == grade


def test_bant_sub_scores_sum_the_points_of_tagged_rules() -> None:
    result = score(model(), CEO, meetings(2))
    assert result.bant == {"budget": 10, "authority": 25, "need": 40, "timeline": 0}


def test_bant_lists_all_four_criteria_even_when_none_matched() -> None:
    assert score(model(), {}).bant == {"budget": 0, "authority": 0, "need": 0, "timeline": 0}


def test_contributions_are_ordered_by_absolute_points() -> None:
    careers = [Activity("page_view", NOW, {"url": "/careers"})]
    result = score(model(), {"job_title": "CEO", "industry": "automotive"}, careers)
    assert [c.points for c in result.contributions] == [25, 15, -10]


def test_contributions_of_equal_weight_keep_the_file_order() -> None:
    rules = (
        "fit:\n"
        "  - {name: B, field: city, present: true, points: 5}\n"
        "  - {name: A, field: state, present: true, points: -5}\n"
    )
    result = score(model(rules=rules), {"city": "Ulm", "state": "BW"})
    assert [c.rule for c in result.contributions] == ["B", "A"]


def test_a_contribution_names_its_rule_group_and_bant_tag() -> None:
    first = score(model(), {"job_title": "CTO"}).contributions[0]
    assert (first.rule, first.group, first.points, first.detail, first.bant) == (
        "Decision-maker title",
        "fit",
        25,
        "CTO",
        "authority",
    )


def test_the_reasons_list_the_top_contributions_for_a_rep() -> None:
    careers = [Activity("page_view", NOW - 2 * 86400, {"url": "/careers"})]
    result = score(model(), {"job_title": "CEO", "industry": "Automotive"}, [*meetings(2), *careers])
    assert result.reasons == (
        "+40 Meeting held (2x, last 2027-01-15); +25 Decision-maker title (CEO); "
        "+15 Target industry (Automotive); -10 Careers page visit (2027-01-13)"
    )


def test_the_reasons_leave_out_rules_worth_less_than_half_a_point() -> None:
    result = score(model(), {"job_title": "CEO"}, [Activity("email_open", NOW)])
    assert result.reasons == "+25 Decision-maker title (CEO)"


def test_the_reasons_say_so_when_nothing_scored() -> None:
    assert score(model(), {}).reasons == "No scoring signals yet"


def test_the_reasons_stay_under_480_characters() -> None:
    rules = "fit:\n" + "".join(
        f"  - {{name: A rather long rule name number {i:02d}, field: city, present: true, points: {i + 1}}}\n"
        for i in range(40)
    )
    result = score(model(rules=rules), {"city": "Some city with a long name, really"})
    assert 400 < len(result.reasons) <= 480


def test_the_reasons_are_whole_phrases_when_shortened() -> None:
    rules = "fit:\n" + "".join(
        f"  - {{name: Rule {i:02d}, field: city, present: true, points: {i + 1}}}\n" for i in range(60)
    )
    result = score(model(rules=rules), {"city": "Ulm"})
    assert all(re.fullmatch(r"[+-]\d+ Rule \d\d \(Ulm\)", p) for p in result.reasons.split("; "))


def test_write_values_has_exactly_the_write_fields() -> None:
    # the learned probability and its factors come from connector.sync, not from the rules
    assert tuple(score(model(), CEO).write_values(NOW)) == tuple(f for f in WRITE_FIELDS if f not in LEARNED_FIELDS)


def test_write_values_are_strings_a_crm_takes() -> None:
    values = score(model(), CEO, meetings(1)).write_values(NOW)
    assert {k: values[k] for k in ("score", "fit", "engagement", "band", "grade", "scored_at")} == {
        "score": "70",
        "fit": "50",
        "engagement": "20",
        "band": "hot",
        "grade": "A",
        "scored_at": "2027-01-15T08:00:00Z",
    }


def test_every_result_carries_the_model_version() -> None:
    m = model()
    assert score(m, CEO).write_values(NOW)["model"] == m.version == score(m, {}).model_version


def test_the_model_version_is_the_label_and_a_short_hash() -> None:
    assert re.fullmatch(r"test\+[0-9a-f]{8}", model().version)


def test_the_same_content_gives_the_same_version(tmp_path: Path) -> None:
    text = (ROOT / "mappings" / "scoring.yaml").read_text(encoding="utf-8")
    (tmp_path / "a.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(text, encoding="utf-8")
    assert load_scoring(tmp_path / "a.yaml").version == load_scoring(tmp_path / "b.yaml").version


def test_comments_and_layout_do_not_change_the_version(tmp_path: Path) -> None:
    text = (ROOT / "mappings" / "scoring.yaml").read_text(encoding="utf-8")
    (tmp_path / "a.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "b.yaml").write_text("# a new comment\n" + text.replace("# DACH\n", "\n"), encoding="utf-8")
    assert load_scoring(tmp_path / "a.yaml").version == load_scoring(tmp_path / "b.yaml").version


def test_changed_content_gives_a_different_version(tmp_path: Path) -> None:
    text = (ROOT / "mappings" / "scoring.yaml").read_text(encoding="utf-8")
    (tmp_path / "a.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(text.replace("points: 25", "points: 26", 1), encoding="utf-8")
    assert load_scoring(tmp_path / "a.yaml").version != load_scoring(tmp_path / "b.yaml").version


def test_the_hot_threshold_is_the_models() -> None:
    assert model({"bands": {"warm": 30, "hot": 60}}).hot_threshold == 60


def test_the_explanation_shows_the_score_and_each_rule_point_by_point() -> None:
    text = model().explain({"job_title": "CEO", "employees": "50-100"}, meetings(1), NOW)
    assert [line.strip() for line in text.splitlines() if line.strip().startswith(("+", "-", "Score"))] == [
        "Score 45 (warm; warm from 40, hot from 70)",
        "+25.0  Decision-maker title (CEO) [authority]  -- 25 when job_title has one of the words",
        "+20.0  Meeting held (2027-01-15) [need]  -- 20 each, no decay",
    ]


def test_the_explanation_says_when_a_group_cap_held_the_sum() -> None:
    text = model({"caps": {"fit": {"max": 40}}}).explain(CEO, [], NOW)
    assert "  rules sum to 50.0; held to 40 (fit max 40)" in text.splitlines()


def test_the_explanation_lists_what_could_not_be_read() -> None:
    rules = "fit:\n  - {name: Size, field: employees, range: {min: 50}, points: 5}\n"
    text = model(rules=rules).explain({"employees": "50-100"}, [], NOW)
    assert text.splitlines()[-2:] == ["Unreadable, scored without:", "  employees: '50-100' is not a number"]


def test_the_default_model_scores_a_strong_lead_hot() -> None:
    m = load_scoring(ROOT / "mappings" / "scoring.yaml")
    profile = {"job_title": "Head of Test", "industry": "Automotive", "employees": "2,400", "country": "Germany"}
    activities = [
        Activity("form_submission", NOW - 2 * 86400, {"form": "Request a demo"}),
        Activity("page_view", NOW - 86400, {"url": "https://example.com/en/pricing"}),
    ]
    assert score(m, profile, activities).band == "hot"


def test_the_default_model_scores_a_student_on_free_mail_cold() -> None:
    m = load_scoring(ROOT / "mappings" / "scoring.yaml")
    profile = {"job_title": "Working student", "email": "kim@gmail.com", "country": "DE"}
    activities = [Activity("download", NOW - 86400, {"title": "Whitepaper: DAQ basics"})]
    result = score(m, profile, activities)
    assert (result.band, result.grade) == ("cold", "D")


def test_a_lead_is_rewritten_when_a_score_field_changes() -> None:
    from connector.engine import must_write

    old = {"score": "50", "fit": "30", "engagement": "20", "band": "warm", "grade": "B", "model": "m+1",
           "reasons": "+20 Meeting held (2026-11-14); +30 CEO (CEO)"}
    assert must_write({**old, "score": "51", "scored_at": "x"}, old)
    assert must_write({**old, "model": "m+2", "scored_at": "x"}, old)
    assert not must_write({**old, "scored_at": "x"}, old)


def test_reasons_whose_only_change_is_a_decayed_rules_points_are_not_rewritten_on_their_own() -> None:
    from connector.engine import must_write

    old = {"score": "50", "fit": "30", "engagement": "20", "band": "warm", "grade": "B", "model": "m+1",
           "reasons": "+6 Pricing page viewed (2x, last 2026-11-14); +3 Opened an email (2026-11-01)"}
    decayed = {**old, "reasons": "+3 Opened an email (2026-11-01); +5 Pricing page viewed (2x, last 2026-11-14)"}
    new_count = {**old, "reasons": "+6 Pricing page viewed (3x, last 2026-11-20); +3 Opened an email (2026-11-01)"}
    gone = {**old, "reasons": "+6 Pricing page viewed (2x, last 2026-11-14)"}
    assert not must_write(decayed, old)
    assert must_write(new_count, old)
    assert must_write(gone, old)
    assert must_write(old, {k: v for k, v in old.items() if k != "reasons"})  # nothing written yet
