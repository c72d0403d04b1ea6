"""`leadscore train`: a calibrated conversion probability learned from the org's own outcomes.

Pure apart from the estimators' arithmetic: a `Dataset` (connector.learn.dataset) and the
scoring model in, a `TrainedModel` and its figures out; storing it is connector.learn.store's.

1. Point in time: each lead is seen as it was just before its outcome (`Example.as_of`), with
   only the activities before that moment; the rules score it at that moment too.
2. Leakage guard: profile fields listed in scoring.yaml `probability.exclude_fields` (filled
   only after sales contact), date-valued fields whose dates are nearly all after the outcome,
   and fields filled on most leads with an outcome but nearly never on open leads are never read,
   nor the fit rules that read them. The summary lists each with why.
3. Too little data: below MIN_OUTCOMES outcomes or MIN_PER_CLASS of either class the training
   refuses with one sentence saying how many more are needed; below COMFORTABLE_OUTCOMES the
   summary says the figures are uncertain and shows the spread across folds.
4. Two candidates, a regularised logistic regression and gradient-boosted trees (scikit-learn's
   HistGradientBoostingClassifier), compared by repeated stratified cross-validation on the same
   folds as the rules' own score; the better mean AUC wins. The chosen one is calibrated
   (Platt/sigmoid: steady with a few hundred outcomes, and smooth, so each factor moves it), and
   Brier score and the calibration table come from out-of-fold calibrated probabilities, so every
   printed figure is cross-validated. The CV AUC of the winner is slightly optimistic, having
   been picked among two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from connector.domain import Activity, Lead
from connector.engine import ScoreResult, ScoringModel
from connector.errors import UserError
from connector.learn.features import FeatureSpec, text_of
from connector.mappings.probability import ProbabilitySettings

# The floor: with fewer outcomes a cross-validated AUC swings by more than the gap between a
# useful and a useless model. Salesforce Einstein asks for 1,000 leads and 120 conversions;
# these are lower on purpose (a regularised model, figures with their spread).
MIN_OUTCOMES = 200
MIN_PER_CLASS = 40
COMFORTABLE_OUTCOMES = 1000
COMFORTABLE_PER_CLASS = 120

# Leakage guard thresholds.
AFTER_OUTCOME_SHARE = 0.9     # a date field whose dates are after the outcome on this share of leads
OUTCOME_ONLY_FILL = 0.5       # filled on at least this share of leads with an outcome ...
OPEN_FILL_MAX = 0.05          # ... and on at most this share of open leads ...
MIN_OPEN_FOR_FILL_TEST = 20   # ... when there are this many open leads to compare with

FOLDS = 5
CALIBRATION_BINS = 10


class ExampleLike(Protocol):
    lead: Lead
    outcome: str | None
    outcome_at: float | None

    def as_of(self, now: float) -> float: ...
    def activities_as_of(self, now: float) -> list[Activity]: ...


class DatasetLike(Protocol):
    crm: Any
    read_at: float
    examples: list[Any]

    def labelled(self) -> list[Any]: ...
    def undated(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Exclusion:
    field: str
    why: str


@dataclass(slots=True)
class Figures:
    """What a training measured; recorded with each training and printed by `leadscore train`."""

    crm: str
    outcomes: int
    won: int
    lost: int
    undated: int
    cv_auc: float
    cv_auc_sd: float
    folds: int
    brier: float
    brier_base: float            # Brier of always saying the base rate
    rules_auc: float
    rules_auc_sd: float
    chosen: str
    candidates: dict[str, tuple[float, float]]
    calibration: list[tuple[float, float, int, float, float]]   # (from, to, leads, mean predicted, rate won)
    excluded: list[Exclusion]
    features: int
    uncertain: bool
    read_at: float
    trained_at: float
    scoring_version: str
    model_version: str = ""
    kept: bool | None = None
    kept_why: str = ""
    factors_r2: float | None = None   # trees: how closely the factors' linear model follows them

    def as_json(self) -> dict[str, Any]:
        return {
            "crm": self.crm,
            "model_version": self.model_version,
            "cv_auc": round(self.cv_auc, 4),
            "cv_auc_sd": round(self.cv_auc_sd, 4),
            "folds": self.folds,
            "brier": round(self.brier, 4),
            "brier_base_rate": round(self.brier_base, 4),
            "rules_auc": round(self.rules_auc, 4),
            "rules_auc_sd": round(self.rules_auc_sd, 4),
            "outcomes": self.outcomes,
            "won": self.won,
            "lost": self.lost,
            "undated": self.undated,
            "model": self.chosen,
            "candidates": {k: {"cv_auc": round(m, 4), "sd": round(s, 4)} for k, (m, s) in self.candidates.items()},
            "calibration": [
                {"from": lo, "to": hi, "leads": n, "predicted": round(p, 4), "observed": round(o, 4)}
                for lo, hi, n, p, o in self.calibration
            ],
            "excluded": [{"field": e.field, "why": e.why} for e in self.excluded],
            "features": self.features,
            "uncertain": self.uncertain,
            "read_at": self.read_at,
            "trained_at": self.trained_at,
            "scoring_version": self.scoring_version,
            "kept": self.kept,
            "kept_why": self.kept_why,
            "factors_r2": None if self.factors_r2 is None else round(self.factors_r2, 3),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Figures:
        return cls(
            crm=d["crm"], outcomes=d["outcomes"], won=d["won"], lost=d["lost"], undated=d.get("undated", 0),
            cv_auc=d["cv_auc"], cv_auc_sd=d.get("cv_auc_sd", 0.0), folds=d.get("folds", 0), brier=d["brier"],
            brier_base=d.get("brier_base_rate", 0.0), rules_auc=d.get("rules_auc", 0.0),
            rules_auc_sd=d.get("rules_auc_sd", 0.0), chosen=d.get("model", ""),
            candidates={k: (v["cv_auc"], v["sd"]) for k, v in (d.get("candidates") or {}).items()},
            calibration=[(c["from"], c["to"], c["leads"], c["predicted"], c["observed"])
                         for c in d.get("calibration") or []],
            excluded=[Exclusion(e["field"], e["why"]) for e in d.get("excluded") or []],
            features=d.get("features", 0), uncertain=d.get("uncertain", False), read_at=d.get("read_at", 0.0),
            trained_at=d.get("trained_at", 0.0), scoring_version=d.get("scoring_version", ""),
            model_version=d.get("model_version", ""), kept=d.get("kept"), kept_why=d.get("kept_why", ""),
            factors_r2=d.get("factors_r2"),
        )


@dataclass(slots=True)
class TrainedModel:
    """What is stored: the feature plan, the calibrated estimator and the reference lead for factors."""

    crm: str
    spec: FeatureSpec
    estimator: Any
    baseline: Any                  # np.ndarray: a typical lead's row, what each factor is measured against
    figures: Figures
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- the floor


def floor_sentence(crm: str, won: int, lost: int) -> str | None:
    """The refusal when there are too few outcomes: how many there are and how many more are needed."""
    n = won + lost
    more = max(0, MIN_OUTCOMES - n)
    more_won = max(0, MIN_PER_CLASS - won)
    more_lost = max(0, MIN_PER_CLASS - lost)
    if not (more or more_won or more_lost):
        return None
    needs = []
    if more_won:
        needs.append(f"{more_won} more won")
    if more_lost:
        needs.append(f"{more_lost} more lost")
    total_more = max(more, more_won + more_lost)
    return (
        f"{crm} has {n} outcomes ({won} won, {lost} lost), too few to learn a probability: training needs at "
        f"least {MIN_OUTCOMES} outcomes with at least {MIN_PER_CLASS} won and {MIN_PER_CLASS} lost, so "
        f"{total_more} more outcome{'s' if total_more != 1 else ''}"
        + (f" ({' and '.join(needs)})" if needs else "") + " are needed."
    )


# ---------------------------------------------------------------------------- leakage guard


def _as_date(value: Any) -> float | None:
    from connector.crm.times import parse_time

    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        # epoch seconds or milliseconds in a plausible range (2000 .. 2100)
        v = float(value)
        v = v / 1000 if v > 1e11 else v
        return v if 946_684_800 <= v <= 4_102_444_800 else None
    if isinstance(value, str) and ("-" in value or "T" in value) and any(ch.isdigit() for ch in value):
        try:
            return parse_time(value)
        except (TypeError, ValueError):
            return None
    return None


def leakage(examples: Sequence[Any], settings: ProbabilitySettings) -> list[Exclusion]:
    """The profile fields training must not read, each with why."""
    out: list[Exclusion] = [
        Exclusion(f, "listed in scoring.yaml probability.exclude_fields (filled only after sales contact)")
        for f in settings.exclude_fields
    ]
    listed = set(settings.exclude_fields)
    labelled = [e for e in examples if e.outcome is not None]
    open_ = [e for e in examples if e.outcome is None]
    names = sorted({k for e in examples for k in e.lead.profile} - listed)
    for name in names:
        # dates after the outcome
        after = dated = 0
        for e in labelled:
            if e.outcome_at is None:
                continue
            d = _as_date(e.lead.profile.get(name))
            if d is None:
                continue
            dated += 1
            after += d >= e.outcome_at
        if dated >= 20 and after >= AFTER_OUTCOME_SHARE * dated:
            out.append(Exclusion(name, f"its dates fall after the outcome on {after} of {dated} leads "
                                       f"({after / dated:.0%}): it is set once the outcome is known"))
            continue
        # filled with an outcome, empty without
        if labelled and len(open_) >= MIN_OPEN_FOR_FILL_TEST:
            fill_l = sum(text_of(e.lead.profile.get(name)) is not None for e in labelled) / len(labelled)
            fill_o = sum(text_of(e.lead.profile.get(name)) is not None for e in open_) / len(open_)
            if fill_l >= OUTCOME_ONLY_FILL and fill_o <= OPEN_FILL_MAX:
                out.append(Exclusion(name, f"filled on {fill_l:.0%} of leads with an outcome but on {fill_o:.0%} "
                                           "of open leads: it is filled as the outcome happens"))
    return out


# ---------------------------------------------------------------------------- rows


def rows_of(
    spec: FeatureSpec, model: ScoringModel, leads: Sequence[tuple[Mapping[str, Any], Sequence[Activity], float]]
) -> tuple[np.ndarray, list[ScoreResult]]:
    """Each (profile, activities, moment) as a row, with the rules' own result at that moment."""
    rows = []
    results = []
    for profile, acts, at in leads:
        scored = model.score(profile, acts, at)
        results.append(scored)
        rows.append(spec.row(profile, acts, at, scored))
    return np.asarray(rows, dtype=float).reshape(len(rows), spec.width), results


