"""Points and thresholds fitted to past outcomes: `leadscore suggest`.

The model keeps its rules (names, tests, `exclusive` groups, windows, decay, reasons); only
the numbers change:

1. Features: each rule's contribution with its points set to 1 (`evaluate.rule_matrix`),
   as of just before each lead's outcome.
2. Fit: an L2-regularised logistic regression (scikit-learn), features standardised, the
   strength chosen by an inner 3-fold cross-validation on AUC. Signs are kept sensible: a
   rule whose fitted weight has the opposite sign of its points today is set to 0 and the
   rest refitted (the data does not bear it out; the rule and its reason stay). A rule that
   counted for fewer than `MIN_MATCHES` outcomes keeps its points (too little data to judge).
3. Points: weights times one scale, chosen so the 99th percentile of the leads' positive
   totals is 100; rounded to whole points from 10 up and to halves below. Group caps are
   lifted (the fitted sum is the score), the total stays held within 0-100, and an
   engagement rule's `max_points` scales with its points (it caps the same number of
   occurrences).
4. Thresholds: hot for the stated target (`top:10%`: at most that share of the leads is
   hot; `precision:0.6`: the lowest score from which at least that share of the labelled
   leads converted), warm so that as many leads are warm or hot as with the model today
   (when the new hot band alone is that wide: half of the other leads are warm),
   grades A/B/C so that as many leads hold each grade as today.

Everything the command prints is cross-validated: stratified k-fold on the labelled leads,
steps 2-4 fitted on the training folds (thresholds on them plus the open leads), the
held-out fold scored with the result; the current model is measured on the same held-out
folds. The points written to the file are then fitted on all the outcomes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from numpy.typing import NDArray

from connector.engine import ScoringModel
from connector.errors import UserError
from connector.learn.dataset import Dataset
from connector.learn.evaluate import (
    BANDS,
    Floats,
    RuleInfo,
    RuleMatrix,
    Scored,
    auc,
    check_outcomes,
    deciles,
    rule_matrix,
    score_dataset,
)
from connector.mappings.scoring import EngagementRule, FitRule, ScoringFile

FOLDS = 5
MIN_MATCHES = 10  # outcomes a rule must have counted for before its points are refitted
MIN_SUPPORT = 20  # labelled leads above a threshold before its precision is trusted
SCALE_QUANTILE = 0.99
TOP = 100  # the total cap of the suggested model
C_GRID = (0.003, 0.03, 0.3, 3.0)

Note = Literal["fitted", "kept: too few outcomes", "zero: sign not borne out", "zero: no lift"]


# --------------------------------------------------------------------------- the target


@dataclass(frozen=True, slots=True)
class Target:
    kind: Literal["top", "precision"]
    value: float  # a share (0-1) of the leads, or a precision (0-1)

    def __str__(self) -> str:
        if self.kind == "top":
            return f"top:{self.value * 100:g}%"
        return f"precision:{self.value:g}"


_TOP = re.compile(r"^top:\s*(\d+(?:\.\d+)?)\s*%$")
_PRECISION = re.compile(r"^precision:\s*(\d*\.?\d+)\s*(%?)$")


def parse_target(text: str) -> Target:
    """'top:10%' or 'precision:0.6' (or 'precision:60%'); one sentence when it is neither."""
    t = text.strip().lower()
    m = _TOP.match(t)
    if m and 0 < float(m.group(1)) < 100:
        return Target("top", float(m.group(1)) / 100)
    m = _PRECISION.match(t)
    if m:
        value = float(m.group(1)) / (100 if m.group(2) else 1)
        if 0 < value < 1:
            return Target("precision", value)
    raise UserError(
        f"--target must be top:N% (hot = the best N% of the leads, 0 < N < 100) or precision:P "
        f"(hot from the lowest score where a share P of the leads converted, 0 < P < 1), not {text!r}."
    )


# --------------------------------------------------------------------------- fitting


@dataclass(slots=True)
class Fit:
    points: Floats  # per rule, in the suggested model
    notes: list[Note]
    scale: float  # points per unit of log-odds
    C: float


def _signs(rules: Sequence[RuleInfo]) -> NDArray[np.int8]:
    return np.array([0 if r.points == 0 else (1 if r.points > 0 else -1) for r in rules], dtype=np.int8)


def fit_points(X: Floats, y: NDArray[Any], rules: Sequence[RuleInfo], *, X_scale: Floats | None = None,
               seed: int = 0) -> Fit:
    """Points per rule from the labelled rows X, y (see the module docstring, steps 2 and 3).

    `X_scale`: the rows whose totals set the scale (the whole population; default X).
    """
    n_rules = len(rules)
    signs = _signs(rules)
    matched = np.sum(X != 0, axis=0)
    std = X.std(axis=0)
    notes: list[Note] = ["fitted"] * n_rules
    active = [j for j in range(n_rules) if matched[j] >= MIN_MATCHES and std[j] > 0]
    for j in range(n_rules):
        if j not in active:
            notes[j] = "kept: too few outcomes"
    beta = np.zeros(n_rules)
    C: float | None = None
    while active:
        Z = (X[:, active] - X[:, active].mean(axis=0)) / std[active]
        C = choose_c(Z, y, seed) if C is None else C  # chosen once, on all the rules that have data
        coef = _logistic(Z, y, C).coef_[0] / std[active]
        wrong = [j for j, b in zip(active, coef, strict=True) if signs[j] != 0 and b != 0 and np.sign(b) != signs[j]]
        if not wrong:
            beta[active] = coef
            break
        for j in wrong:
            notes[j] = "zero: sign not borne out"
        active = [j for j in active if j not in wrong]
    fitted = np.array([n == "fitted" for n in notes])
    rows = X if X_scale is None else X_scale
    eta = rows[:, fitted] @ beta[fitted] if fitted.any() else np.zeros(len(rows))
    positive = eta[eta > 0]
    top = float(np.quantile(positive, SCALE_QUANTILE)) if len(positive) else 0.0
    scale = TOP / top if top > 0 else 1.0
    points = np.array([
        round_points(scale * beta[j]) if fitted[j] or notes[j].startswith("zero") else rules[j].points
        for j in range(n_rules)
    ])
    for j in range(n_rules):
        if notes[j] == "fitted" and points[j] == 0:
            notes[j] = "zero: no lift"
    return Fit(points, notes, scale, 1.0 if C is None else C)


def _logistic(Z: Floats, y: NDArray[Any], C: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000).fit(Z, y)


def choose_c(Z: Floats, y: NDArray[Any], seed: int) -> float:
    """The regularisation strength with the best mean AUC over an inner stratified 3-fold split."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    splits = list(StratifiedKFold(3, shuffle=True, random_state=seed).split(Z, y))
    best, best_c = -1.0, 1.0
    for c in C_GRID:
        aucs = [roc_auc_score(y[te], _logistic(Z[tr], y[tr], c).decision_function(Z[te])) for tr, te in splits]
        if float(np.mean(aucs)) > best + 1e-9:
            best, best_c = float(np.mean(aucs)), c
    return best_c


