"""Real-time latency: from a change in the sandbox HubSpot to the score written back (and the rep's task).

    python bench/realtime.py [--changes 30] [--contacts 2000] [--rate 190] [--seed 7]
    python bench/realtime.py --with-sync [incremental|full] [--churn 20]
    python bench/realtime.py --with-sync full --pool threads --concurrency 8   # another worker pool, compared

Starts a private redis-server, the sandbox in its own process (sending signed
webhooks), `leadscore serve` (the web process) and one Celery worker as the
Procfile runs it (prefork, concurrency 4, the one shared queue). The sandbox
allows `--rate` requests per 10 s (default 190: HubSpot Professional, as in
bench/sync.py; up to 10,000) and answers 429 beyond it; the connector's limiter
is set just under it. A full sync through the worker, at that rate, first gives
every contact its score, and every pool process builds its runtime (as in a
worker that has run for a while); then, one at a time, a contact submits a whitepaper
form and views the pricing page. The clock runs from the first activity until
the new score is readable through the API and, when the lead turned hot, until
the rep's task exists too.

The bench watches the CRM with a token of its own (another private app: the
sandbox, like HubSpot, counts the ten-second window per app), paced to stay
under that app's window, so watching costs the connector nothing; a poll every
OBSERVE_EVERY_S at most, so the figures are that coarse.

`--with-sync`: during the measurement the portal is busy as on a working day:
every 10 s `--churn` other contacts change (half edited by someone, through a
third app's token; half view a page), which also sends webhooks, and an
incremental sync is enqueued every SYNC_EVERY_S the way beat does
(`leadscore.sync.start` with `("hubspot", False)`; one that finds a run going
is skipped, as with beat). `--with-sync full`: full syncs instead (beat's
daily entry, `("hubspot", True)`), which keep the window full the whole time.
Sync pages and webhook rescores take their calls from the same Redis-shared
limiter, so they compete for the same budget.

Prints p50/p95/max and n from change to score written and from change to the
rep's task (hot leads only), the connector's API calls and 429 answers during
the measurement, the sandbox's webhook deliveries (failed, given up) and its
slowest answer to the bench (a slow sandbox, not the connector, shows there);
the last line is one JSON object (p50_s, p95_s: to the score,
or to the task when the lead turned hot; score_*, task_*; n, hot, rate, with_sync ...).
Target: p95 under 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.bootstrap import build_runtime  # noqa: E402
from connector.config import Settings, parse_moment  # noqa: E402
from connector.localredis import private_redis_server  # noqa: E402
from connector.mappings.routing import load_routing  # noqa: E402
from connector.routing.summary import busiest_hour, routable, utc_text  # noqa: E402
from connector.runs import RunStore  # noqa: E402
from sandbox.server import Sandbox, admin_call  # noqa: E402

SECRET = "bench-webhook-secret-4f3e2d1c"  # noqa: S105 - the bench's own throwaway secret
OBSERVER_TOKEN = "bench-observer-token"  # noqa: S105 - a second app's token, added to the sandbox only
CHURN_TOKEN = "bench-churn-token"  # noqa: S105 - a third app: the other people editing contacts
WHITEPAPER = {"form_id": "f1a2b3c4-0002", "form_title": "Whitepaper: Strain gauge measurement"}
PRICING = {"url": "/pricing", "title": "Pricing"}
WORKER_CONCURRENCY = 4  # the Procfile's worker
QUEUE = "leadscore"  # tasks/app.py task_default_queue: webhook drains and sync pages share it
# The watcher's pace: one request per OBSERVE_EVERY_S at most, 150 per 10 s, under its own app's 190
OBSERVE_EVERY_S = 10 / 150
# How often the bench enqueues an incremental sync with --with-sync. Beat's default is every 5 minutes;
# enqueued this often, one runs nearly all the time (one that finds a run going is skipped).
SYNC_EVERY_S = 10.0
CHURN_EVERY_S = 10.0
CHANGE_TIMEOUT_S = 180.0  # a change whose score (or task) takes longer is reported, and the bench stops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output is kept (the last lines are shown when something goes wrong)."""

    def __init__(self, argv: list[str], env: dict[str, str], ready: str | None = None) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.marker = ready
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            del self.lines[:-200]
            if self.marker is not None and self.marker in line:
                self.ready.set()

    def tail(self) -> str:
        return "\n".join(self.lines[-20:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)  # the prefork pool's children
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def bench_mappings(tmp: Path, connector_rate: int) -> Path:
    """mappings/ with the portal allowance just under the sandbox's (as bench/sync.py sets it)."""
    target = tmp / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    path = target / "hubspot.yaml"
    text = path.read_text()
    if "  tier: enterprise\n" not in text:
        raise SystemExit("bench: mappings/hubspot.yaml has no `tier: enterprise` line to set the allowance at")
    path.write_text(text.replace("  tier: enterprise\n", f"  tier: enterprise\n  requests_per_10s: {connector_rate}\n",
                                 1).replace("  daily: 500000", "  daily: 50000000"))  # fmt: skip
    return target


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"p50_s": None, "p95_s": None, "max_s": None, "n": 0}
    return {"p50_s": round(percentile(values, 50), 3), "p95_s": round(percentile(values, 95), 3),
            "max_s": round(max(values), 3), "n": len(values)}  # fmt: skip


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