def baseline_row(spec: FeatureSpec, X: np.ndarray) -> np.ndarray:
    """The average lead of the training data, what each factor is measured against (a category's
    column holds its share of leads, so every value of a field is for or against by its own weight)."""
    return np.asarray(X.mean(axis=0)) if len(X) else np.zeros(spec.width)


# ---------------------------------------------------------------------------- training


def candidates() -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=5000)),
        "gradient-boosted trees": HistGradientBoostingClassifier(
            max_iter=120, learning_rate=0.06, max_leaf_nodes=15, min_samples_leaf=20, l2_regularization=1.0,
            early_stopping=False, random_state=0,
        ),
    }


def _score_of(est: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(est.predict_proba(X)[:, 1])


# OpenMP threads (the trees' fitting and prediction) on a busy machine wait on each other instead of
# working: a fit measured 30 s with two threads on a loaded 2-CPU machine and 2 s with one. Workers
# run as many processes anyway, so learning and applying use one thread each.
THREADS = 1


def train(
    dataset: DatasetLike, model: ScoringModel, settings: ProbabilitySettings, *, now: float | None = None,
    repeats: int | None = None,
) -> TrainedModel:
    """Train and cross-validate; UserError (one sentence) below the floor."""
    import sklearn.ensemble  # noqa: F401 - load the OpenMP runtime first: threadpoolctl limits loaded ones only
    from threadpoolctl import threadpool_limits

    with threadpool_limits(THREADS):
        return _train(dataset, model, settings, now=now, repeats=repeats)


def _train(
    dataset: DatasetLike, model: ScoringModel, settings: ProbabilitySettings, *, now: float | None,
    repeats: int | None,
) -> TrainedModel:
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

    now = time.time() if now is None else now
    crm = str(dataset.crm)
    labelled = dataset.labelled()
    y = np.asarray([1 if e.outcome == "won" else 0 for e in labelled], dtype=int)
    won, lost = int(y.sum()), int(len(y) - y.sum())
    refusal = floor_sentence(crm, won, lost)
    if refusal:
        raise UserError(refusal)
    excluded = leakage(dataset.examples, settings)
    skip = {e.field for e in excluded}
    read_at = dataset.read_at
    moments = [e.as_of(read_at) for e in labelled]
    profiles = [{k: v for k, v in e.lead.profile.items() if k not in skip} for e in labelled]
    acts = [e.activities_as_of(read_at) for e in labelled]
    spec = FeatureSpec.fit(profiles, model, exclude=skip)
    X, _ = rows_of(spec, model, list(zip(profiles, acts, moments, strict=True)))
    # the rules as they are: the full profile, scored at the same moment
    rules = np.asarray([model.score(e.lead.profile, a, t).score for e, a, t in zip(labelled, acts, moments,
                                                                                    strict=True)], dtype=float)

    n = len(y)
    reps = repeats if repeats is not None else (3 if n < COMFORTABLE_OUTCOMES else 1)
    cv = RepeatedStratifiedKFold(n_splits=FOLDS, n_repeats=reps, random_state=0)
    found: dict[str, list[float]] = {name: [] for name in candidates()}
    rule_aucs: list[float] = []
    for tr, te in cv.split(X, y):
        rule_aucs.append(float(roc_auc_score(y[te], rules[te])))
        for name, est in candidates().items():
            fitted = clone(est).fit(X[tr], y[tr])
            found[name].append(float(roc_auc_score(y[te], _score_of(fitted, X[te]))))
    summary = {k: (float(np.mean(v)), float(np.std(v))) for k, v in found.items()}
    chosen = max(summary, key=lambda k: summary[k][0])
    base = candidates()[chosen]

    # out-of-fold calibrated probabilities: Brier and the calibration table
    oof = np.zeros(n)
    for tr, te in StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=1).split(X, y):
        cal = CalibratedClassifierCV(clone(base), method="sigmoid", cv=3).fit(X[tr], y[tr])
        oof[te] = _score_of(cal, X[te])
    brier = float(np.mean((oof - y) ** 2))
    rate = y.mean()
    table = calibration_table(oof, y)

    final = CalibratedClassifierCV(clone(base), method="sigmoid", cv=FOLDS, ensemble=False).fit(X, y)
    extra = surrogate(final, X)
    figures = Figures(
        crm=crm, outcomes=n, won=won, lost=lost, undated=int(dataset.undated()),
        cv_auc=summary[chosen][0], cv_auc_sd=summary[chosen][1], folds=len(rule_aucs), brier=brier,
        brier_base=float(rate * (1 - rate)), rules_auc=float(np.mean(rule_aucs)), rules_auc_sd=float(np.std(rule_aucs)),
        chosen=chosen, candidates=summary, calibration=table, excluded=excluded, features=spec.width,
        uncertain=n < COMFORTABLE_OUTCOMES or min(won, lost) < COMFORTABLE_PER_CLASS, read_at=read_at,
        trained_at=now, scoring_version=model.version, factors_r2=extra.get("surrogate_r2"),
    )
    return TrainedModel(crm=crm, spec=spec, estimator=final, baseline=baseline_row(spec, X), figures=figures,
                        extra=extra)