def round_points(value: float) -> float:
    """Whole points from 10 up, halves below (small engagement signals keep some weight)."""
    if abs(value) >= 10:
        return float(math.floor(value + 0.5))
    return math.floor(value * 2 + 0.5) / 2


def emulate(X: Floats, points: Floats, rules: Sequence[RuleInfo]) -> tuple[Floats, Floats]:
    """(score, fit) of the suggested model from features: what the engine computes for it
    (no group caps, weights 1, total held within 0-100, each part rounded half up)."""
    is_fit = np.array([r.group == "fit" for r in rules])
    fit = np.floor(X[:, is_fit] @ points[is_fit] + 0.5)
    eng = np.floor(X[:, ~is_fit] @ points[~is_fit] + 0.5)
    return np.clip(fit + eng, 0, TOP), fit


# --------------------------------------------------------------------------- thresholds


def _share_at_least(scores: Floats, t: float) -> float:
    return float(np.mean(scores >= t)) if len(scores) else 0.0


def threshold_for_share(scores: Floats, share: float, lo: int = 1) -> int:
    """The lowest whole score t >= lo with at most `share` of the scores at t or above."""
    for t in range(lo, TOP + 1):
        if _share_at_least(scores, t) <= share:
            return t
    return TOP


def hot_threshold(target: Target, population: Floats, scores: Floats, y: NDArray[Any]) -> tuple[int, str]:
    """(hot threshold, a note when the target cannot be met)."""
    if target.kind == "top":
        return threshold_for_share(population, target.value), ""
    best: tuple[float, int] | None = None
    for t in range(1, TOP + 1):
        above = scores >= t
        n = int(np.sum(above))
        if n < MIN_SUPPORT:
            break
        precision = float(np.mean(y[above]))
        if precision >= target.value:
            return t, ""
        if best is None or precision > best[0]:
            best = (precision, t)
    if best is None:
        return threshold_for_share(population, 0.1), (
            "too few outcomes to judge a precision; hot is the top 10% instead")
    return best[1], (f"no score reaches a precision of {target.value:.0%} on these outcomes; "
                     f"hot from {best[1]}, where {best[0]:.0%} converted")