class Api:
    """An app of the bench's own on the sandbox's HubSpot API: paced under its own window, 429s waited out.

    Counts its API calls, so that the connector's can be told apart in the sandbox's totals."""

    def __init__(self, base_url: str, token: str, every: float = OBSERVE_EVERY_S) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.every = every
        self.calls = 0
        self.rate_limited = 0
        self.slowest = 0.0  # seconds: the sandbox's slowest answer to the watcher (a busy sandbox shows here)
        self._next = 0.0
        self._lock = threading.Lock()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        while True:
            with self._lock:
                pause = self._next - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self._next = time.monotonic() + self.every
                if not path.startswith("/__sandbox__/"):  # the sandbox counts only its API's calls
                    self.calls += 1
            sent = time.monotonic()
            resp = self.http.request(method, path, **kwargs)
            self.slowest = max(self.slowest, time.monotonic() - sent)
            if resp.status_code == 429:
                self.rate_limited += 1
                time.sleep(float(resp.headers.get("Retry-After") or 1))
                continue
            resp.raise_for_status()
            return resp.json()

    def props(self, contact: str) -> dict[str, Any]:
        body = self.call("GET", f"/crm/v3/objects/contacts/{contact}",
                         params={"properties": "lead_score,lead_band,lead_scored_at"})  # fmt: skip
        props: dict[str, Any] = body["properties"]
        return props

    def has_task(self, contact: str) -> bool:
        return bool(self.call("GET", f"/crm/v4/objects/contacts/{contact}/associations/tasks")["results"])

    def close(self) -> None:
        self.http.close()


