"""The outcomes: sections of hubspot.yaml and salesforce.yaml: the shipped ones load, each mistake gets a sentence
naming the file, the line and the key, and sources combine as documented."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from connector.mapfile import MappingError
from connector.mappings.hubspot import load_hubspot_mapping
from connector.mappings.outcomes import combine
from connector.mappings.salesforce import load_salesforce_mapping

ROOT = Path(__file__).resolve().parents[2]

SF_BASE = """\
objects:
  Lead:
    fields: {email: Email}
  Contact:
    fields: {email: Email}
activities:
  sources:
    Task:
      time_fields: [CreatedDate]
  rules:
    - {source: Task, kind: call}
"""


def test_the_shipped_outcomes_load() -> None:
    hs = load_hubspot_mapping(ROOT / "mappings" / "hubspot.yaml").outcomes
    assert hs is not None
    assert hs.lifecycle is not None
    assert hs.lifecycle.date_properties() == ["hs_lifecyclestage_customer_date", "hs_lifecyclestage_evangelist_date"]
    assert hs.deals is not None
    assert hs.deals.won == ["closedwon"]
    assert hs.defining_properties() == {"lifecyclestage", "hs_lead_status"}
    sf = load_salesforce_mapping(ROOT / "mappings" / "salesforce.yaml").outcomes
    assert sf is not None
    assert sf.lead_conversion is not None
    assert sf.lead_conversion.won == "opportunity_won"
    assert sf.contact_roles is not None


HUBSPOT_INVALID = [
    ("outcomes: {}\n", 1, "outcomes", "give at least one outcome source"),
    ("outcomes:\n  lifecycle:\n    won: []\n", 3, "outcomes.lifecycle.won", "at least 1 item"),
    ("outcomes:\n  lifecycle:\n    won: [Customer]\n", 3, "outcomes.lifecycle.won[0]", "lifecycle stage's internal"),
    ("outcomes:\n  property:\n    name: hs_lead_status\n", 2, "outcomes.property", "give won values, lost values"),
    ("outcomes:\n  property:\n    name: x\n    won: [A]\n    lost: [A]\n", 2, "outcomes.property",
     "'A' cannot be both won and lost"),
    ("outcomes:\n  property:\n    name: Lead Status\n    lost: [X]\n", 3, "outcomes.property.name",
     "not a HubSpot property name"),
    ("outcomes:\n  deals:\n    won: [closedwon]\n    lost: []\n    date: Close Date\n", 5, "outcomes.deals.date",
     "not a HubSpot property name"),
    ("outcomes:\n  deal:\n    won: [closedwon]\n", 2, "outcomes.deal", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "key", "problem"), HUBSPOT_INVALID, ids=[i[2] for i in HUBSPOT_INVALID])
def test_a_hubspot_outcomes_mistake_names_the_file_the_line_and_the_key(
    tmp_path: Path, text: str, line: int, key: str, problem: str
) -> None:
    path = tmp_path / "hubspot.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_hubspot_mapping(path)
    err = caught.value
    assert (err.line, err.key) == (line, key)
    assert problem in err.problem


SALESFORCE_INVALID = [
    ("outcomes: {}\n", 1, "outcomes", "give at least one outcome source"),
    ("outcomes:\n  lead_conversion:\n    won: yes\n", 3, "outcomes.lead_conversion.won", "converted"),
    ("outcomes:\n  field:\n    name: Status\n", 2, "outcomes.field", "give won values, lost values"),
    ("outcomes:\n  field:\n    name: Stage Name\n    won: [W]\n", 3, "outcomes.field.name", "not a Salesforce field"),
    ("outcomes:\n  field:\n    name: S\n    won: [W]\n    objects: [Account]\n", 5, "outcomes.field.objects[0]",
     "'Lead' or 'Contact'"),
    ("outcomes:\n  contact_roles:\n    role: [Decision Maker]\n", 3, "outcomes.contact_roles.role", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "key", "problem"), SALESFORCE_INVALID, ids=[i[2] for i in SALESFORCE_INVALID])
def test_a_salesforce_outcomes_mistake_names_the_file_the_line_and_the_key(
    tmp_path: Path, text: str, line: int, key: str, problem: str
) -> None:
    path = tmp_path / "salesforce.yaml"
    path.write_text(textwrap.dedent(SF_BASE) + text, encoding="utf-8")
    base_lines = SF_BASE.count("\n")
    with pytest.raises(MappingError) as caught:
        load_salesforce_mapping(path)
    err = caught.value
    assert (err.line, err.key) == (base_lines + line, key)
    assert problem in err.problem


def test_won_beats_lost_and_the_earliest_dated_moment_counts() -> None:
    assert combine([("lost", 10.0), ("won", 30.0), ("won", 20.0), ("won", None)]) == ("won", 20.0)
    assert combine([("lost", None), ("lost", 50.0)]) == ("lost", 50.0)
    assert combine([("won", None)]) == ("won", None)
    assert combine([]) == (None, None)
