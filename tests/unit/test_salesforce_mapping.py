"""mappings/salesforce.yaml: the shipped file loads, and each mistake an admin can make
produces one sentence naming the file, the line and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from connector.domain import Activity
from connector.mapfile import MappingError
from connector.mappings.salesforce import SalesforceMapping, load_salesforce_mapping

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
objects:
  Lead:
    fields:
      email: Email
      job_title: Title
  Contact:
    fields:
      email: Email
      company: Account.Name
activities:
  sources:
    Task:
      time_fields: [ActivityDate, CreatedDate]
      attrs: {subject: Subject}
  rules:
    - source: Task
      kind: email_bounce
      when: [{field: Subject, starts_with: Bounced}]
"""


def load(tmp_path: Path, text: str) -> SalesforceMapping:
    path = tmp_path / "salesforce.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_salesforce_mapping(path)


def test_the_shipped_mapping_loads_with_the_documented_defaults() -> None:
    mapping = load_salesforce_mapping(ROOT / "mappings" / "salesforce.yaml")
    assert mapping.write_fields.as_dict() == {
        "score": "Lead_Score__c",
        "fit": "Lead_Fit_Score__c",
        "engagement": "Lead_Engagement_Score__c",
        "band": "Lead_Band__c",
        "grade": "Lead_Grade__c",
        "reasons": "Lead_Score_Reasons__c",
        "scored_at": "Lead_Scored_At__c",
        "model": "Lead_Score_Model__c",
        "probability": "Lead_Conversion_Probability__c",
        "factors": "Lead_Probability_Factors__c",
    }
    assert mapping.reps.region_field == "Division"
    assert mapping.page_size == 2000
    assert mapping.bulk_threshold == 10_000
    assert mapping.api_floor_percent == 10


def test_a_minimal_mapping_gets_defaults_for_everything_optional(tmp_path: Path) -> None:
    mapping = load(tmp_path, BASE)
    assert mapping.write_fields.score == "Lead_Score__c"
    assert mapping.owners.queues_are_unassigned is True
    assert mapping.rate_limit.calls == 50


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "problem"),
    [
        (
            "      job_title: Title",
            "      job_tittle: Title",
            5,
            "objects.Lead.fields.job_tittle",
            "did you mean 'job_title'",
        ),
        (
            "      job_title: Title",
            "      job_title: Title; DROP",
            5,
            "objects.Lead.fields.job_title",
            "not a Salesforce API name",
        ),
        (
            "      job_title: Title",
            "      job_title: OwnerId",
            5,
            "objects.Lead.fields.job_title",
            "read by the connector",
        ),
        ("  Contact:", "  Contacts:", 6, "objects.Contacts", "must be one of"),
        ("      kind: email_bounce", "      kind: email_bounced", 17, "activities.rules[0].kind", "did you mean"),
        ("    - source: Task", "    - source: Event", 15, "activities.rules", "rule 1 reads Event, but"),
        (
            "      when: [{field: Subject, starts_with: Bounced}]",
            "      when: [{field: Subject, starts_with: Bounced, contains: x}]",
            18,
            "activities.rules[0].when[0]",
            "exactly one of",
        ),
        (
            "      when: [{field: Subject, starts_with: Bounced}]",
            "      when: [{field: HasResponded, equals: yes}]",
            18,
            "activities.rules[0].when[0].equals",
            "put the value in quotes",
        ),
        (
            "      when: [{field: Subject, starts_with: Bounced}]",
            "      when: [{field: Subject, startswith: Bounced}]",
            18,
            "activities.rules[0].when[0].startswith",
            "unknown key",
        ),
        (
            "      time_fields: [ActivityDate, CreatedDate]",
            "      time_fields: []",
            13,
            "activities.sources.Task.time_fields",
            "at least one",
        ),
        (
            "      attrs: {subject: Subject}",
            "      attrs: {Subject: Subject}",
            14,
            "activities.sources.Task.attrs",
            "not an attribute name",
        ),
    ],
)
def test_a_wrong_mapping_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, key: str, problem: str
) -> None:
    assert old in BASE
    with pytest.raises(MappingError) as info:
        load(tmp_path, BASE.replace(old, new))
    err = info.value
    assert err.file.endswith("salesforce.yaml")
    assert (err.line, err.key) == (line, key), str(err)
    assert problem in err.problem, str(err)


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("page_size: 5000\n", "page_size", "less than or equal to 2000"),
        ("page_size: '2000'\n", "page_size", "valid integer"),
        ("api_floor_percent: 95\n", "api_floor_percent", "less than or equal to 90"),
        ("bulk_threshold: 0\n", "bulk_threshold", "greater than or equal to 1"),
        ("owners:\n  unassigned: [not-an-id]\n", "owners.unassigned", "not a Salesforce id"),
        ("reps:\n  region_field: Manager.Division\n", "reps.region_field", "field of the object itself"),
        ("write_fields:\n  score: Lead_Score__c\n  fit: Lead_Score__c\n", "write_fields", "both name the field"),
        ("rate_limit:\n  calls: 0\n", "rate_limit.calls", "greater than or equal to 1"),
        ("colour: blue\n", "colour", "unknown key"),
    ],
)
def test_top_level_settings_are_checked(tmp_path: Path, extra: str, key: str, problem: str) -> None:
    with pytest.raises(MappingError) as info:
        load(tmp_path, BASE + extra)
    assert info.value.key == key, str(info.value)
    assert problem in info.value.problem, str(info.value)
    assert info.value.line is not None
    assert info.value.line > 18


