"""Routing a hot lead to a rep, at once, exactly once: the service around the pure decision.

`Router.assign_hot_lead` runs in a Celery task and may run again for the same
lead (a retry, a redelivery, a duplicate webhook). Everything it does is keyed
by (lead key, hot episode) in Redis:

    decision   chosen once (with its pool turn) and stored before any side effect;
               a rerun reuses it, so it assigns the same rep
    owner      adapter.set_owner(..., expected=the owner it replaces): only an unowned
               lead is taken; when the CRM says someone else owns it now, the pool
               turn and the capacity unit are given back
    task       created once: the marker "creating" is set before the call and replaced by the
               task id after it; the task's body carries a reference of ours (`task_ref`), and
               a rerun that finds "creating" (a timeout after the CRM stored the task, a crash)
               asks the CRM for that reference before it creates the task
    notify     each message recorded in the outbox (connector.routing.outbox) before it is
               sent, marked sent after; a failed channel is retried with backoff by
               `send_notifications` (Celery beat); at most once per assignment and channel
    sla        the assignment's deadline in a sorted set, for `check_sla`
    record     one entry per decision, ids and scores only, for `leadscore explain`

A hot episode starts when a lead becomes hot and ends with `lead_cooled`
(the pipeline calls it when the band leaves hot); the caller may instead pass
its own `episode` string. A lead that is hot again in a later episode is
"re-hot" and follows `rehot:` in routing.yaml.

`Router.check_sla` (Celery beat, every minute or so) reassigns leads whose
rep has not acted in time: task still open and no activity logged by that rep.
The lead goes to the next available rep (reps who already had it this episode
are left out), with the old owner as `expected`, both reps are told; after
`sla.max_reassignments` it escalates to the region's fallback owner.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis

from connector import leases
from connector.crm.base import BatchRouting, CrmAdapter, TaskToCreate, task_ref, with_task_ref
from connector.domain import CRMS, CrmName, Lead, Rep
from connector.errors import ConfigError, RecordError, RetryLater
from connector.mappings.routing import RoutingConfig
from connector.notify import ChannelResult, Notification, NotificationKind, NotifierLike
from connector.redisutil import text as _s
from connector.routing import away
from connector.routing.away import away_marks, cap_key
from connector.routing.keys import index_key, remember
from connector.routing.outbox import Entry, Outbox
from connector.routing.policy import (
    AwayMark,
    Decision,
    choose,
    fallback_owner_of,
    kept,
    owner_plan,
    region_attempts,
    rep_view,
    resolve_region,
)
from connector.routing.pool import PREFIX, RedisPool

PENDING_TTL_S = 30 * 24 * 3600
CREATING = "creating"  # a round's task marker while its creation may or may not have reached the CRM
RECORD_TTL_S = 90 * 24 * 3600
RECORD_KEEP = 50
SLA_LEASE_S = 300.0
# `became_hot=True` opens a new hot episode only when the open one is at least this old, so a
# retried sync page (which may see the old band again) never starts a second episode.
REHOT_MIN_GAP_S = 3600.0


# Claim a due SLA entry for this worker: push its score past `now` for a lease.
_CLAIM = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


# Close a lead's open hot episode, if routing has one for it.
_COOL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'open', '0') end
return 0
"""


class ScoreLike(Protocol):
    """What routing needs from the engine's ScoreResult."""

    @property
    def score(self) -> float: ...
    @property
    def band(self) -> str: ...
    @property
    def grade(self) -> str: ...
    @property
    def reasons(self) -> Sequence[str] | str: ...




def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _reasons(reasons: Sequence[str] | str | None, top: int = 3) -> list[str]:
    if not reasons:
        return []
    if isinstance(reasons, str):
        parts = [p.strip(" -•\t") for p in reasons.replace(";", "\n").splitlines()]
    else:
        parts = [str(r).strip() for r in reasons]
    return [p for p in parts if p][:top]


