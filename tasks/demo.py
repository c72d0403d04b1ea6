"""`leadscore demo`: the whole mission on a fresh machine.

It lives beside the tasks because it runs them: it starts a Celery worker in
this process (imports point one way, tasks -> connector).

Starts the sandbox CRM in its own process, runs a full sync of each CRM
through the real Celery tasks (an in-process worker; Celery's in-memory
broker and an embedded Redis-compatible store when REDIS_URL is not set, that
Redis otherwise), and summarises what happened: records read, scored and
written, bands, hot leads, assignments per region and rep, API calls, time.

Routing's clock: run at 06:00 on a Friday, a demo routing by the real time would
send every hot lead to the fallback owner (nobody works yet) and show nothing of
the rotation. So the demo routes as at a stated moment (LEADSCORE_ROUTING_AT's
setting): `--at` when given (`--at now`: the real time), else the first whole hour
from now on when the most reps are in working hours. The summary names that clock
and says, in one line per CRM, what would have happened at the real time (the
same leads routed again at that moment on a fresh pool, by the same rules).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from connector import console
from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings, load_settings
from connector.domain import CrmName, Rep
from connector.errors import UserError
from connector.localredis import private_redis_server
from connector.mappings.routing import RoutingConfig, load_routing
from connector.routing.away import away_marks, merge_marks
from connector.routing.policy import fallback_owner_of
from connector.routing.summary import (
    ROUTED,
    RegionLine,
    Replay,
    busiest_hour,
    by_region,
    local_times,
    replay,
    routable,
    utc_text,
)
from sandbox.server import Sandbox, admin_call

# The demo's sandbox portal has a raised limit (real portals: 100 or 190 per 10 s),
# so that 10,000 contacts finish in seconds; the shared limiter still paces every
# call, and the summary says which limit was in force.
DEMO_HUBSPOT_RATE = 20_000



@dataclass(frozen=True)
class DemoClock:
    """The moment routing decides as at (None: the real time), where it came from, and why, in words."""

    at: float | None
    source: str  # "default", "--at", "LEADSCORE_ROUTING_AT" or "real time"
    why: str

    def as_dict(self) -> dict[str, Any]:
        at = None if self.at is None else dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat()
        return {"at": at, "source": self.source, "why": self.why}


def demo_clock(at: float | str | None, configured: float | None, reps: list[Rep], config: RoutingConfig,
               now: float) -> DemoClock:  # fmt: skip
    """`--at` (a moment, or "now"), else LEADSCORE_ROUTING_AT, else the busiest working hour from now on."""
    views = routable(config, reps)
    if at == "now":
        return DemoClock(None, "real time", f"routing at the real time ({utc_text(now)}), as --at now asks")
    for moment, source in ((at, "--at"), (configured, "LEADSCORE_ROUTING_AT")):
        if isinstance(moment, float | int):
            where = ", ".join(local_times(views, float(moment)))
            return DemoClock(float(moment), source, f"routing as at {utc_text(float(moment))} ({where}), "
                                                    f"set with {source}")  # fmt: skip
    moment, n = busiest_hour(views, now)
    where = ", ".join(local_times(views, moment))
    return DemoClock(
        moment,
        "default",
        f"routing as at {utc_text(moment)} ({where}): the demo's default, the first hour from now with the most "
        f"reps in working hours ({n} of {len(views)}), so that the rotation shows at any time of day; "
        "--at sets another moment, --at now the real time",
    )


@dataclass
class CrmSummary:
    crm: str
    run_id: str
    status: str
    message: str
    counts: dict[str, int]
    bands: dict[str, int]
    assignments: dict[str, dict[str, int]]  # region -> rep name -> count
    api_calls: int
    rate_limited: int
    seconds: float
    failures: list[str] = field(default_factory=list)
    regions: list[RegionLine] = field(default_factory=list)
    at_real_time: Replay | None = None
    fallback_owner: str | None = None


@dataclass
class DemoSummary:
    contacts: int
    seed: int
    store: str
    crms: list[CrmSummary]
    seconds: float
    clock: DemoClock | None = None

    @property
    def ok(self) -> bool:
        return all(c.status == "done" for c in self.crms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "contacts": self.contacts,
            "seed": self.seed,
            "store": self.store,
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
            "routing_clock": self.clock.as_dict() if self.clock else None,
            "crms": {
                c.crm: {
                    "run": c.run_id,
                    "status": c.status,
                    "message": c.message,
                    **c.counts,
                    "bands": c.bands,
                    "assignments": c.assignments,
                    "api_calls": c.api_calls,
                    "rate_limited": c.rate_limited,
                    "seconds": round(c.seconds, 2),
                    "failures": c.failures[:50],
                    "routing": {
                        "regions": {r.name: r.as_dict() for r in c.regions},
                        "fallback_owner": c.fallback_owner,
                        "at_real_time": None if c.at_real_time is None else {
                            "at": dt.datetime.fromtimestamp(c.at_real_time.at, dt.UTC).isoformat(),
                            "reps_in_hours": c.at_real_time.in_hours,
                            "reps": c.at_real_time.reps,
                            "outcomes": dict(c.at_real_time.outcomes),
                            "line": c.at_real_time.sentence(),
                        },
                    },
                }
                for c in self.crms
            },
        }

    def text(self) -> str:
        out = [
            f"leadscore demo: {self.contacts} people in each CRM (seed {self.seed}), store: {self.store}",
            f"(the sandbox HubSpot portal allows {DEMO_HUBSPOT_RATE} calls per 10 s; real portals 100 or 190)",
        ]
        if self.clock is not None:
            out.append(self.clock.why)
        for c in self.crms:
            k = c.counts
            out.append("")
            out.append(f"{c.crm}: sync {c.status} in {c.seconds:.1f} s" + (f" ({c.message})" if c.message else ""))
            out.append(f"  read {k.get('read', 0)}, scored {k.get('scored', 0)}, written {k.get('written', 0)}, "
                       f"unchanged {k.get('unchanged', 0)}, failed {k.get('failed', 0)}")
            out.append("  bands: " + ", ".join(f"{b} {c.bands.get(b, 0)}" for b in ("hot", "warm", "cold")))
            out.append(f"  hot leads {k.get('hot', 0)}, newly assigned {k.get('assigned', 0)}"
                       + (f", left unassigned {k['unassigned']}" if k.get("unassigned") else ""))
            out += _region_lines(c)
            if c.at_real_time is not None:
                out.append(f"  {c.at_real_time.sentence()}")
            out.append(f"  API calls {c.api_calls} ({c.api_calls / max(1, k.get('read', 1)) * 1000:.0f} per 1,000 "
                       f"records), rate-limited answers {c.rate_limited}")
            for f in c.failures[:5]:
                out.append(f"  failed: {f}")
        out.append("")
        out.append(f"total time {self.seconds:.1f} s")
        return "\n".join(out)


    def show(self, *, plain: bool) -> None:
        """The summary on stdout: the plain text, or tables on a terminal."""
        if plain:
            print(self.text())
            return
        out = console.out()
        out.print(f"[bold]leadscore demo[/]: {self.contacts:,} people in each CRM (seed {self.seed}), "
                  f"store: {self.store}")
        out.print(f"(the sandbox HubSpot portal allows {DEMO_HUBSPOT_RATE:,} calls per 10 s; real portals 100 or 190)")
        if self.clock is not None:
            out.print(self.clock.why, markup=False)
        names = ("read", "scored", "written", "unchanged", "failed", "hot", "assigned")
        rows: list[list[Any]] = [
            [c.crm, c.status, *(c.counts.get(n, 0) for n in names),
             *(c.bands.get(b, 0) for b in ("hot", "warm", "cold")), c.api_calls, c.rate_limited, f"{c.seconds:.1f} s"]
            for c in self.crms
        ]
        console.table("", ["CRM", "sync", *names, "band hot", "band warm", "band cold", "API calls",
                           "rate-limited", "time"], rows, plain=False)
        for c in self.crms:
            rows = [[region.name, rep.name, rep.weight, "no limit" if rep.capacity is None else rep.capacity,
                     rep.received, ", ".join(f"{why} {n}" for why, n in rep.skipped.most_common())]
                    for region in c.regions for rep in region.reps]  # fmt: skip
            if rows:
                console.table(f"{c.crm}: routing per region and rep", ["region", "rep", "weight", "capacity",
                              "received", "passed over"], rows, plain=False)  # fmt: skip
            for region in c.regions:
                went = _where_went(c, region)
                if went:
                    out.print(f"{c.crm}: {region.name}: {region.hot_leads} hot leads routed ({went})", markup=False)
            if c.at_real_time is not None:
                out.print(f"{c.crm}: {c.at_real_time.sentence()}", markup=False)
            for f in c.failures[:5]:
                out.print(f"{c.crm}: failed: {f}", markup=False)
        out.print(f"total time {self.seconds:.1f} s")


def _region_lines(c: CrmSummary) -> list[str]:
    """Per region: its hot leads and where they went; each rep with weight, capacity, leads, why passed over."""
    out = []
    for region in c.regions:
        went = _where_went(c, region)
        out.append(f"  {region.name}: {region.hot_leads} hot leads routed" + (f" ({went})" if went else ""))
        width = max((len(r.name) for r in region.reps), default=0)
        for rep in region.reps:
            cap = "no limit" if rep.capacity is None else str(rep.capacity)
            why = ", ".join(f"{reason} {n}" for reason, n in sorted(rep.skipped.items(), key=lambda kv: -kv[1]))
            out.append(f"    {rep.name:<{width}}  weight {rep.weight}  capacity {cap:>3}  received {rep.received:>3}"
                       + (f"  passed over: {why}" if why else ""))  # fmt: skip
    return out


def _where_went(c: CrmSummary, region: RegionLine) -> str:
    """The region's leads that did not stay in its rotation, and the leads of other regions that came to it."""
    went = [f"{n} to fallback region {name}" for name, n in sorted(region.to_fallback_regions.items())]
    if region.to_fallback_owner:
        went.append(f"{region.to_fallback_owner} to the fallback owner {c.fallback_owner or ''}".rstrip())
    if region.unassigned:
        went.append(f"{region.unassigned} unassigned")
    went += [f"{n} more from {name}" for name, n in sorted(region.from_other_regions.items())]
    return ", ".join(went)