@dataclass(frozen=True, slots=True)
class Cuts:
    warm: int
    hot: int
    A: int
    B: int
    C: int
    note: str = ""


def choose_cuts(
    target: Target,
    population: Floats,
    population_fit: Floats,
    labelled: Floats,
    y: NDArray[Any],
    current: Scored,
    current_rows: NDArray[np.bool_],
    current_model: ScoringModel,
) -> Cuts:
    """Thresholds of the suggested model (module docstring, step 4); `current_rows` are the rows of
    `current` that make the population."""
    hot, note = hot_threshold(target, population, labelled, y)
    cur_scores = current.score[current_rows]
    cur_fit = current.fit[current_rows]
    warm_share = _share_at_least(cur_scores, current_model.warm_threshold)
    hot_share = _share_at_least(population, hot)
    if warm_share <= hot_share:  # today's warm-or-hot share is no wider than the new hot: half the rest is warm
        warm_share = hot_share + (1.0 - hot_share) / 2
    warm = min(threshold_for_share(population, warm_share), hot - 1)
    g = current_model.spec.model.grades
    shares = [_share_at_least(cur_fit, t) for t in (g.A, g.B, g.C)]
    lo = int(min(0.0, float(np.min(population_fit)) if len(population_fit) else 0.0))
    a = threshold_for_share(population_fit, shares[0], lo=lo + 2)
    b = min(threshold_for_share(population_fit, shares[1], lo=lo + 1), a - 1)
    c = min(threshold_for_share(population_fit, shares[2], lo=lo), b - 1)
    return Cuts(max(warm, 1) if hot > 1 else 0, hot, a, b, c, note)


def band_of(scores: Floats, cuts: Cuts) -> list[str]:
    return ["hot" if s >= cuts.hot else "warm" if s >= cuts.warm else "cold" for s in scores]


# --------------------------------------------------------------------------- cross-validation


@dataclass(slots=True)
class Side:
    """One model's held-out figures."""

    aucs: list[float] = field(default_factory=list)
    lifts: list[float] = field(default_factory=list)
    bands: dict[str, list[int]] = field(default_factory=lambda: {b: [0, 0] for b in BANDS})  # [leads, won]

    def add(self, scores: Floats, y: NDArray[Any], bands: Sequence[str], keys: Sequence[str]) -> None:
        self.aucs.append(auc(scores, y))
        top = deciles(scores, y, keys)[0]
        self.lifts.append(top["lift"] or 0.0)
        for b, won in zip(bands, y, strict=True):
            self.bands[b][0] += 1
            self.bands[b][1] += int(won)

    def figures(self) -> dict[str, Any]:
        leads = sum(v[0] for v in self.bands.values())
        won = sum(v[1] for v in self.bands.values())
        return {
            "auc": float(np.mean(self.aucs)),
            "auc_sd": float(np.std(self.aucs)),
            "top_decile_lift": float(np.mean(self.lifts)),
            "bands": {b: {"leads": n, "won": w, "rate": None if n == 0 else w / n,
                          "share": n / leads if leads else 0.0} for b, (n, w) in self.bands.items()},
            "won_in_hot": self.bands["hot"][1] / won if won else 0.0,
        }


@dataclass(slots=True)
class Suggestion:
    crm: str
    read_at: float
    target: Target
    folds: int
    current_version: str
    rules: list[RuleInfo]
    points: dict[str, float]
    notes: dict[str, Note]
    cuts: Cuts
    scale: float
    current: dict[str, Any]  # held-out figures, current model
    suggested: dict[str, Any]  # held-out figures, suggested points and thresholds
    leads: int
    won: int
    lost: int
    open: int
    undated: int
    rule_figures: dict[str, dict[str, Any]]  # per rule: matched, rate (labelled leads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "crm": self.crm, "read_at": self.read_at, "target": str(self.target), "folds": self.folds,
            "leads": self.leads, "won": self.won, "lost": self.lost, "open": self.open, "undated": self.undated,
            "current_model": self.current_version,
            "cv": {"current": self.current, "suggested": self.suggested},
            "thresholds": {"warm": self.cuts.warm, "hot": self.cuts.hot, "A": self.cuts.A, "B": self.cuts.B,
                           "C": self.cuts.C},
            "note": self.cuts.note,
            "points": self.points,
            "notes": self.notes,
        }


