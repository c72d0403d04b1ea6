"""Backtest figures: AUC, bands, grades, deciles, calibration and rules, each lead scored before its outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connector.domain import Activity, Lead
from connector.engine import ScoringModel, load_scoring
from connector.errors import UserError
from connector.learn.dataset import Example, dataset_from_examples
from connector.learn.evaluate import auc, backtest, rule_matrix, score_dataset
from tests.conftest import ROOT
from tests.learn_synthetic import READ_AT, synthetic_dataset

DAY = 86400.0

TINY = """
model:
  label: tiny
  bands: {warm: 40, hot: 75}
  grades: {A: 50, B: 20, C: 1}
fit:
  - name: Chief
    field: job_title
    words: [ceo]
    points: 50
engagement:
  - name: Meeting held
    kind: meeting
    points: 30
    decay: false
"""


@pytest.fixture
def tiny(tmp_path: Path) -> ScoringModel:
    path = tmp_path / "scoring.yaml"
    path.write_text(TINY)
    return load_scoring(path)


def lead(i: int, title: str, meetings: list[float]) -> Lead:
    return Lead("hubspot", "contact", str(i), {"job_title": title}, [Activity("meeting", t, {}) for t in meetings])


def test_auc_counts_ties_as_half() -> None:
    assert auc([2, 1], [1, 0]) == 1.0
    assert auc([1, 2], [1, 0]) == 0.0
    assert auc([1, 1], [1, 0]) == 0.5


def test_bands_and_grades_count_won_and_lost_per_band(tiny: ScoringModel) -> None:
    t = READ_AT - 10 * DAY
    examples = [
        Example(lead(1, "CEO", [t - DAY]), "won", t),      # 80 hot
        Example(lead(2, "CEO", [t - DAY]), "lost", t),     # 80 hot
        Example(lead(3, "CEO", []), "won", t),             # 50 warm
        Example(lead(4, "Engineer", []), "lost", t),       # 0 cold
        Example(lead(5, "Engineer", []), "lost", None),    # 0 cold, undated
        Example(lead(6, "CEO", []), None, None),           # open, warm
    ]
    bt = backtest(dataset_from_examples("hubspot", examples, READ_AT), tiny)
    d = bt.as_dict()
    assert (d["leads"], d["won"], d["lost"], d["open"], d["undated"]) == (5, 2, 3, 1, 1)
    assert d["bands"]["hot"] == {"leads": 2, "won": 1, "lost": 1, "rate": 0.5, "open": 0}
    assert d["bands"]["warm"] == {"leads": 1, "won": 1, "lost": 0, "rate": 1.0, "open": 1}
    assert d["bands"]["cold"]["leads"] == 2
    assert d["bands"]["cold"]["rate"] == 0.0
    assert d["grades"]["A"]["leads"] == 3
    assert d["grades"]["D"]["leads"] == 2
    # won 80, 50 vs lost 80, 0, 0: of 6 pairs the won lead is above in 4, tied in 1
    assert d["auc"] == pytest.approx(4.5 / 6)


def test_an_activity_after_the_outcome_does_not_count(tiny: ScoringModel) -> None:
    t = READ_AT - 10 * DAY
    examples = [
        Example(lead(1, "CEO", [t + DAY]), "won", t),  # the meeting came after the outcome: warm, not hot
        Example(lead(2, "Engineer", []), "lost", t),
        Example(lead(3, "Engineer", []), "lost", t),
        Example(lead(4, "CEO", []), "won", t),
    ]
    ds = dataset_from_examples("hubspot", examples, READ_AT)
    bt = backtest(ds, tiny)
    assert bt.bands["hot"]["leads"] == 0
    assert bt.bands["warm"]["leads"] == 2
    meeting = next(r for r in bt.rules if r["rule"] == "Meeting held")
    assert meeting["matched"] == 0


def test_deciles_find_every_won_lead_and_lift_is_the_rate_over_the_base() -> None:
    ds = synthetic_dataset(1200, seed=3)
    model = load_scoring(ROOT / "mappings" / "scoring.yaml")
    bt = backtest(ds, model)
    assert len(bt.deciles) == 10
    assert sum(d["leads"] for d in bt.deciles) == bt.leads
    assert bt.deciles[-1]["cumulative_won_share"] == pytest.approx(1.0)
    for d in bt.deciles:
        assert d["lift"] == pytest.approx(d["rate"] / bt.base_rate)
    assert [d["min_score"] for d in bt.deciles] == sorted((d["min_score"] for d in bt.deciles), reverse=True)
    assert sum(c["leads"] for c in bt.calibration) == bt.leads
    assert 0.5 < bt.auc < 0.9


def test_a_rules_feature_times_its_points_is_its_contribution() -> None:
    ds = synthetic_dataset(400, seed=5)
    model = load_scoring(ROOT / "mappings" / "scoring.yaml")
    rm = rule_matrix(ds, model)
    column = {r.name: j for j, r in enumerate(rm.rules)}
    points = {r.name: r.points for r in rm.rules}
    checked = 0
    for i, (_, result) in enumerate(ds.score_all(model)):
        seen = {c.rule for c in result.contributions}
        for c in result.contributions:
            assert rm.X[i, column[c.rule]] * points[c.rule] == pytest.approx(c.points, abs=1e-9)
            checked += 1
        for name, j in column.items():
            if name not in seen:
                assert rm.X[i, j] == 0
    assert checked > 1000


def test_scores_follow_the_datasets_order_and_outcomes() -> None:
    ds = synthetic_dataset(100, seed=2)
    s = score_dataset(ds, load_scoring(ROOT / "mappings" / "scoring.yaml"))
    assert s.keys == [e.lead.key for e in ds.examples]
    assert list(s.y) == [-1 if e.outcome is None else int(e.outcome == "won") for e in ds.examples]
    assert np.all((s.score >= 0) & (s.score <= 100))


def test_without_both_outcomes_the_backtest_says_so_in_one_sentence(tiny: ScoringModel) -> None:
    examples = [Example(lead(i, "CEO", []), "won", READ_AT - DAY) for i in range(5)]
    with pytest.raises(UserError, match=r"has 5 won and 0 lost outcome\(s\); at least 2 of each are needed"):
        backtest(dataset_from_examples("hubspot", examples, READ_AT), tiny)


def section_for_tests(ds, bt):  # type: ignore[no-untyped-def]
    """A provider as another module would register it in EXTRA_SECTIONS."""
    from connector.learn.report import Section

    return Section("Predicted probability", f"<p>{len(ds.examples)} leads, AUC {bt.auc:.3f}</p>")


def test_sections_named_in_extra_sections_are_added_to_the_report() -> None:
    from connector.learn import report

    ds = synthetic_dataset(300, seed=12)
    bt = backtest(ds, load_scoring(ROOT / "mappings" / "scoring.yaml"))
    extra = report.extra_sections(ds, bt, ["tests.unit.test_learn_evaluate:section_for_tests"])
    page = report.render_html(bt, extra=extra)
    assert page.index("<h2>Rules: lift and suggested points</h2>") < page.index("<h2>Predicted probability</h2>")
    assert f"<p>300 leads, AUC {bt.auc:.3f}</p>" in page
    assert report.EXTRA_SECTIONS == ["connector.learn.reliability:reliability_section"]  # the learned probability
