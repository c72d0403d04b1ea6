"""Preview: both models on the same leads, band moves, new hot leads per region and rep, top movers."""

from __future__ import annotations

import pytest

from connector.domain import Rep
from connector.engine import ScoringModel, load_scoring
from connector.learn.preview import compare, share_by_round_robin
from connector.learn.suggest import Target, scoring_yaml, suggest
from connector.mappings.routing import RepOverride, RoutingConfig, load_routing
from tests.conftest import ROOT
from tests.learn_synthetic import READ_AT, REGIONS, synthetic_dataset

REPS = [
    Rep("11", "anna@example.com", "Anna", "DACH", teams=("DACH",)),
    Rep("12", "ben@example.com", "Ben", "DACH", teams=("DACH",)),
    Rep("13", "cleo@example.com", "Cleo", "DACH", active=False, teams=("DACH",)),
    Rep("21", "dan@example.com", "Dan", "Nordics", teams=("Nordics",)),
]


@pytest.fixture(scope="module")
def routing() -> RoutingConfig:
    return load_routing(ROOT / "mappings" / "routing.yaml")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ScoringModel, ScoringModel]:
    current = load_scoring(ROOT / "mappings" / "scoring.yaml")
    s = suggest(synthetic_dataset(1500, seed=4), current, Target("top", 0.15), folds=3)
    path = tmp_path_factory.mktemp("preview") / "proposed.yaml"
    path.write_text(scoring_yaml(current.spec, s, now=READ_AT))
    return current, load_scoring(path)


def test_the_move_matrix_and_the_distributions_count_every_lead(models, routing: RoutingConfig) -> None:  # type: ignore[no-untyped-def]
    current, proposed = models
    leads = [e.lead for e in synthetic_dataset(600, seed=9).examples]
    p = compare(current, proposed, leads, READ_AT, crm="hubspot", routing=routing, reps=REPS)
    assert sum(sum(row.values()) for row in p.moves.values()) == len(leads) == p.leads
    before = [current.score(x.profile, x.activities, READ_AT).band for x in leads]
    after = [proposed.score(x.profile, x.activities, READ_AT).band for x in leads]
    for band in ("hot", "warm", "cold"):
        assert sum(p.moves[band].values()) == before.count(band) == p.bands["before"].get(band, 0)
        assert sum(row[band] for row in p.moves.values()) == after.count(band) == p.bands["after"].get(band, 0)
    newly = sum(1 for b, a in zip(before, after, strict=True) if a == "hot" and b != "hot")
    assert newly > 0
    assert p.new_hot == newly == sum(r.new_hot for r in p.regions)


def test_new_hot_leads_go_to_their_region_and_its_active_reps(models, routing: RoutingConfig) -> None:  # type: ignore[no-untyped-def]
    current, proposed = models
    leads = [e.lead for e in synthetic_dataset(600, seed=9).examples]
    for i, lead in enumerate(leads):
        lead.owner_id = "99" if i % 5 == 0 else None
    p = compare(current, proposed, leads, READ_AT, crm="hubspot", routing=routing, reps=REPS)
    plans = {r.region: r for r in p.regions}
    dach = plans["DACH"]
    assert dach.new_hot == dach.kept_owner + dach.to_route
    assert dach.kept_owner > 0
    assert set(dach.per_rep) == {"11", "12"}  # Cleo is inactive
    assert abs(dach.per_rep["11"] - dach.per_rep["12"]) <= 1
    assert sum(dach.per_rep.values()) == dach.to_route
    assert plans["DACH"].capacity["11"] == 15
    # Benelux has no rep in this CRM: its leads are counted as not routable to a rep
    if "Benelux" in plans:
        assert plans["Benelux"].per_rep == {}
        assert plans["Benelux"].unrouted == plans["Benelux"].to_route
    for region, _plan in plans.items():
        assert region in {*REGIONS.values(), "Rest of World"}, region
    assert p.movers
    assert abs(p.movers[0].delta) >= abs(p.movers[-1].delta)
    assert p.movers[0].before.reasons
    assert p.movers[0].after.reasons


def test_round_robin_shares_follow_the_weights(routing: RoutingConfig) -> None:
    cfg = routing.model_copy(update={"reps": {"anna@example.com": RepOverride(weight=2)}})
    assert share_by_round_robin("DACH", 9, REPS, cfg) == {"11": 6, "12": 3}
    assert share_by_round_robin("UK&I", 9, REPS, cfg) == {}
