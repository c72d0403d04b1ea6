"""How well a scoring model separates won from lost: the figures of `leadscore backtest`.

Pure functions over a `Dataset` (connector/learn/dataset.py): every lead is scored as
it was just before its outcome (`Dataset.score_all`), so no activity from after the
outcome counts. What comes out:

- AUC: the chance that a won lead scores above a lost one (ties count half).
- conversion by band and by grade: won / (won + lost) of the labelled leads in each.
- gains and lift by decile: labelled leads ordered by score, best first, in ten equal
  parts; per part its conversion, its lift over the base rate and the share of all won
  leads found so far. Leads with equal scores are put in a fixed pseudo-random order
  (by a hash of their key), so ties neither flatter nor hurt the top deciles.
- calibration of score against conversion: conversion per score range of 10 points.
- per rule: how many labelled leads it counted for (in the score, after `exclusive`),
  their conversion against the base rate, and (from `connector.learn.suggest`) the
  points the data suggests.

A rule's "feature" is what it adds to a lead with its points set to 1: 1 or 0 for a
fit rule, the decayed and capped count of matching activities for an engagement rule
(`rule_matrix`). The score is the sum of points times features (before caps), which is
what lets `suggest` fit points with a logistic model on the rules' own terms.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from connector.engine import ScoringModel, model_version
from connector.errors import UserError
from connector.learn.dataset import Dataset
from connector.mappings.scoring import Bands, Bounds, Caps, ScoringFile, Weights

BANDS: tuple[str, ...] = ("hot", "warm", "cold")
GRADES: tuple[str, ...] = ("A", "B", "C", "D")
DECILES = 10
CALIBRATION_STEP = 10  # points per calibration bin
MIN_EACH = 2  # won and lost outcomes needed at least for an AUC

Floats = NDArray[np.float64]


# --------------------------------------------------------------------------- scoring a dataset


@dataclass(slots=True)
class Scored:
    """One model's scores of every example of a dataset, in the dataset's order.

    `y`: 1 won, 0 lost, -1 no outcome yet.
    """

    keys: list[str]
    score: Floats
    fit: Floats
    band: list[str]
    grade: list[str]
    reasons: list[str]
    y: NDArray[np.int8]

    @property
    def labelled(self) -> NDArray[np.bool_]:
        return self.y >= 0  # type: ignore[no-any-return]


def outcome_codes(ds: Dataset) -> NDArray[np.int8]:
    return np.array([-1 if e.outcome is None else int(e.outcome == "won") for e in ds.examples], dtype=np.int8)


def score_dataset(ds: Dataset, model: ScoringModel) -> Scored:
    rows = ds.score_all(model)
    return Scored(
        keys=[e.lead.key for e, _ in rows],
        score=np.array([r.score for _, r in rows], dtype=np.float64),
        fit=np.array([r.fit for _, r in rows], dtype=np.float64),
        band=[r.band for _, r in rows],
        grade=[r.grade for _, r in rows],
        reasons=[r.reasons for _, r in rows],
        y=outcome_codes(ds),
    )


# --------------------------------------------------------------------------- rule features


@dataclass(frozen=True, slots=True)
class RuleInfo:
    name: str
    group: str  # "fit" or "engagement"
    points: float  # in the model as it is


@dataclass(slots=True)
class RuleMatrix:
    """Per example (rows, the dataset's order) and rule (columns, file order): the rule's feature."""

    rules: list[RuleInfo]
    X: Floats
    y: NDArray[np.int8]


def _unit(points: float) -> float:
    return abs(points) if points else 1.0


def probe_spec(spec: ScoringFile) -> ScoringFile:
    """The same rules with every rule worth 1 point and no group or total caps.

    An engagement rule's `max_points` is divided by its points, so it caps the same
    number of (decayed) occurrences as before: the probe's contribution of a rule is
    its feature, and points x feature is its contribution in the real model
    (before the group and total caps).
    """
    fit = [r.model_copy(update={"points": 1.0}) for r in spec.fit]
    engagement = [
        r.model_copy(update={
            "points": 1.0,
            "max_points": None if r.max_points is None else float(r.max_points) / _unit(float(r.points)),
        })
        for r in spec.engagement
    ]
    settings = spec.model.model_copy(update={
        "weights": Weights(fit=1.0, engagement=1.0),
        "caps": Caps(fit=Bounds(), engagement=Bounds(), total=Bounds()),
        "bands": Bands(warm=10**8, hot=10**9),
    })
    return spec.model_copy(update={"model": settings, "fit": fit, "engagement": engagement})


def rule_infos(spec: ScoringFile) -> list[RuleInfo]:
    return [RuleInfo(r.name, "fit", float(r.points)) for r in spec.fit] + [
        RuleInfo(r.name, "engagement", float(r.points)) for r in spec.engagement
    ]


def rule_matrix(ds: Dataset, model: ScoringModel) -> RuleMatrix:
    """Each rule's feature for each example, as of just before its outcome (see the module docstring)."""
    spec = probe_spec(model.spec)
    probe = ScoringModel(spec, model_version(spec))
    rules = rule_infos(model.spec)
    column = {r.name: j for j, r in enumerate(rules)}
    X = np.zeros((len(ds.examples), len(rules)), dtype=np.float64)
    for i, (_, result) in enumerate(ds.score_all(probe)):
        for c in result.contributions:
            X[i, column[c.rule]] += c.points
    return RuleMatrix(rules, X, outcome_codes(ds))


# --------------------------------------------------------------------------- metrics


def auc(scores: Sequence[float] | Floats, won: Sequence[int] | NDArray[Any]) -> float:
    """Area under the ROC curve of scores against won (1) / lost (0); ties count half."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(won)
    if y.min() == y.max():
        raise UserError("an AUC needs both won and lost outcomes.")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def _rate(won: int, leads: int) -> float | None:
    return None if leads == 0 else won / leads


def tie_order(keys: Sequence[str]) -> NDArray[np.int64]:
    """A fixed pseudo-random rank per key (the same on every run), to break ties in score."""
    digests = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") >> 1 for k in keys]
    return np.argsort(np.argsort(np.array(digests, dtype=np.int64)))


def by_group(labels: Sequence[str], y: NDArray[Any], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{name: {leads, won, lost, rate, open}}: leads = labelled leads (won + lost)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mask = np.array([lab == name for lab in labels], dtype=bool)
        won = int(np.sum(mask & (y == 1)))
        lost = int(np.sum(mask & (y == 0)))
        out[name] = {"leads": won + lost, "won": won, "lost": lost, "rate": _rate(won, won + lost),
                     "open": int(np.sum(mask & (y < 0)))}
    return out


def deciles(scores: Floats, y: NDArray[Any], keys: Sequence[str], parts: int = DECILES) -> list[dict[str, Any]]:
    """Gains and lift: labelled leads best score first, in `parts` near-equal parts."""
    n = len(scores)
    if n == 0:
        return []
    base = float(np.mean(y))
    order = np.lexsort((tie_order(keys), -scores))  # by score descending, ties by the fixed order
    total_won = int(np.sum(y))
    out = []
    found = 0
    for d, part in enumerate(np.array_split(order, parts), start=1):
        if len(part) == 0:
            continue
        won = int(np.sum(y[part]))
        found += won
        rate = won / len(part)
        out.append({
            "decile": d,
            "leads": len(part),
            "won": won,
            "rate": rate,
            "lift": None if base == 0 else rate / base,
            "min_score": float(np.min(scores[part])),
            "cumulative_leads_share": sum(len(p) for p in np.array_split(order, parts)[:d]) / n,
            "cumulative_won_share": None if total_won == 0 else found / total_won,
        })
    return out


def calibration(scores: Floats, y: NDArray[Any], step: int = CALIBRATION_STEP) -> list[dict[str, Any]]:
    """Conversion per score range [lo, lo + step), the last range closed at the top score."""
    if len(scores) == 0:
        return []
    top = int(math.floor(float(np.max(scores)) / step) * step)
    low = int(math.floor(float(np.min(scores)) / step) * step)
    out = []
    for lo in range(low, top + step, step):
        mask = (scores >= lo) & (scores < lo + step)
        n = int(np.sum(mask))
        if n == 0:
            continue
        won = int(np.sum(y[mask]))
        out.append({"from": lo, "to": lo + step - 1, "leads": n, "won": won, "rate": won / n,
                    "mean_score": float(np.mean(scores[mask]))})
    return out


def rule_stats(
    rm: RuleMatrix, suggested: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Per rule: labelled leads it counted for, their conversion, lift over the base rate, suggested points."""
    lab = rm.y >= 0
    X = rm.X[lab]
    y = rm.y[lab].astype(np.float64)
    base = float(np.mean(y)) if len(y) else 0.0
    out = []
    for j, rule in enumerate(rm.rules):
        hit = X[:, j] != 0
        n = int(np.sum(hit))
        won = int(np.sum(y[hit]))
        rate = _rate(won, n)
        out.append({
            "rule": rule.name,
            "group": rule.group,
            "points": rule.points,
            "matched": n,
            "won": won,
            "rate": rate,
            "lift": None if rate is None or base == 0 else rate / base,
            "suggested_points": None if suggested is None else suggested.get(rule.name),
        })
    return out


# --------------------------------------------------------------------------- the backtest


@dataclass(slots=True)
class Backtest:
    crm: str
    read_at: float
    model: str
    leads: int  # labelled: won + lost
    won: int
    lost: int
    open: int
    undated: int
    auc: float
    base_rate: float
    bands: dict[str, dict[str, Any]]
    grades: dict[str, dict[str, Any]]
    deciles: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    thresholds: dict[str, int]
    since: float | None = None
    # the labelled leads' scores, for the plots (not in as_dict: no per-lead data leaves the report)
    won_scores: list[float] = field(default_factory=list)
    lost_scores: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "crm": self.crm,
            "read_at": self.read_at,
            "since": self.since,
            "model": self.model,
            "auc": self.auc,
            "leads": self.leads,
            "won": self.won,
            "lost": self.lost,
            "open": self.open,
            "undated": self.undated,
            "base_rate": self.base_rate,
            "bands": self.bands,
            "grades": self.grades,
            "thresholds": self.thresholds,
            "deciles": self.deciles,
            "calibration": self.calibration,
            "rules": self.rules,
        }


