"""Applying the learned probability in the scoring pass: a probability (0-100) and its factors in words.

`Predictor.apply(items, at)` takes a page of leads with the rules' own results (the same pass
as the rules: the engine's contributions are features, nothing is scored twice) and returns, per
lead, the percentage and the factors text written to `lead_conversion_probability` and
`lead_probability_factors`.

Factors: for each feature group (a profile field, an activity kind, a rule) the probability is
recomputed with that group set as the average lead of the training data has it; the difference
is that factor's weight in percentage points. The three largest each way are written, for and
against. With the logistic model the decision value is linear, so each group's share is exact
and costs a matrix product. With trees, the shares come from a linear model fitted to the trees'
own decision values at training (connector.learn.train.surrogate; its R² is recorded), applied to
the trees' probability: re-predicting a page once per group cost six times the rules' own time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from connector.domain import Activity
from connector.engine import ScoreResult
from connector.learn.features import DAY
from connector.learn.train import THREADS, TrainedModel

TOP_FACTORS = 3
MIN_POINTS = 0.5      # a factor moving the probability by less than half a point is not worth a rep's time
FACTORS_LIMIT = 1000  # characters; a textarea in HubSpot and a Long Text Area in Salesforce take far more
NO_FACTORS = "No factor moves this lead's probability away from a typical lead's"


class Predictor:
    """A trained model ready to apply; built once per worker per model version."""

    def __init__(self, trained: TrainedModel) -> None:
        self.trained = trained
        self.version = trained.version
        self.spec = trained.spec
        self.estimator = trained.estimator
        self.baseline = np.asarray(trained.baseline, dtype=float)
        self._groups = list(self.spec.group_columns.items())
        self._names = [g for g, _ in self._groups]
        self._member = np.zeros((self.spec.width, len(self._groups)))
        for k, (_, cols) in enumerate(self._groups):
            self._member[cols, k] = 1.0
        # The calibrated estimator is sigmoid(decision value) of one base estimator (ensemble=False).
        self._base, self._calibrator = _parts(self.estimator)
        self._weights = _linear_weights(self._base)
        if self._weights is None and "surrogate_weights" in trained.extra:
            self._weights = np.asarray(trained.extra["surrogate_weights"], dtype=float)
        # One OpenMP/BLAS thread for the rest of this process (see connector.learn.train.THREADS): a worker
        # is one of many processes, and entering a limit for each page would cost 2 ms a page.
        from threadpoolctl import threadpool_limits

        threadpool_limits(THREADS)
        self._a, self._b = float(self._calibrator.a_), float(self._calibrator.b_)
        # what describe() reads of each group: the key under which its words are cached for a page
        self._word_cols = [self.spec.word_columns(g) for g in self._names]
        self._is_kind = [g.startswith("kind:") for g in self._names]

    def rows(self, items: Sequence[tuple[Mapping[str, Any], Sequence[Activity], ScoreResult]], at: float
             ) -> np.ndarray:
        return self.spec.matrix(items, at)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._base.decision_function(X), dtype=float)

    def _calibrated(self, f: np.ndarray) -> np.ndarray:
        # Platt scaling as scikit-learn's _SigmoidCalibration.predict computes it, without its input checks
        # (a tenth of the page's time): 1 / (1 + exp(a * f + b))
        return np.asarray(1.0 / (1.0 + np.exp(self._a * f + self._b)), dtype=float)

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        return self._calibrated(self._decision(X)) if len(X) else np.zeros(0)

    def apply(
        self, items: Sequence[tuple[Mapping[str, Any], Sequence[Activity], ScoreResult]], at: float,
        *, factors: bool = True,
    ) -> list[tuple[int, str]]:
        """(probability in percent, factors text) per lead, in order."""
        if not items:
            return []
        X = self.rows(items, at)
        f = self._decision(X)
        p = self._calibrated(f)
        pct = [int(v) for v in np.floor(p * 100 + 0.5)]
        if not factors:
            return [(v, "") for v in pct]
        return list(zip(pct, self._texts(X, self._points(X, f, p), at), strict=True))

    def _points(self, X: np.ndarray, f: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Per lead and group: percentage points the lead's probability loses when that group is set to
        the typical lead's (n x groups)."""
        n, g = len(X), len(self._groups)
        if self._weights is not None:
            # linear decision value: moving a group to the baseline moves f by its share, exactly
            shares = ((X - self.baseline) * self._weights) @ self._member
            q = self._calibrated((f[:, None] - shares).ravel()).reshape(n, g)
            return np.asarray((p[:, None] - q) * 100)
        blocks = np.repeat(X[None, :, :], g, axis=0)
        for k, (_, cols) in enumerate(self._groups):
            blocks[k][:, cols] = self.baseline[cols]
        q = self.probabilities(blocks.reshape(g * n, -1)).reshape(g, n).T
        return np.asarray((p[:, None] - q) * 100)

    def weights(self, X: np.ndarray, p: np.ndarray) -> list[list[tuple[float, str]]]:
        """Per lead, (percentage points, group) for every group (for tests and explain)."""
        pts = self._points(X, self._decision(X), p)
        return [[(float(d), name) for d, name in zip(row, self._names, strict=True)] for row in pts]

    def factors(self, X: np.ndarray, p: np.ndarray, at: float) -> list[str]:
        return self._texts(X, self._points(X, self._decision(X), p), at)

    def _texts(self, X: np.ndarray, pts: np.ndarray, at: float) -> list[str]:
        n, g = pts.shape
        if g == 0:
            return [NO_FACTORS] * n
        top = min(TOP_FACTORS, g)
        order = np.argsort(pts, axis=1)
        lows, highs = order[:, :top], order[:, ::-1][:, :top]
        low_pts = np.take_along_axis(pts, lows, axis=1).tolist()
        high_pts = np.take_along_axis(pts, highs, axis=1).tolist()
        lows_l, highs_l = lows.tolist(), highs.tolist()
        rows = X.tolist()
        names = self._names
        spans = self._word_cols
        kinds = self._is_kind
        describe = self.spec.describe
        words: dict[tuple[int, tuple[float, ...]], str] = {}  # the same value in the same words, once a page

        day = at / DAY

        def said(k: int, row: list[float]) -> str:
            a, b, more = spans[k]
            if kinds[k]:  # "3 meetings, the last on <date>": the count and the day say it all
                key: tuple[int, tuple[float, ...]] = (k, (row[a], float(int(day - row[a + 2]))))
            else:
                key = (k, (*row[a:b], *[row[c] for c in more]))
            text = words.get(key)
            if text is None:
                text = words[key] = describe(names[k], row, at)
            return text

        texts = []
        for i in range(n):
            row = rows[i]
            pros = [f"{said(k, row)} ({d:+.0f} pts)" for k, d in zip(highs_l[i], high_pts[i], strict=True)
                    if d >= MIN_POINTS]
            cons = [f"{said(k, row)} ({d:+.0f} pts)" for k, d in zip(lows_l[i], low_pts[i], strict=True)
                    if d <= -MIN_POINTS]
            if pros and cons:
                text = f"For: {'; '.join(pros)}. Against: {'; '.join(cons)}."
            elif pros:
                text = f"For: {'; '.join(pros)}."
            elif cons:
                text = f"Against: {'; '.join(cons)}."
            else:
                text = NO_FACTORS
            texts.append(text[:FACTORS_LIMIT])
        return texts


