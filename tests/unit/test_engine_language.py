"""The model language (issue 13): custom fields, number tests, counts, not/all/any, not-answered values,
new activity kinds, closed alias lists; each with the reason a rep reads and the error an admin reads."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.domain import Activity
from connector.engine import ScoreResult, ScoringModel, load_scoring
from connector.mapfile import MappingError
from connector.mappings.custom import declared_fields, normalise
from connector.mappings.hubspot import load_hubspot_mapping
from connector.mappings.salesforce import load_salesforce_mapping

NOW = 1_800_000_000.0
DAY = 86400.0
HEAD = """\
model:
  label: test
  bands: {warm: 40, hot: 70}
  grades: {A: 40, B: 25, C: 10}
  caps: {total: {min: -100, max: 100}}
"""
CUSTOM = {"occupation": "enumeration", "total_visits": "number", "last_visit": "date", "opted_in": "boolean"}


def load(tmp_path: Path, body: str, custom: dict[str, str] | None = None) -> ScoringModel:
    path = tmp_path / "scoring.yaml"
    path.write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    return load_scoring(path, CUSTOM if custom is None else custom)


def error(tmp_path: Path, body: str, custom: dict[str, str] | None = None) -> str:
    with pytest.raises(MappingError) as caught:
        load(tmp_path, body, custom)
    return str(caught.value).removeprefix(f"{tmp_path / 'scoring.yaml'}, ")


def fit(m: ScoringModel, **profile: Any) -> ScoreResult:
    return m.score(profile, [], NOW)


# ------------------------------------------------------------------ custom fields


def test_a_rule_reads_a_custom_field_by_its_declared_name(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        fit:
          - {name: Working professional, field: occupation, in: [Working Professional], points: 15}
        """)
    r = fit(m, occupation="working professional")
    assert (r.fit, r.reasons) == (15, "+15 Working professional (working professional)")


def test_a_number_test_applies_to_a_numeric_custom_field(tmp_path: Path) -> None:
    m = load(tmp_path, "fit:\n  - {name: Frequent visitor, field: total_visits, min: 5, points: 10}\n")
    assert fit(m, total_visits=7.0).reasons == "+10 Frequent visitor (total visits 7)"
    assert fit(m, total_visits=4.0).fit == 0


def test_custom_fields_are_found_in_the_crm_mapping_files_next_to_the_scoring_file(tmp_path: Path) -> None:
    (tmp_path / "hubspot.yaml").write_text(
        "contact:\n  custom:\n    occupation: {property: what_is_your_current_occupation, type: enumeration}\n",
        encoding="utf-8",
    )
    (tmp_path / "scoring.yaml").write_text(
        HEAD + "fit:\n  - {name: Student, field: occupation, equals: Student, points: -10}\n", encoding="utf-8"
    )
    m = load_scoring(tmp_path / "scoring.yaml")
    assert fit(m, occupation="Student").fit == -10


def test_a_field_neither_the_engine_nor_a_mapping_declares_is_an_error_naming_the_way_to_declare_it(
    tmp_path: Path,
) -> None:
    message = error(tmp_path, "fit:\n  - {name: Pro, field: ocupation, equals: x, points: 1}\n")
    assert message.startswith("line 7, key 'fit[0].field': unknown profile field 'ocupation' (did you mean "
                              "'occupation'?); known: annual_revenue")
    assert message.endswith("custom fields declared in hubspot.yaml / salesforce.yaml: last_visit, occupation, "
                            "opted_in, total_visits")


def test_a_number_test_on_a_custom_field_declared_as_text_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, "fit:\n  - {name: Pro, field: occupation, min: 3, points: 1}\n")
    assert message == ("line 7, key 'fit[0].min': occupation is declared as enumeration, so a number test "
                       "cannot apply; declare it as number")