def check_outcomes(ds: Dataset, minimum: int = MIN_EACH) -> tuple[int, int]:
    won = sum(1 for e in ds.examples if e.outcome == "won")
    lost = sum(1 for e in ds.examples if e.outcome == "lost")
    if won < minimum or lost < minimum:
        raise UserError(
            f"the {ds.crm} data has {won} won and {lost} lost outcome(s); at least {minimum} of each are needed "
            "(check the outcomes: section of the mapping file, or --since)."
        )
    return won, lost


def backtest(
    ds: Dataset,
    model: ScoringModel,
    *,
    suggested: Mapping[str, float] | None = None,
    since: float | None = None,
    matrix: RuleMatrix | None = None,
) -> Backtest:
    """Every figure of `leadscore backtest` for one model on one dataset."""
    won, lost = check_outcomes(ds)
    s = score_dataset(ds, model)
    lab = s.labelled
    y = s.y[lab]
    scores = s.score[lab]
    keys = [k for k, m in zip(s.keys, lab, strict=True) if m]
    rm = matrix if matrix is not None else rule_matrix(ds, model)
    settings = model.spec.model
    return Backtest(
        crm=ds.crm,
        read_at=ds.read_at,
        since=since,
        model=model.version,
        leads=won + lost,
        won=won,
        lost=lost,
        open=int(np.sum(~lab)),
        undated=ds.undated(),
        auc=auc(scores, y),
        base_rate=won / (won + lost),
        bands=by_group(s.band, s.y, BANDS),
        grades=by_group(s.grade, s.y, GRADES),
        deciles=deciles(scores, y, keys),
        calibration=calibration(scores, y),
        rules=rule_stats(rm, suggested),
        thresholds={"warm": settings.bands.warm, "hot": settings.bands.hot,
                    "A": settings.grades.A, "B": settings.grades.B, "C": settings.grades.C},
        won_scores=[float(x) for x in scores[y == 1]],
        lost_scores=[float(x) for x in scores[y == 0]],
    )
