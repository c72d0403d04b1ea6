"""The `schedule:` section of hubspot.yaml and salesforce.yaml: when beat starts this CRM's syncs."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from connector.mapfile import Strict

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class SyncSchedule(Strict):
    incremental_every_minutes: int = Field(default=5, ge=1, le=1440)
    full_daily_at: str = "02:30"  # UTC, "HH:MM" in quotes (YAML reads 02:30 unquoted as a number)

    @field_validator("full_daily_at")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"'{value}' is not a time of day like \"02:30\" (UTC, in quotes)")
        return value

    def describe(self, crm: str) -> str:
        return (f"{crm}: incremental sync every {self.incremental_every_minutes} min, "
                f"full sync daily at {self.full_daily_at} UTC")
