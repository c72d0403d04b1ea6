"""The `probability:` section of mappings/scoring.yaml: the learned conversion probability.

    probability:
      band_from: points            # points (default) or probability: the band from the learned probability
      bands: {warm: 20, hot: 50}   # percent, used when band_from is probability
      exclude_fields: [lead_status, budget, authority, need, timeline]   # filled only after sales contact
      retrain: {every_days: 7, at: "03:30"}   # beat retrains (UTC); every_days: 0 never
      keep_within_auc: 0.02        # a new model replaces the active one unless its CV AUC is lower by more

`leadscore train` and the retrain task read it; the sync reads `band_from` and `bands`.
The band comes from the probability only while a trained model is active for that CRM;
until then (and for a CRM without one) it comes from the points.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from connector.mapfile import Strict

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class ProbabilityBands(Strict):
    warm: int = Field(default=20, ge=0, le=100)
    hot: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> ProbabilityBands:
        if self.warm > self.hot:
            raise ValueError(f"warm ({self.warm}) must not be above hot ({self.hot})")
        return self

    def band(self, percent: int) -> str:
        return "hot" if percent >= self.hot else "warm" if percent >= self.warm else "cold"


class Retrain(Strict):
    every_days: int = Field(default=7, ge=0, le=365)
    at: str = "03:30"  # UTC, "HH:MM" in quotes

    @field_validator("at")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"'{value}' is not a time of day like \"03:30\" (UTC, in quotes)")
        return value


class ProbabilitySettings(Strict):
    band_from: Literal["points", "probability"] = "points"
    bands: ProbabilityBands = ProbabilityBands()
    # Profile fields (engine or custom names) that sales fills only after contacting the lead:
    # they would tell the model the outcome, so training never reads them.
    exclude_fields: list[str] = Field(default_factory=list)
    retrain: Retrain = Retrain()
    keep_within_auc: float = Field(default=0.02, ge=0.0, le=0.5)