def test_hubspot_and_salesforce_declare_custom_fields_with_a_type(tmp_path: Path) -> None:
    hubspot = tmp_path / "hubspot.yaml"
    hubspot.write_text("contact:\n  custom:\n    total_visits: {property: totalvisits, type: number}\n",
                       encoding="utf-8")
    assert load_hubspot_mapping(hubspot).contact.read_fields()["total_visits"] == "totalvisits"
    sf = tmp_path / "salesforce.yaml"
    sf.write_text(textwrap.dedent("""\
        objects:
          Lead: {fields: {email: Email}, custom: {total_visits: {field: Total_Visits__c, type: number}}}
          Contact: {fields: {email: Email}}
        activities: {sources: {Task: {time_fields: [CreatedDate]}}, rules: []}
        """), encoding="utf-8")
    assert load_salesforce_mapping(sf).objects["Lead"].read_fields()["total_visits"] == "Total_Visits__c"
    assert declared_fields(tmp_path) == {"total_visits": "number"}


def test_two_mapping_files_giving_one_custom_field_two_types_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "hubspot.yaml").write_text(
        "contact:\n  custom:\n    visits: {property: totalvisits, type: number}\n", encoding="utf-8"
    )
    (tmp_path / "salesforce.yaml").write_text(textwrap.dedent("""\
        objects:
          Lead: {fields: {email: Email}, custom: {visits: {field: Visits__c, type: text}}}
          Contact: {fields: {email: Email}}
        activities: {sources: {Task: {time_fields: [CreatedDate]}}, rules: []}
        """), encoding="utf-8")
    with pytest.raises(MappingError, match="the field visits is declared as text here but as number in"):
        declared_fields(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("contact:\n  custom:\n    country: {property: country, type: text}\n",
         "line 3, key 'contact.custom.country': 'country' is an engine profile field already; map it under fields"),
        ("contact:\n  custom:\n    Occupation: {property: occupation, type: text}\n",
         "line 3, key 'contact.custom.Occupation': 'Occupation' is not a field name (lower-case letters, digits "
         "and _, starting with a letter)"),
        ("contact:\n  custom:\n    occupation: {property: occupation, type: picklist}\n",
         "line 3, key 'contact.custom.occupation.type': must be one of 'text', 'number', 'date', 'boolean' or "
         "'enumeration'"),
    ],
)
def test_a_wrong_custom_field_declaration_names_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hubspot.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_hubspot_mapping(path)
    assert str(caught.value) == f"{path}, {message}"


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        ("42", "number", 42.0),
        ("1,200", "number", 1200.0),
        ("lots", "number", "lots"),  # left for the engine to report
        ("", "number", None),
        ("1762560000000", "date", "2025-11-08"),  # HubSpot: epoch milliseconds
        ("2025-11-08T23:30:00.000+0000", "date", "2025-11-08"),  # Salesforce datetime
        ("2025-11-08", "date", "2025-11-08"),
        (True, "boolean", "true"),
        ("false", "boolean", "false"),
        ("Yes", "boolean", "true"),
        (7, "enumeration", "7"),
    ],
)
def test_adapters_hand_custom_values_to_the_engine_read_by_type(raw: Any, kind: str, value: Any) -> None:
    assert normalise(raw, kind) == value


# ------------------------------------------------------------------ number tests


def test_min_and_max_together_are_one_test_like_range(tmp_path: Path) -> None:
    m = load(tmp_path, "fit:\n  - {name: Mid, field: employees, min: 200, max: 999, points: 10}\n")
    assert [fit(m, employees=e).fit for e in ("199", "200", "999", "1,000")] == [0, 10, 10, 0]


def test_range_and_min_in_one_rule_are_two_tests(tmp_path: Path) -> None:
    message = error(tmp_path, "fit:\n  - {name: Mid, field: employees, range: {min: 2}, min: 200, points: 10}\n")
    assert message == ("line 7, key 'fit[0]': has 2 tests (range, min); write one rule per test, "
                       "or combine them with all: or any:")


def test_min_above_max_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "fit:\n  - {name: Mid, field: employees, min: 900, max: 200, points: 10}\n") == (
        "line 7, key 'fit[0].max': min (900) is above max (200)"
    )


def test_a_number_test_on_an_activity_attribute_reads_it_as_a_number(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        engagement:
          - name: Long visit
            kind: visit
            where: {duration: {min: 900}}
            points: 5
        """)
    long = Activity("visit", NOW - DAY, {"duration": "1200"})
    short = Activity("visit", NOW - DAY, {"duration": "300"})
    unreadable = Activity("visit", NOW - DAY, {"duration": "a while"})
    assert m.score({}, [long], NOW).engagement == 5
    assert m.score({}, [short, unreadable], NOW).engagement == 0


def test_range_on_an_activity_attribute_is_the_same_syntax_as_on_a_profile_field(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        engagement:
          - {name: Deep visit, kind: visit, where: {pages: {range: {min: 3, max: 10}}}, points: 2}
        """)
    acts = [Activity("visit", NOW, {"pages": p}) for p in ("2", "3", "10", "11")]
    assert m.score({}, acts, NOW).engagement == 4


