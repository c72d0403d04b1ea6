"""A full sync through the real pipeline: K Celery worker processes, a private Redis, the sandbox CRM.

Starts a redis-server of its own on a free port, the sandbox CRM in its own
process (so it does not share a GIL with anything measured), K
`celery -A tasks worker --pool=prefork --concurrency=1` processes, enqueues
`leadscore sync --crm CRM --full` and times it until the run is done. Reports
records per second, API calls (the sandbox's count: total and per 1,000
records), seconds, and the peak RSS of each worker (main process and its pool
child, sampled with psutil, and the kernel's high-water marks, VmHWM), and how
often its pool child was replaced for its memory (tasks/app.py, _bound_pool).

    python bench/sync.py --crm hubspot --contacts 10000 --workers 2
    python bench/sync.py --crm hubspot --contacts 50000 --workers 4 --kill-worker
    python bench/sync.py --crm hubspot --contacts 10000 --workers 1 --compare-tap --json

`--rate N`: the sandbox's HubSpot allowance per 10 s (default 190, a Professional portal's; up to
10,000, the most mappings/hubspot.yaml accepts); the connector's limiter is set just under it. At 190
per 10 s a sync is as slow as on a real portal: size `--contacts` to the time you have.
Printed besides: API calls per 1,000 records by part (list, activities, routing, writes, as the
connector counted them), the share of the allowed request rate used over the run (calls that count
in HubSpot's ten-second window: v4 association batch reads do not; calls / (rate x ceil(seconds / 10)),
the most a rolling window lets through in that time, its first burst included) and the share of 429
answers.
`--incremental N` (HubSpot, default 1% of the contacts, 0 to skip): after the full sync, N contacts are
edited and N others get a new page view, then an incremental sync runs; twice, because the first
incremental after a full sync also pages past that sync's own writes (search finds them; they are
skipped without reading activities). Its calls are printed per changed contact.
`--kill-worker`: two runs, each on a fresh sandbox and Redis: one undisturbed,
then one where a worker's process group is killed with -9 while it holds a page
and, if it takes one within 10 s, a lead's routing lock (`--kill-at SECONDS`
after the sync is enqueued, else a third of the way through), and a new worker
is started at once. The lost page is sent again when its claim
runs out (connector/runs.py, "Lost pages"), with the production visibility
timeout left as it is (`--visibility-timeout` to try another). Prints both run
times, tasks per hot lead and unscored leads, read back through the CRM's API:

    python bench/sync.py --kill-worker --kill-at 12 --contacts 20000 --rate 600
`--compare-tap` (HubSpot): afterwards, like for like, singer-io's tap-hubspot 4.5.0
(installed into its own virtualenv under ~/.cache/leadscore-bench, never into
this environment) and our read path (the adapter's contact list read, through
the official hubspot-api-client and the shared limiter, as the sync's pages
read) each read the same contacts with exactly the same properties
(TAP_PROPERTIES; the tap's v3 list read, 100 a call, which also asks for each
contact's associated tickets, companies and deals: no extra calls, longer
answers), in turn, TAP_ROUNDS
times, each from a window at rest; the median round is reported. Twice: on the
pipeline's sandbox at `--rate` (the Professional limit by default), then on a
second sandbox with the same people and no limit to speak of
(UNTHROTTLED_RATE). Prints, for each reader, records/s, its own CPU time (the
figure a shared machine moves least), API calls and 429s; the ratios
ours/theirs; and whether both read the same records and values (a digest of
ids and values). The full pipeline's records/s over the
tap's read is printed apart and labelled: it compares unlike work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.bootstrap import build_runtime  # noqa: E402
from connector.config import Settings  # noqa: E402
from connector.crm.hubspot import LIST_LIMIT, LIST_PAGES_PER_READ  # noqa: E402
from connector.localredis import private_redis_server  # noqa: E402
from connector.redisutil import text  # noqa: E402
from connector.runs import RunStore, RunView  # noqa: E402
from sandbox.server import Sandbox, admin_call  # noqa: E402

QUEUE = "leadscore"
TAP_VERSION = "4.5.0"
TAP_SDIST = Path(tempfile.gettempdir()) / "taph" / f"tap_hubspot-{TAP_VERSION}.tar.gz"  # a local copy, if any
TAP_PROPERTIES = ["email", "firstname", "lastname", "company", "country", "lifecyclestage"]
# --compare-tap's second sandbox: no ten-second limit to speak of (the connector's limiter there at 10,000,
# the most mappings/hubspot.yaml accepts; 100 calls for 10,000 contacts are far from either)
UNTHROTTLED_RATE = 1_000_000
# Each read is timed this many times, the tap's and ours in turn, and the median taken: one read of 10,000
# contacts lasts a second or so, and the machine is shared.
TAP_ROUNDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the pieces


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench/sync.py: redis-server is not on PATH (apt-get install redis-server).")
    with private_redis_server(exe) as url:
        yield url


def bench_mappings(target: Path, connector_rate: int) -> Path:
    """mappings/ with the portal allowance just under the sandbox's, and reps available around the clock."""
    shutil.copytree(ROOT / "mappings", target)
    hub = target / "hubspot.yaml"
    text = hub.read_text()
    if "  tier: enterprise\n" not in text:
        raise SystemExit("bench/sync.py: mappings/hubspot.yaml has no 'tier: enterprise' line to extend.")
    hub.write_text(text.replace("  tier: enterprise\n",
                                f"  tier: enterprise\n  requests_per_10s: {connector_rate}\n", 1)
                   .replace("  daily: 500000", "  daily: 50000000"))  # fmt: skip
    routing_path = target / "routing.yaml"
    routing = yaml.safe_load(routing_path.read_text())
    routing["defaults"]["hours"] = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                    "start": "00:00", "end": "24:00"}  # fmt: skip
    routing["defaults"]["capacity"] = None
    for rep in (routing.get("reps") or {}).values():
        for key in ("hours", "away", "capacity"):
            rep.pop(key, None)
    routing_path.write_text(yaml.safe_dump(routing, sort_keys=False, allow_unicode=True))
    return target