def _mappings_dir(settings: Settings) -> Path:
    if settings.mappings_dir.is_dir():
        return settings.mappings_dir
    packaged = Path(__file__).resolve().parent.parent / "mappings"
    if packaged.is_dir():
        return packaged
    raise UserError(f"the mappings folder {settings.mappings_dir} does not exist; set LEADSCORE_MAPPINGS.")


@contextlib.contextmanager
def _store(settings: Settings) -> Iterator[tuple[redis.Redis, str, str]]:
    """(client, broker URL, description) for the demo's broker and shared state.

    REDIS_URL set: that Redis. Else a private redis-server on a free port when one is
    installed (nothing shared is touched, nothing kept). Else, on a machine with no
    Redis at all, Celery's in-memory transport and an embedded Redis-compatible store.
    """
    if settings.redis_url_given:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise UserError(f"REDIS_URL is set but Redis cannot be reached ({type(exc).__name__}).") from None
        yield client, settings.redis_url, "Redis at REDIS_URL"
        client.close()
        return
    exe = shutil.which("redis-server")
    if exe is not None:
        with private_redis_server(exe) as url:
            client = redis.Redis.from_url(url)
            yield client, url, "a private redis-server on a free port"
            client.close()
        return
    import fakeredis

    server = fakeredis.FakeServer()
    yield fakeredis.FakeRedis(server=server), "memory://", "embedded (no Redis server installed)"


