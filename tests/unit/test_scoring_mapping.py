"""mappings/scoring.yaml: what a valid file looks like, and the message every mistake produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.engine import load_scoring
from connector.mapfile import MappingError

ROOT = Path(__file__).resolve().parents[2]

MODEL = """\
model:
  label: test
  bands: {warm: 40, hot: 70}
  grades: {A: 40, B: 25, C: 10}
"""


def load_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "scoring.yaml"
    path.write_text(text, encoding="utf-8")
    load_scoring(path)


def test_the_default_model_loads() -> None:
    model = load_scoring(ROOT / "mappings" / "scoring.yaml")
    assert model.version.startswith("gantner-eu-2026.11+")


def test_the_default_model_has_twenty_rules_or_more() -> None:
    model = load_scoring(ROOT / "mappings" / "scoring.yaml")
    assert len(model.spec.fit) + len(model.spec.engagement) >= 20


def test_the_smallest_valid_file_is_label_bands_and_grades(tmp_path: Path) -> None:
    load_text(tmp_path, MODEL)


def test_a_missing_file_is_a_mapping_error(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="the file does not exist"):
        load_scoring(tmp_path / "nope.yaml")


# (what is wrong, snippet after MODEL or a whole file, the message it must produce)
INVALID = [
    (
        "unknown top-level key",
        MODEL + "fits: []\n",
        "line 5, key 'fits': unknown key 'fits'; the file has model, fields, aliases, fit, engagement, probability",
    ),
    (
        "unknown key in model",
        MODEL + "  halflife: 3\n",
        "line 5, key 'model.halflife': unknown key 'halflife'; "
        "model takes label, half_life_days, window_days, weights, caps, bands, grades",
    ),
    (
        "missing required key",
        "model:\n  label: test\n  grades: {A: 40, B: 25, C: 10}\n",
        "line 1, key 'model.bands': this key is required",
    ),
    (
        "wrong type",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    words: [ceo]\n    points: '25'\n",
        "line 9, key 'fit[0].points': input should be a valid number",
    ),
    (
        "unknown operator in a fit rule",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    startswith: CEO\n    points: 25\n",
        "line 8, key 'fit[0].startswith': unknown key 'startswith'; a fit rule takes name, field, points, "
        "bant, exclusive and one test: equals, in, range, min, max, contains, matches, words, present, missing, "
        "domain_in, not, all, any",
    ),
    (
        "unknown operator in a condition",
        MODEL + "engagement:\n  - name: Pricing\n    kind: page_view\n    where:\n"
        "      url: {includes: /pricing}\n    points: 5\n",
        "line 9, key 'engagement[0].where.url.includes': unknown key 'includes'; "
        "a condition is one test: equals, in, range, min, max, contains, matches, words, present, missing, "
        "not, all, any",
    ),
    (
        "unknown key in an engagement rule",
        MODEL + "engagement:\n  - name: Visit\n    kind: page_view\n    points: 1\n    cap: 5\n",
        "line 9, key 'engagement[0].cap': unknown key 'cap'; an engagement rule takes name, kind, where, "
        "points, max_points, max_count, min_count, window_days, decay, half_life_days, bant",
    ),
    (
        "two tests in one rule",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    words: [ceo]\n    equals: CEO\n    points: 25\n",
        "line 6, key 'fit[0]': has 2 tests (equals, words); write one rule per test, or combine them with all: or any:",
    ),
    (
        "no test in a rule",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    points: 25\n",
        "line 6, key 'fit[0]': needs one test: equals, in, range, min, max, contains, matches, words, present, "
        "missing, domain_in, not, all, any",
    ),
    (
        "unknown profile field",
        MODEL + "fit:\n  - name: CEO\n    field: jobtitle\n    words: [ceo]\n    points: 25\n",
        "line 7, key 'fit[0].field': unknown profile field 'jobtitle' (did you mean 'job_title'?); known: "
        "annual_revenue, authority, budget, city, company, country, email, employees, first_name, industry, "
        "job_title, last_name, lead_source, lead_status, lifecycle_stage, need, phone, seniority, state, "
        "timeline, website; declare a custom field under contact.custom in hubspot.yaml or objects.*.custom in "
        "salesforce.yaml",
    ),
    (
        "unknown activity kind",
        MODEL + "engagement:\n  - name: Visit\n    kind: page_visit\n    points: 1\n",
        "line 7, key 'engagement[0].kind': unknown activity kind 'page_visit' (did you mean 'page_view'?); "
        "known: call, chat, do_not_contact, download, email_bounce, email_click, email_open, email_reply, "
        "email_unsubscribe, event_attended, form_submission, meeting, note, page_view, sms, visit, "
        "webinar_attended, webinar_registered, or custom:NAME for a kind the CRM mapping names",
    ),
    (
        "bands out of order",
        "model:\n  label: test\n  bands: {warm: 70, hot: 40}\n  grades: {A: 40, B: 25, C: 10}\n",
        "line 3, key 'model.bands': thresholds out of order: hot (40) must be above warm (70)",
    ),
    (
        "grades out of order",
        "model:\n  label: test\n  bands: {warm: 40, hot: 70}\n  grades: {A: 10, B: 25, C: 40}\n",
        "line 4, key 'model.grades': thresholds out of order: need A (10) above B (25) above C (40)",
    ),
    (
        "hot above the total cap",
        "model:\n  label: test\n  bands: {warm: 40, hot: 120}\n  grades: {A: 40, B: 25, C: 10}\n",
        "line 3, key 'model.bands.hot': thresholds out of order: hot (120) is above the total cap (100)",
    ),
    (
        "cap min above max",
        MODEL + "  caps: {fit: {min: 50, max: 10}}\n",
        "line 5, key 'model.caps.fit': min (50) must be below max (10)",
    ),
    (
        "bad regular expression",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    matches: '(ceo'\n    points: 25\n",
        "line 8, key 'fit[0].matches': bad regular expression (missing ), unterminated subpattern at position 0)",
    ),
    (
        "range min above max",
        MODEL + "fit:\n  - name: Size\n    field: employees\n    range: {min: 500, max: 50}\n    points: 5\n",
        "line 8, key 'fit[0].range': min (500) is above max (50)",
    ),
    (
        "empty word list",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    words: []\n    points: 25\n",
        "line 8, key 'fit[0].words': the list is empty",
    ),
    (
        "a bare NO read by YAML as false",
        MODEL + "fit:\n  - name: Nordics\n    field: country\n    in: [SE, NO]\n    points: 5\n",
        "line 8, key 'fit[0].in[1]': false is not text here; YAML reads yes/no/on/off as true/false, "
        "so put the value in quotes (for example 'NO')",
    ),
    (
        "a rule name used twice",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    words: [ceo]\n    points: 25\n"
        "engagement:\n  - name: ceo\n    kind: meeting\n    points: 5\n",
        "line 11, key 'engagement[0].name': the rule name 'ceo' is already used at fit[0].name",
    ),
    (
        "a value the alias table does not know",
        MODEL + "aliases:\n  country:\n    DE: [Germany]\n"
        "fit:\n  - name: DACH\n    field: country\n    in: [DE, XX]\n    points: 5\n",
        "line 11, key 'fit[0].in[1]': 'XX' is not a known country; add it under aliases.country or fix the spelling",
    ),
    (
        "one spelling under two canonical values",
        MODEL + "aliases:\n  country:\n    NL: [Holland]\n    BE: [Holland]\n",
        "line 8, key 'aliases.country.BE[0]': 'Holland' is listed under both NL and BE",
    ),
    (
        "domain test on a field without a domain",
        MODEL + "fit:\n  - name: Free\n    field: job_title\n    domain_in: [gmail.com]\n    points: -5\n",
        "line 8, key 'fit[0].domain_in': domain_in reads a domain, so it applies to email or website",
    ),
    (
        "half-life not above zero",
        MODEL + "engagement:\n  - name: Visit\n    kind: page_view\n    points: 1\n    half_life_days: -3\n",
        "line 9, key 'engagement[0].half_life_days': must be above 0",
    ),
    (
        "half-life on a rule that does not decay",
        MODEL + "engagement:\n  - name: Visit\n    kind: page_view\n    points: 1\n    decay: false\n"
        "    half_life_days: 3\n",
        "line 10, key 'engagement[0].half_life_days': is set but decay is false; remove one of them",
    ),
    (
        "max_count below one",
        MODEL + "engagement:\n  - name: Visit\n    kind: page_view\n    points: 1\n    max_count: 0\n",
        "line 9, key 'engagement[0].max_count': must be 1 or more",
    ),
    (
        "unknown BANT letter",
        MODEL + "fit:\n  - name: CEO\n    field: job_title\n    words: [ceo]\n    points: 25\n    bant: money\n",
        "line 10, key 'fit[0].bant': must be one of 'budget', 'authority', 'need' or 'timeline'",
    ),
    (
        "label with spaces",
        "model:\n  label: my model!\n  bands: {warm: 40, hot: 70}\n  grades: {A: 40, B: 25, C: 10}\n",
        "line 2, key 'model.label': a label is 1-40 letters, digits and . _ -, for example acme-eu-2026.11",
    ),
    (
        "invalid YAML",
        MODEL + "fit: [\n",
        "line 6: is not valid YAML (expected the node content, but found '<stream end>')",
    ),
]


@pytest.mark.parametrize(("snippet", "message"), [(s, m) for _, s, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_an_invalid_file_is_rejected_with_one_message_naming_file_line_and_key(
    tmp_path: Path, snippet: str, message: str
) -> None:
    with pytest.raises(MappingError) as caught:
        load_text(tmp_path, snippet)
    assert str(caught.value) == f"{tmp_path / 'scoring.yaml'}, {message}"
