"""read_dataset against the sandbox over real HTTP: outcomes as the CRM has them, point in time, no writes.

Expected counts are read back through HubSpot's API with the official client (contacts' lifecycle
stage and lead status, deals and their contacts), and checked against the sandbox's hidden truth.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests
import urllib3
import yaml
from hubspot import HubSpot
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.errors import UserError
from connector.learn.dataset import Dataset, read_dataset
from connector.mappings.hubspot import Account
from sandbox import sf_ids
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process

N = 300
HTTP = urllib3.PoolManager()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=N, seed=21, hubspot_rate=100_000) as sb:
        yield sb


def runtime(sb: Sandbox, redis_url: str, mappings: Path = ROOT / "mappings") -> Runtime:
    settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sb.hubspot_url,
                        hubspot_access_token=sb.hubspot_token, mappings_dir=mappings)  # fmt: skip
    return build_runtime(settings, overrides={"hubspot": {"account": Account(requests_per_10s=10_000, daily=0)}})


@pytest.fixture
def hubspot_dataset(sandbox: Sandbox, redis_url: str) -> Iterator[Dataset]:
    rt = runtime(sandbox, redis_url)
    HTTP.request("POST", sandbox.hubspot_url + "/__sandbox__/stats/reset")
    yield read_dataset(rt, "hubspot")
    rt.close()


def _api_outcomes(sb: Sandbox) -> dict[str, str]:
    """contact id -> won/lost, from the contacts and deals as HubSpot's API returns them."""
    client = HubSpot(access_token=sb.hubspot_token, host=sb.hubspot_url)
    contacts = client.crm.contacts.get_all(properties=["lifecyclestage", "hs_lead_status"])
    out: dict[str, str] = {}
    for c in contacts:
        if c.properties.get("hs_lead_status") == "UNQUALIFIED":
            out[c.id] = "lost"
    deals = client.crm.deals.get_all(properties=["dealstage"], associations=["contacts"])
    for d in deals:
        stage = d.properties.get("dealstage")
        for assoc in (d.associations or {}).get("contacts").results if d.associations else []:
            if stage == "closedlost" and out.get(assoc.id) != "won":
                out[assoc.id] = "lost"
    for c in contacts:  # won beats lost
        if c.properties.get("lifecyclestage") in ("customer", "evangelist"):
            out[c.id] = "won"
    for d in deals:
        if d.properties.get("dealstage") == "closedwon":
            for assoc in (d.associations or {}).get("contacts").results if d.associations else []:
                out[assoc.id] = "won"
    return out


def test_hubspot_outcomes_match_what_the_api_shows_and_the_hidden_truth(
    sandbox: Sandbox, hubspot_dataset: Dataset
) -> None:
    got = {e.lead.id: e.outcome for e in hubspot_dataset.examples if e.outcome is not None}
    assert got == _api_outcomes(sandbox)
    truth = {str(i + 1): p.outcome for i in range(N) if (p := sandbox.population.person(i)).outcome}
    assert got == truth
    counts = hubspot_dataset.counts()
    assert counts["won"] > 10
    assert counts["lost"] > 10
    assert counts["open"] > counts["won"]
    assert counts["won"] + counts["lost"] + counts["open"] == N


def test_no_example_is_scored_with_activities_at_or_after_its_outcome(hubspot_dataset: Dataset) -> None:
    ds = hubspot_dataset
    dated = [e for e in ds.examples if e.outcome_at is not None]
    assert dated
    for e in dated:
        assert all(a.ts < e.outcome_at for a in e.activities_as_of(ds.read_at))
    # the future is really there to leak: customers were onboarded after they won
    won = [e for e in dated if e.outcome == "won"]
    assert sum(1 for e in won for a in e.lead.activities if a.ts >= e.outcome_at) > len(won)


def test_undated_outcomes_are_counted_and_scored_at_the_time_of_reading(hubspot_dataset: Dataset) -> None:
    ds = hubspot_dataset
    undated = [e for e in ds.labelled() if e.outcome_at is None]
    assert undated
    assert ds.undated() == len(undated)
    assert all(e.outcome == "lost" for e in undated)  # an UNQUALIFIED lead status has no date
    e = undated[0]
    assert e.as_of(ds.read_at) == ds.read_at
    assert e.activities_as_of(ds.read_at) == [a for a in e.lead.activities if a.ts < ds.read_at]


