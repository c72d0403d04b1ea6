"""Telling an Outbound Message that echoes our own write from a real change (connector.echo)."""

from __future__ import annotations

import fakeredis

from connector.domain import Lead
from connector.echo import EchoFilter

FIELDS = {"Lead": {"Title": "job_title", "NumberOfEmployees": "employees", "AnnualRevenue": "annual_revenue",
                   "Industry": "industry"}}  # fmt: skip


def scored(lead_id: str = "00Q000000000001AAA") -> tuple[EchoFilter, Lead]:
    echo = EchoFilter(fakeredis.FakeRedis(), "t", FIELDS)
    lead = Lead(crm="salesforce", object_type="Lead", id=lead_id,
                profile={"job_title": "CTO", "employees": 250, "annual_revenue": 50_000_000.0})  # fmt: skip
    echo.remember("Lead", [lead])
    return echo, lead


def test_soap_text_and_rest_json_of_the_same_values_match_whatever_else_changed() -> None:
    echo, lead = scored()
    delivered = {"Id": lead.id, "Title": " CTO", "NumberOfEmployees": "250", "AnnualRevenue": "5.0E7",
                 "Lead_Score__c": "91", "OwnerId": "005000000000009AAA"}  # fmt: skip
    assert echo.echoes("Lead", [(lead.id, delivered)]) == [True]


def test_a_changed_missing_or_new_scoring_value_or_an_unknown_record_is_not_an_echo() -> None:
    echo, lead = scored()
    same = {"Title": "CTO", "NumberOfEmployees": "250", "AnnualRevenue": "50000000"}
    assert echo.echoes("Lead", [
        (lead.id, {**same, "Title": "CEO"}),  # changed
        (lead.id, {"NumberOfEmployees": "250", "AnnualRevenue": "50000000"}),  # not carried: rescore to be safe
        (lead.id, {**same, "Industry": "Software"}),  # was empty
        ("00Q000000000002AAA", same),  # never scored
    ]) == [False, False, False, False]  # fmt: skip
    assert echo.echoes("Lead", [(lead.id, same)]) == [True]
    assert echo.forget("Lead", lead.id) == 1
    assert echo.echoes("Lead", [(lead.id, same)]) == [False]