# ------------------------------------------------------------------ counts


def test_min_count_gives_nothing_below_the_count_and_one_reason_from_it(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        engagement:
          - {name: 5 or more visits, kind: visit, points: 3, max_points: 15, min_count: 5, decay: false}
        """)
    four = [Activity("visit", NOW - i * DAY, {}) for i in range(4)]
    five = [*four, Activity("visit", NOW - 10 * DAY, {})]
    assert m.score({}, four, NOW).engagement == 0
    r = m.score({}, five, NOW)
    assert r.engagement == 15
    assert len(r.contributions) == 1


def test_min_count_counts_only_the_window(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        engagement:
          - {name: Busy week, kind: page_view, points: 1, min_count: 3, window_days: 7, decay: false}
        """)
    acts = [Activity("page_view", NOW - d * DAY, {}) for d in (1, 2, 30)]
    assert m.score({}, acts, NOW).engagement == 0


def test_min_count_above_max_count_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "engagement:\n  - {name: V, kind: visit, points: 1, max_count: 2, min_count: 5}\n") == (
        "line 7, key 'engagement[0].min_count': min_count (5) is above max_count (2); no lead could pass it"
    )


# ------------------------------------------------------------------ not / all / any

COMBINED = """\
aliases:
  country: {DE: [Germany], AT: [Austria], CH: [Switzerland], FR: [France]}
fit:
  - name: DACH engineering buyer
    all:
      - {field: country, in: [DE, AT, CH]}
      - {field: employees, min: 200}
      - {field: job_title, words: [engineer, engineering]}
    points: 20
  - name: Not a student
    field: job_title
    not: {words: [student, intern]}
    points: 3
  - name: Reachable
    any:
      - {field: phone, present: true}
      - {field: email, present: true}
    points: 2
  - name: Outside the core market
    not:
      any:
        - {field: country, in: [DE, AT, CH]}
        - {field: employees, min: 5000}
    points: -4
"""


def test_all_across_fields_passes_only_when_every_test_passes_and_names_what_matched(tmp_path: Path) -> None:
    m = load(tmp_path, COMBINED)
    r = fit(m, country="Germany", employees="420", job_title="Test Engineer")
    assert "+20 DACH engineering buyer (Germany, employees 420, Engineer)" in r.reasons
    assert fit(m, country="France", employees="420", job_title="Test Engineer").contributions[0].rule != (
        "DACH engineering buyer"
    )
    assert all(c.rule != "DACH engineering buyer" for c in fit(m, country="DE", employees="50",
                                                                   job_title="Engineer").contributions)


def test_not_passes_when_its_test_fails_and_names_the_value(tmp_path: Path) -> None:
    m = load(tmp_path, COMBINED)
    assert "+3 Not a student (Engineer)" in fit(m, job_title="Engineer").reasons
    assert "Not a student" not in fit(m, job_title="Working Student").reasons
    assert "+3 Not a student (no job title)" in fit(m).reasons


def test_any_across_fields_names_the_first_test_that_passed(tmp_path: Path) -> None:
    m = load(tmp_path, COMBINED)
    assert "+2 Reachable (bob@x.example)" in fit(m, email="bob@x.example").reasons
    assert "Reachable" not in fit(m, job_title="Engineer").reasons


def test_not_around_tests_of_several_fields(tmp_path: Path) -> None:
    m = load(tmp_path, COMBINED)
    assert "-4 Outside the core market" in fit(m, country="France", employees="300").reasons
    assert "Outside the core market" not in fit(m, country="Austria").reasons
    assert "Outside the core market" not in fit(m, country="France", employees="9000").reasons