def admin(url: str, path: str, body: Any = None, ca: str | None = None) -> Any:
    return admin_call(url, path, body, ca)


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    peak_rss: int = 0  # bytes, main process + pool child together
    peak_child_rss: int = 0
    # The kernel's high-water mark of each process's RSS (VmHWM), by pid: the true peak, which sampling
    # could miss when a page's heaviest moment is shorter than the sampling interval (so far they agree).
    # Main and child are added as the sampled figure adds them, though their peaks may not coincide.
    hwm: dict[int, int] = field(default_factory=dict)

    def ready(self) -> bool:
        return " ready." in self.log_path.read_text(errors="replace")

    def sample(self) -> None:
        try:
            main = psutil.Process(self.proc.pid)
            children = main.children(recursive=True)
            child_rss = sum(c.memory_info().rss for c in children)
            total = main.memory_info().rss + child_rss
        except psutil.Error:
            return
        self.peak_rss = max(self.peak_rss, total)
        self.peak_child_rss = max(self.peak_child_rss, child_rss)
        for pid in (main.pid, *(c.pid for c in children)):
            if (mark := high_water(pid)) is not None:
                self.hwm[pid] = max(self.hwm.get(pid, 0), mark)

    @property
    def replaced(self) -> int:
        """How many times the pool child was replaced (tasks/app.py, _bound_pool), as the samples saw it."""
        return max(0, sum(1 for pid in self.hwm if pid != self.proc.pid) - 1)

    def high_water_marks(self) -> tuple[int, int]:
        """(main process's VmHWM + its largest pool child's, that child's) in bytes; (0, 0) where unknown."""
        main = self.hwm.get(self.proc.pid, 0)
        child = max((v for pid, v in self.hwm.items() if pid != self.proc.pid), default=0)
        return (main + child if main and child else 0), child


def high_water(pid: int) -> int | None:
    """A process's peak RSS as the kernel kept it (VmHWM in /proc/PID/status, Linux), in bytes."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def start_worker(name: str, env: dict[str, str], tmp: Path) -> Worker:
    log_path = tmp / f"{name}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=prefork", "--concurrency=1",
             "-Q", QUEUE, "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "INFO",
             "-n", f"{name}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return Worker(name, proc, log_path)


def wait_ready(workers: list[Worker], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for w in workers:
        while not w.ready():
            if w.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(w.log_path.read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(f"bench/sync.py: worker {w.name} did not start:\n{tail}")
            time.sleep(0.1)


def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(10)


class Sampler:
    """Samples every worker's RSS a few times a second until stopped."""

    def __init__(self, workers: list[Worker], every: float = 0.25) -> None:
        self.workers = workers
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for w in list(self.workers):
                w.sample()
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- our pipeline


@dataclass
class Result:
    crm: str
    contacts: int
    workers: int
    seconds: float
    view: RunView
    stats: dict[str, Any]
    rss: list[tuple[str, int, int]]  # name, peak bytes (main + child), peak child bytes
    hwm: list[tuple[str, int, int]]  # the same from the kernel's high-water marks (VmHWM)
    killed: dict[str, Any] = field(default_factory=dict)
    tap: dict[str, Any] = field(default_factory=dict)
    rate: int = 190
    incremental: list[dict[str, Any]] = field(default_factory=list)
    first_written_s: float | None = None  # when the first score was written (the progress loop's 0.1 s steps)
    replaced: dict[str, int] = field(default_factory=dict)  # worker -> times its pool child was replaced

    @property
    def records(self) -> int:
        return self.view.count("read")

    def figures(self) -> dict[str, Any]:
        calls = int(self.stats.get("total", 0))
        out: dict[str, Any] = {
            "crm": self.crm,
            "contacts": self.contacts,
            "records": self.records,
            "workers": self.workers,
            "status": self.view.status,
            "seconds": round(self.seconds, 2),
            "first_written_s": None if self.first_written_s is None else round(self.first_written_s, 1),
            "records_per_s": round(self.records / self.seconds, 1) if self.seconds else 0.0,
            "api_calls": calls,
            "api_calls_per_1000": round(calls / max(1, self.records) * 1000, 1),
            "rate_limited": int(self.stats.get("rate_limited", 0)),
            "written": self.view.count("written"),
            "hot": self.view.count("hot"),
            "assigned": self.view.count("assigned"),
            "failed": self.view.count("failed"),
            "peak_rss_mb": round(max((r[1] for r in self.rss), default=0) / 2**20, 1),
            "peak_rss_mb_per_worker": {name: round(total / 2**20, 1) for name, total, _ in self.rss},
            "peak_child_rss_mb_per_worker": {name: round(child / 2**20, 1) for name, _, child in self.rss},
            "hwm_mb_per_worker": {name: round(total / 2**20, 1) for name, total, _ in self.hwm},
            "hwm_child_mb_per_worker": {name: round(child / 2**20, 1) for name, _, child in self.hwm},
            "pool_child_replaced_per_worker": dict(self.replaced),
        }
        out.update(rate_figures(self.stats, self.seconds, self.rate))
        out["calls_per_1000_by_part"] = parts_per_1000(self.view, max(1, self.records))
        out["calls_per_1000_by_endpoint"] = {
            k: round(n / max(1, self.records) * 1000, 1) for k, n in sorted(self.stats.get("calls", {}).items())
        }
        if self.incremental:
            out["incremental"] = self.incremental
        if self.killed:
            out["kill_worker"] = self.killed
        if self.tap:
            out["tap_hubspot"] = self.tap
            tap_rps = ((self.tap.get("at_rate") or {}).get("tap") or {}).get("records_per_s")
            if tap_rps:
                # unlike work: our whole pipeline (activities, scoring, writes, routing) against the tap's read
                out["ratio_pipeline_records_per_s_over_tap_read"] = round(out["records_per_s"] / tap_rps, 3)
        return out


PARTS = ("list", "activities", "routing", "writes")
# Calls HubSpot does not count in its ten-second window (sandbox.hubspot.TEN_SECOND_EXEMPT)
WINDOW_EXEMPT = ("POST /crm/v4/associations/{from_type}/{to_type}/batch/read",)


def parts_per_1000(view: RunView, records: int) -> dict[str, float]:
    return {part: round(view.count(f"calls:{part}") / records * 1000, 1) for part in PARTS}


def rate_figures(stats: dict[str, Any], seconds: float, rate: int) -> dict[str, Any]:
    """The share of the allowed request rate used over `seconds`, and of 429 answers among all calls."""
    total = int(stats.get("total", 0))
    exempt = sum(int(stats.get("calls", {}).get(k, 0)) for k in WINDOW_EXEMPT)
    # A rolling ten-second window lets through at most `rate` calls in any ten seconds, so a run of
    # `seconds` can make at most rate * ceil(seconds / 10) of them (a full window's burst at the start
    # included); seconds * rate / 10 would read more than 100 % on a run of under a minute.
    allowed = rate * math.ceil(seconds / 10) if seconds > 0 else 0
    return {
        "window_calls": total - exempt,
        "rate_use_pct": round((total - exempt) / allowed * 100, 1) if allowed else 0.0,
        "rate_limited_pct": round(int(stats.get("rate_limited", 0)) / max(1, total) * 100, 2),
    }