def test_the_fields_that_say_the_outcome_are_not_in_the_profile(hubspot_dataset: Dataset) -> None:
    for e in hubspot_dataset.examples:
        assert "lifecycle_stage" not in e.lead.profile
        assert "lead_status" not in e.lead.profile
        assert "email" in e.lead.profile


def test_reading_the_dataset_writes_nothing(sandbox: Sandbox, hubspot_dataset: Dataset) -> None:
    calls: dict[str, int] = orjson.loads(HTTP.request("GET", sandbox.hubspot_url + "/__sandbox__/stats").data)["calls"]
    writes = {k: n for k, n in calls.items() if k.startswith(("PATCH", "DELETE", "PUT"))
              or (k.startswith("POST") and not k.endswith(("/search", "/batch/read")))}  # fmt: skip
    assert calls
    assert not writes


def test_score_all_scores_each_lead_just_before_its_outcome(hubspot_dataset: Dataset) -> None:
    from connector.engine import load_scoring

    model = load_scoring(ROOT / "mappings" / "scoring.yaml")
    scored = hubspot_dataset.score_all(model)
    assert len(scored) == len(hubspot_dataset.examples)
    e, result = next((e, r) for e, r in scored if e.outcome == "won" and e.outcome_at is not None)
    assert result == model.score(e.lead.profile, e.activities_as_of(hubspot_dataset.read_at), e.outcome_at - 1)


def test_a_mapping_without_outcomes_is_one_clear_error(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> None:
    for name in ("scoring.yaml", "routing.yaml", "salesforce.yaml"):
        (tmp_path / name).write_text((ROOT / "mappings" / name).read_text())
    data: dict[str, Any] = yaml.safe_load((ROOT / "mappings" / "hubspot.yaml").read_text())
    data.pop("outcomes")
    (tmp_path / "hubspot.yaml").write_text(yaml.safe_dump(data))
    rt = runtime(sandbox, redis_url, tmp_path)
    with pytest.raises(UserError, match="no outcomes: section"):
        read_dataset(rt, "hubspot")
    rt.close()


# ----------------------------------------------------------------------------- Salesforce


def sf_runtime(sb: Sandbox, redis_url: str, tmp_path: Path) -> Runtime:
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir, dirs_exist_ok=True)
    settings = Settings(redis_url=redis_url, redis_url_given=True, mappings_dir=mdir,
                        salesforce_instance_url=sb.salesforce_url, salesforce_access_token=sb.salesforce_token,
                        salesforce_ca_bundle=Path(sb.ca_cert))  # fmt: skip
    return build_runtime(settings, redis_client=redis.Redis.from_url(redis_url), namespace=f"ds{tmp_path.name}")


def sf_client(sb: Sandbox) -> Salesforce:
    session = requests.Session()
    session.trust_env = False
    session.verify = sb.ca_cert
    return Salesforce(instance_url=sb.salesforce_url, session_id=sb.salesforce_token, session=session, version="59.0")