def suggest(ds: Dataset, model: ScoringModel, target: Target, *, folds: int = FOLDS, seed: int = 0) -> Suggestion:
    """Fit points and thresholds, measured against the current model on held-out folds."""
    from sklearn.model_selection import StratifiedKFold

    won, lost = check_outcomes(ds, minimum=folds)
    rm: RuleMatrix = rule_matrix(ds, model)
    cur = score_dataset(ds, model)
    lab = np.flatnonzero(rm.y >= 0)
    open_rows = np.flatnonzero(rm.y < 0)
    y_all = rm.y
    keys = cur.keys
    sides = {"current": Side(), "suggested": Side()}
    skf = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train_i, test_i in skf.split(lab, y_all[lab]):
        train, test = lab[train_i], lab[test_i]
        pop = np.concatenate([train, open_rows])
        fit = fit_points(rm.X[train], y_all[train], rm.rules, X_scale=rm.X[pop], seed=seed)
        pop_scores, pop_fit = emulate(rm.X[pop], fit.points, rm.rules)
        train_scores, _ = emulate(rm.X[train], fit.points, rm.rules)
        mask = np.zeros(len(y_all), dtype=bool)
        mask[pop] = True
        cuts = choose_cuts(target, pop_scores, pop_fit, train_scores, y_all[train], cur, mask, model)
        test_scores, _ = emulate(rm.X[test], fit.points, rm.rules)
        test_keys = [keys[i] for i in test]
        sides["suggested"].add(test_scores, y_all[test], band_of(test_scores, cuts), test_keys)
        sides["current"].add(cur.score[test], y_all[test], [cur.band[i] for i in test], test_keys)
    every = np.arange(len(y_all))
    final = fit_points(rm.X[lab], y_all[lab], rm.rules, X_scale=rm.X, seed=seed)
    all_scores, all_fit = emulate(rm.X, final.points, rm.rules)
    cuts = choose_cuts(target, all_scores, all_fit, all_scores[lab], y_all[lab], cur,
                       np.ones(len(every), dtype=bool), model)
    labelled_X = rm.X[lab]
    rule_figures = {}
    for j, r in enumerate(rm.rules):
        hit = labelled_X[:, j] != 0
        n = int(np.sum(hit))
        rule_figures[r.name] = {"matched": n, "rate": None if n == 0 else float(np.mean(y_all[lab][hit]))}
    return Suggestion(
        crm=ds.crm, read_at=ds.read_at, target=target, folds=folds, current_version=model.version, rules=rm.rules,
        points={r.name: float(p) for r, p in zip(rm.rules, final.points, strict=True)},
        notes={r.name: n for r, n in zip(rm.rules, final.notes, strict=True)},
        cuts=cuts, scale=final.scale,
        current=sides["current"].figures(), suggested=sides["suggested"].figures(),
        leads=won + lost, won=won, lost=lost, open=len(open_rows), undated=ds.undated(), rule_figures=rule_figures,
    )


# --------------------------------------------------------------------------- the file


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def _rule_dict(rule: FitRule | EngagementRule, points: float) -> dict[str, Any]:
    raw = rule.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    first = ["name", "field", "kind", "where"]
    out = {k: raw[k] for k in first if k in raw}
    out.update((k, v) for k, v in raw.items() if k not in out)
    out["points"] = _num(points)
    if isinstance(rule, EngagementRule) and rule.max_points is not None and points != 0 and rule.points != 0:
        out["max_points"] = _num(round_points(float(rule.max_points) / abs(float(rule.points)) * abs(points)))
    return {k: _num(v) if isinstance(v, float) else v for k, v in out.items()}


def _rule_comment(info: RuleInfo, points: float, note: Note, figures: Mapping[str, Any], base: float) -> str:
    n = figures["matched"]
    seen = f"counted for {n:,} outcome(s)" + (
        f", {figures['rate']:.0%} won vs {base:.0%} overall" if figures["rate"] is not None else "")
    was = f"was {_num(info.points)}"
    if note == "kept: too few outcomes":
        return f"# {was}, kept: {seen} (fewer than {MIN_MATCHES}, too few to judge)"
    if note == "zero: sign not borne out":
        return f"# {was}, now 0: the outcomes do not bear out its sign; {seen}"
    if note == "zero: no lift":
        return f"# {was}, now 0: no measurable lift; {seen}"
    return f"# {was}; {seen}"


