"""Routing on the real (private) Redis: the Lua pool under concurrency, and the Router end to end.

The CRM is a small in-memory fake of our own `CrmAdapter` interface; the
sandbox-level tests come with the CRM adapters.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.crm.base import OpenTask, Page, WriteReport, task_ref_in
from connector.domain import CrmName, Lead, Rep
from connector.errors import RetryLater
from connector.mappings.routing import RoutingConfig, parse_routing
from connector.notify import Channel, ChannelResult, Notification
from connector.routing import service
from connector.routing.away import list_reps_status, set_away, set_back
from connector.routing.policy import MemoryPool, Slot, Turn
from connector.routing.pool import RedisPool
from connector.routing.service import Router, routing_record

# --------------------------------------------------------------------------- fakes at our own interfaces


@dataclass
class FakeTask:
    id: str
    stream: str
    lead_id: str
    rep_id: str
    subject: str
    body: str
    due: float
    open: bool = True


@dataclass
class FakeCrm:
    """An in-memory CrmAdapter: leads with owners, reps, tasks and rep activities."""

    reps: list[Rep]
    crm: CrmName = "hubspot"
    streams: tuple[str, ...] = ("contact",)
    leads: dict[str, Lead] = field(default_factory=dict)
    tasks: list[FakeTask] = field(default_factory=list)
    acted: set[tuple[str, str]] = field(default_factory=set)  # (lead id, rep id)
    owner_calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    fail_create_task: int = 0
    steal_on_set_owner: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_lead(self, lead_id: str, country: str = "Germany", owner: str | None = None) -> Lead:
        lead = Lead(
            crm=self.crm,
            object_type="contact",
            id=lead_id,
            owner_id=owner,
            profile={
                "first_name": "Anna",
                "last_name": f"Muster{lead_id}",
                "company": "Acme GmbH",
                "country": country,
                "email": f"anna{lead_id}@acme.example",
            },
            written={"reasons": "Visited pricing 3x; Director title"},
        )
        self.leads[lead_id] = lead
        return lead

    def read_page(self, stream: str, cursor: str | None, *, since: float | None) -> Page:
        raise NotImplementedError

    def load_activities(self, leads: Sequence[Lead], now: float) -> None:
        raise NotImplementedError

    def get_leads(self, stream: str, ids: Sequence[str]) -> list[Lead]:
        with self.lock:
            return [Lead(**self.leads[i].__dict__) if False else _copy(self.leads[i]) for i in ids if i in self.leads]

    def write_scores(self, stream: str, updates: Any) -> WriteReport:
        raise NotImplementedError

    def list_reps(self) -> list[Rep]:
        return list(self.reps)

    def set_owner(self, stream: str, lead_id: str, rep_id: str, *, expected: str | None = None) -> bool:
        with self.lock:
            self.owner_calls.append((lead_id, rep_id, expected))
            lead = self.leads[lead_id]
            if self.steal_on_set_owner is not None:
                lead.owner_id = self.steal_on_set_owner
            if lead.owner_id == rep_id:
                return True
            if lead.owner_id != expected:
                return False
            lead.owner_id = rep_id
            return True

    def create_task(self, stream: str, lead_id: str, rep_id: str, *, subject: str, body: str, due: float) -> str:
        with self.lock:
            if self.fail_create_task:
                self.fail_create_task -= 1
                raise RetryLater("429 from the fake CRM", wait=1)
            task = FakeTask(f"task-{len(self.tasks) + 1}", stream, lead_id, rep_id, subject, body, due)
            self.tasks.append(task)
            return task.id

    def task_is_open(self, task_id: str) -> bool:
        return next(t for t in self.tasks if t.id == task_id).open

    def find_task(self, stream: str, lead_id: str, rep_id: str, ref: str) -> str | None:
        return next(
            (t.id for t in self.tasks if t.lead_id == lead_id and t.rep_id == rep_id and task_ref_in(t.body) == ref),
            None,
        )

    def open_task(self, stream: str, lead_id: str, rep_id: str, subject_prefixes: Sequence[str]) -> str | None:
        prefixes = tuple(subject_prefixes)
        return next(
            (t.id for t in self.tasks
             if t.lead_id == lead_id and t.rep_id == rep_id and t.open and t.subject.startswith(prefixes)),
            None,
        )

    def rep_acted_since(self, stream: str, lead_id: str, rep_id: str, since: float) -> bool:
        return (lead_id, rep_id) in self.acted

    def open_routing_tasks(self, subject_prefixes: Sequence[str], since: float) -> list[OpenTask]:
        prefixes = tuple(subject_prefixes)
        return [
            OpenTask(t.stream, t.lead_id, t.rep_id, t.id, t.subject, created_at=t.due - 1800, due=t.due)
            for t in self.tasks
            if t.open and t.subject.startswith(prefixes) and t.due >= since
        ]

    def record_url(self, stream: str, lead_id: str) -> str:
        return f"https://crm.test/contacts/{lead_id}"

    def check(self) -> list[str]:
        return []

    def setup(self) -> list[str]:
        return []

    @property
    def api_calls(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _copy(lead: Lead) -> Lead:
    return Lead(
        crm=lead.crm,
        object_type=lead.object_type,
        id=lead.id,
        profile=dict(lead.profile),
        owner_id=lead.owner_id,
        written=dict(lead.written),
    )


@dataclass
class FakeNotifier:
    """A chat channel that takes every message (our own NotifierLike interface)."""

    sent: list[Notification] = field(default_factory=list)
    channels: tuple[Channel, ...] = ("chat",)

    def skip_reason(self, note: Notification, channel: Channel) -> str | None:
        return None

    def deliver(self, note: Notification, channel: Channel) -> ChannelResult:
        self.sent.append(note)
        return ChannelResult(channel, "sent")


@dataclass(frozen=True)
class Score:
    score: float = 87
    band: str = "hot"
    grade: str = "A"
    reasons: tuple[str, ...] = (
        "Visited the pricing page 3 times",
        "Director of Engineering",
        "Requested a demo",
        "Opened 5 e-mails",
    )
    model_version: str = "m1"


ALWAYS = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"}
NOW = dt.datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


def make_config(**extra: Any) -> RoutingConfig:
    data: dict[str, Any] = {
        "version": 1,
        "countries": {"Germany": ["DE"]},
        "regions": {
            "DACH": {"countries": ["Germany", "Austria"], "teams": ["DACH"], "fallback": ["Benelux"]},
            "Benelux": {"countries": ["Netherlands"], "teams": ["Benelux"]},
            "Rest of World": {"teams": ["Rest of World"]},
        },
        "default_region": "Rest of World",
        "defaults": {"hours": ALWAYS},
        "fallback_owner": "queue@corp.example",
        "sla": {"minutes": 30, "max_reassignments": 2},
    }
    data.update(extra)
    return parse_routing(data)


def make_reps() -> list[Rep]:
    def r(rid: str, team: str, active: bool = True) -> Rep:
        return Rep(
            id=rid,
            email=f"{rid}@corp.example",
            name=f"Rep {rid}",
            region=None,
            active=active,
            timezone="Europe/Berlin",
            teams=(team,),
        )

    return [
        r("d1", "DACH"),
        r("d2", "DACH"),
        r("d3", "DACH"),
        r("d4", "DACH", active=False),
        r("b1", "Benelux"),
        r("queue", "Ops"),
    ]


@pytest.fixture
def crm() -> FakeCrm:
    return FakeCrm(reps=make_reps())


def make_router(client: redis.Redis, crm: FakeCrm, notifier: Any = None, **cfg: Any) -> Router:
    return Router(make_config(**cfg), client, lambda _name: crm, notifier, clock=lambda: NOW)


# --------------------------------------------------------------------------- the pool: Lua vs the Python twin


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("pick"),
                st.lists(st.sampled_from("abcde"), min_size=0, max_size=5, unique=True),
                st.lists(st.integers(1, 4), min_size=5, max_size=5),
                st.sampled_from([None, 1, 2, 3]),
                st.sampled_from(["d1", "d2"]),
            ),
            st.tuples(st.just("release"), st.integers(0, 50)),
        ),
        max_size=60,
    )
)
def test_the_lua_pool_and_its_python_twin_agree_on_random_sequences(redis_url: str, ops: list[Any]) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    lua, twin = RedisPool(client), MemoryPool()
    turns: list[Turn] = []
    for i, op in enumerate(ops):
        if op[0] == "pick":
            _, reps, weights, cap, day = op
            offer = [Slot(r, weights["abcde".index(r)], cap, f"{r}:{day}") for r in reps]
            got, want = lua.pick("p", offer, f"t{i}"), twin.pick("p", offer, f"t{i}")
            assert got == want
            if got.turn is not None:
                turns.append(got.turn)
        elif turns:
            turn = turns[op[1] % len(turns)]
            assert lua.release(turn) == twin.release(turn)
        assert lua.current("p") == twin.current.get("p", {})
    keys = sorted(twin.used)
    assert lua.used(keys) == [twin.used[k] for k in keys]
    client.close()


def _picks(url: str, n: int) -> list[tuple[int, str]]:
    client = redis.Redis.from_url(url)
    pool = RedisPool(client)
    offer = [Slot(r, 1, None, f"{r}:d") for r in ("a", "b", "c")]
    out = []
    for _ in range(n):
        turn = pool.pick("p", offer, uuid.uuid4().hex).turn
        assert turn is not None
        out.append((turn.seq, turn.chosen))
    client.close()
    return out


def _check_turns(results: list[tuple[int, str]], total: int) -> None:
    seqs = sorted(s for s, _ in results)
    assert seqs == list(range(1, total + 1))  # no turn taken twice, none skipped
    counts = Counter(r for _, r in results)
    assert max(counts.values()) - min(counts.values()) <= 1
    # and in turn order it is exactly the single-threaded rotation
    twin = MemoryPool()
    offer = [Slot(r, 1, None, f"{r}:d") for r in ("a", "b", "c")]
    expected = [twin.pick("p", offer, f"t{i}").turn.chosen for i in range(total)]  # type: ignore[union-attr]
    assert [r for _, r in sorted(results)] == expected


def test_threads_picking_at_the_same_moment_never_share_or_skip_a_turn(redis_url: str) -> None:
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        got = _picks(redis_url, 40)
        with lock:
            results.extend(got)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_turns(results, 320)


def test_four_processes_picking_at_once_never_share_or_skip_a_turn(redis_url: str) -> None:
    # fork: the children start at once (spawn would re-import this module four times)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(4) as procs:
        chunks = procs.starmap(_picks, [(redis_url, 60)] * 4)
    _check_turns([x for chunk in chunks for x in chunk], 240)


def test_capacity_is_never_exceeded_under_concurrency(redis_url: str) -> None:
    offer = [Slot(r, w, 5, f"{r}:d") for r, w in (("a", 1), ("b", 1), ("c", 2))]
    won: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        client = redis.Redis.from_url(redis_url)
        pool = RedisPool(client)
        for _ in range(6):
            turn = pool.pick("p", offer, uuid.uuid4().hex).turn
            if turn is not None:
                with lock:
                    won.append(turn.chosen)
        client.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(won) == {"a": 5, "b": 5, "c": 5}
    assert RedisPool(redis.Redis.from_url(redis_url)).used(["a:d", "b:d", "c:d"]) == [5, 5, 5]


# --------------------------------------------------------------------------- the Router


def dump(client: redis.Redis) -> str:
    """Everything in Redis as text (keys and values)."""
    out: dict[str, Any] = {}
    for raw in client.keys("*"):
        key = str(raw)
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        else:
            out[key] = client.get(key)
    return json.dumps(out)


def test_a_hot_lead_goes_to_the_next_available_rep_with_a_task_and_a_notification(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    notifier = FakeNotifier()
    router = make_router(redis_client, crm, notifier)
    lead = crm.add_lead("1")
    d = router.assign_hot_lead(lead, "contact", Score(), NOW)
    assert (d.outcome, d.region, d.chosen) == ("assigned", "DACH", "d1")
    assert [(s.rep_id, s.reason) for s in d.skipped] == [("d4", "inactive")]
    assert crm.leads["1"].owner_id == "d1"
    [task] = crm.tasks
    assert (task.rep_id, task.due) == ("d1", NOW + 30 * 60)
    assert task.subject == "Hot lead: Anna Muster1 (Acme GmbH), score 87"
    for part in (
        "Name: Anna Muster1",
        "Company: Acme GmbH",
        "Region: DACH",
        "Score: 87 (band hot, grade A)",
        "- Visited the pricing page 3 times",
        "- Requested a demo",
        "https://crm.test/contacts/1",
    ):
        assert part in task.body
    assert "Opened 5 e-mails" not in task.body  # top three reasons only
    [note] = notifier.sent
    assert (note.kind, note.rep_email) == ("assigned", "d1@corp.example")


def test_equal_reps_share_concurrent_assignments_within_one(redis_url: str, crm: FakeCrm) -> None:
    for i in range(60):
        crm.add_lead(str(i))
    done: list[str] = []
    lock = threading.Lock()

    def work(ids: list[str]) -> None:
        client = redis.Redis.from_url(redis_url)
        router = make_router(client, crm)
        for i in ids:
            d = router.assign_hot_lead(crm.leads[i], "contact", Score(), NOW)
            with lock:
                done.append(str(d.chosen))
        client.close()

    threads = [threading.Thread(target=work, args=([str(i) for i in range(k, 60, 6)],)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(done) == {"d1": 20, "d2": 20, "d3": 20}
    assert len(crm.tasks) == 60
    assert Counter(lead.owner_id for lead in crm.leads.values()) == {"d1": 20, "d2": 20, "d3": 20}


def test_running_the_same_assignment_again_reuses_the_rep_and_creates_one_task_and_one_notification(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    notifier = FakeNotifier()
    router = make_router(redis_client, crm, notifier)
    lead = crm.add_lead("1")
    crm.fail_create_task = 1  # the first attempt dies after the owner is set, like a Celery retry
    with pytest.raises(RetryLater):
        router.assign_hot_lead(lead, "contact", Score(), NOW)
    first = router.assign_hot_lead(lead, "contact", Score(), NOW + 5)
    again = router.assign_hot_lead(crm.get_leads("contact", ["1"])[0], "contact", Score(), NOW + 10)
    assert again == first.with_(replayed=True)
    assert (first.chosen, first.assigned_now, again.assigned_now) == ("d1", True, False)
    assert len(crm.tasks) == 1
    assert len(notifier.sent) == 1
    assert crm.owner_calls == [("1", "d1", None)]  # the owner step is not repeated either
    # the rotation moved one turn only: the next lead goes to d2
    assert router.assign_hot_lead(crm.add_lead("2"), "contact", Score(), NOW).chosen == "d2"


def test_a_lead_being_routed_by_another_worker_is_retried_later(redis_client: redis.Redis, crm: FakeCrm) -> None:
    router = make_router(redis_client, crm)
    lead = crm.add_lead("1")
    redis_client.set(f"leadscore:routing:lock:{lead.key}", "someone-else")
    with pytest.raises(RetryLater, match="being routed by another worker"):
        router.assign_hot_lead(lead, "contact", Score(), NOW)
    assert crm.tasks == []


def test_when_the_crm_owner_changed_first_the_turn_and_capacity_are_given_back(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    router = make_router(redis_client, crm, defaults={"hours": ALWAYS, "capacity": 5})
    pool = RedisPool(redis_client)
    router.assign_hot_lead(crm.add_lead("0"), "contact", Score(), NOW)
    before = pool.current("hubspot:DACH"), pool.used(["hubspot:d1:2026-03-02", "hubspot:d2:2026-03-02"])
    lead = crm.add_lead("1")
    crm.steal_on_set_owner = "human"
    d = router.assign_hot_lead(lead, "contact", Score(), NOW)
    crm.steal_on_set_owner = None
    assert (d.outcome, d.chosen) == ("lost_race", "human")
    assert crm.tasks[-1].lead_id == "0"  # no task for the lost lead
    assert (pool.current("hubspot:DACH"), pool.used(["hubspot:d1:2026-03-02", "hubspot:d2:2026-03-02"])) == before
    assert router.assign_hot_lead(crm.add_lead("2"), "contact", Score(), NOW).chosen == "d2"


def test_a_lead_with_an_owner_keeps_it_and_the_owner_gets_the_task(redis_client: redis.Redis, crm: FakeCrm) -> None:
    notifier = FakeNotifier()
    router = make_router(redis_client, crm, notifier)
    d = router.assign_hot_lead(crm.add_lead("1", owner="b1"), "contact", Score(), NOW)
    assert (d.outcome, d.chosen, d.reason) == ("kept_owner", "b1", "existing owner")
    assert crm.owner_calls == []
    assert [t.rep_id for t in crm.tasks] == ["b1"]
    assert [(n.kind, n.rep_email) for n in notifier.sent] == [("existing_owner", "b1@corp.example")]
    assert RedisPool(redis_client).current("hubspot:DACH") == {}  # no turn used


def test_a_re_hot_lead_stays_with_its_owner_who_is_notified_again(redis_client: redis.Redis, crm: FakeCrm) -> None:
    notifier = FakeNotifier()
    router = make_router(redis_client, crm, notifier)
    lead = crm.add_lead("1")
    assert router.assign_hot_lead(lead, "contact", Score(), NOW).chosen == "d1"
    router.lead_cooled(lead.key)
    d = router.assign_hot_lead(crm.get_leads("contact", ["1"])[0], "contact", Score(), NOW + 86400)
    assert (d.outcome, d.chosen, d.reason) == ("kept_owner", "d1", "re-hot")
    assert [t.rep_id for t in crm.tasks] == ["d1", "d1"]
    assert [n.kind for n in notifier.sent] == ["assigned", "rehot"]
    assert crm.tasks[1].subject.startswith("Hot again: ")


def test_a_re_hot_lead_can_be_reassigned_when_configured(redis_client: redis.Redis, crm: FakeCrm) -> None:
    router = make_router(redis_client, crm, rehot="reassign")
    lead = crm.add_lead("1")
    router.assign_hot_lead(lead, "contact", Score(), NOW)
    router.lead_cooled(lead.key)
    d = router.assign_hot_lead(crm.get_leads("contact", ["1"])[0], "contact", Score(), NOW + 86400)
    assert (d.outcome, d.chosen, d.expected_owner) == ("assigned", "d2", "d1")
    assert crm.leads["1"].owner_id == "d2"


def test_without_available_reps_the_fallback_region_then_the_fallback_owner_take_the_lead(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    router = make_router(redis_client, crm)
    for rid in ("d1", "d2", "d3"):
        set_away(redis_client, f"{rid}@corp.example", dt.date(2026, 3, 2), reps=crm.reps)
    d = router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    assert (d.chosen, d.chosen_region, d.fallback) == ("b1", "Benelux", "region:Benelux")
    set_away(redis_client, "b1", dt.date(2026, 3, 2))
    d = router.assign_hot_lead(crm.add_lead("2"), "contact", Score(), NOW)
    assert (d.outcome, d.chosen, d.sla) == ("fallback_owner", "queue", False)
    assert crm.leads["2"].owner_id == "queue"
    set_back(redis_client, "d2@corp.example", crm.reps)
    assert router.assign_hot_lead(crm.add_lead("3"), "contact", Score(), NOW).chosen == "d2"


def test_with_nobody_and_no_fallback_owner_the_lead_is_recorded_as_unassigned(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    notifier = FakeNotifier()
    router = make_router(
        redis_client,
        crm,
        notifier,
        fallback_owner=None,
        defaults={"hours": {"days": ["sat"], "start": "08:00", "end": "09:00"}},
    )
    lead = crm.add_lead("1")
    d = router.assign_hot_lead(lead, "contact", Score(), NOW)
    assert (d.outcome, d.chosen, d.note) == (
        "unassigned",
        None,
        "unassigned: no rep available and no fallback owner configured",
    )
    assert crm.leads["1"].owner_id is None
    assert crm.tasks == []
    assert [n.kind for n in notifier.sent] == ["unassigned"]
    [record] = routing_record(redis_client, lead.key)
    assert record["outcome"] == "unassigned"
    assert record["note"] == "unassigned: no rep available and no fallback owner configured"
    assert {s["reason"] for s in record["skipped"]} == {"outside hours", "inactive"}


def test_the_routing_record_keeps_ids_and_scores_but_no_lead_names_or_emails(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    router = make_router(redis_client, crm)
    set_away(redis_client, "d1", dt.date(2026, 3, 5))
    lead = crm.add_lead("1")
    router.assign_hot_lead(lead, "contact", Score(), NOW)
    [record] = router.routing_record(lead.key)
    assert {k: record[k] for k in ("region", "chosen", "eligible", "score", "band", "grade", "outcome")} == {
        "region": "DACH",
        "chosen": "d2",
        "eligible": ["d2", "d3"],
        "score": "87",
        "band": "hot",
        "grade": "A",
        "outcome": "assigned",
    }
    assert [(s["rep_id"], s["reason"]) for s in record["skipped"]] == [("d1", "away"), ("d4", "inactive")]
    assert record["summary"].endswith("hot lead in DACH routed to rep d2 (2 eligible, 2 skipped: d1 away, d4 inactive)")
    stored = dump(redis_client)
    for pii in ("Anna", "Muster", "Acme", "anna1@acme.example"):
        assert pii not in stored


def test_rep_status_shows_who_is_available_and_why_not(redis_client: redis.Redis, crm: FakeCrm) -> None:
    cfg = make_config()
    set_away(redis_client, "d1@corp.example", dt.date(2026, 3, 5), reps=crm.reps)
    status = {s.rep_id: s for s in list_reps_status(redis_client, cfg, crm.reps, "hubspot", NOW)}
    assert (status["d1"].available, status["d1"].reason) == (False, "away")
    assert (status["d4"].available, status["d4"].reason) == (False, "inactive")
    assert (status["d2"].available, status["d2"].regions, status["d2"].local_time) == (True, ("DACH",), "Mon 10:00")
    assert set_back(redis_client, "d1", crm.reps) is True
    assert list_reps_status(redis_client, cfg, crm.reps, "hubspot", NOW)[0].available


# --------------------------------------------------------------------------- SLA


@pytest.fixture
def sla_router(redis_client: redis.Redis, crm: FakeCrm) -> tuple[Router, FakeNotifier]:
    notifier = FakeNotifier()
    return make_router(redis_client, crm, notifier), notifier


def test_a_rep_who_does_not_act_in_time_loses_the_lead_to_the_next_rep_and_both_are_told(
    sla_router: tuple[Router, FakeNotifier], crm: FakeCrm
) -> None:
    router, notifier = sla_router
    router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    assert router.check_sla(NOW + 29 * 60) == []
    [d] = router.check_sla(NOW + 31 * 60)
    assert (d.outcome, d.chosen, d.expected_owner, d.reason) == ("assigned", "d2", "d1", "sla")
    assert crm.owner_calls[-1] == ("1", "d2", "d1")
    assert crm.leads["1"].owner_id == "d2"
    assert [(t.rep_id, t.subject.split(":")[0]) for t in crm.tasks] == [
        ("d1", "Hot lead"),
        ("d2", "Hot lead reassigned to you"),
    ]
    assert [(n.kind, n.rep_email) for n in notifier.sent] == [
        ("assigned", "d1@corp.example"),
        ("reassigned_to_you", "d2@corp.example"),
        ("reassigned_away", "d1@corp.example"),
    ]
    assert "d1 did not act within 30 min" in notifier.sent[2].text
    assert router.check_sla(NOW + 32 * 60) == []  # the new rep has a fresh 30 minutes


def test_a_rep_who_acted_keeps_the_lead(sla_router: tuple[Router, FakeNotifier], crm: FakeCrm) -> None:
    router, _ = sla_router
    router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    crm.acted.add(("1", "d1"))
    assert router.check_sla(NOW + 3600) == []
    assert crm.leads["1"].owner_id == "d1"
    assert router.check_sla(NOW + 7200) == []  # nothing left to check


def test_a_closed_task_counts_as_acting(sla_router: tuple[Router, FakeNotifier], crm: FakeCrm) -> None:
    router, _ = sla_router
    router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    crm.tasks[0].open = False
    assert router.check_sla(NOW + 3600) == []
    assert crm.leads["1"].owner_id == "d1"


def test_after_the_last_reassignment_the_lead_escalates_to_the_fallback_owner(
    sla_router: tuple[Router, FakeNotifier], crm: FakeCrm
) -> None:
    router, notifier = sla_router
    lead = crm.add_lead("1")
    router.assign_hot_lead(lead, "contact", Score(), NOW)
    owners = []
    for k in range(1, 5):
        got = router.check_sla(NOW + k * 31 * 60)
        owners.append([(d.outcome, d.chosen, d.reason) for d in got])
    assert owners == [
        [("assigned", "d2", "sla")],
        [("assigned", "d3", "sla")],
        [("fallback_owner", "queue", "sla escalation")],
        [],
    ]
    assert crm.leads["1"].owner_id == "queue"
    assert [n.kind for n in notifier.sent][-2:] == ["escalated", "reassigned_away"]
    assert [r["reason"] for r in router.routing_record(lead.key)] == ["sla escalation", "sla", "sla", "hot"]


def test_a_lead_moved_by_hand_is_left_alone_by_the_sla(sla_router: tuple[Router, FakeNotifier], crm: FakeCrm) -> None:
    router, _ = sla_router
    router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    crm.leads["1"].owner_id = "b1"
    assert router.check_sla(NOW + 3600) == []
    assert crm.leads["1"].owner_id == "b1"


def test_after_redis_lost_the_sla_schedule_the_check_rebuilds_it_from_open_tasks_and_reassigns(
    sla_router: tuple[Router, FakeNotifier], crm: FakeCrm, redis_client: redis.Redis
) -> None:
    router, notifier = sla_router
    router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW)
    router.assign_hot_lead(crm.add_lead("2"), "contact", Score(), NOW)
    crm.acted.add(("2", "d2"))  # lead 2's rep acted: it stays
    redis_client.flushall()  # Redis restarted empty: no SLA schedule, no routing state at all
    again = make_router(redis_client, crm, notifier)

    assert again.check_sla(NOW + 29 * 60) == []  # not due yet, even rebuilt
    [d] = again.check_sla(NOW + 31 * 60)

    # the round-robin positions were lost with Redis too: the next rep is the first by id
    assert (d.outcome, d.chosen, d.expected_owner, d.reason) == ("assigned", "d2", "d1", "sla")
    assert (crm.leads["1"].owner_id, crm.leads["2"].owner_id) == ("d2", "d2")
    assert [(t.rep_id, t.subject.split(":")[0]) for t in crm.tasks if t.lead_id == "1"] == [
        ("d1", "Hot lead"),
        ("d2", "Hot lead reassigned to you"),
    ]
    assert [(n.kind, n.rep_id) for n in notifier.sent][-2:] == [("reassigned_to_you", "d2"), ("reassigned_away", "d1")]
    assert again.check_sla(NOW + 32 * 60) == []  # rebuilt once: the new rep has a fresh 30 minutes
    assert [r["reason"] for r in again.routing_record("hubspot:contact:1")] == ["sla"]


def test_a_rebuilt_schedule_keeps_counting_reassignments_and_who_had_the_lead(
    sla_router: tuple[Router, FakeNotifier], crm: FakeCrm, redis_client: redis.Redis
) -> None:
    router, notifier = sla_router
    lead = crm.add_lead("1")
    router.assign_hot_lead(lead, "contact", Score(), NOW)
    assert [d.chosen for d in router.check_sla(NOW + 31 * 60)] == ["d2"]  # one reassignment used
    redis_client.flushall()
    again = make_router(redis_client, crm, notifier)
    got = [(d.outcome, d.chosen) for d in again.check_sla(NOW + 62 * 60)]
    assert got == [("assigned", "d3")]  # d1 and d2 had it: left out
    got = [(d.outcome, d.chosen) for d in again.check_sla(NOW + 93 * 60)]
    assert got == [("fallback_owner", "queue")]  # max_reassignments (2) used: escalated


# --------------------------------------------------------------------------- episodes and the command line


def test_became_hot_starts_a_new_episode_only_after_an_hour(redis_client: redis.Redis, crm: FakeCrm) -> None:
    notifier = FakeNotifier()
    router = make_router(redis_client, crm, notifier)
    lead = crm.add_lead("1")
    router.assign_hot_lead(lead, "contact", Score(), NOW, became_hot=True)
    # a retried sync page that still saw the old band: same episode, nothing repeated
    again = router.assign_hot_lead(crm.get_leads("contact", ["1"])[0], "contact", Score(), NOW + 60, became_hot=True)
    assert again.replayed
    later = router.assign_hot_lead(
        crm.get_leads("contact", ["1"])[0], "contact", Score(), NOW + 2 * 86400, became_hot=True
    )
    assert (later.outcome, later.reason, later.chosen) == ("kept_owner", "re-hot", "d1")
    assert [n.kind for n in notifier.sent] == ["assigned", "rehot"]


def test_the_command_line_helpers_work_through_the_router(redis_client: redis.Redis, crm: FakeCrm) -> None:
    from connector.errors import ConfigError
    from connector.routing import service

    def adapter_for(name: CrmName) -> FakeCrm:
        if name != "hubspot":
            raise ConfigError("SALESFORCE_INSTANCE_URL is not set.")
        return crm

    router = Router(make_config(), redis_client, adapter_for, None, clock=lambda: NOW, namespace="t1:routing")
    service.set_away(router, "d1@corp.example", NOW + 3600)  # epoch seconds: until that instant
    lines = {s.rep_id: str(s) for s in service.list_reps_status(router, NOW)}
    assert lines["d1"] == (
        "hubspot d1 d1@corp.example [DACH] weight 1, 0/- today, Mon 10:00 Europe/Berlin: "
        "away (away until 2026-03-02T10:00:00+00:00)"
    )
    assert lines["d2"].endswith(": available")
    assert redis_client.keys("leadscore:*") == []  # everything under the router's namespace
    assert router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW).chosen == "d2"
    assert service.set_back(router, "d1") is True  # cleared by id although set by e-mail
    assert service.list_reps_status(router, NOW)[0].available


def test_after_redis_lost_the_routing_state_a_rerun_does_not_task_the_owner_twice(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    router = make_router(redis_client, crm)
    lead = crm.add_lead("7")
    first = router.assign_hot_lead(lead, "contact", Score(), NOW, became_hot=True)
    assert first.assigned_now
    redis_client.flushall()  # a Redis restart without persistence
    rerun = crm.leads["7"]  # the page read again: now owned by the rep routing chose
    assert rerun.owner_id == first.chosen

    again = make_router(redis_client, crm).assign_hot_lead(rerun, "contact", Score(), NOW, became_hot=True)

    assert again.outcome == "kept_owner"
    assert [t.rep_id for t in crm.tasks if t.lead_id == "7"] == [first.chosen]


# --------------------------------------------------------------------------- ids, never e-mails


def test_away_marks_are_kept_under_crm_ids_not_e_mails(redis_client: redis.Redis, crm: FakeCrm) -> None:
    router = make_router(redis_client, crm)
    service.set_away(router, "D1@corp.example", dt.date(2026, 3, 5))
    assert "@" not in dump(redis_client)
    assert router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW).chosen == "d2"
    assert service.set_back(router, "d1@corp.example") is True
    status = {st.rep_id: st for st in service.list_reps_status(router, NOW)}
    assert (status["d1"].available, status["d1"].email) == (True, "d1@corp.example")


def test_an_away_mark_an_older_version_kept_under_an_e_mail_still_counts_and_moves_to_the_id(
    redis_client: redis.Redis, crm: FakeCrm
) -> None:
    payload = json.dumps({"until": "2026-03-05", "kind": "date"})
    redis_client.set("leadscore:routing:away:d1@corp.example", payload, ex=86400 * 5)
    redis_client.sadd("leadscore:routing:away", "d1@corp.example")
    router = make_router(redis_client, crm)
    assert router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW).chosen == "d2"  # d1 still away
    assert "@" not in dump(redis_client)
    assert redis_client.get("leadscore:routing:away:d1") == payload
    assert redis_client.ttl("leadscore:routing:away:d1") > 86400 * 4


def test_marks_in_away_yaml_hold_without_redis_and_are_re_read_when_the_file_changes(
    redis_client: redis.Redis, crm: FakeCrm, tmp_path: Path
) -> None:
    from connector.routing.away import record_away, record_back

    away_file = tmp_path / "away.yaml"
    router = Router(make_config(), redis_client, lambda _c: crm, None, clock=lambda: NOW, away_file=away_file)
    record_away(away_file, "D1@corp.example", dt.date(2026, 3, 1), dt.date(2026, 3, 5))
    # NOW is 09:00 UTC: d2 was away until 08:30 UTC and is back
    record_away(away_file, "d2@corp.example", dt.date(2026, 3, 1), dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC))
    redis_client.flushall()  # Redis lost every mark it had

    assert router.assign_hot_lead(crm.add_lead("1"), "contact", Score(), NOW).chosen == "d2"
    status = {s.rep_id: s for s in service.list_reps_status(router, NOW, crm="hubspot")}
    assert (status["d1"].reason, status["d2"].available, status["d3"].available) == ("away", True, True)

    record_away(away_file, "d3@corp.example", dt.date(2026, 3, 2), dt.date(2026, 3, 2))  # the file changes
    assert router.assign_hot_lead(crm.add_lead("2"), "contact", Score(), NOW).chosen == "d2"
    assert record_back(away_file, "d1@corp.example", dt.date(2026, 3, 2)) is True
    status = {s.rep_id: s for s in service.list_reps_status(router, NOW, crm="hubspot")}
    assert (status["d1"].available, status["d3"].reason) == (True, "away")
    assert "@" not in dump(redis_client)
