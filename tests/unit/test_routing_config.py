"""mappings/routing.yaml: the default file loads, and every mistake gets one exact sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.domain import Rep
from connector.mapfile import MappingError
from connector.mappings.routing import load_routing
from connector.routing.policy import rep_view, resolve_region

ROOT = Path(__file__).resolve().parents[2]

BASE = """version: 1
regions:
  DACH:
    countries: [Germany]
    teams: [DACH]
  Rest of World: {}
default_region: Rest of World
"""


def test_the_default_file_loads_with_the_sandbox_teams() -> None:
    cfg = load_routing(ROOT / "mappings" / "routing.yaml")
    assert list(cfg.regions) == ["DACH", "Nordics", "UK&I", "Benelux", "Rest of World"]
    assert cfg.default_region == "Rest of World"
    assert cfg.rehot == "notify_owner"
    assert cfg.existing_owner == "notify"
    assert [cfg.regions[r].teams for r in cfg.regions] == [[r] for r in cfg.regions]


def test_the_default_file_puts_sandbox_countries_and_iso_codes_in_their_regions() -> None:
    cfg = load_routing(ROOT / "mappings" / "routing.yaml")
    expected = {
        "Germany": "DACH",
        "Austria": "DACH",
        "Switzerland": "DACH",
        "DE": "DACH",
        "ch": "DACH",
        "Sweden": "Nordics",
        "NO": "Nordics",
        "Finland": "Nordics",
        "United Kingdom": "UK&I",
        "GB": "UK&I",
        "Ireland": "UK&I",
        "Netherlands": "Benelux",
        "Belgium": "Benelux",
        "NL": "Benelux",
        "United States": "Rest of World",
        "US": "Rest of World",
        "Japan": "Rest of World",
    }
    assert {c: resolve_region(cfg, {"country": c}) for c in expected} == expected


def test_the_default_file_gives_katrin_double_weight() -> None:
    cfg = load_routing(ROOT / "mappings" / "routing.yaml")
    rep = Rep(
        id="1",
        email="Katrin.Vogel@sandbox-corp.example",
        name="Katrin Vogel",
        region=None,
        timezone="Europe/Berlin",
        teams=("DACH",),
    )
    view = rep_view(cfg, rep)
    assert (view.weight, view.regions, view.tz.key) == (2, ("DACH",), "Europe/Berlin")


INVALID = [
    ("unknown key", BASE + "colour: red\n", ", line 8, key 'colour': unknown key"),
    (
        "time read as a number",
        BASE + 'defaults:\n  hours: {start: "08:00", end: 18:00}\n',
        ", line 9, key 'defaults.hours.end': write the time in quotes, like \"18:00\" (YAML reads 18:00 as a number)",
    ),
    (
        "time out of range",
        BASE + 'defaults:\n  hours: {start: "25:00"}\n',
        ", line 9, key 'defaults.hours.start': '25:00' is not a time of day; write HH:MM, like \"08:00\"",
    ),
    (
        "end before start",
        BASE + 'defaults:\n  hours: {start: "18:00", end: "08:00"}\n',
        ", line 9, key 'defaults.hours': end 08:00 must be after start 18:00 (overnight shifts are not supported)",
    ),
    (
        "unknown weekday",
        BASE + "defaults:\n  hours: {days: [monday]}\n",
        ", line 9, key 'defaults.hours.days[0]': must be one of 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'",
    ),
    (
        "unknown time zone",
        BASE + "reps:\n  a@x.example:\n    timezone: Europe/Berlinn\n",
        ", line 10, key 'reps.a@x.example.timezone': 'Europe/Berlinn' is not a known time zone "
        "(use names like Europe/Berlin)",
    ),
    (
        "unknown fallback region",
        BASE.replace("teams: [DACH]", "teams: [DACH]\n    fallback: [Nordic]"),
        ", line 6, key 'regions.DACH.fallback[0]': 'Nordic' is not a region defined under regions "
        "(defined: DACH, Rest of World)",
    ),
    (
        "fallback to itself",
        BASE.replace("teams: [DACH]", "teams: [DACH]\n    fallback: [DACH]"),
        ", line 6, key 'regions.DACH.fallback[0]': a region cannot fall back to itself",
    ),
    (
        "unknown default region",
        BASE.replace("default_region: Rest of World", "default_region: Rest of Wrld"),
        ", line 7, key 'default_region': 'Rest of Wrld' is not a region defined under regions "
        "(did you mean 'Rest of World'?)",
    ),
    (
        "unknown rehot policy",
        BASE + "rehot: later\n",
        ", line 8, key 'rehot': must be one of 'notify_owner', 'reassign' or 'silent'",
    ),
    (
        "one spelling for two countries",
        BASE + "countries:\n  Germany: [DE]\n  Denmark: [DK, DE]\n",
        ", line 10, key 'countries.Denmark[1]': 'DE' already stands for Germany",
    ),
    (
        "Norway's code read as false",
        BASE + "countries:\n  Norway: [NO]\n",
        ", line 9, key 'countries.Norway[0]': false is not text here; YAML reads yes/no/on/off as true/false, "
        "so put the value in quotes (for example 'NO')",
    ),
    (
        "weight zero",
        BASE + "defaults:\n  weight: 0\n",
        ", line 9, key 'defaults.weight': input should be greater than or equal to 1",
    ),
    (
        "negative capacity",
        BASE + "defaults:\n  capacity: -1\n",
        ", line 9, key 'defaults.capacity': input should be greater than or equal to 0",
    ),
    (
        "unknown profile field",
        BASE.replace("teams: [DACH]", "teams: [DACH]\n    fields: {industy: [software]}"),
        ", line 6, key 'regions.DACH.fields': 'industy' is not a profile field (did you mean 'industry'?)",
    ),
    (
        "rep not by e-mail",
        BASE + "reps:\n  katrin:\n    weight: 2\n",
        ", line 9, key 'reps.katrin': 'katrin' is not an e-mail address",
    ),
    (
        "region that claims nothing",
        BASE.replace("  Rest of World: {}", "  Nordics: {teams: [Nordics]}\n  Rest of World: {}"),
        ", line 6, key 'regions.Nordics': give countries, states or fields that put a lead in this region "
        "(only default_region may have none)",
    ),
    ("unknown version", BASE.replace("version: 1", "version: 2"), ", line 1, key 'version': must be one of 1"),
    (
        "away period backwards",
        BASE + "reps:\n  a@x.example:\n    away:\n      - {from: 2026-08-10, until: 2026-08-01}\n",
        ", line 11, key 'reps.a@x.example.away[0]': until 2026-08-01 is before from 2026-08-10",
    ),
    ("regions missing", "version: 1\ndefault_region: X\n", ", line 1, key 'regions': this key is required"),
    (
        "fallback owner without anyone",
        BASE + "fallback_owner: {}\n",
        ", line 8, key 'fallback_owner': give an email, or a hubspot and/or salesforce user id",
    ),
    (
        "fallback owner not an e-mail",
        BASE + "fallback_owner: queue\n",
        ", line 8, key 'fallback_owner.email': 'queue' is not an e-mail address",
    ),
    (
        "rep override to an unknown region",
        BASE + "reps:\n  a@x.example:\n    regions: [Benelux]\n",
        ", line 10, key 'reps.a@x.example.regions[0]': 'Benelux' is not a region defined under regions "
        "(defined: DACH, Rest of World)",
    ),
    (
        "away until a time without its zone",
        BASE + "reps:\n  a@x.example:\n    away:\n      - {from: 2026-08-10, until: 2026-08-12T17:00:00}\n",
        ", line 11, key 'reps.a@x.example.away[0]': give the time zone with the time, like 2026-08-12T17:00:00Z",
    ),
    (
        "sla of zero minutes",
        BASE + "sla: {minutes: 0}\n",
        ", line 8, key 'sla.minutes': input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("snippet", "message"), [(s, m) for _, s, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_an_invalid_routing_file_is_rejected_with_one_exact_sentence(
    tmp_path: Path, snippet: str, message: str
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(snippet, encoding="utf-8")
    with pytest.raises(MappingError) as err:
        load_routing(path)
    assert str(err.value) == f"{path}{message}"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"routing\.yaml: the file does not exist"):
        load_routing(tmp_path / "routing.yaml")


AWAY_INVALID = [
    (
        "not a rep e-mail",
        "version: 1\nreps:\n  julia:\n    away: []\n",
        ", line 3, key 'reps.julia': 'julia' is not an e-mail address",
    ),
    (
        "unknown key",
        "version: 1\nreps:\n  a@x.example:\n    away:\n      - {from: 2026-08-10, until: 2026-08-12, why: flu}\n",
        ", line 5, key 'reps.a@x.example.away[0].why': unknown key",
    ),
    ("no version", "reps: {}\n", ", line 1, key 'version': this key is required"),
]


@pytest.mark.parametrize(
    ("snippet", "message"), [(s, m) for _, s, m in AWAY_INVALID], ids=[i for i, _, _ in AWAY_INVALID]
)
def test_an_invalid_away_file_beside_routing_yaml_is_rejected_with_one_exact_sentence(
    tmp_path: Path, snippet: str, message: str
) -> None:
    (tmp_path / "routing.yaml").write_text(BASE, encoding="utf-8")
    path = tmp_path / "away.yaml"
    path.write_text(snippet, encoding="utf-8")
    with pytest.raises(MappingError) as err:
        load_routing(tmp_path / "routing.yaml")
    assert str(err.value) == f"{path}{message}"


def test_an_away_period_can_end_at_an_instant() -> None:
    import datetime as dt

    from connector.mappings.routing import AwayPeriod

    until = dt.datetime(2026, 8, 12, 17, 0, tzinfo=dt.UTC)
    period = AwayPeriod.model_validate({"from": dt.date(2026, 8, 10), "until": until})
    berlin = dt.timezone(dt.timedelta(hours=2))
    assert period.covers(dt.datetime(2026, 8, 12, 18, 59, tzinfo=berlin))  # 16:59 UTC
    assert not period.covers(dt.datetime(2026, 8, 12, 19, 0, tzinfo=berlin))
    assert not period.covers(dt.datetime(2026, 8, 9, 23, 0, tzinfo=berlin))