def _dump_item(item: dict[str, Any]) -> str:
    text: str = yaml.safe_dump([item], sort_keys=False, allow_unicode=True, default_flow_style=None, width=110)
    return "".join(f"  {line}\n" for line in text.rstrip("\n").split("\n"))


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def new_label(old: str, now: float) -> str:
    return f"{old[:29]}-s{dt.datetime.fromtimestamp(now, dt.UTC):%y%m%d}"


def scoring_yaml(spec: ScoringFile, s: Suggestion, *, now: float, since: float | None = None,
                 source: str = "mappings/scoring.yaml") -> str:
    """The suggested model as a scoring.yaml: the current file's rules with the fitted numbers."""
    cv_c, cv_s = s.current, s.suggested
    lines = [
        f"# Suggested by `leadscore suggest --target {s.target}` on {_iso(now)}",
        f"# from {s.crm} data read at {_iso(s.read_at)}" + (f", leads since {_iso(since)}" if since else "") + ":",
        f"#   {s.leads:,} outcomes ({s.won:,} won, {s.lost:,} lost; {s.undated:,} without a date, scored as at the "
        f"read), {s.open:,} open leads.",
        f"# Starting point: {source} (model {s.current_version}); its rules, tests and reasons are kept,",
        "# points fitted with an L2-regularised logistic regression on the rules' own contributions,",
        f"# 1 point = {1 / s.scale:.4f} log-odds; thresholds: hot for {s.target}, warm and grades keep today's shares.",
        f"# Cross-validated ({s.folds}-fold, held-out leads): AUC {cv_c['auc']:.3f} today, "
        f"{cv_s['auc']:.3f} with these points;",
        f"#   hot converts {_pct(cv_c['bands']['hot']['rate'])} today, {_pct(cv_s['bands']['hot']['rate'])} here.",
        *([f"# Note: {s.cuts.note}."] if s.cuts.note else []),
        "# Review it, preview it (`leadscore preview FILE`), then copy it over mappings/scoring.yaml.",
        "",
    ]
    settings = spec.model
    model_section: dict[str, Any] = {
        "label": new_label(settings.label, now),
        "half_life_days": _num(settings.half_life_days),
    }
    if settings.window_days is not None:
        model_section["window_days"] = _num(settings.window_days)
    model_section.update({
        "weights": {"fit": 1, "engagement": 1},
        "caps": {"fit": {}, "engagement": {}, "total": {"min": 0, "max": TOP}},
        "bands": {"warm": s.cuts.warm, "hot": s.cuts.hot},
        "grades": {"A": s.cuts.A, "B": s.cuts.B, "C": s.cuts.C},
    })
    lines.append(yaml.safe_dump({"model": model_section}, sort_keys=False, default_flow_style=None).rstrip("\n"))
    if spec.aliases:
        lines.append("")
        lines.append(yaml.safe_dump({"aliases": spec.aliases}, sort_keys=False, allow_unicode=True,
                                    default_flow_style=None, width=110).rstrip("\n"))
    base = s.won / s.leads if s.leads else 0.0
    for group, rules in (("fit", spec.fit), ("engagement", spec.engagement)):
        lines.append("")
        lines.append(f"{group}:" if rules else f"{group}: []")
        for rule in rules:
            info = next(r for r in s.rules if r.name == rule.name)
            points = s.points[rule.name]
            lines.append("  " + _rule_comment(info, points, s.notes[rule.name], s.rule_figures[rule.name], base))
            lines.append(_dump_item(_rule_dict(rule, points)).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def write_suggestion(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}).") from None


# --------------------------------------------------------------------------- side by side


def comparison_rows(s: Suggestion) -> list[list[str]]:
    c, g = s.current, s.suggested
    rows = [
        [f"AUC ({s.folds}-fold CV, mean ± sd)", f"{c['auc']:.3f} ± {c['auc_sd']:.3f}",
         f"{g['auc']:.3f} ± {g['auc_sd']:.3f}"],
        ["top-decile lift", f"{c['top_decile_lift']:.2f}", f"{g['top_decile_lift']:.2f}"],
        ["won leads found in hot", _pct(c["won_in_hot"]), _pct(g["won_in_hot"])],
    ]
    for band in BANDS:
        cb, gb = c["bands"][band], g["bands"][band]
        rows.append([f"{band}: share of outcomes / converted", f"{_pct(cb['share'])} / {_pct(cb['rate'])}",
                     f"{_pct(gb['share'])} / {_pct(gb['rate'])}"])
    return rows