def wait_run(runs: RunStore, run_id: str, t0: float, timeout: float, quiet: bool) -> RunView:
    last_print = 0.0
    while True:
        view = runs.get(run_id)
        if view is not None and view.finished:
            return view
        now = time.perf_counter()
        if now - last_print > 10 and view is not None:
            say(f"  {now - t0:6.1f} s  pages {view.count('pages_done')}/{view.count('pages_total')}  "
                f"read {view.count('read'):,}", quiet)  # fmt: skip
            last_print = now
        if now - t0 > timeout:
            raise SystemExit(f"bench/sync.py: the sync did not finish within {timeout} s.")
        time.sleep(0.1)


def small_change(sb: Sandbox, n: int, offset: int, contacts: int) -> list[str]:
    """n contacts edited by someone (a job title) and n others with a new page view; their ids."""
    import httpx

    edited = [str((offset + 7 * k) % contacts + 1) for k in range(n)]
    viewed = [str((offset + 7 * k + 3) % contacts + 1) for k in range(n)]
    headers = {"Authorization": f"Bearer {sb.hubspot_token}"}
    with httpx.Client(base_url=sb.hubspot_url, headers=headers, timeout=60) as http:
        for k in range(0, n, 100):
            http.post("/crm/v3/objects/contacts/batch/update", json={"inputs": [
                {"id": i, "properties": {"jobtitle": f"Head of Operations {offset}"}} for i in edited[k:k + 100]
            ]}).raise_for_status()  # fmt: skip
        for i in viewed:
            http.post("/__sandbox__/activities", json={"contact": i, "kind": "page_view",
                                                       "attrs": {"url": "/pricing", "title": "Pricing"}})  # fmt: skip
        deadline = time.monotonic() + 60
        while http.get("/__sandbox__/search").json().get("pending") and time.monotonic() < deadline:
            time.sleep(0.2)
    return sorted(set(edited) | set(viewed))