def surrogate(final: Any, X: np.ndarray) -> dict[str, Any]:
    """For trees: a linear model of the trees' own decision values, whose per-column weights give each
    factor its share (re-predicting a page once per factor group costs six times the rules' time).
    Its R² on the training leads says how closely it follows the trees. None needed for the logistic
    model, whose decision value is linear already."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    [calibrated] = final.calibrated_classifiers_
    base = calibrated.estimator
    if isinstance(base, Pipeline):
        return {}
    f = np.asarray(base.decision_function(X), dtype=float)
    scaler = StandardScaler().fit(X)
    ridge = Ridge(alpha=1.0).fit(scaler.transform(X), f)
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    return {"surrogate_weights": np.asarray(ridge.coef_ / scale, dtype=float),
            "surrogate_r2": float(ridge.score(scaler.transform(X), f))}


def calibration_table(p: np.ndarray, y: np.ndarray, bins: int = CALIBRATION_BINS
                      ) -> list[tuple[float, float, int, float, float]]:
    """Per probability bin (0-10 %, 10-20 %, ...): leads, mean predicted probability, share won."""
    out = []
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.minimum((p * bins).astype(int), bins - 1)
    for b in range(bins):
        mask = which == b
        k = int(mask.sum())
        if k:
            out.append((float(edges[b]), float(edges[b + 1]), k, float(p[mask].mean()), float(y[mask].mean())))
    return out


def keep_decision(new: Figures, active: Figures | None, margin: float) -> tuple[bool, str]:
    """Whether a new model replaces the active one: unless its CV AUC is lower by more than `margin`."""
    if active is None:
        return True, "no model was active"
    drop = active.cv_auc - new.cv_auc
    if drop > margin:
        return False, (f"its CV AUC {new.cv_auc:.3f} is {drop:.3f} below the active model's {active.cv_auc:.3f} "
                       f"({active.model_version}), more than the allowed {margin:g}")
    return True, (f"its CV AUC {new.cv_auc:.3f} is within {margin:g} of the active model's {active.cv_auc:.3f} "
                  f"or better")


# ---------------------------------------------------------------------------- words


def summary_lines(f: Figures) -> list[str]:
    """`leadscore train`'s report, one line a figure."""
    lines = [
        f"outcomes     {f.outcomes} used ({f.won} won, {f.lost} lost), each lead as it was just before its outcome"
        + (f"; {f.undated} without an outcome date are seen as of the read" if f.undated else ""),
        f"model        {f.chosen}, calibrated; CV AUC {f.cv_auc:.3f} ± {f.cv_auc_sd:.3f} over {f.folds} folds",
    ]
    for name, (m, s) in f.candidates.items():
        if name != f.chosen:
            lines.append(f"             ({name}: CV AUC {m:.3f} ± {s:.3f} on the same folds)")
    better = "better than" if f.cv_auc > f.rules_auc else "not better than"
    lines += [
        f"rules        the points' AUC {f.rules_auc:.3f} ± {f.rules_auc_sd:.3f} on the same folds: the probability is "
        f"{better} the rules",
        f"brier        {f.brier:.3f} out of fold (always saying the base rate: {f.brier_base:.3f}; lower is better)",
        "calibration  predicted -> observed, out of fold:",
    ]
    for lo, hi, n, p, o in f.calibration:
        lines.append(f"             {lo:>4.0%}-{hi:<4.0%} {n:>5} leads  predicted {p:>5.1%}  won {o:>5.1%}")
    if f.excluded:
        lines.append("excluded     (leakage guard)")
        lines += [f"             {e.field}: {e.why}" for e in f.excluded]
    else:
        lines.append("excluded     nothing (no field listed in probability.exclude_fields or found to leak)")
    if f.uncertain:
        lines.append(
            f"uncertainty  {f.outcomes} outcomes is enough to learn from but below {COMFORTABLE_OUTCOMES} "
            f"(with {COMFORTABLE_PER_CLASS} of each): the AUC may be off by about ±{max(f.cv_auc_sd, 0.01) * 2:.2f}; "
            "retraining as outcomes accumulate narrows it"
        )
    lines.append(f"features     {f.features} from profile fields, activity kinds and rules")
    if f.factors_r2 is not None:
        lines.append(f"factors      weighed by a linear model of the trees' decisions (R² {f.factors_r2:.2f})")
    if f.model_version:
        state = "now active" if f.kept else f"stored but NOT active: {f.kept_why}"
        lines.append(f"version      {f.model_version} ({state})")
    return lines


def fmt_pct(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "?"
