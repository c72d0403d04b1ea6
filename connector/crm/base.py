"""What the pipeline needs from a CRM: the contract both adapters fulfil.

The pipeline, routing and the CLI speak only to `CrmAdapter`; the HubSpot and
Salesforce adapters translate it into vendor calls. Records cross this line as
`connector.domain.Lead`, score values as engine names (see WRITE_FIELDS).
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from connector.domain import CrmName, Lead, Rep

# Creating a CRM task is not idempotent (neither API takes an idempotency key), so routing puts a
# reference of its own in the task's body, one per assignment, and asks the CRM for it before
# it creates the task again after a failure that may have reached the CRM (a timeout, a crash).
TASK_REF_LABEL = "leadscore ref:"
_TASK_REF = re.compile(r"leadscore ref: (ls-[0-9a-f]{16})\b")


def task_ref(key: str) -> str:
    """The reference routing writes into the task of one assignment (`key`: lead, episode, round)."""
    return "ls-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def with_task_ref(body: str, ref: str) -> str:
    return f"{body}\n\n{TASK_REF_LABEL} {ref}"


def task_ref_in(text: str | None) -> str | None:
    """The reference in a task body, if it carries one."""
    found = _TASK_REF.search(text or "")
    return found.group(1) if found else None


@dataclass(slots=True)
class Page:
    """One page of one stream.

    `next_cursor` is an opaque, small string (it travels in Celery messages);
    None means this was the last page. `high_water` is the largest modified
    time (epoch seconds) among the page's records, for incremental cursors.
    `problems` lists records that could not be read or mapped, as (id, why).
    `total` is how many records the stream has from this page on, when the CRM
    says so (Salesforce's totalSize, HubSpot search's total); None otherwise.
    """

    leads: list[Lead]
    next_cursor: str | None
    high_water: float | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    total: int | None = None
    # Filled by `read_outcome_page` only: record id -> what became of it (records without an entry are open).
    outcomes: dict[str, LeadOutcome] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadOutcome:
    """What became of one record, as the `outcomes:` mapping section reads it (connector/mappings/outcomes.py).

    `outcome` is "won", "lost" or None (open); `at` the epoch seconds it happened, None when the
    CRM records no date for it."""

    outcome: str | None
    at: float | None = None


@dataclass(slots=True)
class WriteReport:
    """What a score write did, per record.

    `failed`: refused for good (a validation error): reported and skipped. `retry`: not written
    this time for a reason that passes (a row lock, a server error inside a 207, a timeout,
    rows a bulk job left unprocessed): the sync keeps them in its retry set (connector/retry.py).
    """

    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (record id, the CRM's message)
    retry: list[tuple[str, str]] = field(default_factory=list)  # (record id, why it was not written this time)

    def merge(self, other: WriteReport) -> None:
        self.written += other.written
        self.failed += other.failed
        self.retry += other.retry


# Records that failed for a reason that passes are written again at once, this many more times,
# after these waits (seconds, with jitter); what still fails goes back to the caller in `retry`.
RECORD_RETRY_WAITS: tuple[float, ...] = (0.5, 2.0)


def write_with_record_retries(
    write_once: Callable[[Mapping[str, Mapping[str, Any]]], WriteReport],
    updates: Mapping[str, Mapping[str, Any]],
    *,
    waits: Sequence[float] = RECORD_RETRY_WAITS,
    sleep: Callable[[float], None] = time.sleep,
) -> WriteReport:
    """`write_once(updates)`, then the records it reports in `retry` again, a few times with backoff.

    Only the records that failed are sent again: nothing written is written twice.
    """
    report = write_once(updates)
    for wait in waits:
        if not report.retry:
            break
        again = {rid: updates[rid] for rid, _ in report.retry if rid in updates}
        report.retry = [(rid, why) for rid, why in report.retry if rid not in updates]
        sleep(wait * random.uniform(0.5, 1.0))
        report.merge(write_once(again))
    return report


@dataclass(frozen=True, slots=True)
class OpenTask:
    """An open task routing created on a record, as the CRM has it (see `CrmAdapter.open_routing_tasks`)."""

    stream: str
    lead_id: str
    rep_id: str
    task_id: str
    subject: str
    created_at: float
    # The task's due time in the clock of whoever created it (HubSpot's hs_timestamp); None where
    # the CRM keeps a due date only (Salesforce's ActivityDate).
    due: float | None = None


@dataclass(frozen=True, slots=True)
class TaskToCreate:
    """One task of a batch (`BatchRouting.create_tasks`); `ref` is the reference its body carries."""

    lead_id: str
    rep_id: str
    subject: str
    body: str
    due: float
    ref: str


class CallCounter:
    """HTTP calls made, in total and by the calling thread.

    A worker's threads share one adapter, so a page's own call count is the
    difference of the per-thread figure before and after the page.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._local = threading.local()
        self.limited = 0  # answers that said "too many requests" (429, Salesforce's concurrency limit)

    def pushed_back(self) -> None:
        with self._lock:
            self.limited += 1

    def take_limited(self) -> int:
        """The push-backs since the last call (for metrics), counted once across threads."""
        with self._lock:
            n, self.limited = self.limited, 0
        return n

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._total += n
        self._local.n = getattr(self._local, "n", 0) + n

    def credit(self, n: int) -> None:
        """Count calls that helper threads made on this thread's behalf (already in the total)."""
        self._local.n = getattr(self._local, "n", 0) + n

    @property
    def total(self) -> int:
        return self._total

    @property
    def this_thread(self) -> int:
        return int(getattr(self._local, "n", 0))