def test_not_all_any_work_in_activity_conditions(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        engagement:
          - name: Product page, not careers
            kind: page_view
            where:
              url: {all: [{contains: /products}, {not: {contains: /careers}}]}
            points: 1
            decay: false
          - name: Pricing or demo
            kind: page_view
            where:
              url: {any: [{contains: /pricing}, {contains: /demo}]}
            points: 10
            decay: false
        """)
    acts = [Activity("page_view", NOW, {"url": u}) for u in ("/products/a", "/careers/products", "/demo")]
    assert m.score({}, acts, NOW).engagement == 11


def test_a_test_without_a_field_is_an_error_that_says_where_to_give_it(tmp_path: Path) -> None:
    message = error(tmp_path, """\
        fit:
          - name: Two fields
            all:
              - {field: country, equals: DE}
              - {min: 200}
            points: 5
        """)
    assert message == "line 10, key 'fit[0].all[1]': this test (range) names no field; give field: here or on the rule"


def test_a_rule_that_names_two_fields_is_told_to_use_all_or_any(tmp_path: Path) -> None:
    message = error(tmp_path, "fit:\n  - {name: Two, fields: [country, employees], equals: DE, points: 5}\n")
    assert message.startswith("line 7, key 'fit[0].fields': unknown key 'fields'; a test reads one field; "
                              "to test several in one rule, use all: or any:")


def test_an_unknown_key_inside_all_gets_the_list_of_tests(tmp_path: Path) -> None:
    message = error(tmp_path, "fit:\n  - {name: X, all: [{field: country, startswith: D}], points: 5}\n")
    assert message.startswith("line 7, key 'fit[0].all[0].startswith': unknown key 'startswith'; a test takes "
                              "field and one test: equals, in, range, min, max")


def test_an_empty_all_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "fit:\n  - {name: X, all: [], points: 5}\n") == (
        "line 7, key 'fit[0].all': the list is empty"
    )


texts = st.one_of(st.none(), st.sampled_from(["Engineer", "Student", "Working Student", "CEO", "", "n/a"]),
                  st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(title=texts, industry=texts)
def test_not_all_and_any_agree_with_the_tests_they_combine(title: str | None, industry: str | None) -> None:
    m = MODEL_FOR_PROPERTIES
    r = m.score({"job_title": title, "industry": industry}, [], NOW)
    rules = {c.rule for c in r.contributions}
    student, energy = "Student" in rules, "Energy" in rules
    assert ("Not student" in rules) == (not student)
    assert ("Both" in rules) == (student and energy)
    assert ("Either" in rules) == (student or energy)


def _properties_model() -> ScoringModel:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scoring.yaml"
        path.write_text(HEAD + textwrap.dedent("""\
            fit:
              - {name: Student, field: job_title, words: [student], points: 1}
              - {name: Energy, field: industry, contains: energ, points: 1}
              - {name: Not student, field: job_title, not: {words: [student]}, points: 1}
              - {name: Both, all: [{field: job_title, words: [student]}, {field: industry, contains: energ}], points: 1}
              - {name: Either, any: [{field: job_title, words: [student]}, {field: industry, contains: energ}],
                 points: 1}
            """), encoding="utf-8")
        return load_scoring(path, {})


MODEL_FOR_PROPERTIES = _properties_model()


# ------------------------------------------------------------------ not answered


def test_a_not_answered_value_reads_as_empty_on_its_field_only(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        fields:
          occupation: {not_answered: [Select, "-- please choose --"]}
        fit:
          - {name: Occupation given, field: occupation, present: true, points: 5}
          - {name: No occupation, field: occupation, missing: true, points: -1}
          - {name: Title given, field: job_title, present: true, points: 1}
        """)
    assert fit(m, occupation="select").fit == -1
    assert fit(m, occupation="--  Please choose --").fit == -1
    assert fit(m, occupation="Engineer").fit == 5
    assert fit(m, occupation="Student", job_title="Select").fit == 6  # Select is an answer on job_title


def test_not_answered_on_an_unknown_field_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "fields:\n  ocupation: {not_answered: [Select]}\n").startswith(
        "line 7, key 'fields.ocupation': unknown profile field 'ocupation' (did you mean 'occupation'?)"
    )


def test_closed_needs_an_alias_table(tmp_path: Path) -> None:
    assert error(tmp_path, "fields:\n  industry: {closed: true}\n") == (
        "line 7, key 'fields.industry.closed': closed needs a list of values under aliases.industry"
    )


# ------------------------------------------------------------------ activity kinds


