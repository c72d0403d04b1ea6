"""`leadscore setup` on Salesforce creates the score fields through the Tooling API, once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.server import Sandbox, admin_call
from tests.integration.test_cli import run

SCORE_FIELDS = ("Lead_Score__c", "Lead_Fit_Score__c", "Lead_Engagement_Score__c", "Lead_Band__c", "Lead_Grade__c",
                "Lead_Score_Reasons__c", "Lead_Scored_At__c", "Lead_Score_Model__c")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=50, seed=2) as sb:
        yield sb


def env(sb: Sandbox, redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "SALESFORCE_INSTANCE_URL": sb.salesforce_url,
            "SALESFORCE_ACCESS_TOKEN": sb.salesforce_token, "SALESFORCE_CA_BUNDLE": sb.ca_cert}


def described(sb: Sandbox, obj: str) -> dict[str, dict[str, object]]:
    import requests

    session = requests.Session()
    session.trust_env = False
    resp = session.get(f"{sb.salesforce_url}/services/data/v59.0/sobjects/{obj}/describe",
                       headers={"Authorization": f"Bearer {sb.salesforce_token}"}, verify=sb.ca_cert, timeout=30)
    resp.raise_for_status()
    return {f["name"]: f for f in resp.json()["fields"]}


def test_setup_creates_the_score_fields_and_a_second_run_changes_nothing(sandbox: Sandbox, redis_url: str) -> None:
    before = run(["check"], env(sandbox, redis_url))
    assert before.returncode == 1

    first = run(["setup"], env(sandbox, redis_url))

    assert first.returncode == 0, first.stdout + first.stderr
    for obj in ("Lead", "Contact"):
        fields = described(sandbox, obj)
        for name in SCORE_FIELDS:
            assert name in fields, f"{obj}.{name} was not created"
            assert f"salesforce: {obj}: created the field {name} (" in first.stdout
        assert fields["Lead_Score__c"]["type"] == "double"
        assert fields["Lead_Scored_At__c"]["type"] == "datetime"
        assert fields["Lead_Score_Reasons__c"]["type"] == "textarea"
        assert fields["Lead_Score_Reasons__c"]["length"] == 32768
        assert fields["Lead_Band__c"]["type"] == "string"
    calls_after_first = admin_call(sandbox.salesforce_url, "/__sandbox__/stats", None, sandbox.ca_cert)["calls"]

    second = run(["setup"], env(sandbox, redis_url))

    assert second.returncode == 0
    assert "created" not in second.stdout
    assert second.stdout.count("is in place") == 2 * len(SCORE_FIELDS)
    calls = admin_call(sandbox.salesforce_url, "/__sandbox__/stats", None, sandbox.ca_cert)["calls"]
    tooling = [k for k in calls if "tooling" in k]
    assert tooling
    assert all(calls[k] == calls_after_first[k] for k in tooling), "a second setup created fields again"
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