def routing_record(store: redis.Redis, lead_key: str, prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Every routing decision kept for a lead, newest first (ids and scores only)."""
    return [json.loads(_s(raw)) for raw in store.lrange(f"{prefix}record:{lead_key}", 0, -1)]


# Task subjects start with these, by why routing ran; open_task looks for them in the CRM.
HEADLINES: dict[str, str] = {
    "hot": "Hot lead",
    "owner inactive": "Hot lead",
    "re-hot": "Hot again",
    "existing owner": "Your lead is hot",
    "sla": "Hot lead reassigned to you",
    "sla escalation": "Hot lead escalated to you",
}
TASK_HEADLINES: tuple[str, ...] = tuple(sorted(set(HEADLINES.values())))


@dataclass(frozen=True, slots=True)
class HotLead:
    """One hot lead of a page for `Router.assign_hot_leads` (the arguments of `assign_hot_lead`)."""

    lead: Lead
    stream: str
    result: ScoreLike
    became_hot: bool | None = None
    episode: str | None = None


@dataclass(slots=True)
class _Round:
    k: int  # the lead's position in the batch
    lead: Lead
    result: ScoreLike | None
    state: dict[str, str]
    pkey: str
    n: int


@dataclass(slots=True)
class _TaskPlan:
    rnd: _Round
    d: Decision
    task_id: str | None
    want_task: bool
    attempted: bool  # an earlier attempt sent the task and may have reached the CRM
    want_notes: bool
    texts: tuple[str, str]
    ref: str

    @property
    def lead_id(self) -> str:
        return self.rnd.state["lead_id"]


class _OneByOne:
    """BatchRouting for an adapter without batch calls: one record at a time, the same answers."""

    def __init__(self, adapter: CrmAdapter) -> None:
        self.adapter = adapter

    def set_owners(self, stream: str, wanted: Sequence[tuple[str, str, str | None]]) -> dict[str, bool | str]:
        out: dict[str, bool | str] = {}
        for lead_id, rep_id, expected in wanted:
            try:
                out[lead_id] = self.adapter.set_owner(stream, lead_id, rep_id, expected=expected)
            except RecordError as exc:
                out[lead_id] = exc.message
        return out

    def create_tasks(self, stream: str, tasks: Sequence[TaskToCreate]) -> tuple[dict[str, str], dict[str, str]]:
        created: dict[str, str] = {}
        failed: dict[str, str] = {}
        for t in tasks:
            try:
                created[t.ref] = self.adapter.create_task(
                    stream, t.lead_id, t.rep_id, subject=t.subject, body=t.body, due=t.due
                )
            except RecordError as exc:
                failed[t.ref] = exc.message
        return created, failed

    def find_tasks(self, stream: str, wanted: Sequence[tuple[str, str, str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for lead_id, rep_id, ref in wanted:
            found = self.adapter.find_task(stream, lead_id, rep_id, ref)
            if found is not None:
                out[ref] = found
        return out

    def open_tasks(
        self, stream: str, wanted: Sequence[tuple[str, str]], subject_prefixes: Sequence[str]
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        for lead_id, rep_id in wanted:
            found = self.adapter.open_task(stream, lead_id, rep_id, subject_prefixes)
            if found is not None:
                out[lead_id] = found
        return out


class Router:
    """Hot-lead routing for both CRMs. Shared by any number of workers through Redis."""

    def __init__(
        self,
        config: RoutingConfig,
        redis: redis.Redis,
        adapter_for: Callable[[CrmName], CrmAdapter],
        notifier: NotifierLike | None,
        clock: Callable[[], float] = time.time,
        *,
        prefix: str | None = None,
        namespace: str | None = None,
        reps_ttl_s: float = 300.0,
        lock_ttl_s: float = leases.LEASE_S,
        away_file: Path | None = None,
    ) -> None:
        self.config = config
        self.file_marks = away.FileMarks(away_file)  # mappings/away.yaml: marks that outlive Redis
        self.redis = redis
        self.adapter_for = adapter_for
        self.notifier = notifier
        self.clock = clock
        # `namespace` "leadscore:routing" and `prefix` "leadscore:routing:" say the same thing
        self.prefix = prefix if prefix is not None else f"{namespace}:" if namespace else PREFIX
        self.pool = RedisPool(redis, self.prefix)
        self.outbox = Outbox(redis, self.prefix, notifier) if notifier is not None else None
        self.reps_ttl_s = reps_ttl_s
        self.lock_ttl_s = lock_ttl_s  # renewed every leases.RENEW_S while the holder lives: keep it above that
        self._held: dict[str, leases.Lease] = {}  # this process's routing locks, by lead key
        self._reps: dict[str, tuple[float, list[Rep]]] = {}
        self._claim = redis.register_script(_CLAIM)
        self._cool = redis.register_script(_COOL)

    # ------------------------------------------------------------------ public

    def assign_hot_lead(
        self,
        lead: Lead,
        stream: str,
        result_like: ScoreLike,
        now: float | None = None,
        *,
        episode: str | None = None,
        became_hot: bool | None = None,
    ) -> Decision:
        """Route a lead that is hot; safe to call again for the same episode (same outcome, no repeats).

        The hot episode is, in order of precedence: `episode` when given; a new one when
        `became_hot` is true (the band written in the CRM was not hot) and the open episode
        is over an hour old; the open one; else a new one (`lead_cooled` closes an episode).
        """
        now = self.clock() if now is None else now
        adapter = self.adapter_for(lead.crm)
        with self._lock(lead.key):
            state, pkey, n = self._decide(lead, stream, result_like, now, episode, bool(became_hot))
            return self._run_round(adapter, lead, result_like, state, pkey, n, now)

    def assign_hot_leads(
        self, leads: Sequence[HotLead], now: float | None = None
    ) -> list[Decision | RecordError]:
        """`assign_hot_lead` for a page's hot leads at once, with a few CRM calls for all of them.

        Each lead's decision is made and stored as `assign_hot_lead` makes it; then, per CRM and stream,
        the owners are re-read and set in batches (`BatchRouting.set_owners`: compare-and-set on
        `expected`, as `set_owner`), a rerun's unknown tasks are looked up by their references in batch
        (`find_tasks`), an existing owner's open task too (`open_tasks`), and the tasks are created in
        batch with their associations (`create_tasks`), before each lead's notifications, SLA entry and
        record. An adapter without those methods is called one record at a time. The result has one
        entry per lead, in order: its Decision, or the RecordError that kept it from being routed.
        Raises RetryLater when another worker holds one of the leads (the page is retried).
        """
        now = self.clock() if now is None else now
        out: dict[int, Decision | RecordError] = {}
        with ExitStack() as held:
            for item in leads:
                held.enter_context(self._lock(item.lead.key))
            groups: dict[tuple[CrmName, str], list[_Round]] = {}
            for k, item in enumerate(leads):
                state, pkey, n = self._decide(
                    item.lead, item.stream, item.result, now, item.episode, bool(item.became_hot)
                )
                if state.get(f"r{n}:done"):
                    out[k] = Decision.from_json(state[f"r{n}:decision"]).with_(replayed=True)
                    continue
                groups.setdefault((item.lead.crm, item.stream), []).append(
                    _Round(k, item.lead, item.result, state, pkey, n)
                )
            for (crm, _), rounds in groups.items():
                self._run_rounds(self.adapter_for(crm), rounds, now, out)
        return [out[k] for k in range(len(leads))]

    def _decide(
        self, lead: Lead, stream: str, result_like: ScoreLike, now: float, episode: str | None, became_hot: bool
    ) -> tuple[dict[str, str], str, int]:
        """The lead's hot episode and the decision of its current round, made once and stored (the lock held)."""
        ep, rehot, previous = self._episode(lead.key, episode, became_hot, now)
        pkey = self._pending_key(lead.key, ep)
        state = self._state(pkey)
        if "r0:decision" not in state:
            inactive = lead.owner_id is not None and any(
                r.id == lead.owner_id and not r.active for r in self.reps(lead.crm)
            )
            plan = owner_plan(self.config, lead.owner_id, previous, rehot, owner_inactive=inactive)
            region = resolve_region(self.config, lead.profile)
            if plan.action == "keep" and lead.owner_id is not None:
                decision = kept(region, lead.owner_id, now, plan)
            else:
                decision = self._route(
                    lead.crm, region, now, reason=plan.reason, expected=plan.expected_owner, exclude=plan.exclude
                )
            fields = {
                "crm": lead.crm,
                "stream": stream,
                "lead_id": lead.id,
                "lead_key": lead.key,
                "episode": ep,
                "score": _num(float(result_like.score)),
                "band": str(result_like.band),
                "grade": str(result_like.grade),
                "model": str(getattr(result_like, "model_version", "") or ""),
                "round": "0",
                "sla_count": "0",
                "tried": json.dumps([decision.chosen] if decision.outcome == "assigned" else []),
                "r0:decision": decision.to_json(),
                "r0:at": repr(now),
            }
            self._still_held(lead.key, decision)
            self._save(pkey, fields)
            state.update(fields)
        return state, pkey, int(state["round"])

    def created_tasks(self, tasks: Sequence[tuple[str, str]]) -> list[bool]:
        """For each (lead key, task id): whether routing created that task for the lead.

        A Salesforce Outbound Message on Task fires for the task routing itself created; this tells it
        apart from a rep's new task, so the lead is not rescored for nothing (connector.webhooks.drop_echoes).
        Read from the pending rounds the lead's index lists: Redis only, no CRM call. A round whose task
        is being created (CREATING: the create call sent, its answer not stored yet, or lost) counts its
        lead's task messages as ours: the message can come before the answer is stored, and when the
        answer was lost the id is never known. (A rep's own task on that lead in that moment is taken
        for ours too: it misses a rescore, which the next sync makes up for.)
        """
        if not tasks:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for lead_key, _ in tasks:
            pipe.smembers(index_key(self.prefix, lead_key))
        indexes = pipe.execute()
        rounds = [[_s(k) for k in keys if _s(k).startswith(f"{self.prefix}pending:")] for keys in indexes]
        pipe = self.redis.pipeline(transaction=False)
        for keys in rounds:
            for key in keys:
                pipe.hgetall(key)
        states = iter(pipe.execute())
        out = []
        for (_, task_id), keys in zip(tasks, rounds, strict=True):
            ours = False
            for _ in keys:
                for field, value in next(states).items():
                    if not _s(field).endswith(":task"):
                        continue
                    if _s(value) == CREATING or (task_id and _s(value)[:15] == task_id[:15]):
                        ours = True  # Salesforce ids: the first 15 characters are the id, 18 add a checksum
            out.append(ours)
        return out

    def lead_cooled(self, lead_key: str) -> None:
        """The lead's band left hot: its next hot moment is a new episode (re-hot).

        Called by the pipeline (connector.sync) for a lead whose band written in the CRM is
        hot and whose new score is not. A lead routing never saw leaves nothing behind.
        """
        self._cool(keys=[self._episode_key(lead_key)])

    def check_sla(self, now: float | None = None, *, limit: int = 100) -> list[Decision]:
        """Reassign (or escalate) every assignment whose SLA has run out; returns the new decisions."""
        now = self.clock() if now is None else now
        from connector.routing import sla_rebuild  # after Redis lost the schedule: from the CRM's open tasks

        sla_rebuild.rebuild(self, now)
        key = f"{self.prefix}sla"
        due = self.redis.zrangebyscore(key, "-inf", now, start=0, num=limit)
        out: list[Decision] = []
        for raw in due:
            member = _s(raw)
            if not self._claim(keys=[key], args=[member, repr(now), repr(now + SLA_LEASE_S)]):
                continue
            lead_key, ep = member.rsplit("|", 1)
            try:
                decision = self._sla_one(lead_key, ep, now)
            except RetryLater:
                continue  # another worker holds the lead; the lease brings it back
            if decision is not None:
                out.append(decision)
        return out

    def routing_record(self, lead_key: str) -> list[dict[str, Any]]:
        return routing_record(self.redis, lead_key, self.prefix)

    def reps(self, crm: CrmName) -> list[Rep]:
        """The CRM's owners/users, cached for a few minutes (one list call per worker, not per lead)."""
        now = time.monotonic()  # real time passing, whatever moment routing decides as at
        cached = self._reps.get(crm)
        if cached is None or cached[0] <= now:
            cached = (now + self.reps_ttl_s, self.adapter_for(crm).list_reps())
            self._reps[crm] = cached
        return cached[1]

    # ------------------------------------------------------------------ the decision

    def _fallback_owner(self, crm: CrmName, region: str | None) -> tuple[str | None, str | None]:
        return fallback_owner_of(self.config, crm, region, self.reps(crm))

    def _route(
        self,
        crm: CrmName,
        region: str,
        now: float,
        *,
        reason: str,
        expected: str | None = None,
        exclude: Sequence[str] = (),
        exclude_detail: str = "the lead's previous owner",
    ) -> Decision:
        reps = self.reps(crm)
        views = [rep_view(self.config, rep) for rep in reps]
        chain = {region, *self.config.regions[region].fallback}
        involved = {v.id: v for v in views if chain & set(v.regions)}
        keys = {rid: cap_key(crm, rid, v.day(now)) for rid, v in involved.items()}
        used = dict(zip(keys, self.pool.used(list(keys.values())), strict=True))
        people = [v.rep for v in involved.values()]
        marks = away.merge_marks(away_marks(self.redis, people, self.prefix), self.file_marks.for_reps(people))
        attempts = region_attempts(
            self.config,
            list(involved.values()),
            region,
            now,
            pool_prefix=f"{crm}:",
            cap_keys=keys,
            used=used,
            marks=marks,
            exclude=exclude,
            exclude_detail=exclude_detail,
        )
        fallback_id, problem = self._fallback_owner(crm, region)
        return choose(
            self.pool,
            attempts,
            now,
            turn_id=uuid.uuid4().hex,
            fallback_owner=fallback_id,
            fallback_problem=problem,
            reason=reason,
            expected_owner=expected,
            sla=self.config.sla.enabled,
        )

    # ------------------------------------------------------------------ carrying a decision out

    def _run_round(
        self,
        adapter: CrmAdapter,
        lead: Lead | None,
        result_like: ScoreLike | None,
        state: dict[str, str],
        pkey: str,
        n: int,
        now: float,
    ) -> Decision:
        d = Decision.from_json(state[f"r{n}:decision"])
        if state.get(f"r{n}:done"):
            return d.with_(replayed=True)
        crm: CrmName = "salesforce" if state["crm"] == "salesforce" else "hubspot"
        stream, lead_id, lead_key, ep = state["stream"], state["lead_id"], state["lead_key"], state["episode"]
        target = d.chosen

        if d.outcome in ("assigned", "fallback_owner") and target and not state.get(f"r{n}:owner"):
            self._still_held(lead_key)
            ok = target == d.expected_owner or adapter.set_owner(stream, lead_id, target, expected=d.expected_owner)
            if not ok:
                again = adapter.get_leads(stream, [lead_id])
                return self._lost_race(state, pkey, n, d, again[0].owner_id if again else None)
            self._save(pkey, {f"r{n}:owner": "1"})

        task_id = state.get(f"r{n}:task")
        # "creating": an earlier attempt sent the task and may have reached the CRM (it timed out,
        # or its worker died); the task is looked up by its reference before it is sent again.
        attempted = task_id == CREATING
        want_task = d.notify and target is not None and d.outcome != "unassigned" and task_id in (None, CREATING)
        want_notes = d.notify and not state.get(f"r{n}:notified")
        texts = ("", "")
        if want_task or want_notes:
            if lead is None:
                found = adapter.get_leads(stream, [lead_id])
                lead = found[0] if found else None
            texts = self._task_text(adapter, lead, stream, lead_id, state, d, result_like)
        if want_task and target is not None and d.outcome == "kept_owner" and d.reason == "existing owner":
            # An owned lead routing has no record of: if Redis lost what routing did (a rerun
            # after a restart), we may have set this owner moments ago and already given them
            # our task. Ask the CRM. (A re-hot lead does get its "Hot again" task.)
            existing = adapter.open_task(stream, lead_id, target, TASK_HEADLINES)
            if existing is not None:
                task_id = existing
                want_task = False
                self._save(pkey, {f"r{n}:task": existing})
        if want_task and target is not None:
            subject, body = texts
            ref = task_ref(f"{lead_key}|{ep}|r{n}")
            earlier = adapter.find_task(stream, lead_id, target, ref) if attempted else None
            if earlier is not None:
                task_id = earlier
            else:
                self._still_held(lead_key)
                self._save(pkey, {f"r{n}:task": CREATING})
                # On failure "creating" stays: the CRM may have stored the task before the answer
                # was lost, and the rerun asks for the reference instead of creating a second one.
                task_id = adapter.create_task(
                    stream,
                    lead_id,
                    target,
                    subject=subject,
                    body=with_task_ref(body, ref),
                    due=now + self.config.sla.minutes * 60,
                )
            self._save(pkey, {f"r{n}:task": task_id})

        return self._conclude(crm, adapter, state, pkey, n, d, task_id, texts, want_notes, now)

    def _lost_race(
        self, state: Mapping[str, str], pkey: str, n: int, d: Decision, now_owner: str | None
    ) -> Decision:
        """The CRM's owner changed before routing's: the turn goes back, nobody is told."""
        if d.turn is not None:
            self.pool.release(d.turn)
        d = d.with_(
            outcome="lost_race",
            chosen=now_owner,
            notify=False,
            sla=False,
            note=f"routing chose {d.chosen}; the CRM owner changed first, so the turn was given back",
        )
        self._save(pkey, {f"r{n}:decision": d.to_json(), f"r{n}:owner": "lost"})
        self.redis.zrem(f"{self.prefix}sla", f"{state['lead_key']}|{state['episode']}")
        return self._finish(pkey, state, n, d, task_id=None, notes=[])

    def _conclude(
        self,
        crm: CrmName,
        adapter: CrmAdapter,
        state: Mapping[str, str],
        pkey: str,
        n: int,
        d: Decision,
        task_id: str | None,
        texts: tuple[str, str],
        want_notes: bool,
        now: float,
    ) -> Decision:
        """After the owner and the task: notifications, the SLA entry, the episode's owner, the record."""
        stream, lead_id, lead_key, ep = state["stream"], state["lead_id"], state["lead_key"], state["episode"]
        member = f"{lead_key}|{ep}"
        notes: list[dict[str, Any]] = []
        if want_notes:
            for note in self._notifications(crm, adapter, stream, lead_id, state, d, n, texts):
                results = self._send(note, pkey, n)
                notes.append({"kind": note.kind, "channels": [[r.channel, r.status, r.detail] for r in results]})
            # Marked only now: a rerun before this line finds the notes in the outbox, never sends twice.
            self._save(pkey, {f"r{n}:notified": "1", f"r{n}:notify_results": json.dumps(notes)})

        if d.sla and d.outcome == "assigned":
            self.redis.zadd(f"{self.prefix}sla", {member: now + self.config.sla.minutes * 60})
        else:
            self.redis.zrem(f"{self.prefix}sla", member)
        if d.outcome in ("assigned", "fallback_owner") and d.chosen:
            self.redis.hset(self._episode_key(lead_key), mapping={"owner": d.chosen, "owner_ep": ep})
        return self._finish(pkey, state, n, d, task_id=task_id, notes=notes)

    def _run_rounds(
        self, adapter: CrmAdapter, rounds: Sequence[_Round], now: float, out: dict[int, Decision | RecordError]
    ) -> None:
        """`_run_round` for many leads of one CRM and stream, the CRM calls batched (see assign_hot_leads)."""
        if not rounds:
            return
        state0 = rounds[0].state
        crm: CrmName = "salesforce" if state0["crm"] == "salesforce" else "hubspot"
        stream = state0["stream"]
        batch = adapter if isinstance(adapter, BatchRouting) else _OneByOne(adapter)
        live: list[tuple[_Round, Decision]] = []
        # 1. owners: one re-read and one write per 100 records (compare-and-set on `expected`)
        owners: list[tuple[_Round, Decision]] = []
        for rnd in rounds:
            d = Decision.from_json(rnd.state[f"r{rnd.n}:decision"])
            target = d.chosen
            needs = d.outcome in ("assigned", "fallback_owner") and target and not rnd.state.get(f"r{rnd.n}:owner")
            if needs and target != d.expected_owner:
                owners.append((rnd, d))
            else:
                if needs:
                    self._save(rnd.pkey, {f"r{rnd.n}:owner": "1"})
                live.append((rnd, d))
        if owners:
            for rnd, _ in owners:
                self._still_held(rnd.state["lead_key"])
            answers = batch.set_owners(
                stream, [(r.state["lead_id"], d.chosen or "", d.expected_owner) for r, d in owners]
            )
            lost: list[tuple[_Round, Decision]] = []
            for rnd, d in owners:
                answer = answers.get(rnd.state["lead_id"], "HubSpot did not answer for it")
                if answer is True:
                    self._save(rnd.pkey, {f"r{rnd.n}:owner": "1"})
                    live.append((rnd, d))
                elif answer is False:
                    lost.append((rnd, d))
                else:
                    out[rnd.k] = RecordError(rnd.state["lead_id"], f"owner not set: {answer}")
            if lost:
                again = {x.id: x.owner_id for x in adapter.get_leads(stream, [r.state["lead_id"] for r, _ in lost])}
                for rnd, d in lost:
                    out[rnd.k] = self._lost_race(rnd.state, rnd.pkey, rnd.n, d, again.get(rnd.state["lead_id"]))
        # 2. tasks: what a rerun may already have created, found by reference; an existing owner's open
        # task; then the rest created in one call per 100, each with its association to the record
        plans: list[_TaskPlan] = []
        for rnd, d in live:
            task_id = rnd.state.get(f"r{rnd.n}:task")
            target = d.chosen
            want_task = d.notify and target is not None and d.outcome != "unassigned" and task_id in (None, CREATING)
            want_notes = d.notify and not rnd.state.get(f"r{rnd.n}:notified")
            texts = ("", "")
            if want_task or want_notes:
                texts = self._task_text(adapter, rnd.lead, stream, rnd.state["lead_id"], rnd.state, d, rnd.result)
            ref = task_ref(f"{rnd.state['lead_key']}|{rnd.state['episode']}|r{rnd.n}")
            plans.append(_TaskPlan(rnd, d, task_id if task_id != CREATING else None, want_task,
                                   task_id == CREATING, want_notes, texts, ref))  # fmt: skip
        existing = [p for p in plans if p.want_task and p.d.outcome == "kept_owner" and p.d.reason == "existing owner"]
        if existing:
            # Redis may have lost what routing did (a rerun after a restart): ask the CRM (see _run_round)
            found = batch.open_tasks(stream, [(p.lead_id, p.d.chosen or "") for p in existing], TASK_HEADLINES)
            for p in existing:
                if p.lead_id in found:
                    p.task_id, p.want_task = found[p.lead_id], False
                    self._save(p.rnd.pkey, {f"r{p.rnd.n}:task": p.task_id})
        attempted = [p for p in plans if p.want_task and p.attempted]
        if attempted:
            earlier = batch.find_tasks(stream, [(p.lead_id, p.d.chosen or "", p.ref) for p in attempted])
            for p in attempted:
                if p.ref in earlier:
                    p.task_id, p.want_task = earlier[p.ref], False
                    self._save(p.rnd.pkey, {f"r{p.rnd.n}:task": p.task_id})
        to_create = [p for p in plans if p.want_task]
        if to_create:
            for p in to_create:
                self._still_held(p.rnd.state["lead_key"])
            pipe = self.redis.pipeline(transaction=False)
            for p in to_create:
                pipe.hset(p.rnd.pkey, f"r{p.rnd.n}:task", CREATING)
            pipe.execute()
            # On failure "creating" stays: the rerun asks for the references instead of creating twice.
            created, failed = batch.create_tasks(stream, [
                TaskToCreate(p.lead_id, p.d.chosen or "", p.texts[0], with_task_ref(p.texts[1], p.ref),
                             now + self.config.sla.minutes * 60, p.ref)
                for p in to_create
            ])  # fmt: skip
            for p in to_create:
                if p.ref in created:
                    p.task_id = created[p.ref]
                    self._save(p.rnd.pkey, {f"r{p.rnd.n}:task": p.task_id})
                else:
                    out[p.rnd.k] = RecordError(p.lead_id, f"task not created: {failed.get(p.ref, 'no answer')}")
        # 3. each lead's notifications, SLA entry and record
        for p in plans:
            if p.rnd.k in out:
                continue
            out[p.rnd.k] = self._conclude(crm, adapter, p.rnd.state, p.rnd.pkey, p.rnd.n, p.d, p.task_id,
                                          p.texts, p.want_notes, now)  # fmt: skip

    def _finish(
        self, pkey: str, state: Mapping[str, str], n: int, d: Decision, *, task_id: str | None, notes: list[Any]
    ) -> Decision:
        entry = {
            "lead_key": state["lead_key"],
            "episode": state["episode"],
            "round": n,
            "at": d.at,
            "reason": d.reason,
            "outcome": d.outcome,
            "region": d.region,
            "chosen_region": d.chosen_region,
            "chosen": d.chosen,
            "previous_owner": d.expected_owner,
            "eligible": list(d.eligible),
            "skipped": [
                {"rep_id": s.rep_id, "region": s.region, "reason": s.reason, "detail": s.detail} for s in d.skipped
            ],
            "fallback": d.fallback,
            "note": d.note,
            "turn": d.turn.seq if d.turn else None,
            "score": state.get("score"),
            "band": state.get("band"),
            "grade": state.get("grade"),
            "model": state.get("model"),
            "task_id": task_id if task_id != CREATING else None,
            "notifications": notes,
            "summary": d.summary(),
        }
        rkey = f"{self.prefix}record:{state['lead_key']}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(rkey, json.dumps(entry, sort_keys=True))
        pipe.ltrim(rkey, 0, RECORD_KEEP - 1)
        pipe.expire(rkey, RECORD_TTL_S)
        remember(pipe, index_key(self.prefix, state["lead_key"]), [rkey])
        pipe.hset(pkey, mapping={f"r{n}:done": "1", "round": str(n)})
        pipe.expire(pkey, PENDING_TTL_S)
        pipe.execute()
        return d

    # ------------------------------------------------------------------ SLA

    def _sla_one(self, lead_key: str, ep: str, now: float) -> Decision | None:
        member = f"{lead_key}|{ep}"
        zkey = f"{self.prefix}sla"
        with self._lock(lead_key):
            pkey = self._pending_key(lead_key, ep)
            state = self._state(pkey)
            if "round" not in state:
                self.redis.zrem(zkey, member)
                return None
            crm: CrmName = "salesforce" if state["crm"] == "salesforce" else "hubspot"
            adapter = self.adapter_for(crm)
            n = int(state["round"])
            if not state.get(f"r{n}:done"):
                return self._run_round(adapter, None, None, state, pkey, n, now)
            d = Decision.from_json(state[f"r{n}:decision"])
            if d.outcome != "assigned" or not d.sla or d.chosen is None:
                self.redis.zrem(zkey, member)
                return None
            rep = d.chosen
            stream, lead_id = state["stream"], state["lead_id"]
            since = float(state[f"r{n}:at"])
            task_id = state.get(f"r{n}:task")
            task_open = task_id is None or task_id == CREATING or adapter.task_is_open(task_id)
            if not task_open or adapter.rep_acted_since(stream, lead_id, rep, since):
                self.redis.zrem(zkey, member)
                self._save(pkey, {f"r{n}:sla": "met"})
                return None
            found = adapter.get_leads(stream, [lead_id])
            if not found or found[0].owner_id != rep:
                self.redis.zrem(zkey, member)  # someone moved the lead by hand: their call
                self._save(pkey, {f"r{n}:sla": "owner changed"})
                return None
            lead = found[0]
            count = int(state.get("sla_count", "0"))
            tried = [str(t) for t in json.loads(state.get("tried", "[]"))]
            minutes = self.config.sla.minutes
            why = f"rep {rep} did not act within {minutes} min"
            region = d.region or self.config.default_region
            nd: Decision
            if count < self.config.sla.max_reassignments:
                nd = self._route(
                    crm,
                    region,
                    now,
                    reason="sla",
                    expected=rep,
                    exclude=tried,
                    exclude_detail="had this lead in this episode and did not act in time",
                )
                if nd.outcome == "fallback_owner":
                    nd = nd.with_(reason="sla escalation", note=f"{why}; no other rep available")
                elif nd.outcome == "unassigned":
                    nd = nd.with_(
                        outcome="kept_owner",
                        chosen=rep,
                        notify=False,
                        note=f"{why}; {nd.note.removeprefix('unassigned: ')}; the lead stays with {rep}",
                    )
                else:
                    nd = nd.with_(note=why)
            else:
                owner_id, problem = self._fallback_owner(crm, region)
                if owner_id is not None and owner_id != rep:
                    nd = Decision(
                        region=region,
                        at=now,
                        outcome="fallback_owner",
                        chosen=owner_id,
                        fallback="owner",
                        reason="sla escalation",
                        expected_owner=rep,
                        note=f"{why}; {count} reassignments used",
                    )
                else:
                    problem = problem or (
                        "no fallback owner configured" if owner_id is None else "the fallback owner already has it"
                    )
                    nd = Decision(
                        region=region,
                        at=now,
                        outcome="kept_owner",
                        chosen=rep,
                        reason="sla escalation",
                        notify=False,
                        note=f"{why}; cannot escalate: {problem}; the lead stays with {rep}",
                    )
            fields = {
                "round": str(n + 1),
                "sla_count": str(count + 1),
                "tried": json.dumps([*tried, nd.chosen] if nd.outcome == "assigned" else tried),
                f"r{n + 1}:decision": nd.to_json(),
                f"r{n + 1}:at": repr(now),
                f"r{n}:sla": "missed",
            }
            self._still_held(lead_key, nd)
            self._save(pkey, fields)
            state.update(fields)
            # Round n+1 is not done yet: it runs now, and a crash would resume it on the next check.
            return self._run_round(adapter, lead, None, state, pkey, n + 1, now)

    # ------------------------------------------------------------------ messages

    def _rep(self, crm: CrmName, rep_id: str | None) -> Rep | None:
        if rep_id is None:
            return None
        return next((r for r in self.reps(crm) if r.id == rep_id), None)

    def _task_text(
        self,
        adapter: CrmAdapter,
        lead: Lead | None,
        stream: str,
        lead_id: str,
        state: Mapping[str, str],
        d: Decision,
        result_like: ScoreLike | None,
    ) -> tuple[str, str]:
        profile = lead.profile if lead is not None else {}
        name = " ".join(str(profile.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
        name = name or str(profile.get("email") or f"record {lead_id}")
        company = str(profile.get("company") or "").strip()
        who = f"{name} ({company})" if company else name
        score, band, grade = state.get("score", "?"), state.get("band", "?"), state.get("grade", "?")
        if result_like is not None:
            reasons = _reasons(result_like.reasons)
        else:
            reasons = _reasons(lead.written.get("reasons") if lead is not None else None)
        headline = HEADLINES.get(d.reason, "Hot lead")
        subject = f"{headline}: {who}, score {score}"
        lines = [
            f"{headline}: please follow up now.",
            "",
            f"Name: {name}",
            f"Company: {company or '-'}",
            f"Region: {d.chosen_region or d.region or '-'}",
            f"Score: {score} (band {band}, grade {grade})",
        ]
        if reasons:
            lines += ["Why:", *[f"- {r}" for r in reasons]]
        if d.note:
            lines += ["", f"Routing: {d.note}"]
        if d.outcome == "assigned" and d.sla:
            lines += [
                "",
                f"Act within {self.config.sla.minutes} minutes (log a call, e-mail, meeting or note, or close "
                "this task); otherwise the lead goes to the next rep.",
            ]
        lines += ["", f"Record: {adapter.record_url(stream, lead_id)}"]
        return subject, "\n".join(lines)

    def _notifications(
        self,
        crm: CrmName,
        adapter: CrmAdapter,
        stream: str,
        lead_id: str,
        state: Mapping[str, str],
        d: Decision,
        n: int,
        texts: tuple[str, str],
    ) -> list[Notification]:
        subject, body = texts
        url = adapter.record_url(stream, lead_id)
        facts = {
            "Region": d.chosen_region or d.region or "-",
            "Score": str(state.get("score", "?")),
            "Band": str(state.get("band", "?")),
            "Grade": str(state.get("grade", "?")),
        }
        base = f"{state['lead_key']}|{state['episode']}|r{n}"
        out: list[Notification] = []

        def note(kind: NotificationKind, rep_id: str | None, subj: str, text: str, chat: bool = True) -> None:
            rep = self._rep(crm, rep_id)
            out.append(
                Notification(
                    kind=kind,
                    key=f"{base}|{kind}|{rep_id or '-'}",
                    subject=subj,
                    text=text,
                    rep_email=rep.email if rep else None,
                    rep_id=rep_id,
                    rep_name=rep.name if rep else "",
                    url=url,
                    facts=facts,
                    chat=chat,
                    index=index_key(self.prefix, state["lead_key"]),
                )
            )

        if d.outcome == "unassigned":
            note(
                "unassigned",
                None,
                f"Hot lead not assigned, score {facts['Score']}",
                f"A hot lead in {d.region} could not be assigned: {d.note}.",
            )
        elif d.outcome == "kept_owner":
            note("rehot" if d.reason == "re-hot" else "existing_owner", d.chosen, subject, body)
        elif d.reason in ("sla", "sla escalation"):
            note("escalated" if d.outcome == "fallback_owner" else "reassigned_to_you", d.chosen, subject, body)
            if d.expected_owner:
                note(
                    "reassigned_away",
                    d.expected_owner,
                    f"Hot lead reassigned: record {lead_id}",
                    f"The hot lead was reassigned to another rep because {d.note}.",
                    chat=False,
                )
        elif d.outcome in ("assigned", "fallback_owner"):
            note("assigned", d.chosen, subject, body)
        return out

    def _send(self, note: Notification, pkey: str, n: int) -> list[ChannelResult]:
        if self.outbox is None:
            return []
        # the outbox runs on real time, whatever moment routing decides as at
        return self.outbox.send(note, pending_key=pkey, round_=n, now=time.time())

    def send_notifications(self, now: float | None = None, *, limit: int = 100) -> dict[str, int]:
        """Retry the notifications whose sending failed and that are due again (Celery beat)."""
        if self.outbox is None:
            return {}
        return self.outbox.send_due(self._rebuild_note, now, limit=limit)

    def _rebuild_note(self, entry: Entry) -> Notification | str:
        """The message of an outbox entry, rebuilt from the routing state and the CRM (nothing personal is kept)."""
        state = self._state(entry.pending_key)
        n = entry.round
        if f"r{n}:decision" not in state:
            return "the assignment is no longer kept (the lead was purged, or its record expired)"
        if int(state.get("round", n)) != n:
            return "superseded: the lead was reassigned since"
        d = Decision.from_json(state[f"r{n}:decision"])
        crm: CrmName = "salesforce" if state["crm"] == "salesforce" else "hubspot"
        adapter = self.adapter_for(crm)
        stream, lead_id = state["stream"], state["lead_id"]
        found = adapter.get_leads(stream, [lead_id])
        if not found:
            return "the record is no longer in the CRM"
        texts = self._task_text(adapter, found[0], stream, lead_id, state, d, None)
        for note in self._notifications(crm, adapter, stream, lead_id, state, d, n, texts):
            if note.key == entry.note_key:
                return note
        return "the assignment no longer has this notification"

    # ------------------------------------------------------------------ Redis plumbing

    def _pending_key(self, lead_key: str, ep: str) -> str:
        return f"{self.prefix}pending:{lead_key}|{ep}"

    def _episode_key(self, lead_key: str) -> str:
        return f"{self.prefix}episode:{lead_key}"

    def _state(self, key: str) -> dict[str, str]:
        raw = self.redis.hgetall(key)
        return {_s(k): _s(v) for k, v in raw.items()}

    def _save(self, key: str, fields: Mapping[str, str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        mapping: dict[Any, Any] = dict(fields)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, PENDING_TTL_S)
        pipe.execute()

    def _episode(
        self, lead_key: str, explicit: str | None, became_hot: bool, now: float
    ) -> tuple[str, bool, str | None]:
        """(episode id, whether it is a later episode than the one routing last assigned in, that owner)."""
        key = self._episode_key(lead_key)
        h = self._state(key)
        previous = h.get("owner")
        if explicit is not None:
            ep = "x:" + explicit.replace("|", "/")
            self.redis.hset(key, mapping={"last": ep})
        elif (
            h.get("open") == "1"
            and "n" in h
            and not (became_hot and now - float(h.get("started", now)) >= REHOT_MIN_GAP_S)
        ):
            ep = h["n"]
        else:
            ep = str(int(h.get("n", "0")) + 1)
            self.redis.hset(key, mapping={"n": ep, "open": "1", "started": repr(now)})
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(key, RECORD_TTL_S)
        # a deletion finds these through the lead's index, without scanning Redis
        remember(pipe, index_key(self.prefix, lead_key), [key, self._pending_key(lead_key, ep)])
        pipe.execute()
        rehot = previous is not None and h.get("owner_ep") != ep
        return ep, rehot, previous

    @contextmanager
    def _lock(self, lead_key: str) -> Iterator[None]:
        """The lead's routing lock: a lease (connector/leases.py) renewed while this process lives.

        A worker that dies with it (kill -9, OOM, a lost machine) leaves a lock that runs out within
        lock_ttl_s, and the next attempt takes over where the stored state says it stopped: the
        decision is reused, set_owner is conditional, and a task marked "creating" is looked up
        by its reference before one is created. A holder that was frozen past its lease checks
        `_still_held` before each side effect and steps back (RetryLater) instead of racing the taker.
        """
        key = f"{self.prefix}lock:{lead_key}"
        lease = leases.acquire(self.redis, key, leases.token(), self.lock_ttl_s)
        if lease is None:
            # Usually another worker is routing it and is done in a moment. No fixed wait: the
            # task's exponential backoff retries soon at first and outlasts a dead worker's lease.
            raise RetryLater(f"lead {lead_key} is being routed by another worker")
        self._held[lead_key] = lease
        try:
            yield
        finally:
            self._held.pop(lead_key, None)
            leases.release(lease)

    def _still_held(self, lead_key: str, decision: Decision | None = None) -> None:
        """Before storing a decision or a side effect: raise RetryLater if this worker's lock on the lead
        was taken over meanwhile (it was frozen past its lease), giving back the pool turn `decision` took."""
        lease = self._held.get(lead_key)
        if lease is not None and not lease.held():
            if decision is not None and decision.turn is not None:
                self.pool.release(decision.turn)
            raise RetryLater(f"lead {lead_key}: another worker took its routing over")


# --------------------------------------------------------------------------- for the command line

Store = Router | redis.Redis


def _redis_of(store: Store) -> tuple[redis.Redis, str]:
    return (store.redis, store.prefix) if isinstance(store, Router) else (store, PREFIX)


def set_away(
    store: Store, rep_email_or_id: str, until: float | dt.date | dt.datetime, *, now: float | None = None
) -> AwayMark:
    """`leadscore reps away EMAIL --until DATE`: a date is through that day in the rep's zone; a
    datetime (aware) or epoch seconds is that instant. Kept under the rep's CRM ids in every configured CRM."""
    client, prefix = _redis_of(store)
    if isinstance(until, int | float):
        until = dt.datetime.fromtimestamp(until, dt.UTC)
    reps = [r for crm in _configured(store) for r in store.reps(crm)] if isinstance(store, Router) else []
    return away.set_away(client, rep_email_or_id, until, reps=reps, now=now, prefix=prefix)


def set_back(store: Store, rep_email_or_id: str, reps: Sequence[Rep] = ()) -> bool:
    """`leadscore reps back EMAIL`: clear the mark (by e-mail and id when the Router can list the reps)."""
    client, prefix = _redis_of(store)
    if isinstance(store, Router) and not reps:
        reps = [r for crm in _configured(store) for r in store.reps(crm)]
    return away.set_back(client, rep_email_or_id, reps, prefix=prefix)


def list_reps_status(
    store: Store,
    now: float,
    *,
    config: RoutingConfig | None = None,
    crm: CrmName | None = None,
    reps: Sequence[Rep] | None = None,
) -> list[away.RepStatus]:
    """`leadscore reps`: every rep of every configured CRM (or of `crm`), available or why not.

    With a Router everything comes from it; with a Redis client give `config`, `crm` and `reps`.
    Each RepStatus prints as one line.
    """
    client, prefix = _redis_of(store)
    if isinstance(store, Router):
        out: list[away.RepStatus] = []
        for name in [crm] if crm else _configured(store):
            out += away.list_reps_status(client, store.config, store.reps(name), name, now, prefix, store.file_marks)
        return out
    if config is None or crm is None or reps is None:
        raise TypeError("with a Redis client, give config, crm and reps")
    return away.list_reps_status(client, config, reps, crm, now, prefix)


def _configured(router: Router) -> list[CrmName]:
    out: list[CrmName] = []
    for name in CRMS:
        try:
            router.reps(name)
        except ConfigError:
            continue  # this CRM is not configured
        out.append(name)
    return out
