"""Past leads with their outcomes, read through the CRM adapters, ready to score "as they were".

    ds = read_dataset(rt, "hubspot")          # every lead, its activities and what became of it
    for example, result in ds.score_all(rt.model):
        ...                                    # each lead scored just before its outcome

Point in time: a lead with a dated outcome is scored as it was just before that moment
(`Example.as_of`: one second before), counting only the activities before it, so a backtest does
not see the future (a customer's onboarding meetings would otherwise flatter any model). A lead
whose CRM gives no date for its outcome (e.g. a lead status set to UNQUALIFIED) is counted, scored
at the time of reading with all its activities; `Dataset.undated()` says how many, for the reports.
Open leads (no outcome yet) are kept too (`outcome` None), for previews and base rates.

The profile fields that define the outcome (lifecycle_stage when the lifecycle stage says won,
lead_status when a lead status says lost, ...) are removed from every example's profile: they are
the outcome itself, not something known about the lead before it.

On the generated sandbox (`leadscore sandbox`, 10,000 people, seed 7) both CRMs give 1,096 won,
2,456 lost and 6,448 open leads; the hidden truth behind them is in sandbox/data.py
(`Person.propensity`, `Person.outcome`, `Person.outcome_ms`; HubSpot contact id i + 1 is person i).

Reading never writes to the CRM. It walks the same pages as a full sync (the adapter's
`read_outcome_page`: the sync's reads plus the outcome properties, and for Salesforce the converted
Leads the sync skips), then loads activities in the same batched calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from connector.domain import Activity, CrmName, Lead
from connector.errors import UserError

if TYPE_CHECKING:
    from connector.bootstrap import Runtime
    from connector.crm.base import LeadOutcome
    from connector.engine import ScoreResult, ScoringModel

Outcome = Literal["won", "lost"]


@dataclass(slots=True)
class Example:
    """One past lead: as the sync reads it (profile without the outcome-defining fields, all loaded
    activities) and what became of it."""

    lead: Lead
    outcome: Outcome | None  # None: no outcome yet (an open lead)
    outcome_at: float | None  # epoch seconds the outcome happened; None when the CRM gives no date

    def as_of(self, now: float) -> float:
        """When to score this lead: just before its outcome when dated, else `now`."""
        return self.outcome_at - 1.0 if self.outcome_at is not None else now

    def activities_as_of(self, now: float) -> list[Activity]:
        """The activities that had happened by `as_of(now)` (strictly before it)."""
        cut = self.as_of(now)
        return [a for a in self.lead.activities if a.ts < cut]


@dataclass(slots=True)
class Dataset:
    crm: CrmName
    read_at: float  # epoch seconds the data was read
    examples: list[Example] = field(default_factory=list)

    def labelled(self) -> list[Example]:
        """Examples with an outcome (won or lost)."""
        return [e for e in self.examples if e.outcome is not None]

    def undated(self) -> int:
        """How many labelled examples have no outcome date (scored with all their activities)."""
        return sum(1 for e in self.examples if e.outcome is not None and e.outcome_at is None)

    def counts(self) -> dict[str, int]:
        """{"won": N, "lost": N, "open": N}."""
        out = {"won": 0, "lost": 0, "open": 0}
        for e in self.examples:
            out[e.outcome or "open"] += 1
        return out

    def score_all(self, model: ScoringModel) -> list[tuple[Example, ScoreResult]]:
        """Every example scored by `model` at `as_of(read_at)` with `activities_as_of(read_at)`."""
        now = self.read_at
        return [(e, model.score(e.lead.profile, e.activities_as_of(now), e.as_of(now))) for e in self.examples]


def dataset_from_examples(crm: CrmName, examples: Iterable[Example], read_at: float) -> Dataset:
    """A Dataset from examples made elsewhere (tests, synthetic data)."""
    return Dataset(crm=crm, read_at=float(read_at), examples=list(examples))


def strip_profile(lead: Lead, fields: Iterable[str]) -> Lead:
    """The lead without the named profile fields (in place; returned for convenience)."""
    for name in fields:
        lead.profile.pop(name, None)
    return lead


def read_dataset(
    rt: Runtime,
    crm: CrmName,
    *,
    since: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Every lead of one CRM with its outcome, read through the adapter; never writes to the CRM.

    `since` (epoch seconds): leave out leads whose dated outcome happened before it (undated outcomes
    and open leads are kept). `progress` is called with the number of leads read so far after each page.
    Raises UserError (one sentence) when the CRM's mapping file has no `outcomes:` section.
    """
    adapter = rt.adapter(crm)
    removed = adapter.outcome_profile_fields()
    read_at = time.time()
    examples: list[Example] = []
    for stream in adapter.outcome_streams:
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = adapter.read_outcome_page(stream, cursor, since=None)
            leads = [lead for lead in page.leads if lead.id not in seen]
            seen.update(lead.id for lead in leads)
            adapter.load_activities(leads, read_at)
            examples += _examples(leads, page.outcomes, removed, since)
            if progress is not None:
                progress(len(examples))
            if page.next_cursor is None:
                break
            if page.next_cursor == cursor:
                raise UserError(f"{crm} repeated a page of {stream} records; stopping the read to avoid a loop.")
            cursor = page.next_cursor
    return Dataset(crm=crm, read_at=read_at, examples=examples)


def _examples(
    leads: Sequence[Lead], outcomes: Mapping[str, LeadOutcome], removed: Iterable[str], since: float | None
) -> list[Example]:
    out: list[Example] = []
    removed = tuple(removed)
    for lead in leads:
        found = outcomes.get(lead.id)
        what = found.outcome if found is not None else None
        at = found.at if found is not None else None
        if since is not None and what is not None and at is not None and at < since:
            continue
        outcome: Outcome | None = "won" if what == "won" else "lost" if what == "lost" else None
        out.append(Example(strip_profile(lead, removed), outcome, at if outcome is not None else None))
    return out