class Busy:
    """--with-sync: other contacts changing and incremental syncs enqueued as beat does, until stopped."""

    def __init__(self, sandbox: Sandbox, redis_url: str, others: list[str], churn: int, full: bool) -> None:
        from celery import Celery

        self.sandbox = sandbox
        self.api = Api(sandbox.hubspot_url, CHURN_TOKEN, every=0.0)
        self.others = itertools.cycle(others)
        self.churn = churn
        self.full = full
        self.beat = Celery("leadscore-bench-beat", broker=redis_url)
        self.beat.conf.update(task_serializer="json", accept_content=["json"], task_default_queue=QUEUE)
        self.enqueued = 0
        self.changed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guard(self._beat), daemon=True),
                         threading.Thread(target=self._guard(self._changes), daemon=True)]  # fmt: skip

    def _guard(self, fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - said in the figures, the measurement goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")

        return run

    def _beat(self) -> None:
        while not self._stop.is_set():
            self.beat.send_task("leadscore.sync.start", args=("hubspot", self.full), queue=QUEUE)
            self.enqueued += 1
            self._stop.wait(SYNC_EVERY_S)

    def _changes(self) -> None:
        round_no = 0
        while not self._stop.is_set():
            round_no += 1
            edited = [next(self.others) for _ in range(self.churn // 2)]
            viewed = [next(self.others) for _ in range(self.churn - len(edited))]
            if edited:
                self.api.call(
                    "POST",
                    "/crm/v3/objects/contacts/batch/update",
                    json={
                        "inputs": [
                            {"id": i, "properties": {"jobtitle": f"Head of Operations {round_no}"}} for i in edited
                        ]
                    },
                )
            for i in viewed:
                self.api.call("POST", "/__sandbox__/activities",
                              json={"contact": i, "kind": "page_view", "attrs": PRICING})  # fmt: skip
            self.changed += len(edited) + len(viewed)
            self._stop.wait(CHURN_EVERY_S)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self.api.close()
        with contextlib.suppress(Exception):
            self.beat.close()


def full_sync(env: dict[str, str], runs: RunStore, timeout: float) -> tuple[str, float]:
    """`leadscore sync --crm hubspot --full`, through the worker; (status, seconds)."""
    t0 = time.monotonic()
    enq = subprocess.run([sys.executable, "-m", "connector.cli", "sync", "--crm", "hubspot", "--full"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if enq.returncode != 0:
        raise SystemExit(f"bench: leadscore sync failed: {enq.stderr.strip()}")
    run_id = enq.stdout.split(" sync ", 1)[1].split()[0]
    while True:
        view = runs.get(run_id)
        if view is not None and view.finished:
            return view.status, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"bench: the full sync did not finish within {timeout:.0f} s")
        time.sleep(0.2)


def warm_up(redis_url: str, concurrency: int) -> None:
    """Each of the worker's pool processes builds its runtime on its first task (seconds): send every one a
    task that needs the runtime and calls nothing (the periodic retry, with nothing to retry), so the first
    timed changes do not pay that; a long-running production worker has paid it long ago."""
    from celery import Celery

    app = Celery("leadscore-bench-warm", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue=QUEUE)
    try:
        for _ in range(4 * concurrency):
            app.send_task("leadscore.sync.retry", args=("hubspot",), queue=QUEUE)
    finally:
        app.close()
    time.sleep(8)


def sync_runs(runs: RunStore, since: float) -> dict[str, int]:
    """Runs created since `since` (epoch seconds), by mode and status ("incremental done": 3)."""
    out: dict[str, int] = {}
    for run_id in runs.recent("hubspot", 50):
        view = runs.get(run_id)
        if view is None or float(view.fields.get("created", 0)) < since:
            continue
        key = f"{view.fields.get('mode')} {view.status}"
        out[key] = out.get(key, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--changes", type=int, default=30, help="contacts changed one at a time and timed")
    p.add_argument("--contacts", type=int, default=2000)
    p.add_argument("--rate", type=int, default=190,
                   help="the sandbox's HubSpot requests per 10 s (default 190: HubSpot Professional; "
                        "up to 10,000, the most mappings/hubspot.yaml accepts)")  # fmt: skip
    p.add_argument(
        "--with-sync",
        nargs="?",
        const="incremental",
        choices=("incremental", "full"),
        default=None,
        help="other contacts changing and syncs running during the measurement: incremental ones (the default), "
        "or full ones (the daily sync: the window kept full)",
    )
    p.add_argument(
        "--churn",
        type=int,
        default=20,
        help="with --with-sync: other contacts changed every 10 s (half edited, half viewing a page)",
    )
    p.add_argument("--pool", choices=("prefork", "threads"), default="prefork",
                   help="the worker's pool (default prefork, as the Procfile runs it)")
    p.add_argument("--concurrency", type=int, default=WORKER_CONCURRENCY,
                   help=f"the worker's pool size (default {WORKER_CONCURRENCY}, as the Procfile runs it)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--at", default=None, help="route as at this moment (ISO date and time with zone; default: the "
                                               "first hour from now with the most reps in working hours)")  # fmt: skip
    args = p.parse_args(argv)
    if not 1 <= args.rate <= 10_000:
        p.error("--rate must be between 1 and 10,000 (the most mappings/hubspot.yaml accepts)")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.changes < 1 or args.churn < 0:
        p.error("--changes must be at least 1 and --churn at least 0")
    if args.churn != 20 and not args.with_sync:
        p.error("--churn goes with --with-sync")
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench: redis-server is not on PATH")

    tmp = Path(tempfile.mkdtemp(prefix="leadscore-bench-"))
    web_port, ops_port = free_port(), free_port()
    own_redis = contextlib.ExitStack()
    redis_url = own_redis.enter_context(private_redis_server(exe))  # shared starter (demo, benches)
    procs: list[Proc] = []
    sandbox: Sandbox | None = None
    busy: Busy | None = None
    watch: Api | None = None
    client = redis.Redis.from_url(redis_url)
    try:
        sandbox = Sandbox.start(contacts=args.contacts, seed=args.seed, hubspot_rate=args.rate,
                                hubspot_daily=50_000_000, in_thread=False)  # fmt: skip
        for token in (OBSERVER_TOKEN, CHURN_TOKEN):
            admin_call(sandbox.hubspot_url, "/__sandbox__/tokens", {"token": token})
        connector_rate = max(1, args.rate - max(1, args.rate // 50))  # just under the sandbox's, as bench/sync.py
        mappings = bench_mappings(tmp, connector_rate)
        settings = Settings(redis_url=redis_url, redis_url_given=True, hubspot_base_url=sandbox.hubspot_url,
                            hubspot_access_token=sandbox.hubspot_token, hubspot_webhook_secret=SECRET,
                            mappings_dir=mappings)  # fmt: skip
        # Routing decides as at a working hour (LEADSCORE_ROUTING_AT), so the figures never depend on the hour
        # the bench runs at: hot leads reach reps of their region, not the fallback owner at night.
        routing = load_routing(mappings / "routing.yaml")
        rt = build_runtime(settings)
        try:
            reps = routable(routing, rt.adapter("hubspot").list_reps())
            rt.adapter("hubspot").setup()  # `leadscore setup`: the score properties
        finally:
            rt.close()
        routing_at = parse_moment(args.at, "--at") if args.at else busiest_hour(reps, time.time())[0]
        print(f"routing as at {utc_text(routing_at)}; HubSpot at {args.rate} requests per 10 s "
              f"(the connector's limiter at {connector_rate})", flush=True)  # fmt: skip

        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
        env.update(REDIS_URL=redis_url, HUBSPOT_BASE_URL=sandbox.hubspot_url,
                   HUBSPOT_ACCESS_TOKEN=sandbox.hubspot_token, HUBSPOT_WEBHOOK_SECRET=SECRET,
                   LEADSCORE_MAPPINGS=str(mappings), PORT=str(web_port),
                   LEADSCORE_METRICS_ADDR=f"127.0.0.1:{ops_port}", PYTHONUNBUFFERED="1",
                   LEADSCORE_ROUTING_AT=dt.datetime.fromtimestamp(routing_at, dt.UTC).isoformat())  # fmt: skip
        # the Procfile's worker: prefork, concurrency 4, the one queue for sync pages and webhook drains
        worker = Proc([sys.executable, "-m", "celery", "-A", "tasks", "worker", f"--pool={args.pool}",
                       f"--concurrency={args.concurrency}",
                       "-Q", QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
                       "-n", f"bench-{os.getpid()}@%h"], env, ready=" ready.")  # fmt: skip
        procs.append(worker)
        web = Proc([sys.executable, "-m", "connector.cli", "serve"], env)
        procs.append(web)
        web_url = f"http://127.0.0.1:{web_port}"
        wait_until(worker.ready.is_set, 60, "the worker start\n" + worker.tail())
        wait_until(lambda: _ready(f"http://127.0.0.1:{ops_port}"), 30, "the web process start\n" + web.tail())

        # A full sync at the portal's rate: every contact has its score, hot ones their rep.
        runs = RunStore(client)
        status, seconds = full_sync(env, runs, timeout=max(600, args.contacts))
        if status != "done":
            raise SystemExit(f"bench: the full sync ended {status}\n{worker.tail()}")
        print(f"full sync of {args.contacts:,} contacts at {args.rate} per 10 s: {seconds:.1f} s", flush=True)

        watch = Api(sandbox.hubspot_url, OBSERVER_TOKEN)
        ids = [str(i) for i in range(1, args.contacts + 1)]
        # Unowned leads that are not hot yet, the warmest first: a form and the pricing page turn the warm
        # ones hot, so the rep's task is timed too (cold ones only get a new score).
        candidates: list[tuple[float, str]] = []
        for i in range(0, len(ids), 100):
            body = watch.call("POST", "/crm/v3/objects/contacts/batch/read", json={
                "properties": ["lead_band", "lead_score", "hubspot_owner_id"],
                "inputs": [{"id": x} for x in ids[i:i + 100]]})  # fmt: skip
            candidates += [(-float(r["properties"].get("lead_score") or 0), r["id"]) for r in body["results"]
                           if not r["properties"].get("hubspot_owner_id")
                           and r["properties"].get("lead_band") != "hot"]  # fmt: skip
        chosen = [contact for _, contact in sorted(candidates)[: args.changes]]
        if len(chosen) < args.changes:
            raise SystemExit(f"bench: only {len(chosen)} unowned, not-hot contacts; raise --contacts")

        warm_up(redis_url, args.concurrency)
        watch.call("POST", "/__sandbox__/webhooks",
                   json={"hubspot": {"url": f"{web_url}/webhooks/hubspot", "secret": SECRET}})  # fmt: skip
        busy_from = time.time()
        if args.with_sync:
            taken = set(chosen)
            busy = Busy(sandbox, redis_url, [i for i in ids if i not in taken], args.churn, args.with_sync == "full")
            busy.start()
            # let the first incremental sync and the first round of changes get going
            time.sleep(SYNC_EVERY_S / 2)
        measured_from = time.time()
        watch.slowest = 0.0
        before_stats = admin_call(sandbox.hubspot_url, "/__sandbox__/stats")
        own_before = watch.calls + (busy.api.calls if busy else 0)
        score_lat: list[float] = []
        task_lat: list[float] = []
        either: list[float] = []
        hot = 0
        for k, contact in enumerate(chosen, 1):
            before = watch.props(contact)
            started = time.monotonic()
            for kind, attrs in (("form_submission", WHITEPAPER), ("page_view", PRICING)):
                watch.call("POST", "/__sandbox__/activities", json={"contact": contact, "kind": kind, "attrs": attrs})
            after = before
            deadline = started + CHANGE_TIMEOUT_S
            while after.get("lead_scored_at") == before.get("lead_scored_at"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: contact {contact} got no new score in {CHANGE_TIMEOUT_S:.0f} s\n"
                                     f"{worker.tail()}")  # fmt: skip
                after = watch.props(contact)
            scored = time.monotonic() - started
            score_lat.append(scored)
            done = scored
            if after.get("lead_band") == "hot" and before.get("lead_band") != "hot":
                hot += 1
                while not watch.has_task(contact):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench: hot contact {contact} got no task in {CHANGE_TIMEOUT_S:.0f} s\n"
                                         f"{worker.tail()}")  # fmt: skip
                done = time.monotonic() - started
                task_lat.append(done)
            either.append(done)
            print(f"  change {k}/{len(chosen)}: score {scored:.2f} s"
                  + (f", task {done:.2f} s" if done != scored else ""), flush=True)  # fmt: skip
        after_stats = admin_call(sandbox.hubspot_url, "/__sandbox__/stats")
        hooks = admin_call(sandbox.hubspot_url, "/__sandbox__/webhooks").get("stats", {})
        measured_s = time.time() - measured_from
        own_calls = watch.calls + (busy.api.calls if busy else 0) - own_before
        syncs = sync_runs(runs, busy_from)
        if busy is not None:
            busy.stop()
        connector_calls = int(after_stats["total"]) - int(before_stats["total"]) - own_calls
        rate_limited = int(after_stats["rate_limited"]) - int(before_stats["rate_limited"])
        s_sum, t_sum, e_sum = summary(score_lat), summary(task_lat), summary(either)
        figures: dict[str, Any] = {
            "p50_s": e_sum["p50_s"],
            "p95_s": e_sum["p95_s"],
            "max_s": e_sum["max_s"],
            **{f"score_{k}": v for k, v in s_sum.items()},
            **{f"task_{k}": v for k, v in t_sum.items()},
            "n": len(either),
            "hot": hot,
            "rate": args.rate,
            "with_sync": args.with_sync,
            "churn_per_10s": args.churn if args.with_sync else 0,
            "measured_s": round(measured_s, 1),
            "connector_api_calls": connector_calls,
            "connector_calls_per_10s": round(connector_calls / measured_s * 10, 1) if measured_s else 0.0,
            "rate_limited": rate_limited,
            "sandbox_slowest_answer_s": round(watch.slowest, 3),
            "webhook_deliveries": {k: v.get("hubspot", 0) for k, v in hooks.items() if isinstance(v, dict)},
            "sync_runs": syncs,
            "workers": f"1 ({args.pool}, concurrency {args.concurrency})",
            "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if busy is not None:
            figures["others_changed"] = busy.changed
            if busy.errors:
                figures["busy_errors"] = busy.errors[:3]
        load = (f"with {args.with_sync} syncs and {args.churn} other contacts changing every 10 s" if args.with_sync
                else "no other load")  # fmt: skip
        print(f"changes: {len(either)} (one at a time; {load}); turned hot: {hot}")
        print(f"HubSpot at {args.rate} requests per 10 s: the connector made {connector_calls} calls in "
              f"{measured_s:.0f} s ({figures['connector_calls_per_10s']} per 10 s), 429 answers {rate_limited}; "
              f"the sandbox's slowest answer to the bench {watch.slowest:.2f} s; "
              f"sync runs {syncs or 'none'}")  # fmt: skip
        print(f"the sandbox's webhook deliveries to the web process: {figures['webhook_deliveries']}")
        print(f"change -> score written back: p50 {s_sum['p50_s']} s, p95 {s_sum['p95_s']} s, "
              f"max {s_sum['max_s']} s (n {s_sum['n']})")  # fmt: skip
        print(f"change -> rep's task (hot leads): p50 {t_sum['p50_s']} s, p95 {t_sum['p95_s']} s, "
              f"max {t_sum['max_s']} s (n {t_sum['n']})")  # fmt: skip
        print(f"change -> score, or the rep's task when hot: p50 {e_sum['p50_s']} s, p95 {e_sum['p95_s']} s "
              f"(target p95 < 2 s)")  # fmt: skip
        print(orjson.dumps(figures).decode())
        return 0
    finally:
        if busy is not None:
            busy.stop()
        if watch is not None:
            watch.close()
        for proc in reversed(procs):
            proc.stop()
        if sandbox is not None:
            sandbox.stop()
        client.close()
        own_redis.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