def test_both_objects_must_be_mapped(tmp_path: Path) -> None:
    text = BASE.replace("  Contact:\n    fields:\n      email: Email\n      company: Account.Name\n", "")
    with pytest.raises(MappingError, match=r"line 1, key 'objects': map Contact too"):
        load(tmp_path, text)


def test_a_missing_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="does not exist"):
        load_salesforce_mapping(tmp_path / "nope.yaml")


def test_conditions_ignore_case_and_read_booleans_as_words() -> None:
    from connector.crm.salesforce_records import activity_from

    mapping = load_salesforce_mapping(ROOT / "mappings" / "salesforce.yaml")
    acts = mapping.activities
    now = 1_800_000_000.0

    def kind(source: str, record: dict[str, object]) -> str | None:
        found = activity_from(source, acts.sources[source], acts.rules, record, oldest=0, now=now)  # type: ignore[index]
        return found.kind if isinstance(found, Activity) else None

    day = "2026-06-01"
    assert kind("Task", {"Subject": "bounced: your note", "ActivityDate": day}) == "email_bounce"
    assert kind("Task", {"Subject": "RE: pricing", "Type": "email", "ActivityDate": day}) == "email_reply"
    assert kind("Task", {"Subject": "Hello", "Type": "Email", "ActivityDate": day}) is None
    assert (
        kind("Task", {"Subject": "Intro", "TaskSubtype": "Call", "CreatedDate": "2026-06-01T10:00:00.000+0000"})
        == "call"
    )
    assert kind("Event", {"Subject": "Demo", "ActivityDateTime": "2026-06-01T10:00:00.000+0000"}) == "meeting"
    webinar = {"Campaign": {"Name": "Q3 webinar", "Type": "Webinar"}, "CreatedDate": "2026-06-01T10:00:00.000+0000"}
    assert kind("CampaignMember", {**webinar, "Status": "Attended"}) == "webinar_attended"
    assert kind("CampaignMember", {**webinar, "Status": "Registered"}) == "webinar_registered"
    content = {"Campaign": {"Name": "Guide", "Type": "Content"}, "CreatedDate": "2026-06-01T10:00:00.000+0000"}
    assert kind("CampaignMember", {**content, "HasResponded": True}) == "form_submission"
    assert kind("CampaignMember", {**content, "HasResponded": False}) is None
    # Dated after `now` (a task due next month) is not a signal yet.
    assert kind("Task", {"Subject": "Bounced", "ActivityDate": "2030-01-01"}) is None