def _parts(estimator: Any) -> tuple[Any, Any]:
    """The base estimator and the sigmoid calibrator of a CalibratedClassifierCV fitted with ensemble=False."""
    [calibrated] = estimator.calibrated_classifiers_
    [calibrator] = calibrated.calibrators
    return calibrated.estimator, calibrator


def _linear_weights(base: Any) -> np.ndarray | None:
    """Per column, the decision value's slope, when the base model is scaling + logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(base, Pipeline) and len(base.steps) == 2:
        scaler, lr = base.steps[0][1], base.steps[1][1]
        if isinstance(scaler, StandardScaler) and isinstance(lr, LogisticRegression):
            scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
            return np.asarray(lr.coef_[0] / scale, dtype=float)
    return None


def explain_lines(rt: Any, crm: str, lead: Any, now: float) -> list[str]:
    """`leadscore explain`'s lines on the learned probability, next to the points."""
    if rt.predictors is None:
        return ["probability: none (LEADSCORE_MODEL_STORE is not set)"]
    predictor = rt.predictors.get(crm)
    if predictor is None:
        return ["probability: none yet (no trained model is active for this CRM: run leadscore train)"]
    scored = rt.model.score(lead.profile, lead.activities, now)
    [(percent, factors)] = predictor.apply([(lead.profile, lead.activities, scored)], now)
    lines = [f"probability: {percent}% of converting (model {predictor.version})"]
    settings = rt.model.spec.probability
    if settings.band_from == "probability":
        lines.append(f"band from the probability: {settings.bands.band(percent)} "
                     f"(warm from {settings.bands.warm}%, hot from {settings.bands.hot}%)")
    lines.append(f"factors: {factors}")
    return lines