@pytest.mark.parametrize("kind", ["sms", "chat", "visit", "do_not_contact", "custom:trial_started"])
def test_the_new_activity_kinds_are_matched_by_name(tmp_path: Path, kind: str) -> None:
    m = load(tmp_path, f"engagement:\n  - {{name: Signal, kind: '{kind}', points: 4, decay: false}}\n")
    acts = [Activity(kind, NOW - DAY, {}), Activity("custom:other", NOW - DAY, {})]
    assert m.score({}, acts, NOW).engagement == 4


def test_a_do_not_contact_flag_can_take_points_away(tmp_path: Path) -> None:
    m = load(tmp_path, """\
        engagement:
          - {name: Do not contact, kind: do_not_contact, points: -50, max_count: 1, decay: false}
        """)
    assert m.score({}, [Activity("do_not_contact", NOW - 90 * DAY, {"channel": "all"})], NOW).engagement == -50


def test_a_custom_kind_must_be_written_custom_colon_name(tmp_path: Path) -> None:
    assert "unknown activity kind 'custom:Trial Started'" in error(
        tmp_path, "engagement:\n  - {name: Trial, kind: 'custom:Trial Started', points: 4}\n"
    )


# ------------------------------------------------------------------ explain and version


def test_explain_shows_the_new_rules_and_their_evidence(tmp_path: Path) -> None:
    m = load(tmp_path, COMBINED + """\
engagement:
  - {name: Long visits, kind: visit, where: {duration: {min: 900}}, points: 2, min_count: 2}
""")
    text = m.explain(
        {"country": "DE", "employees": "420", "job_title": "Engineer"},
        [Activity("visit", NOW - DAY, {"duration": "1000"}), Activity("visit", NOW - 2 * DAY, {"duration": "901"})],
        NOW,
    )
    assert ("DACH engineering buyer (DE, employees 420, Engineer)  -- 20 when country is one of the values and "
            "employees is in the range 200.. and job_title has one of the words") in text
    assert "Not a student (Engineer)  -- 3 when not (job_title has one of the words)" in text
    assert "Long visits (2x, last" in text
    assert "-- 2 each, where duration is in the range 900.., from 2 in the window" in text


def test_a_file_without_the_new_keys_keeps_its_version(tmp_path: Path) -> None:
    body = "fit:\n  - {name: Size, field: employees, range: {min: 10}, points: 1}\n" \
           "engagement:\n  - {name: V, kind: page_view, where: {url: {contains: /x}}, points: 1}\n"
    # the hash of this content before the language grew (connector 32bed02)
    assert load(tmp_path, body).version == "test+" + _version_of(body)


def _version_of(body: str) -> str:
    import hashlib
    import json

    import yaml

    raw = yaml.safe_load(HEAD + body)
    model = {"label": "test", "half_life_days": 30.0, "window_days": None,
             "weights": {"fit": 1.0, "engagement": 1.0},
             "caps": {"fit": {"min": None, "max": None}, "engagement": {"min": None, "max": None},
                      "total": {"min": -100.0, "max": 100.0}},
             "bands": raw["model"]["bands"], "grades": raw["model"]["grades"]}
    ops = {"equals": None, "in": None, "contains": None, "matches": None, "words": None, "present": None,
           "missing": None}
    fit_rules = [{**ops, "name": "Size", "field": "employees", "range": {"min": 10.0, "max": None},
                  "domain_in": None, "points": 1.0, "bant": None, "exclusive": None}]
    engagement = [{"name": "V", "kind": ["page_view"], "where": {"url": {**ops, "contains": ["/x"]}}, "points": 1.0,
                   "max_points": None, "max_count": None, "window_days": None, "decay": True, "half_life_days": None,
                   "bant": None}]
    dump = {"model": model, "aliases": {}, "fit": fit_rules, "engagement": engagement}
    canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def test_a_value_the_alias_table_does_not_know_is_an_error_inside_all_too(tmp_path: Path) -> None:
    assert error(tmp_path, """\
        aliases:
          country: {DE: [Germany]}
        fit:
          - name: DACH
            all: [{field: employees, min: 5}, {field: country, in: [DE, XX]}]
            points: 5
        """) == ("line 10, key 'fit[0].all[1].in[1]': 'XX' is not a known country; add it under aliases.country or "
                 "fix the spelling")
