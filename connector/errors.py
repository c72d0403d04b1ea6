"""Errors grouped by what to do about them.

- `RetryLater`: the CRM or the network pushed back; the same call may succeed later
  (429, 5xx, timeouts, connection errors). Carries the wait the server asked for.
- `RecordError`: this one record cannot be processed; report it, skip it, go on.
- `StopSync`: nothing more will work until someone acts (bad token, missing scope,
  daily quota used up). Carries a sentence for the admin.
- `UserError`: bad input or configuration given to a command; one sentence, exit 1.

Adapters map vendor status codes onto these in one table each
(connector/crm/hubspot.py, connector/crm/salesforce.py).
"""

from __future__ import annotations


class LeadscoreError(Exception):
    """Base of everything the connector raises on purpose."""


class UserError(LeadscoreError):
    """Bad input or configuration: the message is one sentence the user can act on."""


class ConfigError(UserError):
    """A required setting is missing or malformed; the message names the variable."""


class RetryLater(LeadscoreError):
    """A transient failure; `wait` is the server's requested delay in seconds, if any."""

    def __init__(self, message: str, wait: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.wait = wait
        self.status = status


class RecordError(LeadscoreError):
    """One record failed permanently; the others go on."""

    def __init__(self, record_id: str, message: str) -> None:
        super().__init__(f"{record_id}: {message}")
        self.record_id = record_id
        self.message = message


class StopSync(LeadscoreError):
    """Stop the sync and tell the admin. `resume_at` (epoch seconds) when known."""

    def __init__(self, message: str, resume_at: float | None = None) -> None:
        super().__init__(message)
        self.resume_at = resume_at
