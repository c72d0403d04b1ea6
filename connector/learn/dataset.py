"""LOCAL STAND-IN (eval branch) for the `out` engineer's connector/learn/dataset.py.

Only the shared interface from TEAM.md, so the analysis can be written and tested on
synthetic Datasets before `out` lands; dropped in favour of out's module on merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from connector.domain import Activity, CrmName, Lead
from connector.errors import UserError

if TYPE_CHECKING:
    from connector.bootstrap import Runtime
    from connector.engine import ScoreResult, ScoringModel

Outcome = Literal["won", "lost"]


@dataclass(slots=True)
class Example:
    lead: Lead
    outcome: Outcome | None
    outcome_at: float | None

    def as_of(self, now: float) -> float:
        return self.outcome_at - 1 if self.outcome_at is not None else now

    def activities_as_of(self, now: float) -> list[Activity]:
        cut = self.as_of(now)
        return [a for a in self.lead.activities if a.ts < cut]


@dataclass(slots=True)
class Dataset:
    crm: CrmName
    read_at: float
    examples: list[Example]

    def labelled(self) -> list[Example]:
        return [e for e in self.examples if e.outcome is not None]

    def undated(self) -> int:
        return sum(1 for e in self.examples if e.outcome is not None and e.outcome_at is None)

    def score_all(self, model: ScoringModel) -> list[tuple[Example, ScoreResult]]:
        return [
            (e, model.score(e.lead.profile, e.activities_as_of(self.read_at), e.as_of(self.read_at)))
            for e in self.examples
        ]


def read_dataset(
    rt: Runtime, crm: CrmName, *, since: float | None = None, progress: Callable[[int], None] | None = None
) -> Dataset:
    raise UserError(f"outcomes are not configured for {crm} (stand-in: the dataset module has not landed yet).")


def dataset_from_examples(crm: CrmName, examples: list[Example], read_at: float) -> Dataset:
    return Dataset(crm, read_at, list(examples))