@runtime_checkable
class BatchRouting(Protocol):
    """What routing uses, where an adapter has it, to carry out a page's hot leads in a few calls.

    Each is the batch form of a CrmAdapter method with the same meaning (set_owner, create_task,
    find_task, open_task); an adapter without them is used one record at a time.
    """

    def set_owners(self, stream: str, wanted: Sequence[tuple[str, str, str | None]]) -> dict[str, bool | str]: ...

    def create_tasks(self, stream: str, tasks: Sequence[TaskToCreate]) -> tuple[dict[str, str], dict[str, str]]: ...

    def find_tasks(self, stream: str, wanted: Sequence[tuple[str, str, str]]) -> dict[str, str]: ...

    def open_tasks(
        self, stream: str, wanted: Sequence[tuple[str, str]], subject_prefixes: Sequence[str]
    ) -> dict[str, str]: ...


@runtime_checkable
class CrmAdapter(Protocol):
    crm: CrmName
    # The record streams a sync walks: ("contact",) for HubSpot, ("Lead", "Contact") for Salesforce.
    streams: tuple[str, ...]

    def read_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        """A page of records with their profile, owner and current score values.

        since=None: a full sync (HubSpot list endpoint, SOQL without a date filter).
        since=T: records modified at or after T, ascending by modification time
        (inclusive: the caller dedupes by id). cursor=None starts the stream.
        """
        ...

    # The streams `read_outcome_page` walks: the sync's, plus for Salesforce the converted Leads within "Lead".
    outcome_streams: tuple[str, ...]

    def read_outcome_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        """Like `read_page`, for learning: the page's `outcomes` filled from the `outcomes:` mapping section
        (with the fewest extra calls: outcome properties ride along the page read, related records in
        batch reads), converted Salesforce Leads included. Never writes. Raises UserError (one sentence)
        when the mapping has no `outcomes:` section."""
        ...

    def outcome_profile_fields(self) -> frozenset[str]:
        """Engine profile fields that say the outcome (e.g. lifecycle_stage when it defines won): left out
        of what a model learns from."""
        ...

    def load_activities(self, leads: Sequence[Lead], now: float) -> None:
        """Fill each lead's `activities` in batched calls (never one call per lead where a batch exists)."""
        ...

    def get_leads(self, stream: str, ids: Sequence[str]) -> list[Lead]:
        """Re-read records as they are now (owner included). Unknown ids are left out."""
        ...

    def write_scores(self, stream: str, updates: Mapping[str, Mapping[str, str]]) -> WriteReport:
        """Write engine-named values (a subset of WRITE_FIELDS) per record id, batched.

        A record the CRM refuses is reported in `failed` with the CRM's message; one
        that failed for a reason that passes (and still failed after a few quick
        retries) in `retry`; the others are written. Nothing that succeeded is sent again.
        """
        ...

    def list_reps(self) -> list[Rep]:
        """Owners (HubSpot) or Users (Salesforce), active and inactive, with team/region hints."""
        ...

    def set_owner(self, stream: str, lead_id: str, rep_id: str, *, expected: str | None = None) -> bool:
        """Make rep_id the owner only if the current owner (re-read first) is `expected`.

        expected=None: only an unowned record is assigned. For an SLA reassignment
        pass the rep who loses the lead. Returns True when the owner is rep_id after
        the call (set now, or already rep_id), False when someone else owns it.
        HubSpot's owner is `hubspot_owner_id`; Salesforce's `OwnerId`, set with
        `Sforce-Auto-Assign: FALSE`. (Neither API has a compare-and-set; the
        re-read narrows the race, the routing lock closes it for our own workers.)
        """
        ...

    def create_task(self, stream: str, lead_id: str, rep_id: str, *, subject: str, body: str, due: float) -> str:
        """A CRM task for the rep, linked to the record; returns the task id."""
        ...

    def task_is_open(self, task_id: str) -> bool: ...

    def find_task(self, stream: str, lead_id: str, rep_id: str, ref: str) -> str | None:
        """The rep's task on the record whose body carries `ref` (see `task_ref`), open or closed, if any.

        Asked before creating a task again after an attempt whose outcome is unknown.
        """
        ...

    def open_task(self, stream: str, lead_id: str, rep_id: str, subject_prefixes: Sequence[str]) -> str | None:
        """An open task of the rep's on the record whose subject starts with one of the prefixes, if any.

        The CRM, not Redis, says whether a rep was already told: after Redis lost the
        routing state, this keeps a rerun from creating a second task.
        """
        ...

    def rep_acted_since(self, stream: str, lead_id: str, rep_id: str, since: float) -> bool:
        """Whether the rep logged an activity (call, email, meeting, note) on the record since `since`."""
        ...

    def open_routing_tasks(self, subject_prefixes: Sequence[str], since: float) -> list[OpenTask]:
        """Open tasks of any rep, on any record of a stream, created (HubSpot: due) since `since`, whose
        subject starts with one of the prefixes: how routing rebuilds its SLA schedule after Redis lost it."""
        ...

    def record_url(self, stream: str, lead_id: str) -> str: ...

    def check(self) -> list[str]:
        """Problems an admin must fix, one sentence each; empty when all is well."""
        ...

    def setup(self) -> list[str]:
        """Create what can be created (idempotent); return one line per thing done or still to do."""
        ...

    def api_budget(self) -> tuple[int, int | None, str]:
        """(API calls used, the budget or None when unknown, the window they count over) for `leadscore status`."""
        ...

    def preparing(self) -> str | None:
        """What a sync reads before its pages can be scored, with its progress, in words (None: nothing)."""
        ...

    @property
    def calls(self) -> CallCounter:
        """HTTP calls this adapter made (retries included), in total and per thread."""
        ...

    def close(self) -> None: ...
