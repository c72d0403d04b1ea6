"""Whether the Redis the connector uses keeps its data through a restart.

Routing's state lives only in Redis: away marks set from the command line (also kept in
mappings/away.yaml), capacity counted today, round-robin positions, the SLA deadlines
(rebuilt from the CRM's open tasks when lost) and which notifications were sent. A Redis
that forgets on restart forgets all of that; one that only snapshots forgets the
minutes before the crash. Append-only persistence (`appendonly yes`) keeps every write.

`leadscore check` asks the server (CONFIG GET appendonly / save). Managed services often
disable CONFIG; then we say that we could not tell, and what to make sure of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import redis

WHY = "away marks, capacity, round-robin turns, SLA deadlines and sent notifications live there"


@dataclass(frozen=True)
class Persistence:
    level: Literal["ok", "warn"]
    sentence: str


def redis_persistence(client: redis.Redis) -> Persistence:
    """What the server says about its persistence, as one sentence for `leadscore check`."""
    try:
        aof = _text(client.config_get("appendonly").get("appendonly", ""))
        save = _text(client.config_get("save").get("save", "")).strip()
    except redis.ResponseError:  # CONFIG renamed or disabled (managed services), or not allowed for this user
        return Persistence(
            "warn",
            "could not tell whether Redis keeps its data through a restart (CONFIG GET is not allowed here); "
            f"make sure it runs with append-only persistence (appendonly yes): {WHY}.",
        )
    if aof.lower() == "yes":
        return Persistence("ok", "Redis keeps every write through a restart (appendonly yes)")
    if save:
        return Persistence(
            "warn",
            f"Redis saves only snapshots (save {save}), not every write: after a crash it comes back without its "
            f"latest changes, and {WHY}; set appendonly yes.",
        )
    return Persistence(
        "warn",
        f"Redis keeps nothing through a restart (appendonly no, no snapshots), and {WHY}; set appendonly yes.",
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
