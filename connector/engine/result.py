"""What the engine says about one lead: the score, its parts, and why."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Literal, NamedTuple

from connector.domain import CHANGE_FIELDS, WRITE_FIELDS

Group = Literal["fit", "engagement"]

# lead_score_reasons is a textarea; keep the rep's summary well inside what
# both CRMs show without scrolling (and Salesforce's 255-byte text fields can
# still take a prefix of it).
REASONS_LIMIT = 480
NO_REASONS = "No scoring signals yet"


class Contribution(NamedTuple):
    """One rule's share of the score: points after decay and the rule's own caps."""

    rule: str
    group: Group
    points: float
    detail: str
    bant: str | None

    def phrase(self) -> str | None:
        """'+25 Decision-maker title (CEO)'; None when it rounds to no points."""
        return phrase(self.points, self.rule, self.detail)


def phrase(points: float, rule: str, detail: str) -> str | None:
    n = math.floor(points + 0.5)
    if n == 0:
        return None
    signed = f"+{n}" if n > 0 else str(n)  # as f"{n:+d}", without the format() call (slow compiled)
    return f"{signed} {rule} ({detail})" if detail else f"{signed} {rule}"


def reasons_text(phrases: list[str], limit: int = REASONS_LIMIT) -> str:
    """The top reasons (given strongest first) joined with '; ', kept under `limit` characters."""
    if not phrases:
        return NO_REASONS
    text = "; ".join(phrases)
    if len(text) <= limit:
        return text
    out = phrases[0][:limit]
    for p in phrases[1:]:
        if len(out) + 2 + len(p) > limit:
            break
        out = f"{out}; {p}"
    return out


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class ScoreResult(NamedTuple):
    """The score of one lead. A NamedTuple: immutable and cheap to build a million times."""

    score: int
    fit: int
    engagement: int
    band: str
    grade: str
    reasons: str
    contributions: tuple[Contribution, ...]
    bant: dict[str, int]
    model_version: str
    problems: tuple[str, ...]

    def write_values(self, now: float) -> dict[str, str]:
        """The values to write back, by engine name (connector.domain.WRITE_FIELDS)."""
        values = {
            "score": str(self.score),
            "fit": str(self.fit),
            "engagement": str(self.engagement),
            "band": self.band,
            "grade": self.grade,
            "reasons": self.reasons,
            "scored_at": iso_utc(now),
            "model": self.model_version,
        }
        return {k: values[k] for k in WRITE_FIELDS if k in values}  # probability and factors: connector.sync


def reasons_of(contributions: tuple[Contribution, ...]) -> str:
    """Reasons text from contributions ordered strongest first."""
    return reasons_text([p for c in contributions if (p := c.phrase()) is not None])


# "+25 " / "-9 " at the start of a phrase: the rule's points, which decay day by day.
_POINTS = re.compile(r"^[+-]\d+ ")


def reasons_evidence(text: str | None) -> frozenset[str]:
    """What a reasons text says, without each rule's points: which rules, and their details
    (values, counts, dates). Decay moves the points a little every day; this moves only when
    the evidence does."""
    if not text:
        return frozenset()
    return frozenset(_POINTS.sub("", phrase) for phrase in text.split("; "))


def must_write(values: Mapping[str, str], written: Mapping[str, str]) -> bool:
    """Whether a lead's new values (ScoreResult.write_values) differ from what the CRM holds in a way
    worth a write: any of the score fields, the model, or the reasons' evidence. Reasons whose only
    change is a decayed rule's points are not rewritten on their own; they are rewritten with the
    next change of the score (so the CRM's reasons may show a point or two of a decaying signal
    more than it is worth now, never a wrong signal, count or date)."""
    for f in CHANGE_FIELDS:
        if f not in values:  # the learned probability and factors, without an active model
            continue
        new, old = values[f], written.get(f)
        if new == old:
            continue
        if f == "reasons" and old is not None and reasons_evidence(new) == reasons_evidence(old):
            continue
        return True
    return False
