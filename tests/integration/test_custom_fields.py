"""A custom contact property, declared in hubspot.yaml and read by a scoring rule, end to end through the
sandbox: `leadscore check` finds it (or says what is wrong), a sync scores by it, the score is read back."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hubspot import HubSpot
from hubspot.crm.contacts import SimplePublicObjectInput
from hubspot.crm.properties import Option, PropertyCreate

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process
from tests.integration.test_cli import run

PEOPLE = 40
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC).timestamp()
PROPERTY = "what_is_your_current_occupation"

DECLARE = f"""  custom:
    occupation: {{property: {PROPERTY}, type: enumeration}}
    total_visits: {{property: hs_analytics_num_visits, type: number}}
"""
RULES = """  - name: Working professional
    field: occupation
    in: [Working Professional]
    points: 30
  - name: Student by occupation
    all:
      - {field: occupation, equals: Student}
      - {field: total_visits, max: 1000000}
    points: -30
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=PEOPLE, seed=11, hubspot_rate=5000) as sb:
        yield sb


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> HubSpot:
    return HubSpot(access_token=sandbox.hubspot_token, host=sandbox.hubspot_url)


def mappings_in(tmp_path: Path, declared_type: str = "enumeration") -> Path:
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    hubspot = mdir / "hubspot.yaml"
    text = hubspot.read_text(encoding="utf-8")
    declare = DECLARE.replace("type: enumeration", f"type: {declared_type}")
    hubspot.write_text(text.replace("  owner: hubspot_owner_id\n", declare + "  owner: hubspot_owner_id\n", 1),
                       encoding="utf-8")
    scoring = mdir / "scoring.yaml"
    text = scoring.read_text(encoding="utf-8")
    scoring.write_text(text.replace("\nfit:\n", "\nfit:\n" + RULES, 1), encoding="utf-8")
    return mdir


def env(sandbox: Sandbox, redis_url: str, mdir: Path) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "HUBSPOT_BASE_URL": sandbox.hubspot_url,
            "HUBSPOT_ACCESS_TOKEN": sandbox.hubspot_token, "LEADSCORE_MAPPINGS": str(mdir)}


def create_property(client: HubSpot) -> None:
    existing = {p.name for p in client.crm.properties.core_api.get_all("contacts").results}
    if PROPERTY in existing:
        return
    client.crm.properties.core_api.create("contacts", PropertyCreate(
        name=PROPERTY, label="What is your current occupation", type="enumeration", field_type="select",
        group_name="contactinformation",
        options=[Option(label=v, value=v, display_order=i, hidden=False)
                 for i, v in enumerate(["Working Professional", "Student", "Unemployed", "Select"])],
    ))


def synced(rt: Runtime) -> None:
    rt.adapter("hubspot").setup()
    run_in_process(rt, "hubspot", now=NOW)


def runtime(sandbox: Sandbox, redis_url: str, mdir: Path) -> Runtime:
    settings = Settings(redis_url=redis_url, mappings_dir=mdir, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token)
    rt = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url))
    rt.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
    rt.router.clock = lambda: NOW
    return rt


def test_check_names_a_declared_custom_property_the_portal_does_not_have(
    sandbox: Sandbox, redis_url: str, tmp_path: Path, client: HubSpot
) -> None:
    if PROPERTY in {p.name for p in client.crm.properties.core_api.get_all("contacts").results}:
        pytest.skip("the property was created by an earlier test of this module")
    proc = run(["check"], env(sandbox, redis_url, mappings_in(tmp_path)))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"does not have: {PROPERTY}; fix the names or create them." in proc.stdout + proc.stderr


def test_check_says_when_the_declared_type_does_not_fit_the_property(
    sandbox: Sandbox, redis_url: str, tmp_path: Path, client: HubSpot
) -> None:
    create_property(client)
    proc = run(["check"], env(sandbox, redis_url, mappings_in(tmp_path, declared_type="number")))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert (f"mappings/hubspot.yaml declares contact.custom.occupation as number, but the HubSpot property "
            f"{PROPERTY} is of type enumeration; fix the type or name another property.") in out


