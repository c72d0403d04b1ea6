"""Fit (explicit) rules: one profile field, one test, points when it passes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from connector.engine import ScoreResult, ScoringModel, model_version
from connector.mappings.scoring import ScoringFile

NOW = 1_800_000_000.0

HEAD = """
model:
  label: test
  bands: {warm: 40, hot: 70}
  grades: {A: 40, B: 25, C: 10}
  caps: {total: {min: -100, max: 100}}
"""


def model(body: str) -> ScoringModel:
    spec = ScoringFile.model_validate(yaml.safe_load(HEAD + body))
    return ScoringModel(spec, model_version(spec))


def one_rule(test: str, field: str, points: int = 10, extra: str = "") -> ScoringModel:
    return model(f"fit:\n  - name: Rule\n    field: {field}\n    {test}\n    points: {points}\n{extra}")


def score(m: ScoringModel, **profile: Any) -> ScoreResult:
    return m.score(profile, [], NOW)


def test_equals_matches_text_ignoring_case_and_spacing() -> None:
    m = one_rule("equals: Automotive", "industry")
    assert score(m, industry="  automotive ").fit == 10


def test_equals_does_not_match_other_text() -> None:
    m = one_rule("equals: Automotive", "industry")
    assert score(m, industry="Automotive supplier").fit == 0


def test_equals_a_number_compares_the_field_read_as_a_number() -> None:
    m = one_rule("equals: 500", "employees")
    assert score(m, employees="500.0").fit == 10


def test_in_matches_any_listed_value() -> None:
    m = one_rule("in: [energy, aerospace]", "industry")
    assert score(m, industry="Aerospace").fit == 10


def test_in_does_not_match_an_unlisted_value() -> None:
    m = one_rule("in: [energy, aerospace]", "industry")
    assert score(m, industry="Retail").fit == 0


@pytest.mark.parametrize("employees", [50, 120, 249, "120", "  249 ", 120.0])
def test_range_includes_both_ends(employees: Any) -> None:
    m = one_rule("range: {min: 50, max: 249}", "employees")
    assert score(m, employees=employees).fit == 10


@pytest.mark.parametrize("employees", [49, 250, "1,200"])
def test_range_excludes_values_outside(employees: Any) -> None:
    m = one_rule("range: {min: 50, max: 249}", "employees")
    assert score(m, employees=employees).fit == 0


@pytest.mark.parametrize(
    ("text", "number"),
    [("1,200", 1200), ("1 200", 1200), ("1200+", 1200), ("€ 25M", 25_000_000), ("2.5k", 2500), ("USD 40000", 40000)],
)
def test_numbers_are_read_the_way_crms_write_them(text: str, number: int) -> None:
    m = one_rule(f"range: {{min: {number}, max: {number}}}", "annual_revenue")
    assert score(m, annual_revenue=text).fit == 10


def test_a_range_with_only_min_is_open_above() -> None:
    m = one_rule("range: {min: 1000}", "employees")
    assert score(m, employees=250_000).fit == 10


def test_contains_finds_text_anywhere_ignoring_case() -> None:
    m = one_rule("contains: [auto]", "industry")
    assert score(m, industry="AUTOMOTIVE supplier").fit == 10


def test_words_match_whole_words_and_phrases() -> None:
    m = one_rule("words: [head of, ceo]", "job_title")
    assert score(m, job_title="Head  of Test & Validation").fit == 10


def test_words_do_not_match_inside_other_words() -> None:
    m = one_rule("words: [head of, ceo]", "job_title")
    assert score(m, job_title="Ahead of schedule; Procedure analyst").fit == 0


def test_matches_is_a_case_insensitive_regular_expression() -> None:
    m = one_rule(r"matches: '\bmanager\b.*\btest'", "job_title")
    assert score(m, job_title="Manager of Test Engineering").fit == 10


def test_the_detail_of_a_text_test_is_what_matched() -> None:
    m = one_rule("words: [ceo]", "job_title")
    assert score(m, job_title="CEO & Founder").contributions[0].detail == "CEO"


def test_present_passes_for_any_value() -> None:
    m = one_rule("present: true", "need")
    assert score(m, need="replace the old DAQ").fit == 10


@pytest.mark.parametrize("value", [None, "", "   ", "n/a", "N/A", "-", "unknown"])
def test_missing_passes_for_empty_values_and_placeholders(value: Any) -> None:
    m = one_rule("missing: true", "job_title", points=-5)
    assert score(m, job_title=value).fit == -5


def test_missing_passes_when_the_field_is_absent() -> None:
    m = one_rule("missing: true", "job_title", points=-5)
    assert score(m).fit == -5


def test_domain_in_reads_the_domain_of_an_email_address() -> None:
    m = one_rule("domain_in: [gmail.com]", "email", points=-10)
    assert score(m, email="Bob.Smith@GMail.com").fit == -10


def test_domain_in_covers_subdomains() -> None:
    m = one_rule("domain_in: [gmx.de]", "email", points=-10)
    assert score(m, email="bob@mail.gmx.de").fit == -10


def test_domain_in_does_not_match_a_domain_that_only_ends_alike() -> None:
    m = one_rule("domain_in: [gmail.com]", "email", points=-10)
    assert score(m, email="bob@notgmail.com").fit == 0


def test_domain_in_reads_a_website_address() -> None:
    m = one_rule("domain_in: [example.com]", "website")
    assert score(m, website="https://www.example.com/en/about").fit == 10


def test_aliases_let_a_rule_match_every_spelling_of_a_value() -> None:
    m = one_rule("in: [DE]", "country", extra="aliases:\n  country:\n    DE: [Germany, Deutschland, DEU]\n")
    assert [score(m, country=c).fit for c in ("Germany", "deutschland", "DE", "de", "DEU")] == [10] * 5


def test_a_rule_may_name_an_alias_instead_of_the_canonical_value() -> None:
    m = one_rule("in: [Germany]", "country", extra="aliases:\n  country:\n    DE: [Germany, Deutschland]\n")
    assert score(m, country="Deutschland").fit == 10


def test_only_the_first_matching_rule_of_an_exclusive_group_counts() -> None:
    m = model(
        "fit:\n"
        "  - {name: Student, field: job_title, words: [intern], points: -20, exclusive: role}\n"
        "  - {name: Engineer, field: job_title, words: [engineer], points: 8, exclusive: role}\n"
        "  - {name: Senior, field: seniority, in: [director], points: 12, exclusive: role}\n"
    )
    result = score(m, job_title="Engineering intern / engineer", seniority="director")
    assert [c.rule for c in result.contributions] == ["Student"]


def test_rules_outside_an_exclusive_group_all_count() -> None:
    m = model(
        "fit:\n"
        "  - {name: Engineer, field: job_title, words: [engineer], points: 8}\n"
        "  - {name: Senior, field: seniority, in: [director], points: 12}\n"
    )
    assert score(m, job_title="engineer", seniority="director").fit == 20


def test_negative_points_lower_the_fit() -> None:
    m = one_rule("words: [student]", "job_title", points=-20)
    assert score(m, job_title="Student").fit == -20


def test_a_number_field_with_garbage_is_reported_and_scores_nothing() -> None:
    m = one_rule("range: {min: 50}", "employees")
    result = score(m, employees="50-100")
    assert (result.fit, result.problems) == (0, ("employees: '50-100' is not a number",))


def test_a_placeholder_in_a_number_field_is_reported() -> None:
    m = one_rule("range: {min: 50}", "employees")
    assert score(m, employees="n/a").problems == ("employees: 'n/a' is not a number",)


def test_an_unknown_value_of_a_closed_aliased_field_is_reported() -> None:
    m = one_rule(
        "in: [DE]", "country", extra="aliases:\n  country:\n    DE: [Germany]\nfields:\n  country: {closed: true}\n"
    )
    assert score(m, country="Atlantis").problems == ("country: 'Atlantis' is not a known country",)


def test_an_unknown_value_of_an_aliased_field_scores_nothing_without_a_problem_by_default() -> None:
    m = one_rule("in: [DE]", "country", extra="aliases:\n  country:\n    DE: [Germany]\n")
    result = score(m, country="Atlantis")
    assert (result.fit, result.problems) == (0, ())


def test_an_email_without_an_at_sign_is_reported() -> None:
    m = one_rule("domain_in: [gmail.com]", "email")
    assert score(m, email="bob.gmail.com").problems == ("email: 'bob.gmail.com' is not an email address",)


def test_an_email_with_only_spaces_before_the_at_sign_is_reported_even_after_its_domain_was_seen() -> None:
    m = one_rule("domain_in: [gmx.de]", "email")
    assert score(m, email="bob@gmx.de").fit == 10
    assert score(m, email=" @gmx.de").problems == ("email: '@gmx.de' is not an email address",)


def test_an_email_whose_domain_holds_a_space_is_reported() -> None:
    m = one_rule("domain_in: [gmx.de]", "email")
    assert score(m, email="bob@. bob").problems == ("email: 'bob@. bob' is not an email address",)


def test_a_value_that_is_not_text_is_reported() -> None:
    m = one_rule("words: [ceo]", "job_title")
    assert score(m, job_title=["CEO"]).problems == ("job_title: ['CEO'] is not text",)


def test_the_readable_fields_still_score_when_another_is_garbage() -> None:
    m = model(
        "fit:\n"
        "  - {name: Size, field: employees, range: {min: 50}, points: 5}\n"
        "  - {name: CEO, field: job_title, words: [ceo], points: 25}\n"
    )
    assert score(m, employees="lots", job_title="CEO").fit == 25


def test_a_number_given_as_a_number_is_read_as_is() -> None:
    m = one_rule("range: {min: 1000}", "employees")
    assert score(m, employees=1500).contributions[0].detail == "employees 1,500"


def test_fields_not_used_by_any_rule_are_ignored() -> None:
    m = one_rule("words: [ceo]", "job_title")
    assert score(m, job_title="CEO", employees="garbage", favourite_colour=object()).problems == ()


def test_the_model_lists_the_profile_fields_it_reads() -> None:
    m = model(
        "fit:\n"
        "  - {name: Size, field: employees, range: {min: 50}, points: 5}\n"
        "  - {name: CEO, field: job_title, words: [ceo], points: 25}\n"
    )
    assert m.profile_fields_used == frozenset({"employees", "job_title"})


def test_a_profile_that_is_not_a_mapping_is_reported_not_raised() -> None:
    m = one_rule("words: [ceo]", "job_title")
    result = m.score(None, [], NOW)  # type: ignore[arg-type]
    assert (result.fit, result.problems) == (0, ("profile: None is not a record of fields",))