@pytest.fixture
def salesforce_dataset(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> Iterator[Dataset]:
    rt = sf_runtime(sandbox, redis_url, tmp_path)
    rt.adapter("salesforce").setup()  # `leadscore setup`: the score fields the sync reads too
    yield read_dataset(rt, "salesforce")
    rt.close()


def _sf_api_outcomes(sf: Salesforce) -> dict[str, str]:
    """record id -> won/lost, from SOQL: converted Leads and their Opportunities, Lead Status, contact roles."""
    out: dict[str, str] = {}
    for r in sf.query_all("SELECT Id, ConvertedOpportunity.IsWon, ConvertedOpportunity.IsClosed FROM Lead "
                          "WHERE IsConverted = true")["records"]:  # fmt: skip
        opp = r["ConvertedOpportunity"]
        if opp["IsWon"] or opp["IsClosed"]:
            out[r["Id"]] = "won" if opp["IsWon"] else "lost"
    for r in sf.query_all("SELECT Id FROM Lead WHERE IsConverted = false AND Status = 'Closed - Not Converted'")[
        "records"
    ]:
        out[r["Id"]] = "lost"
    converted = {r["ConvertedContactId"] for r in sf.query_all("SELECT ConvertedContactId FROM Lead "
                                                               "WHERE IsConverted = true")["records"]}  # fmt: skip
    contacts = {r["Id"] for r in sf.query_all("SELECT Id FROM Contact")["records"]} - converted  # read as their Leads
    roles = sf.query_all("SELECT ContactId, Opportunity.IsWon, Opportunity.IsClosed FROM OpportunityContactRole")
    for r in roles["records"]:
        if r["ContactId"] in contacts and r["Opportunity"]["IsClosed"]:
            out[r["ContactId"]] = "won" if r["Opportunity"]["IsWon"] else "lost"
    return out


def test_salesforce_outcomes_match_soql_and_the_hidden_truth(sandbox: Sandbox, salesforce_dataset: Dataset) -> None:
    ds = salesforce_dataset
    got = {e.lead.id: e.outcome for e in ds.examples if e.outcome is not None}
    sf = sf_client(sandbox)
    assert got == _sf_api_outcomes(sf)
    pop = sandbox.population
    truth = {sf_ids.make_id(sf_ids.LEAD if p.sf_type == "Lead" else sf_ids.CONTACT, i): p.outcome
             for i in range(N) if (p := pop.person(i)).outcome}  # fmt: skip
    assert got == truth
    # every person once: converted Leads are in the dataset as Leads, their Contacts are not read again
    assert len(ds.examples) == N
    converted = sf.query("SELECT COUNT() FROM Lead WHERE IsConverted = true")["totalSize"]
    assert converted > 0
    assert sum(1 for e in ds.examples if e.lead.object_type == "Lead" and e.lead.id in got) > converted


def test_salesforce_examples_are_not_scored_with_activities_after_their_conversion(salesforce_dataset: Dataset) -> None:
    ds = salesforce_dataset
    dated = [e for e in ds.examples if e.outcome_at is not None]
    assert dated
    for e in dated:
        assert all(a.ts < e.outcome_at for a in e.activities_as_of(ds.read_at))
        assert "lead_status" not in e.lead.profile
    assert any(a.ts >= e.outcome_at for e in dated for a in e.lead.activities)


def test_a_sync_never_writes_to_a_converted_lead(sandbox: Sandbox, redis_url: str, tmp_path: Path) -> None:
    """Salesforce refuses updates to converted Leads (CANNOT_UPDATE_CONVERTED_LEAD): the sync must not try."""
    sf = sf_client(sandbox)
    converted = sf.query_all("SELECT Id FROM Lead WHERE IsConverted = true")["records"]
    assert converted
    with pytest.raises(SalesforceMalformedRequest, match="CANNOT_UPDATE_CONVERTED_LEAD"):
        sf.Lead.update(converted[0]["Id"], {"Rating": "Hot"})  # what a write would meet
    rt = sf_runtime(sandbox, redis_url, tmp_path)
    rt.adapter("salesforce").setup()
    run = run_in_process(rt, "salesforce")
    rt.close()
    assert run.count("read") == N  # the unconverted Leads and the Contacts (converted ones too): every person once
    assert run.count("failed") == 0  # a write to a converted Lead would have been refused and counted here
    scored = sf.query_all("SELECT Id, IsConverted, Lead_Score__c FROM Lead")["records"]
    assert any(r["Lead_Score__c"] is not None for r in scored if not r["IsConverted"])
    assert all(r["Lead_Score__c"] is None for r in scored if r["IsConverted"])


def test_check_says_when_a_salesforce_outcome_field_is_missing(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    rt = sf_runtime(sandbox, redis_url, tmp_path)
    adapter = rt.adapter("salesforce")
    adapter.setup()
    assert adapter.check() == []
    rt.close()
    rt = sf_runtime(sandbox, redis_url, tmp_path)  # the mapping is read when the adapter is first built
    (tmp_path / "mappings" / "salesforce.yaml").write_text(
        (ROOT / "mappings" / "salesforce.yaml").read_text().replace("name: Status\n", "name: Stage__c\n")
    )
    assert rt.adapter("salesforce").check() == [
        "Lead: the outcomes: section of mappings/salesforce.yaml reads the field Stage__c, which Lead does not "
        "have; fix outcomes.field"
    ]
    rt.close()