def test_a_sync_scores_by_a_custom_property_and_the_score_is_read_back(
    sandbox: Sandbox, redis_url: str, tmp_path: Path, client: HubSpot
) -> None:
    create_property(client)
    contacts = client.crm.contacts.basic_api.get_page(limit=3).results
    professional, student, unanswered = (c.id for c in contacts)
    for contact_id, value in ((professional, "Working Professional"), (student, "Student"), (unanswered, "Select")):
        client.crm.contacts.basic_api.update(contact_id, SimplePublicObjectInput(properties={PROPERTY: value}))
    mdir = mappings_in(tmp_path)
    check = run(["check"], env(sandbox, redis_url, mdir))
    assert PROPERTY not in check.stdout + check.stderr

    rt = runtime(sandbox, redis_url, mdir)
    try:
        synced(rt)
    finally:
        rt.close()

    def read(contact_id: str) -> dict[str, str | None]:
        props = ["lead_score", "lead_fit_score", "lead_score_reasons", PROPERTY, "hs_analytics_num_visits"]
        return client.crm.contacts.basic_api.get_by_id(contact_id, properties=props).properties  # type: ignore[no-any-return]

    pro, stu, other = read(professional), read(student), read(unanswered)
    assert "+30 Working professional (Working Professional)" in (pro["lead_score_reasons"] or "")
    assert "-30 Student by occupation (Student, total visits " in (stu["lead_score_reasons"] or "")
    for props in (other,):
        assert "Working professional" not in (props["lead_score_reasons"] or "")
        assert "Student by occupation" not in (props["lead_score_reasons"] or "")
    assert pro["lead_score"] is not None
    assert stu["lead_score"] is not None


# ------------------------------------------------------------------ Salesforce


def test_salesforce_custom_fields_are_checked_and_read_by_type(redis_client: redis.Redis) -> None:
    from connector.mappings.salesforce import CustomField, SalesforceMapping, load_salesforce_mapping
    from tests.integration.test_salesforce_adapter import Org, read_all

    shipped = load_salesforce_mapping(ROOT / "mappings" / "salesforce.yaml")

    def declaring(**custom: CustomField) -> SalesforceMapping:
        lead = shipped.objects["Lead"].model_copy(update={"custom": custom})
        return shipped.model_copy(update={"objects": {**shipped.objects, "Lead": lead}})

    with Sandbox.start(contacts=30, seed=5) as sandbox:
        org = Org(sandbox)
        try:
            org.create_score_fields()
            missing = org.adapter(redis_client, declaring(visits=CustomField(field="Total_Visits__c", type="number")))
            assert ("Lead: mappings/salesforce.yaml reads visits from Total_Visits__c, but Lead has no field "
                    "Total_Visits__c (or the integration user cannot read it); fix objects.Lead.custom.visits or "
                    "create the field") in missing.check()

            org.admin("POST", "fields", {"object": "Lead", "fields": [
                {"name": "Total_Visits__c", "type": "double"}, {"name": "Occupation__c", "type": "string"}]})
            wrong = org.adapter(redis_client, declaring(visits=CustomField(field="Occupation__c", type="number")))
            assert ("Lead: visits is declared as number in mappings/salesforce.yaml, but Occupation__c is a string "
                    "field; fix objects.Lead.custom.visits.type") in wrong.check()

            lead_id = org.records("SELECT Id FROM Lead WHERE IsConverted = false LIMIT 1")[0]["Id"]
            org.sf.Lead.update(lead_id, {"Total_Visits__c": 12, "Occupation__c": "Student"})
            right = org.adapter(redis_client, declaring(
                visits=CustomField(field="Total_Visits__c", type="number"),
                occupation=CustomField(field="Occupation__c", type="enumeration"),
            ))
            assert not [p for p in right.check() if "custom" in p or "Total_Visits__c" in p]
            lead = next(x for x in read_all(right, "Lead") if x.id == lead_id)
            assert (lead.profile["visits"], lead.profile["occupation"]) == (12.0, "Student")
        finally:
            org.close()
