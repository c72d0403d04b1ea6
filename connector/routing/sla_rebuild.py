"""A lost SLA schedule rebuilds itself from the CRM's open tasks.

The SLA schedule (which assignment must be acted on by when) lives in Redis. When Redis
loses it (a restart without persistence, a failover to an empty replica, a flush),
assignments already made would never be reassigned. The CRM still has the evidence:
every assignment routing made left an open task for the rep, whose subject starts with
routing's headline ("Hot lead: ...", "Hot lead reassigned to you: ...") and whose due
time (HubSpot) or creation time (Salesforce) gives the deadline.

`rebuild` runs from `Router.check_sla` when routing's marker key is missing (a fresh or
emptied Redis) and again every `RECHECK_S` (it then adopts only leads Redis knows nothing
about, so a partial loss is repaired too). For each open task of ours on a lead that
routing has no record of, and whose CRM owner is still the task's rep, it writes back
the episode and a finished assignment round with its SLA deadline, exactly as routing
would have left them; `check_sla` then reassigns it when the rep has not acted in time.
What is rebuilt: the rep, the task, the deadline, the reps who had the lead (owners of
our other open tasks on it) and the reassignments already made (tasks saying
"reassigned to you"); the score, band and grade come from the CRM record.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from connector.crm.base import OpenTask
from connector.domain import CRMS, CrmName, Lead
from connector.errors import ConfigError, LeadscoreError, RetryLater
from connector.routing.keys import index_key, remember
from connector.routing.policy import Decision, resolve_region

if TYPE_CHECKING:
    from connector.crm.base import CrmAdapter
    from connector.routing.service import Router

log = logging.getLogger("leadscore.routing")

LOOKBACK_S = 7 * 24 * 3600  # open tasks older than this are not routing's business any more
RECHECK_S = 3600.0  # how often the CRM is asked again (a partial loss is repaired within this)
REBUILD_LOCK_S = 300
# Headlines of tasks whose assignment runs an SLA clock (routing.service.HEADLINES: "hot", "sla").
SLA_HEADLINES: dict[str, str] = {"Hot lead": "hot", "Hot lead reassigned to you": "sla"}
NOTE = "rebuilt from the rep's open task in the CRM after Redis lost the SLA schedule"


def marker(router: Router) -> str:
    return f"{router.prefix}sla:known"


def rebuild(router: Router, now: float) -> int:
    """Adopt open routing tasks Redis has no record of, when due; returns how many assignments were adopted."""
    if not router.config.sla.enabled or router.redis.exists(marker(router)):
        return 0
    lock = f"{router.prefix}sla:rebuilding"
    token = uuid.uuid4().hex
    if not router.redis.set(lock, token, nx=True, ex=REBUILD_LOCK_S):
        return 0  # another worker is at it
    adopted = 0
    complete = True
    seen: set[int] = set()
    try:
        for crm in CRMS:
            try:
                adapter = router.adapter_for(crm)
                if id(adapter) in seen:
                    continue
                seen.add(id(adapter))
                tasks = adapter.open_routing_tasks(tuple(SLA_HEADLINES), now - LOOKBACK_S)
                adopted += _adopt(router, adapter.crm, adapter, tasks, now)
            except ConfigError:
                continue  # this CRM is not configured
            except LeadscoreError as exc:  # the CRM is down or refuses: try again at the next check
                complete = False
                log.warning("sla schedule not rebuilt", extra={"event": "sla_rebuild_failed", "crm": crm,
                                                               "why": str(exc)[:200]})  # fmt: skip
        if complete:
            router.redis.set(marker(router), repr(now), ex=int(RECHECK_S))
    finally:
        if router.redis.get(lock) in (token, token.encode()):
            router.redis.delete(lock)
    if adopted:
        log.warning("sla schedule rebuilt from the CRM", extra={"event": "sla_rebuilt", "assignments": adopted})
    return adopted


def _headline(subject: str) -> str:
    return subject.split(":", 1)[0].strip()


def _adopt(router: Router, crm: CrmName, adapter: CrmAdapter, tasks: Sequence[OpenTask], now: float) -> int:
    ours = [t for t in tasks if _headline(t.subject) in SLA_HEADLINES]
    by_lead: dict[tuple[str, str], list[OpenTask]] = defaultdict(list)
    for task in ours:
        by_lead[(task.stream, task.lead_id)].append(task)
    unknown: dict[tuple[str, str], tuple[str, OpenTask, list[OpenTask]]] = {}
    for (stream, lead_id), found in by_lead.items():
        lead_key = f"{crm}:{stream}:{lead_id}"
        newest = max(found, key=lambda t: (t.due or t.created_at, t.task_id))
        owner = router.redis.hget(router._episode_key(lead_key), "owner")
        if owner is not None and (owner.decode() if isinstance(owner, bytes) else str(owner)) == newest.rep_id:
            continue  # routing knows this assignment
        unknown[(stream, lead_id)] = (lead_key, newest, found)
    if not unknown:
        return 0
    leads: dict[tuple[str, str], Lead] = {}
    for stream in {s for s, _ in unknown}:
        ids = [i for s, i in unknown if s == stream]
        for start in range(0, len(ids), 100):
            for read in adapter.get_leads(stream, ids[start : start + 100]):
                leads[(stream, read.id)] = read
    adopted = 0
    for (stream, lead_id), (lead_key, task, found) in unknown.items():
        lead = leads.get((stream, lead_id))
        if lead is None or lead.owner_id != task.rep_id:
            continue  # deleted, or someone else owns it now: nothing for the SLA to watch
        try:
            adopted += _write(router, crm, lead, lead_key, task, found, now)
        except RetryLater:
            continue  # a worker is routing this lead right now: it knows better
    return adopted


def _write(
    router: Router, crm: CrmName, lead: Lead, lead_key: str, task: OpenTask, found: Sequence[OpenTask], now: float
) -> int:
    from connector.routing.service import RECORD_TTL_S

    minutes = router.config.sla.minutes * 60
    at = task.due - minutes if task.due is not None else task.created_at
    deadline = at + minutes
    with router._lock(lead_key):
        ekey = router._episode_key(lead_key)
        raw = router.redis.hgetall(ekey)
        episode = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                   for k, v in raw.items()}  # fmt: skip
        if episode.get("owner") == task.rep_id:
            return 0
        ep = str(int(episode.get("n", "0") or 0) + 1)
        count = sum(1 for t in found if SLA_HEADLINES[_headline(t.subject)] == "sla")
        decision = Decision(
            region=resolve_region(router.config, lead.profile),
            at=at,
            outcome="assigned",
            chosen=task.rep_id,
            reason=SLA_HEADLINES[_headline(task.subject)],
            note=NOTE,
            sla=True,
        )
        n = count
        pkey = router._pending_key(lead_key, ep)
        fields = {
            "crm": crm,
            "stream": lead.object_type,
            "lead_id": lead.id,
            "lead_key": lead_key,
            "episode": ep,
            "score": lead.written.get("score") or "?",
            "band": lead.written.get("band") or "hot",
            "grade": lead.written.get("grade") or "?",
            "model": lead.written.get("model") or "",
            "round": str(n),
            "sla_count": str(count),
            "tried": json.dumps(sorted({t.rep_id for t in found})),
            "rebuilt": repr(now),
            f"r{n}:decision": decision.to_json(),
            f"r{n}:at": repr(at),
            f"r{n}:owner": "1",
            f"r{n}:task": task.task_id,
            f"r{n}:notified": "1",
            f"r{n}:done": "1",
        }
        router._save(pkey, fields)
        pipe = router.redis.pipeline(transaction=True)
        pipe.hset(ekey, mapping={"n": ep, "open": "1", "started": repr(at), "owner": task.rep_id, "owner_ep": ep})
        remember(pipe, index_key(router.prefix, lead_key), [ekey, pkey])
        pipe.expire(ekey, RECORD_TTL_S)
        pipe.zadd(f"{router.prefix}sla", {f"{lead_key}|{ep}": deadline})
        pipe.execute()
    return 1
