"""Suggested points: fitted on the rules' own features, signs kept, a valid scoring.yaml, honest (held-out) figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connector.engine import ScoringModel, load_scoring
from connector.errors import UserError
from connector.learn.evaluate import rule_matrix, score_dataset
from connector.learn.suggest import Suggestion, Target, emulate, parse_target, scoring_yaml, suggest
from tests.conftest import ROOT
from tests.learn_synthetic import READ_AT, synthetic_dataset

NOW = READ_AT + 3600


@pytest.fixture(scope="module")
def shipped() -> ScoringModel:
    return load_scoring(ROOT / "mappings" / "scoring.yaml")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return synthetic_dataset(2500, seed=11)


@pytest.fixture(scope="module")
def top10(data, shipped: ScoringModel) -> Suggestion:  # type: ignore[no-untyped-def]
    return suggest(data, shipped, Target("top", 0.10))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, shipped: ScoringModel, top10: Suggestion) -> Path:
    path = tmp_path_factory.mktemp("suggest") / "scoring.yaml"
    path.write_text(scoring_yaml(shipped.spec, top10, now=NOW))
    return path


@pytest.mark.parametrize(("text", "target"), [
    ("top:10%", Target("top", 0.10)),
    ("TOP: 2.5 %", Target("top", 0.025)),
    ("precision:0.6", Target("precision", 0.6)),
    ("precision:60%", Target("precision", 0.6)),
])
def test_a_target_is_a_top_share_or_a_precision(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["top:0%", "top:100%", "top:10", "precision:1.5", "hot", ""])
def test_a_bad_target_is_one_sentence(text: str) -> None:
    with pytest.raises(UserError, match=r"^--target must be top:N% .* not '.*'\.$"):
        parse_target(text)


def test_the_suggestion_beats_the_shipped_model_on_held_out_leads(top10: Suggestion) -> None:
    assert top10.suggested["auc"] > top10.current["auc"] + 0.05
    assert len(top10.current["bands"]) == 3
    assert top10.suggested["bands"]["hot"]["rate"] > top10.suggested["bands"]["cold"]["rate"]


def test_the_written_file_is_a_valid_model_with_every_rule_name_and_test_kept(
    written: Path, shipped: ScoringModel
) -> None:
    model = load_scoring(written)
    assert [r.name for r in model.spec.fit] == [r.name for r in shipped.spec.fit]
    assert [r.name for r in model.spec.engagement] == [r.name for r in shipped.spec.engagement]
    for old, new in zip(shipped.spec.fit, model.spec.fit, strict=True):
        assert (old.field, old.operators(), old.exclusive, old.bant) == (new.field, new.operators(), new.exclusive,
                                                                         new.bant)
    for old_e, new_e in zip(shipped.spec.engagement, model.spec.engagement, strict=True):
        assert (old_e.kind, old_e.where, old_e.window_days, old_e.max_count) == (
            new_e.kind, new_e.where, new_e.window_days, new_e.max_count)
    assert model.spec.aliases == shipped.spec.aliases
    assert model.label.startswith(shipped.label)


def test_the_files_header_says_from_what_data_and_when(written: Path, top10: Suggestion) -> None:
    head = written.read_text().split("\nmodel:")[0]
    assert "on 2026-05-28 21:26 UTC" in head  # NOW
    assert "from hubspot data read at 2026-05-28 20:26 UTC" in head
    assert f"{top10.leads:,} outcomes ({top10.won:,} won, {top10.lost:,} lost" in head
    assert f"AUC {top10.current['auc']:.3f} today, {top10.suggested['auc']:.3f} with these points" in head


def test_signs_are_kept_sensible(top10: Suggestion) -> None:
    for rule in top10.rules:
        new = top10.points[rule.name]
        assert new * rule.points >= 0, rule.name


def test_the_engine_scores_the_written_file_as_the_fit_computed(data, written: Path, top10: Suggestion,  # type: ignore[no-untyped-def]
                                                                 shipped: ScoringModel) -> None:
    model = load_scoring(written)
    engine = score_dataset(data, model).score
    rm = rule_matrix(data, shipped)
    fitted, _ = emulate(rm.X, np.array([top10.points[r.name] for r in rm.rules]), rm.rules)
    assert np.mean(engine == fitted) > 0.995
    assert np.max(np.abs(engine - fitted)) <= 1


def test_top_ten_percent_makes_at_most_a_tenth_of_the_leads_hot(data, written: Path) -> None:  # type: ignore[no-untyped-def]
    model = load_scoring(written)
    s = score_dataset(data, model)
    hot = float(np.mean(np.array(s.band) == "hot"))
    assert 0.05 < hot <= 0.10
    assert model.warm_threshold < model.hot_threshold
    g = model.spec.model.grades
    assert g.A > g.B > g.C


def test_a_precision_target_puts_hot_where_that_share_converted(data, shipped: ScoringModel) -> None:  # type: ignore[no-untyped-def]
    s = suggest(data, shipped, Target("precision", 0.6), folds=3)
    rm = rule_matrix(data, shipped)
    scores, _ = emulate(rm.X, np.array([s.points[r.name] for r in rm.rules]), rm.rules)
    lab = rm.y >= 0
    hot = lab & (scores >= s.cuts.hot)
    assert np.mean(rm.y[hot]) >= 0.6
    assert np.mean(rm.y[lab & (scores >= s.cuts.hot - 1)]) < 0.6 or s.cuts.hot == 1


def test_a_precision_no_score_reaches_is_said_and_the_best_threshold_taken() -> None:
    from connector.learn.suggest import hot_threshold

    scores = np.array([float(s) for s in range(100)] * 3)
    y = np.array([1 if (s % 3 == 0) else 0 for s in range(300)])  # about a third convert at every score
    population = scores
    hot, note = hot_threshold(Target("precision", 0.9), population, scores, y)
    assert 1 <= hot <= 100
    assert note.startswith("no score reaches a precision of 90% on these outcomes; hot from ")
