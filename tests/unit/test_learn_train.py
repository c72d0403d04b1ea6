"""The learned probability, trained on synthetic leads whose truth differs from the shipped rules."""

from __future__ import annotations

import time
from functools import cache

import numpy as np
import pytest

from connector.domain import Activity
from connector.engine import ScoringModel, load_scoring
from connector.errors import UserError
from connector.learn.features import FeatureSpec
from connector.learn.predict import NO_FACTORS, Predictor
from connector.learn.train import (
    MIN_OUTCOMES,
    Figures,
    TrainedModel,
    floor_sentence,
    keep_decision,
    leakage,
    summary_lines,
    train,
)
from connector.mappings.probability import ProbabilitySettings
from tests.conftest import ROOT
from tests.predict_synthetic import DAY, READ_AT, make_dataset, make_examples


@cache
def rules() -> ScoringModel:
    return load_scoring(ROOT / "mappings" / "scoring.yaml")


@cache
def trained() -> TrainedModel:
    return train(make_dataset(700, seed=3), rules(), ProbabilitySettings(exclude_fields=["lead_status"]), now=READ_AT)


pytestmark = pytest.mark.slow  # one training, shared by the tests (about 10 s on a busy machine)


def test_the_learned_probability_separates_won_from_lost_better_than_the_rules_in_cross_validation() -> None:
    f = trained().figures
    assert f.folds == 15
    assert f.cv_auc > f.rules_auc + 0.05
    assert 0 < f.cv_auc_sd < 0.1


def test_the_probability_is_calibrated_out_of_fold() -> None:
    f = trained().figures
    assert f.brier < f.brier_base
    leads = sum(n for _, _, n, _, _ in f.calibration)
    assert leads == f.outcomes
    gap = sum(n * abs(p - o) for _, _, n, p, o in f.calibration) / leads
    assert gap < 0.08  # mean distance between predicted and observed per bin, weighted by leads
    predicted = sum(n * p for _, _, n, p, _ in f.calibration) / leads
    assert abs(predicted - f.won / f.outcomes) < 0.03  # on average, as many wins as predicted


def test_fields_filled_only_after_the_outcome_are_excluded_and_said_why() -> None:
    excluded = {e.field: e.why for e in trained().figures.excluded}
    assert excluded["lead_status"].startswith("listed in scoring.yaml probability.exclude_fields")
    assert "filled on 100% of leads with an outcome but on 0% of open leads" in excluded["closed_reason"]
    assert "its dates fall after the outcome" in excluded["contract_date"]
    assert not any(c.startswith(("closed_reason", "contract_date")) for c in trained().spec.columns)
    text = "\n".join(summary_lines(trained().figures))
    assert "closed_reason: filled on 100%" in text


def test_a_custom_field_is_a_feature() -> None:
    assert "plan_tier=enterprise" in trained().spec.columns


def test_leakage_finds_nothing_on_clean_data() -> None:
    assert leakage(make_examples(300, seed=4, leaks=False), ProbabilitySettings()) == []


def test_activities_after_the_outcome_do_not_count() -> None:
    spec = trained().spec
    at = READ_AT - 10 * DAY
    before = [Activity("meeting", at - 2 * DAY)]
    after = [*before, Activity("meeting", at + DAY), Activity("meeting", at + 5 * DAY)]
    scored = rules().score({}, before, at)
    assert spec.row({}, after, at, scored) == spec.row({}, before, at, scored)


def test_below_the_floor_training_refuses_with_how_many_more_are_needed() -> None:
    small = make_dataset(160, seed=5, open_share=0.0)
    won = sum(e.outcome == "won" for e in small.labelled())
    with pytest.raises(UserError) as caught:
        train(small, rules(), ProbabilitySettings(), now=READ_AT)
    assert str(caught.value) == (
        f"hubspot has 160 outcomes ({won} won, {160 - won} lost), too few to learn a probability: training needs at "
        f"least {MIN_OUTCOMES} outcomes with at least 40 won and 40 lost, so 40 more outcomes are needed."
    )


