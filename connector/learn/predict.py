"""Applying the learned probability in the scoring pass: a probability (0-100) and its factors in words.

`Predictor.apply(items, at)` takes a page of leads with the rules' own results (the same pass
as the rules: the engine's contributions are features, nothing is scored twice) and returns, per
lead, the percentage and the factors text written to `lead_conversion_probability` and
`lead_probability_factors`.

Factors: for each feature group (a profile field, an activity kind, a rule) on which the lead
differs from a typical lead, the probability is recomputed with that group set as the typical
lead has it; the difference is that factor's weight in percentage points. The three largest
each way are written, for and against. Only groups that differ are recomputed, and all leads of
a page go through the estimator in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from connector.domain import Activity
from connector.engine import ScoreResult
from connector.learn.train import TrainedModel

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

    def rows(self, items: Sequence[tuple[Mapping[str, Any], Sequence[Activity], ScoreResult]], at: float
             ) -> np.ndarray:
        row = self.spec.row
        return np.asarray([row(p, a, at, s) for p, a, s in items], dtype=float).reshape(len(items), self.spec.width)

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(X)[:, 1]) if len(X) else np.zeros(0)

    def apply(
        self, items: Sequence[tuple[Mapping[str, Any], Sequence[Activity], ScoreResult]], at: float,
        *, factors: bool = True,
    ) -> list[tuple[int, str]]:
        """(probability in percent, factors text) per lead, in order."""
        if not items:
            return []
        X = self.rows(items, at)
        p = self.probabilities(X)
        pct = [int(np.floor(v * 100 + 0.5)) for v in p]
        if not factors:
            return [(v, "") for v in pct]
        return list(zip(pct, self.factors(X, p, at), strict=True))

    def weights(self, X: np.ndarray, p: np.ndarray) -> list[list[tuple[float, str]]]:
        """Per lead, (percentage points, group) for every group on which it differs from the typical lead."""
        base = self.baseline
        blocks = []
        owners: list[tuple[np.ndarray, str]] = []
        for group, cols in self._groups:
            differs = np.any(X[:, cols] != base[cols], axis=1)
            idx = np.nonzero(differs)[0]
            if len(idx) == 0:
                continue
            block = X[idx].copy()
            block[:, cols] = base[cols]
            blocks.append(block)
            owners.append((idx, group))
        out: list[list[tuple[float, str]]] = [[] for _ in range(len(X))]
        if not blocks:
            return out
        q = self.probabilities(np.vstack(blocks))
        start = 0
        for idx, group in owners:
            deltas = (p[idx] - q[start:start + len(idx)]) * 100
            start += len(idx)
            for i, d in zip(idx.tolist(), deltas.tolist(), strict=True):
                out[i].append((d, group))
        return out

    def factors(self, X: np.ndarray, p: np.ndarray, at: float) -> list[str]:
        texts = []
        describe = self.spec.describe
        for i, found in enumerate(self.weights(X, p)):
            pros = sorted((w for w in found if w[0] >= MIN_POINTS), reverse=True)[:TOP_FACTORS]
            cons = sorted(w for w in found if w[0] <= -MIN_POINTS)[:TOP_FACTORS]
            row = X[i]
            parts = []
            if pros:
                parts.append("For: " + "; ".join(f"{describe(g, row, at)} ({d:+.0f} pts)" for d, g in pros))
            if cons:
                parts.append("Against: " + "; ".join(f"{describe(g, row, at)} ({d:+.0f} pts)" for d, g in cons))
            text = ". ".join(parts) + "." if parts else NO_FACTORS
            texts.append(text[:FACTORS_LIMIT])
        return texts


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
