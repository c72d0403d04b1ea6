"""`leadscore setup` on Salesforce: the score fields through the Tooling API and a permission set giving the
integration user Edit access to them, assigned to that user; a second run changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.server import Sandbox, admin_call
from tests.integration.test_cli import run

SCORE_FIELDS = ("Lead_Score__c", "Lead_Fit_Score__c", "Lead_Engagement_Score__c", "Lead_Band__c", "Lead_Grade__c",
                "Lead_Score_Reasons__c", "Lead_Scored_At__c", "Lead_Score_Model__c", "Lead_Conversion_Probability__c",
                "Lead_Probability_Factors__c")
INTEGRATION_USER = "integration@sandbox-corp.example"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=50, seed=2) as sb:
        yield sb


def env(sb: Sandbox, redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "SALESFORCE_INSTANCE_URL": sb.salesforce_url,
            "SALESFORCE_ACCESS_TOKEN": sb.salesforce_token, "SALESFORCE_CA_BUNDLE": sb.ca_cert}


def api(sb: Sandbox, path: str, **params: str) -> Any:
    session = requests.Session()
    session.trust_env = False
    resp = session.get(f"{sb.salesforce_url}/services/data/v59.0/{path}", params=params, verify=sb.ca_cert,
                       headers={"Authorization": f"Bearer {sb.salesforce_token}"}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def described(sb: Sandbox, obj: str) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in api(sb, f"sobjects/{obj}/describe")["fields"]}


def query(sb: Sandbox, select: str, where: str, value: str) -> list[dict[str, Any]]:
    return list(api(sb, "query", q=f"SELECT {select} WHERE {where} = '{value}'")["records"])


def creations(sb: Sandbox) -> dict[str, int]:
    calls = admin_call(sb.salesforce_url, "/__sandbox__/stats", None, sb.ca_cert)["calls"]
    return {k: n for k, n in calls.items() if k.startswith("POST ")}


def test_setup_creates_the_fields_and_the_integration_users_access_and_a_second_run_changes_nothing(
    sandbox: Sandbox, redis_url: str
) -> None:
    assert run(["check"], env(sandbox, redis_url)).returncode == 1

    first = run(["setup"], env(sandbox, redis_url))

    assert first.returncode == 0, first.stdout + first.stderr
    for obj in ("Lead", "Contact"):
        fields = described(sandbox, obj)
        for name in SCORE_FIELDS:
            assert fields[name]["updateable"] is True, f"{obj}.{name} is not editable by the integration user"
            assert f"salesforce: {obj}: created the field {name} (" in first.stdout
        assert fields["Lead_Score__c"]["type"] == "double"
        assert fields["Lead_Scored_At__c"]["type"] == "datetime"
        assert (fields["Lead_Score_Reasons__c"]["type"], fields["Lead_Score_Reasons__c"]["length"]) == (
            "textarea", 32768)
        assert (fields["Lead_Band__c"]["type"], fields["Lead_Band__c"]["length"]) == ("string", 20)
        assert fields["Lead_Conversion_Probability__c"]["type"] == "double"
        assert (fields["Lead_Probability_Factors__c"]["type"], fields["Lead_Probability_Factors__c"]["length"]) == (
            "textarea", 32768)
    [ps] = query(sandbox, "Id, Label FROM PermissionSet", "Name", "Leadscore_Integration")
    perms = query(sandbox, "Field, PermissionsEdit FROM FieldPermissions", "ParentId", ps["Id"])
    assert sorted(p["Field"] for p in perms) == sorted(f"{o}.{f}" for o in ("Lead", "Contact") for f in SCORE_FIELDS)
    assert all(p["PermissionsEdit"] for p in perms)
    [assignment] = query(sandbox, "AssigneeId FROM PermissionSetAssignment", "PermissionSetId", ps["Id"])
    [user] = query(sandbox, "Email FROM User", "Id", assignment["AssigneeId"])
    assert user["Email"] == INTEGRATION_USER
    assert ("salesforce: created the permission set Leadscore_Integration; gave it Edit access to 20 field(s); "
            "assigned it to the integration user") in first.stdout.splitlines()
    before = creations(sandbox)

    second = run(["setup"], env(sandbox, redis_url))

    assert second.returncode == 0
    assert creations(sandbox) == before, "a second setup created something again"
    assert "created" not in second.stdout
    assert second.stdout.count("(Number(18,0)) is in place") == 2 * 3
    assert ("salesforce: the permission set Leadscore_Integration is in place: Edit access to 20 fields, assigned "
            "to the integration user") in second.stdout.splitlines()
    assert run(["check"], env(sandbox, redis_url)).returncode == 0


def test_a_user_without_customize_application_is_told_which_permission_and_what_to_create(
    sandbox: Sandbox, redis_url: str
) -> None:
    admin_call(sandbox.salesforce_url, "/__sandbox__/salesforce/permissions", {"customize_application": False},
               sandbox.ca_cert)

    proc = run(["setup"], env(sandbox, redis_url))

    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    refusals = [x for x in proc.stdout.splitlines() if "may not create fields" in x]
    assert refusals == [
        f'salesforce: {obj}: the integration user may not create fields: it needs the "Customize Application" '
        f"permission; or create these fields by hand in Setup > Object Manager > {obj} > Fields & Relationships"
        for obj in ("Lead", "Contact")
    ]
    assert "salesforce: Lead: create the field Lead_Score__c (Number(18,0))" in proc.stdout
    assert "Lead_Score__c" not in described(sandbox, "Lead")


def test_fields_made_by_hand_without_access_get_it_from_setup_and_a_refusal_names_the_permission(
    sandbox: Sandbox, redis_url: str
) -> None:
    admin_call(sandbox.salesforce_url, "/__sandbox__/salesforce/permissions", {"manage_permission_sets": False},
               sandbox.ca_cert)
    refused = run(["setup"], env(sandbox, redis_url))

    assert refused.returncode == 1
    assert [x for x in refused.stdout.splitlines() if "permission sets" in x] == [
        'salesforce: the integration user may not create or assign permission sets: it needs the "Manage Profiles '
        'and Permission Sets" and "Assign Permission Sets" permissions; or in Setup > Permission Sets create '
        "Leadscore_Integration, give it Read and Edit on the score fields of Lead and Contact (Object Settings), and "
        "assign it to the integration user (Manage Assignments)"
    ]
    assert "Lead_Score__c" not in described(sandbox, "Lead")  # created, but nobody may see it yet

    admin_call(sandbox.salesforce_url, "/__sandbox__/salesforce/permissions", {"manage_permission_sets": True},
               sandbox.ca_cert)
    again = run(["setup"], env(sandbox, redis_url))

    assert again.returncode == 0, again.stdout
    assert "salesforce: Lead: the field Lead_Score__c exists but the integration user cannot see it yet; " \
           "the permission set below gives it access" in again.stdout
    assert described(sandbox, "Lead")["Lead_Score__c"]["updateable"] is True
