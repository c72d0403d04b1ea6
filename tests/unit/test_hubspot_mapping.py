"""mappings/hubspot.yaml: the shipped file loads, and each kind of mistake gets its own sentence."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from connector.crm.hubspot import canonical, parse_ts
from connector.domain import ACTIVITY_KINDS, WRITE_FIELDS
from connector.mapfile import MappingError
from connector.mappings.hubspot import DEFAULT_WRITE, Condition, load_hubspot_mapping

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hubspot.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_shipped_mapping_loads_and_names_every_written_field() -> None:
    mapping = load_hubspot_mapping(ROOT / "mappings" / "hubspot.yaml")
    assert set(mapping.write) == set(WRITE_FIELDS)
    assert mapping.account.rate_per_10s == 190
    kinds = {r.kind for r in (*mapping.activities.engagements, *mapping.activities.events)}
    assert kinds <= ACTIVITY_KINDS


def test_an_empty_file_gives_the_defaults_of_the_product_page(tmp_path: Path) -> None:
    mapping = load_hubspot_mapping(write(tmp_path, ""))
    assert mapping.write == DEFAULT_WRITE
    assert mapping.activities.web == "none"
    assert mapping.tasks.type == "CALL"


def test_renaming_one_written_field_keeps_the_other_defaults(tmp_path: Path) -> None:
    mapping = load_hubspot_mapping(write(tmp_path, "write:\n  score: hs_custom_score\n"))
    assert mapping.write["score"] == "hs_custom_score"
    assert mapping.write["band"] == "lead_band"


@pytest.mark.parametrize(("tier", "rate"), [("starter", 100), ("professional", 190), ("oauth", 110)])
def test_the_tier_sets_the_rate(tmp_path: Path, tier: str, rate: int) -> None:
    assert load_hubspot_mapping(write(tmp_path, f"account: {{tier: {tier}}}\n")).account.rate_per_10s == rate


def test_an_explicit_rate_wins_over_the_tier(tmp_path: Path) -> None:
    mapping = load_hubspot_mapping(write(tmp_path, "account: {tier: starter, requests_per_10s: 42}\n"))
    assert mapping.account.rate_per_10s == 42


INVALID = [
    ("acount: {}\n", 1, "acount", "unknown key"),
    ("account:\n  tier: platinum\n", 2, "account.tier", "must be one of"),
    ("account:\n  daily: lots\n", 2, "account.daily", "valid integer"),
    ("account:\n  portal_id: \"abc\"\n", 2, "account.portal_id", "portal's number"),
    ("contact:\n  fields:\n    shoe_size: shoesize\n", 3, "contact.fields.shoe_size", "not an engine profile field"),
    ("contact:\n  fields:\n    email: E-Mail\n", 3, "contact.fields.email", "not a HubSpot property name"),
    ("write:\n  lead_score: x\n", 2, "write.lead_score", "not a written field"),
    ("write:\n  score: lead_band\n", 1, "write", "share one property"),
    (
        "activities:\n  web: none\n  engagements:\n    - {type: emails, kind: email_opened}\n",
        4, "activities.engagements[0].kind", "not an engine activity kind",
    ),
    (
        "activities:\n  web: none\n  engagements:\n    - {type: chats, kind: call}\n",
        4, "activities.engagements[0].type", "not an engagement object type",
    ),
    (
        "activities:\n  web: none\n  engagements:\n    - type: emails\n      kind: email_open\n"
        "      when: {hs_email_status: {like: SENT}}\n",
        6, "activities.engagements[0].when.hs_email_status.like", "unknown key",
    ),
    (
        "activities:\n  web: none\n  engagements:\n    - type: emails\n      kind: email_open\n"
        "      when: {hs_email_status: {equals: SENT, prefix: S}}\n",
        6, "activities.engagements[0].when.hs_email_status", "exactly one operator",
    ),
    (
        "activities:\n  web: none\n  engagements:\n    - type: calls\n      kind: call\n      attrs: {Url: x}\n",
        6, "activities.engagements[0].attrs.Url", "not an attribute name",
    ),
    ("activities:\n  web: events\n", 1, "activities", "no events rules"),
    ("activities:\n  web: rollups\n", 1, "activities", "no rollups"),
    ("activities:\n  web: sometimes\n", 2, "activities.web", "must be one of"),
    (
        "account: {tier: professional}\nactivities:\n  web: events\n  events:\n"
        "    - {type: e_visited_page, kind: page_view}\n",
        2, "activities", "the events API needs an Enterprise portal and account.tier is 'professional'",
    ),
    ("account: {timezone: Mars/Olympus}\n", 1, "account.timezone", "not a known time zone"),
    ("reps:\n  default_timezone: Mars/Olympus\n", 2, "reps.default_timezone", "not a known time zone"),
    ("reps:\n  team_timezones: {DACH: CET+1}\n", 2, "reps.team_timezones.DACH", "not a known time zone"),
    ("tasks:\n  type: MEETING\n", 2, "tasks.type", "must be one of"),
]


@pytest.mark.parametrize(("text", "line", "key", "problem"), INVALID, ids=[i[2] for i in INVALID])
def test_a_mistake_names_the_file_the_line_and_the_key(
    tmp_path: Path, text: str, line: int, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        load_hubspot_mapping(path)
    err = caught.value
    assert (err.file, err.line, err.key) == (str(path), line, key)
    assert problem in err.problem
    assert str(err).startswith(f"{path}, line {line}, key '{key}': ")


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ({"equals": "SENT"}, "SENT", True),
        ({"equals": "SENT"}, None, False),
        ({"not_equals": "SENT"}, None, True),
        ({"in": ["A", "B"]}, "B", True),
        ({"not_in": ["CANCELED"]}, None, True),
        ({"prefix": "/pricing"}, "/pricing/eu", True),
        ({"contains": "demo"}, "/request-a-demo", True),
        ({"exists": True}, "", False),
        ({"exists": False}, None, True),
        ({"min": 1}, "2", True),
        ({"min": 1}, "0", False),
        ({"min": 1}, "n/a", False),
    ],
)
def test_conditions_use_a_closed_set_of_operators(condition: dict[str, object], value: str | None,
                                                  expected: bool) -> None:
    assert Condition.model_validate(condition).test(value) is expected


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("score", "87.0", "87"),
        ("score", 86.5, "87"),
        ("fit", "12", "12"),
        ("band", " hot ", "hot"),
        ("scored_at", "2026-01-02T03:04:05.678Z", "2026-01-02T03:04:05Z"),
        ("scored_at", "1767323045", "2026-01-02T03:04:05Z"),
        ("scored_at", "1767323045678", "2026-01-02T03:04:05Z"),
        ("reasons", "a\nb", "a\nb"),
    ],
)
def test_written_values_have_one_spelling(field: str, raw: object, expected: str) -> None:
    assert canonical(field, raw) == expected


def test_hubspot_times_read_as_epoch_seconds() -> None:
    assert parse_ts("2026-01-02T03:04:05.500Z") == 1767323045.5
    assert parse_ts("1767323045500") == 1767323045.5
    assert parse_ts("") is None
    assert parse_ts("soon") is None