def run_incremental(
    args: argparse.Namespace, env: dict[str, str], runs: RunStore, sb: Sandbox, offset: int, quiet: bool
) -> dict[str, Any]:
    changed = small_change(sb, args.incremental, offset, args.contacts)
    # the saved cursor stays SEARCH_LAG_SECONDS behind the previous run's start: let that pass
    time.sleep(61)
    admin(sb.hubspot_url, "/__sandbox__/stats/reset", {})
    say(f"incremental sync after changing {len(changed)} contacts ...", quiet)
    t0 = time.perf_counter()
    enq = subprocess.run([sys.executable, "-m", "connector.cli", "sync", "--crm", "hubspot"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if enq.returncode != 0:
        raise SystemExit(f"bench/sync.py: leadscore sync failed: {enq.stderr.strip()}")
    run_id = enq.stdout.split(" sync ", 1)[1].split()[0]
    view = wait_run(runs, run_id, t0, args.timeout, quiet)
    seconds = time.perf_counter() - t0
    stats = admin(sb.hubspot_url, "/__sandbox__/stats", None)
    calls = int(stats["total"])
    return {
        "changed": len(changed),
        "status": view.status,
        "seconds": round(seconds, 1),
        "read": view.count("read"),
        "written": view.count("written"),
        "api_calls": calls,
        "api_calls_per_changed": round(calls / max(1, len(changed)), 2),
        "calls_by_part": {part: view.count(f"calls:{part}") for part in PARTS},
        **rate_figures(stats, seconds, args.rate),
    }


def connector_rate_for(rate: int) -> int:
    """The connector's limiter: just under the sandbox's allowance."""
    return max(1, rate - max(1, rate // 50))


def run_pipeline(args: argparse.Namespace, tmp: Path, url: str, sb: Sandbox, quiet: bool) -> Result:
    connector_rate = connector_rate_for(args.rate)
    mdir = bench_mappings(tmp / "mappings", connector_rate)
    api_url, ca = (sb.hubspot_url, None) if args.crm == "hubspot" else (sb.salesforce_url, sb.ca_cert)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    # The workers are given the benchmarked CRM's account only, as a deployment for one CRM is: what a
    # worker is configured for sets the bound on its pool process's memory (tasks/app.py, POOL_GROWTH_MB).
    env.update(REDIS_URL=url, LEADSCORE_MAPPINGS=str(mdir), PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    if args.crm == "hubspot":
        env.update(HUBSPOT_BASE_URL=sb.hubspot_url, HUBSPOT_ACCESS_TOKEN=sb.hubspot_token)
    else:
        env.update(SALESFORCE_INSTANCE_URL=sb.salesforce_url, SALESFORCE_ACCESS_TOKEN=sb.salesforce_token,
                   SALESFORCE_CA_BUNDLE=sb.ca_cert)  # fmt: skip
    if args.kill_worker and args.visibility_timeout is not None:
        env["LEADSCORE_VISIBILITY_TIMEOUT"] = str(args.visibility_timeout)

    # `leadscore setup`: the HubSpot properties or the Salesforce fields (Tooling API)
    settings = Settings(redis_url=url, redis_url_given=True, mappings_dir=mdir, hubspot_base_url=sb.hubspot_url,
                        hubspot_access_token=sb.hubspot_token, salesforce_instance_url=sb.salesforce_url,
                        salesforce_access_token=sb.salesforce_token, salesforce_ca_bundle=Path(sb.ca_cert))  # fmt: skip
    rt = build_runtime(settings, namespace="bench-setup")
    try:
        rt.adapter(args.crm).setup()
        problems = rt.adapter(args.crm).check()
        if problems:
            raise SystemExit(f"bench/sync.py: the sandbox is not ready: {problems}")
    finally:
        rt.close()

    # setup's calls went through another namespace's limiter: let them leave the portal's ten-second
    # window before the workers start, or the first seconds of the sync would meet 429s that a real
    # portal at rest would not give
    setup_done = time.monotonic()
    workers = [start_worker(f"bench{i}", env, tmp) for i in range(args.workers)]
    client = redis.Redis.from_url(url)
    runs = RunStore(client)
    killed: dict[str, Any] = {}
    incremental: list[dict[str, Any]] = []
    first_written: float | None = None
    try:
        wait_ready(workers)
        time.sleep(max(0.0, 10.5 - (time.monotonic() - setup_done)))
        admin(api_url, "/__sandbox__/stats/reset", {}, ca)
        say(f"{args.workers} worker(s) ready; syncing {args.contacts:,} {args.crm} people ...", quiet)
        with Sampler(workers):
            t0 = time.perf_counter()
            enq = subprocess.run([sys.executable, "-m", "connector.cli", "sync", "--crm", args.crm, "--full"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # fmt: skip
            if enq.returncode != 0:
                raise SystemExit(f"bench/sync.py: leadscore sync failed: {enq.stderr.strip()}")
            run_id = enq.stdout.split(" sync ", 1)[1].split()[0]
            per_page = LIST_LIMIT * LIST_PAGES_PER_READ if args.crm == "hubspot" else 2000
            expected_pages = max(1, args.contacts // per_page)
            last_print = 0.0
            while True:
                view = runs.get(run_id)
                now = time.perf_counter()
                if first_written is None and view is not None and view.count("written"):
                    first_written = now - t0  # a first HubSpot sync reads the look-back's web events first
                if view is not None and view.finished:
                    break
                if (
                    view is not None
                    and args.kill_worker
                    and not killed
                    and (
                        now - t0 >= args.kill_at
                        if args.kill_at is not None
                        else view.count("pages_done") >= max(1, expected_pages // 3)
                    )
                ):
                    killed = kill_and_replace(workers, env, tmp, view, now - t0, quiet)
                if now - last_print > 10 and view is not None:
                    say(f"  {now - t0:6.1f} s  pages {view.count('pages_done')}/{view.count('pages_total')}  "
                        f"read {view.count('read'):,}  assigned {view.count('assigned')}", quiet)  # fmt: skip
                    last_print = now
                if now - t0 > args.timeout:
                    raise SystemExit(f"bench/sync.py: the sync did not finish within {args.timeout} s.")
                time.sleep(0.1)
            seconds = time.perf_counter() - t0
        stats = admin(api_url, "/__sandbox__/stats", None, ca)
        if killed:
            # HubSpot tasks are created in batches: the sandbox counts each created task's subject
            killed["tasks_created"] = int(stats.get("property_writes", {}).get("tasks.hs_task_subject", 0)) + sum(
                n
                for k, n in stats["calls"].items()
                if k.startswith("POST ") and k.endswith("/sobjects/{sobject}")
            )
            killed["recovered_after_s"] = round(seconds - killed["at_s"], 1)
            killed["pages_resent"] = view.count("pages_resent")
        if args.crm == "hubspot" and args.incremental > 0 and view.status == "done" and not args.kill_worker:
            incremental = [run_incremental(args, env, runs, sb, k * 1000, quiet) for k in range(2)]
    finally:
        stop_workers(workers)
        client.close()
    rss = [(w.name, w.peak_rss, w.peak_child_rss) for w in workers]
    hwm = [(w.name, *w.high_water_marks()) for w in workers]
    return Result(args.crm, args.contacts, args.workers, seconds, view, stats, rss, hwm, killed, rate=args.rate,
                  incremental=incremental, first_written_s=first_written,
                  replaced={w.name: w.replaced for w in workers})


def held_page(log: str) -> bool:
    """Whether a worker has a page task received and not finished, from its log."""
    received = re.findall(r"Task leadscore\.sync\.page\[([0-9a-f-]+)\] received", log)
    finished = set(re.findall(r"Task leadscore\.sync\.page\[([0-9a-f-]+)\] (?:succeeded|failed|retry)", log))
    return any(t not in finished for t in received)


def kill_and_replace(
    workers: list[Worker], env: dict[str, str], tmp: Path, view: RunView, at: float, quiet: bool
) -> dict[str, Any]:
    victim = workers[0]
    # The hard case: dead with a page and a lead's routing lock in hand. Look for up to 10 s (frozen
    # while we look, so what we see is what it holds when it dies), then kill it whatever it holds.
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.proc.pid, signal.SIGSTOP)
        holding = held_page(victim.log_path.read_text(errors="replace"))
        locks = routing_locks_of(victim, env["REDIS_URL"])
        if (holding and locks) or time.monotonic() > deadline:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    say(f"  {at:6.1f} s  kill -9 {victim.name} ({'holding a page' if holding else 'between pages'}, "
        f"{locks} routing lock(s), pages done {view.count('pages_done')}); starting a new worker", quiet)  # fmt: skip
    fresh = start_worker(f"bench{len(workers)}", env, tmp)
    workers.append(fresh)
    wait_ready([fresh])
    return {"victim": victim.name, "at_s": round(at, 1), "pages_done_at_kill": view.count("pages_done"),
            "held_page": holding, "held_routing_locks": locks}  # fmt: skip


def routing_locks_of(worker: Worker, url: str) -> int:
    """Routing locks a worker's processes hold (a lock's token names its host and process: connector/leases.py)."""
    try:
        pids = {worker.proc.pid, *(c.pid for c in psutil.Process(worker.proc.pid).children(recursive=True))}
    except psutil.Error:
        return 0
    client = redis.Redis.from_url(url)
    try:
        tokens = [text(client.get(k) or "") for k in client.scan_iter("leadscore:routing:lock:*", count=1000)]
    finally:
        client.close()
    held = [t for t in tokens if t.count(":") >= 2 and t.split(":")[1].isdigit() and int(t.split(":")[1]) in pids]
    return len(held)


# --------------------------------------------------------------------------- what the CRM holds afterwards


def read_outcome(crm: str, sb: Sandbox, mdir: Path, url: str) -> dict[str, Any]:
    """Hot leads, tasks per hot lead and unscored leads, read back through the CRM's API."""
    settings = Settings(redis_url=url, redis_url_given=True, mappings_dir=mdir, hubspot_base_url=sb.hubspot_url,
                        hubspot_access_token=sb.hubspot_token, salesforce_instance_url=sb.salesforce_url,
                        salesforce_access_token=sb.salesforce_token, salesforce_ca_bundle=Path(sb.ca_cert))  # fmt: skip
    rt = build_runtime(settings, namespace="bench-probe")
    bands: dict[str, str | None] = {}
    try:
        adapter = rt.adapter(crm)  # type: ignore[arg-type]
        for stream in adapter.streams:
            cursor: str | None = None
            while True:
                page = adapter.read_page(stream, cursor, since=None)
                bands.update({lead.key: lead.written.get("band") or None for lead in page.leads})
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
    finally:
        rt.close()
    tasks = _hubspot_tasks(sb) if crm == "hubspot" else _salesforce_tasks(sb)
    hot = [k for k, band in bands.items() if band == "hot"]
    per_hot = [tasks.get(k, 0) for k in hot]
    return {
        "leads": len(bands),
        "unscored": sum(1 for band in bands.values() if band is None),
        "hot_leads": len(hot),
        "tasks": sum(tasks.values()),
        "tasks_per_hot_lead": {"0": per_hot.count(0), "1": per_hot.count(1), "2+": sum(n > 1 for n in per_hot)},
        "tasks_on_leads_not_hot": sum(n for k, n in tasks.items() if bands.get(k) != "hot"),
    }


def _api_call(client: httpx.Client, path: str, **kwargs: Any) -> Any:
    """GET (POST with `json`), waiting out the sandbox's 429s: the bench reads at the portal's rate too."""
    while True:
        resp = client.request("POST" if "json" in kwargs else "GET", path, **kwargs)
        if resp.status_code == 429:
            time.sleep(float(resp.headers.get("Retry-After") or 1))
            continue
        resp.raise_for_status()
        return resp.json()


def _hubspot_tasks(sb: Sandbox) -> dict[str, int]:
    """Tasks per contact ("hubspot:contact:ID"), through the tasks and associations APIs."""
    out: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {sb.hubspot_token}"}
    with httpx.Client(base_url=sb.hubspot_url, headers=headers, timeout=60) as api:
        ids: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            body = _api_call(api, "/crm/v3/objects/tasks", params=params)
            ids += [t["id"] for t in body["results"]]
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                break
        for i in range(0, len(ids), 1000):
            body = _api_call(api, "/crm/v4/associations/tasks/contacts/batch/read",
                            json={"inputs": [{"id": t} for t in ids[i : i + 1000]]})  # fmt: skip
            for row in body["results"]:
                for to in row["to"]:
                    key = f"hubspot:contact:{to['toObjectId']}"
                    out[key] = out.get(key, 0) + 1
    return out


def _salesforce_tasks(sb: Sandbox) -> dict[str, int]:
    """Tasks routing created (not started), per Lead or Contact ("salesforce:Type:ID")."""
    out: dict[str, int] = {}
    prefixes = {"00Q": "Lead", "003": "Contact"}
    headers = {"Authorization": f"Bearer {sb.salesforce_token}"}
    with httpx.Client(base_url=sb.salesforce_url, headers=headers, verify=sb.ca_cert, timeout=60) as api:
        body = _api_call(api, "/services/data/v59.0/query",
                        params={"q": "SELECT Id, WhoId FROM Task WHERE Status = 'Not Started'"})  # fmt: skip
        while True:
            for rec in body["records"]:
                who = rec.get("WhoId") or ""
                key = f"salesforce:{prefixes.get(who[:3], '?')}:{who}"
                out[key] = out.get(key, 0) + 1
            if body.get("done", True):
                break
            body = _api_call(api, body["nextRecordsUrl"])
    return out


def kill_worker_comparison(args: argparse.Namespace, quiet: bool) -> int:
    """`--kill-worker`: an undisturbed run, then a run with a worker killed, each on a fresh sandbox and Redis."""
    passes: dict[str, tuple[Result, dict[str, Any]]] = {}
    for name, kill in (("undisturbed", False), ("killed", True)):
        if not kill and args.undisturbed_s is not None:
            continue
        say(f"--- {name} run", quiet)
        pass_args = argparse.Namespace(**{**vars(args), "kill_worker": kill})
        with tempfile.TemporaryDirectory(prefix="leadscore-bench-") as tmp_s:
            tmp = Path(tmp_s)
            with redis_server(tmp) as url, Sandbox.start(contacts=args.contacts, seed=args.seed,
                                                         hubspot_rate=args.rate, hubspot_daily=50_000_000,
                                                         in_thread=False) as sb:  # fmt: skip
                result = run_pipeline(pass_args, tmp, url, sb, quiet)
                say(f"    reading the {args.crm} records and tasks back ...", quiet)
                passes[name] = (result, read_outcome(args.crm, sb, tmp / "mappings", url))
    killed, outcome = passes["killed"]
    base_s = passes["undisturbed"][0].seconds if "undisturbed" in passes else float(args.undisturbed_s)
    k = killed.killed
    figures = {
        "crm": args.crm,
        "contacts": args.contacts,
        "rate_per_10s": args.rate,
        "workers": args.workers,
        "undisturbed_s": round(base_s, 1),
        "undisturbed_measured": "undisturbed" in passes,
        "killed_s": round(killed.seconds, 1),
        "delay_s": round(killed.seconds - base_s, 1),
        "within_2_min": killed.seconds - base_s <= 120,
        "killed_status": killed.view.status,
        "kill_at_s": k.get("at_s"),
        "victim_held_page": k.get("held_page"),
        "victim_held_routing_locks": k.get("held_routing_locks"),
        "pages_resent": k.get("pages_resent"),
        "hot_leads": outcome["hot_leads"],
        "tasks_per_hot_lead": outcome["tasks_per_hot_lead"],
        "tasks_on_leads_not_hot": outcome["tasks_on_leads_not_hot"],
        "unscored": outcome["unscored"],
        "leads": outcome["leads"],
        "exactly_one_task_per_hot_lead": outcome["tasks_per_hot_lead"]["1"] == outcome["hot_leads"]
        and outcome["tasks_on_leads_not_hot"] == 0,
    }
    if "undisturbed" in passes:
        figures["undisturbed_outcome"] = passes["undisturbed"][1]
    if not quiet:
        f = figures
        print(f"{args.crm}: {args.contacts:,} people at {args.rate} requests per 10 s, {args.workers} worker(s)")
        print(f"  undisturbed run: {f['undisturbed_s']} s{'' if f['undisturbed_measured'] else ' (given)'}")
        print(f"  killed run:      {f['killed_s']} s ({f['killed_status']}), kill -9 at {f['kill_at_s']} s "
              f"({'holding a page' if f['victim_held_page'] else 'between pages'}, "
              f"{f['victim_held_routing_locks']} routing lock(s)); "
              f"{f['delay_s']:+} s against undisturbed; pages sent again {f['pages_resent']}")  # fmt: skip
        t = f["tasks_per_hot_lead"]
        print(f"  hot leads {f['hot_leads']}: with one task {t['1']}, none {t['0']}, more than one {t['2+']}; "
              f"tasks on leads not hot {f['tasks_on_leads_not_hot']}")  # fmt: skip
        print(f"  unscored leads: {f['unscored']} of {f['leads']}")
    print(json.dumps(figures, sort_keys=True))
    ok = killed.view.status == "done" and figures["within_2_min"] and figures["exactly_one_task_per_hot_lead"]
    return 0 if ok and figures["unscored"] == 0 else 1


# --------------------------------------------------------------------------- tap-hubspot


TAP_RUNNER = textwrap.dedent(
    '''
    """Runs singer-io's tap-hubspot against the sandbox: contacts only, the given properties; counts RECORD
    messages and, after the clock stops, digests (id, property values) to show what was read."""
    import hashlib, json, sys, time
    import tap_hubspot
    from singer import metadata

    base_url, token, props, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
    tap_hubspot.BASE_URL = base_url
    tap_hubspot.CONFIG.update({"api_key": token, "start_date": "2000-01-01T00:00:00Z",
                               "select_fields_by_default": False})
    stream = next(s for s in tap_hubspot.STREAMS if s.tap_stream_id == "contacts")
    schema, mdata = tap_hubspot.load_discovered_schema(stream)
    md = metadata.to_map(mdata)
    md = metadata.write(md, (), "selected", True)
    for name in props:
        md = metadata.write(md, ("properties", "property_" + name), "selected", True)
    catalog = {"streams": [{"stream": "contacts", "tap_stream_id": "contacts", "schema": schema,
                            "metadata": metadata.to_list(md)}]}
    with open(out + ".config.json", "w") as f:
        json.dump({"api_key": token, "start_date": "2000-01-01T00:00:00Z", "select_fields_by_default": "false"}, f)
    with open(out + ".catalog.json", "w") as f:
        json.dump(catalog, f)

    class Counter:
        records = 0
        def __init__(self):
            self.chunks = []
        def write(self, text):
            self.records += text.count('"type": "RECORD"') + text.count('"type":"RECORD"')
            self.chunks.append(text)
            return len(text)
        def flush(self):
            pass

    ready = sys.stdin.readline()  # the bench resets the sandbox's counters after discovery
    counter = Counter()
    real = sys.stdout
    sys.stdout = counter
    sys.argv = ["tap-hubspot", "--config", out + ".config.json", "--properties", out + ".catalog.json"]
    t0, c0 = time.perf_counter(), time.process_time()
    tap_hubspot.main()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    sys.stdout = real
    rows = []
    for line in "".join(counter.chunks).splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        if msg.get("type") == "RECORD":
            rec = msg["record"]
            rows.append("\\t".join([str(rec["id"]), *(str(rec.get("property_" + p) or "") for p in props)]))
    digest = hashlib.sha256("\\n".join(sorted(rows)).encode()).hexdigest()[:16]
    with open(out, "w") as f:
        json.dump({"records": counter.records, "seconds": seconds, "cpu_s": cpu, "digest": digest, "rows": len(rows)},
                  f)
    '''
)


def read_digest(rows: list[dict[str, Any]]) -> str:
    """The same digest as TAP_RUNNER's: ids and the compared properties' values, sorted."""
    import hashlib

    lines = ["\t".join([str(r["id"]), *(str((r.get("properties") or {}).get(p) or "") for p in TAP_PROPERTIES)])
             for r in rows]  # fmt: skip
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def tap_python(quiet: bool) -> Path:
    """The python of a virtualenv holding tap-hubspot (created on first use, outside this environment)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "leadscore-bench"
    venv = cache / f"tap-hubspot-{TAP_VERSION}"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import tap_hubspot"], capture_output=True,
                                          check=False).returncode == 0:  # fmt: skip
        return python
    say(f"installing tap-hubspot {TAP_VERSION} into {venv} (its own virtualenv) ...", quiet)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    source = str(TAP_SDIST) if TAP_SDIST.exists() else f"tap-hubspot=={TAP_VERSION}"
    subprocess.run([python, "-m", "pip", "install", "-q", source], check=True, stdout=subprocess.DEVNULL)
    return python


def quiet_window(rate: int) -> None:
    """Let the portal's ten-second window empty: each read starts as on a portal at rest."""
    if rate < UNTHROTTLED_RATE:
        time.sleep(10.5)


def run_tap(sb: Sandbox, tmp: Path, rate: int, quiet: bool) -> dict[str, Any]:
    """tap-hubspot reads the contacts with TAP_PROPERTIES: its records/s (discovery left out) and API calls."""
    python = tap_python(quiet)
    runner = tmp / "tap_runner.py"
    runner.write_text(TAP_RUNNER)
    out = tmp / f"tap_result-{time.monotonic_ns()}.json"
    catalog = Path(f"{out}.catalog.json")
    proc = subprocess.Popen(
        [python, str(runner), sb.hubspot_url, sb.hubspot_token, ",".join(TAP_PROPERTIES), str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    # discovery (the properties endpoint) happens before the tap reads stdin; count only the sync
    deadline = time.monotonic() + 60
    while not catalog.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read() if proc.stderr else ""
            return {"error": f"tap-hubspot did not get through discovery: {err.strip()[-2000:]}"}
        time.sleep(0.05)
    quiet_window(rate)
    admin(sb.hubspot_url, "/__sandbox__/stats/reset", {})
    _, err = proc.communicate("go\n")
    stats = admin(sb.hubspot_url, "/__sandbox__/stats")
    if proc.returncode != 0 or not out.exists():
        return {"error": f"tap-hubspot failed ({proc.returncode}): {err.strip()[-2000:]}", "calls": stats["calls"]}
    result = json.loads(out.read_text())
    records, seconds = int(result["records"]), float(result["seconds"])
    return {
        "records": records,
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds, 1) if seconds else 0.0,
        "cpu_s": round(float(result["cpu_s"]), 3),
        "api_calls": int(stats["total"]),
        "rate_limited": int(stats["rate_limited"]),
        "digest": result["digest"],
        "calls": stats["calls"],
    }


def run_our_read(sb: Sandbox, url: str, tmp: Path, rate: int, connector_rate: int) -> dict[str, Any]:
    """Our read path on the tap's terms: the adapter's contact list read (the official client's contacts
    get_page, 100 a call, through the shared limiter at `connector_rate`, parsed into Leads), asking for
    exactly TAP_PROPERTIES. One thread, no activities, no scoring, no writes."""
    import redis as redis_lib

    from connector.crm.hubspot import HubSpotAdapter
    from connector.mappings.hubspot import load_hubspot_mapping

    mdir = bench_mappings(tmp / f"read-mappings-{time.monotonic_ns()}", connector_rate)
    mapping = load_hubspot_mapping(mdir / "hubspot.yaml")
    client = redis_lib.Redis.from_url(url)
    adapter = HubSpotAdapter(base_url=sb.hubspot_url, token=sb.hubspot_token, mapping=mapping, redis=client,
                             account=f"bench-read-{time.monotonic_ns()}")  # fmt: skip
    quiet_window(rate)
    admin(sb.hubspot_url, "/__sandbox__/stats/reset", {})
    rows: list[Any] = []
    records, cursor, started, cpu0 = 0, None, time.perf_counter(), time.process_time()
    try:
        while True:
            # the list read of the sync's pages (read_page), with the tap's properties instead of the mapping's
            page = adapter._list_page(cursor, list(TAP_PROPERTIES), rows)
            records += len(page.leads)
            cursor = page.next_cursor
            if cursor is None:
                break
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    finally:
        adapter.close()
        client.close()
    stats = admin(sb.hubspot_url, "/__sandbox__/stats")
    return {
        "records": records,
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds, 1) if seconds else 0.0,
        "cpu_s": round(cpu, 3),
        "api_calls": int(stats["total"]),
        "rate_limited": int(stats["rate_limited"]),
        "digest": read_digest(rows),
    }


def compare_reads(
    sb: Sandbox, url: str, tmp: Path, sandbox_rate: int, connector_rate: int, quiet: bool
) -> dict[str, Any]:
    """tap-hubspot and our read path in turn, TAP_ROUNDS times, on one sandbox at one rate, each read from a
    window at rest; the median round of each."""
    label = f"{sandbox_rate:,} requests per 10 s"
    taps: list[dict[str, Any]] = []
    ours_all: list[dict[str, Any]] = []
    for k in range(1, TAP_ROUNDS + 1):
        say(f"round {k}/{TAP_ROUNDS} at {label}: tap-hubspot {TAP_VERSION}, then our read path, the contacts with "
            f"{', '.join(TAP_PROPERTIES)} ...", quiet)  # fmt: skip
        taps.append(run_tap(sb, tmp, sandbox_rate, quiet))
        if "error" in taps[-1]:
            return {"rate_per_10s": sandbox_rate, "tap": taps[-1]}
        ours_all.append(run_our_read(sb, url, tmp, sandbox_rate, connector_rate))
    tap, ours = median_round(taps), median_round(ours_all)
    tap["rounds_records_per_s"] = [r["records_per_s"] for r in taps]
    ours["rounds_records_per_s"] = [r["records_per_s"] for r in ours_all]
    tap["same_every_round"] = len({(r["records"], r["digest"], r["api_calls"]) for r in taps}) == 1
    ours["same_every_round"] = len({(r["records"], r["digest"], r["api_calls"]) for r in ours_all}) == 1
    return {
        "rate_per_10s": sandbox_rate,
        "connector_limiter_per_10s": connector_rate,
        "tap": tap,
        "ours": ours,
        "same_records": tap["records"] == ours["records"] and tap["digest"] == ours["digest"]
        and tap["same_every_round"] and ours["same_every_round"],
        "ratio_records_per_s": round(ours["records_per_s"] / tap["records_per_s"], 3) if tap["records_per_s"] else None,
        "ratio_api_calls": round(ours["api_calls"] / tap["api_calls"], 3) if tap["api_calls"] else None,
        "ratio_cpu_s": round(ours["cpu_s"] / tap["cpu_s"], 3) if tap["cpu_s"] else None,
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median records/s."""
    return dict(sorted(rounds, key=lambda r: float(r["records_per_s"]))[len(rounds) // 2])


def run_tap_comparison(args: argparse.Namespace, sb: Sandbox, url: str, tmp: Path, quiet: bool) -> dict[str, Any]:
    """--compare-tap: like for like at --rate on the pipeline's sandbox, then on an unthrottled one."""
    try:
        tap_python(quiet)
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"version": TAP_VERSION, "error": f"tap-hubspot {TAP_VERSION} could not be installed: {exc}"}
    out: dict[str, Any] = {"version": TAP_VERSION, "properties": TAP_PROPERTIES}
    out["at_rate"] = compare_reads(sb, url, tmp, args.rate, connector_rate_for(args.rate), quiet)
    say(f"starting an unthrottled sandbox with the same {args.contacts:,} people (seed {args.seed}) ...", quiet)
    with Sandbox.start(contacts=args.contacts, seed=args.seed, hubspot_rate=UNTHROTTLED_RATE,
                       hubspot_daily=50_000_000, in_thread=False) as fast:  # fmt: skip
        out["unthrottled"] = compare_reads(fast, url, tmp, UNTHROTTLED_RATE, 10_000, quiet)
    return out


def without_call_lists(tap: dict[str, Any]) -> dict[str, Any]:
    """The comparison for the JSON line: the per-endpoint call lists left out."""
    out: dict[str, Any] = {}
    for key, value in tap.items():
        if isinstance(value, dict):
            value = {k: ({n: x for n, x in v.items() if n != "calls"} if isinstance(v, dict) else v)
                     for k, v in value.items()}  # fmt: skip
        out[key] = value
    return out


def print_tap(t: dict[str, Any], figures: dict[str, Any]) -> None:
    if "error" in t:
        print(f"  tap-hubspot: {t['error']}")
        return
    print(f"  like for like, contacts with {', '.join(t['properties'])} (each read from a window at rest):")
    for key, what in (("at_rate", "the sandbox's limit (rate-limited)"), ("unthrottled", "unthrottled")):
        c = t.get(key) or {}
        if "error" in c.get("tap", {}):
            print(f"    {what}: tap-hubspot: {c['tap']['error']}")
            continue
        if not c:
            continue
        print(f"    at {c['rate_per_10s']:,} requests per 10 s, {what}:")
        for side, name in (("tap", f"tap-hubspot {t['version']}"), ("ours", "our read path")):
            r = c[side]
            rounds = ", ".join(str(x) for x in r.get("rounds_records_per_s", []))
            print(f"      {name:<18} {r['records']:,} records in {r['seconds']} s = {r['records_per_s']} records/s "
                  f"(median of {rounds}), client CPU {r['cpu_s']} s, API calls {r['api_calls']:,}, "
                  f"429 answers {r['rate_limited']}")  # fmt: skip
        print(f"      ours/theirs: records/s {c['ratio_records_per_s']}, API calls {c['ratio_api_calls']}, "
              f"client CPU {c['ratio_cpu_s']}; "
              f"same records and values: {'yes' if c['same_records'] else 'NO'}")  # fmt: skip
        tap_calls = ", ".join(f"{n} {e}" for e, n in sorted(c["tap"].get("calls", {}).items()))
        print(f"      the tap's calls: {tap_calls}")
        if max(c["tap"]["api_calls"], c["ours"]["api_calls"]) <= c["rate_per_10s"]:
            print(f"      (each read fits in one ten-second window of {c['rate_per_10s']:,}: neither was held back "
                  "by the limit at this size)")  # fmt: skip
    if "ratio_pipeline_records_per_s_over_tap_read" in figures:
        print(f"  not like for like: our full pipeline's {figures['records_per_s']} records/s (read, activities, "
              f"scores, writes, routing) over the tap's read at the same rate: "
              f"{figures['ratio_pipeline_records_per_s_over_tap_read']}")  # fmt: skip


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crm", choices=("hubspot", "salesforce"), default="hubspot")
    p.add_argument("--contacts", type=int, default=10_000, help="people in the sandbox CRM")
    p.add_argument("--workers", type=int, default=4, help="celery worker processes (concurrency 1 each)")
    p.add_argument("--rate", type=int, default=190,
                   help="the sandbox's HubSpot requests per 10 s (default 190: HubSpot Professional)")
    p.add_argument("--incremental", type=int, default=None,
                   help="HubSpot: contacts changed (and as many viewing a page) before each of two incremental "
                        "syncs after the full one (default 1%% of --contacts; 0 skips them)")  # fmt: skip
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--kill-worker", action="store_true",
                   help="an undisturbed run, then one with a worker killed with -9 mid-page (compared)")
    p.add_argument("--kill-at", type=float, default=None, metavar="SECONDS",
                   help="with --kill-worker: kill this many seconds after the sync is enqueued "
                        "(default: a third of the way through)")
    p.add_argument("--undisturbed-s", type=float, default=None, metavar="SECONDS",
                   help="with --kill-worker: skip the undisturbed run and compare with this time")
    p.add_argument("--visibility-timeout", type=int, default=None,
                   help="with --kill-worker: the broker's visibility timeout in seconds (default: production's)")
    p.add_argument("--compare-tap", action="store_true", help="HubSpot: also run tap-hubspot on the same contacts")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = p.parse_args(argv)
    if args.compare_tap and args.crm != "hubspot":
        p.error("--compare-tap reads HubSpot: use it with --crm hubspot")
    if not 1 <= args.rate <= 10_000:
        p.error("--rate must be between 1 and 10,000 (the most mappings/hubspot.yaml accepts)")
    if args.incremental is None:
        args.incremental = max(10, args.contacts // 100) if args.crm == "hubspot" else 0
    if (args.kill_at is not None or args.undisturbed_s is not None) and not args.kill_worker:
        p.error("--kill-at and --undisturbed-s go with --kill-worker")
    if args.kill_worker and args.compare_tap:
        p.error("--kill-worker and --compare-tap are separate benchmarks: run them one at a time")
    quiet = args.json
    # stopped from outside: leave through the `finally` blocks, which stop the workers, the sandbox and Redis
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.kill_worker:
        return kill_worker_comparison(args, quiet)

    with tempfile.TemporaryDirectory(prefix="leadscore-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with redis_server(tmp) as url:
            say(f"starting the sandbox CRM with {args.contacts:,} people (rate {args.rate} per 10 s) ...", quiet)
            with Sandbox.start(contacts=args.contacts, seed=args.seed, hubspot_rate=args.rate,
                               hubspot_daily=50_000_000, in_thread=False) as sb:  # fmt: skip
                result = run_pipeline(args, tmp, url, sb, quiet)
                if args.compare_tap:
                    result.tap = run_tap_comparison(args, sb, url, tmp, quiet)
    figures = result.figures()
    if not quiet:
        f = figures
        print(f"{f['crm']}: {f['records']:,} records with {f['workers']} worker(s): {f['status']} in "
              f"{f['seconds']} s = {f['records_per_s']} records/s")  # fmt: skip
        print(f"  API calls {f['api_calls']:,} ({f['api_calls_per_1000']} per 1,000 records), "
              f"rate-limited answers {f['rate_limited']}")  # fmt: skip
        print(f"  written {f['written']:,}, hot {f['hot']:,}, assigned {f['assigned']:,}, failed {f['failed']}"
              + (f"; the first scores written after {f['first_written_s']} s" if f["first_written_s"] else ""))
        parts = ", ".join(f"{part} {n}" for part, n in f["calls_per_1000_by_part"].items())
        print(f"  calls per 1,000 records by part: {parts}")
        for endpoint, n in f["calls_per_1000_by_endpoint"].items():
            print(f"    {n:7.1f}  {endpoint}")
        print(f"  rate used: {f['rate_use_pct']} % of {result.rate} per 10 s ({f['window_calls']:,} calls in the "
              f"ten-second window), 429 answers {f['rate_limited_pct']} % of calls")  # fmt: skip
        for k, inc in enumerate(f.get("incremental", []), 1):
            print(f"  incremental {k} after {inc['changed']} changed contacts: {inc['status']} in {inc['seconds']} s, "
                  f"read {inc['read']}, written {inc['written']}, API calls {inc['api_calls']} "
                  f"({inc['api_calls_per_changed']} per changed contact; by part {inc['calls_by_part']})")
        for name, mb in f["peak_rss_mb_per_worker"].items():
            child, mark = f["peak_child_rss_mb_per_worker"][name], f["hwm_mb_per_worker"][name]
            print(f"  peak RSS {name}: {mb} MB (pool child {child} MB); "
                  f"high-water mark {mark} MB (pool child {f['hwm_child_mb_per_worker'][name]} MB); "
                  f"pool child replaced {f['pool_child_replaced_per_worker'].get(name, 0)} times")
        if result.killed:
            k = result.killed
            print(f"  killed {k['victim']} at {k['at_s']} s (pages done {k['pages_done_at_kill']}); run finished "
                  f"{k['recovered_after_s']} s later; tasks created {k['tasks_created']} for "
                  f"{f['assigned']} assignments")  # fmt: skip
        if result.tap:
            print_tap(result.tap, figures)
    line = {k: v for k, v in figures.items() if k != "tap_hubspot"}
    if result.tap:
        line["tap_hubspot"] = without_call_lists(result.tap)
    print(json.dumps(line, sort_keys=True))
    return 0 if result.view.status == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