def test_too_few_of_one_class_is_named() -> None:
    assert floor_sentence("salesforce", 30, 400) == (
        "salesforce has 430 outcomes (30 won, 400 lost), too few to learn a probability: training needs at least "
        "200 outcomes with at least 40 won and 40 lost, so 10 more outcomes (10 more won) are needed."
    )
    assert floor_sentence("hubspot", 40, 160) is None


def test_between_the_floor_and_a_comfortable_size_the_summary_states_the_uncertainty() -> None:
    f = trained().figures
    assert f.uncertain
    assert any(line.startswith(f"uncertainty  {f.outcomes} outcomes is enough to learn from but below 1000")
               for line in summary_lines(f))


def test_a_new_model_is_kept_unless_its_auc_is_worse_by_more_than_the_margin() -> None:
    active = Figures.from_json({**trained().figures.as_json(), "cv_auc": 0.80, "model_version": "hubspot-a"})
    new = Figures.from_json({**trained().figures.as_json(), "cv_auc": 0.785})
    assert keep_decision(new, active, 0.02)[0]
    worse = Figures.from_json({**trained().figures.as_json(), "cv_auc": 0.77})
    keep, why = keep_decision(worse, active, 0.02)
    assert not keep
    assert why == ("its CV AUC 0.770 is 0.030 below the active model's 0.800 (hubspot-a), more than the allowed 0.02")
    assert keep_decision(worse, None, 0.02) == (True, "no model was active")


def test_the_json_figures_carry_what_scripts_rely_on() -> None:
    d = trained().figures.as_json()
    assert {"cv_auc", "brier", "outcomes", "model_version"} <= set(d)
    assert d["outcomes"] == trained().figures.won + trained().figures.lost
    assert Figures.from_json(d).as_json() == d


def test_applying_gives_a_percentage_and_factors_for_and_against_in_words() -> None:
    predictor = Predictor(trained())
    model = rules()
    strong = {"industry": "Automotive", "plan_tier": "enterprise", "employees": "5000", "job_title": "CEO"}
    weak = {"industry": "Retail", "plan_tier": "none", "employees": "3", "job_title": "Student"}
    meetings = [Activity("meeting", READ_AT - d * DAY) for d in (3, 10, 20)]
    items = [(strong, meetings, model.score(strong, meetings, READ_AT)), (weak, [], model.score(weak, [], READ_AT))]
    (p_strong, f_strong), (p_weak, f_weak) = predictor.apply(items, READ_AT)
    assert 0 <= p_weak < p_strong <= 100
    assert p_strong - p_weak > 30
    assert f_strong.startswith("For: ")
    assert "plan tier enterprise" in f_strong
    assert f"3 meetings, the last on {time.strftime('%Y-%m-%d', time.gmtime(READ_AT - 3 * DAY))}" in f_strong
    assert "Against: " in f_weak
    assert "plan tier none" in f_weak
    pros = f_strong.split(". Against: ")[0].removeprefix("For: ").split("; ")
    assert 1 <= len(pros) <= 3


def test_a_lead_like_the_typical_one_has_no_factors() -> None:
    predictor = Predictor(trained())
    X = np.asarray([trained().baseline])
    assert predictor.factors(X, predictor.probabilities(X), READ_AT) == [NO_FACTORS]


def test_a_feature_plan_reads_numbers_categories_and_identifiers() -> None:
    profiles = [{"employees": str(10 * i), "industry": ["A", "B"][i % 2], "customer_code": f"c-{i}",
                 "email": f"x{i}@y.example"} for i in range(40)]
    spec = FeatureSpec.fit(profiles, rules())
    hows = {p.name: p.how for p in spec.fields}
    assert hows == {"employees": "number", "industry": "category", "customer_code": "present"}
