"""Pure lead scoring: a model read from mappings/scoring.yaml, applied at a given `now`.

    model = load_scoring(Path("mappings/scoring.yaml"))
    result = model.score(profile, activities, now)
    result.score, result.band, result.reasons, result.write_values(now)

No I/O beyond reading the file at load time; the clock is always passed in.
"""

from connector.engine.compiled import ScoringModel
from connector.engine.load import load_scoring, model_version
from connector.engine.result import Contribution, ScoreResult, must_write

__all__ = ["Contribution", "ScoreResult", "ScoringModel", "load_scoring", "model_version", "must_write"]
