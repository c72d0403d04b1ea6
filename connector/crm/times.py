"""Times as the CRMs send them, read once for both: epoch seconds (float), or None when unreadable.

HubSpot: ISO 8601 strings ("2026-01-02T03:04:05.000Z"), epoch milliseconds (as numbers or digit strings),
dates ("2026-01-02"). Salesforce: datetimes with a +0000 offset ("2026-01-02T03:04:05.000+0000") and dates.
A date means its midnight UTC; a time without an offset is UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

_COMPACT_OFFSET = re.compile(r"[+-]\d{4}$")


def parse_time(value: Any) -> float | None:
    """Epoch seconds of a CRM time value (see the module docstring); None if empty or unreadable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) / 1000  # epoch milliseconds
    text = str(value).strip()
    if text.isdigit():
        return int(text) / 1000
    try:
        if len(text) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC).timestamp()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        elif _COMPACT_OFFSET.search(text):
            text = text[:-2] + ":" + text[-2:]
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