@contextlib.contextmanager
def _worker(app: Any, concurrency: int, queue: str) -> Iterator[None]:
    """A Celery worker inside this process, consuming the demo's queue with a pool of threads."""
    ready = threading.Event()
    worker = app.WorkController(
        app=app,
        pool_cls="threads",
        concurrency=concurrency,
        hostname=f"demo-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
        queues=[queue],
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=lambda *_: ready.set(),
        redirect_stdouts=False,
    )
    thread = threading.Thread(target=worker.start, name="demo-worker", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise UserError("the demo's worker did not start within 30 s.")
    try:
        yield
    finally:
        worker.stop(in_sighandler=False, exitcode=0)
        thread.join(10)


def run_demo(
    *,
    crm: str,
    contacts: int,
    seed: int,
    workers: int = 4,
    progress: bool = True,
    at: float | str | None = None,
    now: float | None = None,
) -> DemoSummary:
    """`at`: the moment routing decides as at (epoch seconds), "now" for the real time, None for the default.

    `now`: the real time as the demo reads it (the default clock and the real-time line start from it).
    """
    from tasks import sync as sync_tasks
    from tasks.app import app
    from tasks.runtime import set_runtime

    started = time.perf_counter()
    now = time.time() if now is None else now
    base = load_settings()
    crms: list[CrmName] = ["hubspot", "salesforce"] if crm == "both" else [crm]  # type: ignore[list-item]
    mdir = _mappings_dir(base)
    if progress:
        print(f"starting the sandbox CRM with {contacts} people ...", file=sys.stderr)
    with Sandbox.start(contacts=contacts, seed=seed, hubspot_rate=DEMO_HUBSPOT_RATE, in_thread=False) as sb, \
            _store(base) as (client, broker, store_desc):
        settings = Settings(
            redis_url=base.redis_url,
            redis_url_given=base.redis_url_given,
            mappings_dir=mdir,
            hubspot_base_url=sb.hubspot_url,
            hubspot_access_token=sb.hubspot_token if "hubspot" in crms else None,
            salesforce_instance_url=sb.salesforce_url if "salesforce" in crms else None,
            salesforce_access_token=sb.salesforce_token if "salesforce" in crms else None,
            salesforce_ca_bundle=Path(sb.ca_cert),
            log_format=base.log_format,
            log_level=base.log_level,
        )
        namespace = f"leadscore-demo-{uuid.uuid4().hex[:8]}"
        # on the admin's own Redis, a queue of the demo's own so that no production worker takes its tasks
        queue = f"{namespace}-tasks" if base.redis_url_given else "leadscore"
        rt = build_runtime(settings, redis_client=client, namespace=namespace)
        rt.overrides["hubspot"] = _demo_hubspot_limits
        set_runtime(rt)
        app.conf.update(broker_url=broker, task_default_queue=queue)
        try:
            for name in crms:
                rt.adapter(name).setup()  # `leadscore setup`: HubSpot properties, Salesforce fields (Tooling API)
            config = load_routing(mdir / "routing.yaml")
            reps = {name: rt.adapter(name).list_reps() for name in crms}
            clock = demo_clock(at, base.routing_at, [r for name in crms for r in reps[name]], config, now)
            # the router is built on first use, from these settings: it decides as at the demo's clock
            rt.settings = settings.model_copy(update={"routing_at": clock.at})
            for url, ca in ((sb.hubspot_url, None), (sb.salesforce_url, sb.ca_cert)):
                admin_call(url, "/__sandbox__/stats/reset", {}, ca)
            with _worker(app, workers, queue):
                # the CRMs are separate accounts: their syncs run side by side on the same workers
                run_ids = [sync_tasks.enqueue_run(name, True).run_id for name in crms]
                views = console.wait_for_runs(rt.runs, run_ids, timeout=900, quiet=not progress,
                                              expected=dict.fromkeys(crms, contacts), summary=lambda _v: None,
                                              preparing=lambda crm: rt.adapter(crm).preparing())  # fmt: skip
                summaries = [_summarise(rt, name, view, sb) for name, view in zip(crms, views, strict=True)]
            for name, summary in zip(crms, summaries, strict=True):
                _add_routing(rt, summary, config, reps[name], clock, now)
        finally:
            set_runtime(None)
            rt.close()
    return DemoSummary(contacts, seed, store_desc, summaries, time.perf_counter() - started, clock)


def _add_routing(
    rt: Runtime, summary: CrmSummary, config: RoutingConfig, reps: list[Rep], clock: DemoClock, now: float
) -> None:
    """Per region and rep from routing's records; and the same leads routed at the real time."""
    prefix = rt.router.prefix
    records = []
    for raw in rt.redis.scan_iter(match=f"{prefix}record:{summary.crm}:*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        records += [r for r in rt.router.routing_record(key.removeprefix(f"{prefix}record:")) if r.get("round") == 0]
    summary.regions = by_region(config, reps, records)
    names = {r.id: r.name or r.email for r in reps}
    owner, _ = fallback_owner_of(config, summary.crm, config.default_region, reps)
    summary.fallback_owner = names.get(owner or "", owner)
    if clock.at is not None:
        regions = [str(r["region"]) for r in records if r.get("outcome") in ROUTED]
        marks = merge_marks(away_marks(rt.redis, reps, prefix), rt.router.file_marks.for_reps(reps))
        summary.at_real_time = replay(config, summary.crm, reps, regions, now, marks)


def _demo_hubspot_limits(mapping: Any) -> dict[str, Any]:
    return {"account": mapping.account.model_copy(update={"requests_per_10s": DEMO_HUBSPOT_RATE})}


def _summarise(rt: Runtime, crm: CrmName, view: Any, sb: Any) -> CrmSummary:
    seconds = float(view.fields.get("finished") or 0) - float(view.fields.get("started") or 0)
    url, ca = (sb.hubspot_url, None) if crm == "hubspot" else (sb.salesforce_url, sb.ca_cert)
    stats = admin_call(url, "/__sandbox__/stats", None, ca)
    bands = {k.split(":", 1)[1]: int(v) for k, v in view.fields.items() if k.startswith("band:")}
    reps = {r.id: r.name for r in rt.adapter(crm).list_reps()}
    assignments: dict[str, Counter[str]] = {}
    for k, v in view.fields.items():
        if k.startswith("assigned:"):
            _, regions, rep_id = k.split(":", 2)
            lead_region, _, rep_region = regions.partition(">")
            if rep_region == "queue":
                label = f"{lead_region} (nobody available: fallback owner)"
            elif rep_region in ("", lead_region):
                label = lead_region
            else:
                label = f"{lead_region} (fallback to {rep_region})"
            assignments.setdefault(label, Counter())[reps.get(rep_id, rep_id)] += int(v)
    counts = {name: view.count(name) for name in ("read", "scored", "written", "unchanged", "failed", "hot",
                                                   "assigned", "unassigned")}
    return CrmSummary(
        crm=crm,
        run_id=view.id,
        status=view.status,
        message=view.fields.get("message", ""),
        counts=counts,
        bands=bands,
        assignments={r: dict(c) for r, c in assignments.items()},
        api_calls=int(stats.get("total", 0)),
        rate_limited=int(stats.get("rate_limited", 0)),
        seconds=seconds,
        failures=view.failures,
    )
