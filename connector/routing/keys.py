"""Where routing and the notifier keep what they know about one lead, so a deletion finds it at once.

Every key routing writes about a lead (its episodes, pending assignments, routing record,
notification outbox entries) and every notification key claimed for it is listed in the
lead's index set, `<prefix>index:<lead key>`. A deletion webhook reads that one set instead
of scanning Redis (see `connector.webhooks.purge_record`).

Keys written by a version without indexes are indexed once, by `index_older_keys`, the
first time a deletion needs it (one SCAN of the routing and notification keys, then a
marker says it is done; a Redis that lost everything has nothing old left to index).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import redis

from connector.redisutil import text as _text

# Longer than every key the index lists lives (routing records: 90 days).
LEAD_INDEX_TTL_S = 90 * 24 * 3600

# Per-lead key families: <prefix><family>:<lead key>[|...]
_FAMILIES = ("pending", "record", "episode", "lock", "outbox")
_LEAD_KEY = re.compile(r"^((?:hubspot|salesforce):[A-Za-z_]+:[^|:\s]+)")


def index_key(prefix: str, lead_key: str) -> str:
    """The set naming every key kept about `lead_key` (`prefix` is routing's, e.g. "leadscore:routing:")."""
    return f"{prefix}index:{lead_key}"


def remember(pipe: Any, index: str, keys: Iterable[str]) -> None:
    """Queue on a pipeline: list `keys` in the lead's index (and keep the index as long as they live)."""
    names = list(keys)
    if names:
        pipe.sadd(index, *names)
        pipe.expire(index, LEAD_INDEX_TTL_S)


def lead_key_of(name: str, prefix: str, notify_prefixes: Iterable[str]) -> str | None:
    """The lead a key written by routing or the notifier is about (None: not a per-lead key)."""
    rest: str | None = None
    for family in _FAMILIES:
        if name.startswith(f"{prefix}{family}:"):
            rest = name[len(prefix) + len(family) + 1 :]
            break
    else:
        for notify in notify_prefixes:
            if name.startswith(notify):
                _, _, rest = name[len(notify) :].partition(":")  # after "<channel>:"
                break
    if not rest:
        return None
    found = _LEAD_KEY.match(rest)
    return found.group(1) if found else None


def index_older_keys(
    r: redis.Redis, prefix: str, notify_prefixes: Iterable[str], runs_pattern: str, failure_lists: str
) -> int:
    """Index keys written before indexes existed; once per Redis (a marker says it is done). Returns keys indexed."""
    marker = f"{prefix}indexed"
    if r.exists(marker):
        return 0
    notify = list(notify_prefixes)
    n = 0
    pipe = r.pipeline(transaction=False)
    for space in (prefix, *notify):
        for raw in r.scan_iter(match=f"{_glob(space)}*", count=1000):
            name = _text(raw)
            lead = lead_key_of(name, prefix, notify)
            if lead is not None:
                remember(pipe, index_key(prefix, lead), [name])
                n += 1
    for raw in r.scan_iter(match=runs_pattern, count=1000):
        pipe.sadd(failure_lists, _text(raw))
    pipe.set(marker, "1")
    pipe.execute()
    return n


def _glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
