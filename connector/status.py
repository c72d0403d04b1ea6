"""`leadscore status`: what the connector is doing and has done today, read from Redis in one go.

Runs in progress and recent, per stream how far behind its cursor is, the broker's
queue depth, the workers seen, the API budget used today per CRM, hot leads and
assignments today per region and rep, webhooks accepted and rejected in the last hour.

Most figures are already in Redis (runs, cursors, limiters, the broker's lists);
the few that only existed as all-time counters are kept here by `Recorder` in
small expiring keys: per UTC day for leads and assignments, per minute for webhooks,
a last-seen time per worker. Only ids and counts are stored.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import redis

from connector.errors import UserError
from connector.learn.history import BacktestHistory
from connector.redisutil import text as _s
from connector.runs import RunView

if TYPE_CHECKING:
    from connector.bootstrap import Runtime

DAY_TTL_S = 3 * 86400
MINUTE_TTL_S = 2 * 3600
WORKER_SEEN_WINDOW_S = 600  # a worker not heard from in 10 minutes is not listed
WORKER_HEARTBEAT_S = 30.0
# The broker's queue (tasks/app.py task_default_queue) and kombu's keys for it on Redis:
# the list itself, one list per priority step, and the hash of delivered-but-unacknowledged tasks.
BROKER_QUEUE = "leadscore"
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED = "unacked"


def _day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")




class Recorder:
    """Keeps the figures of today and of the last hour that `status` shows. Never raises."""

    def __init__(self, client: redis.Redis, namespace: str = "leadscore") -> None:
        self.r = client
        self.ns = namespace

    def _day_key(self, now: float) -> str:
        return f"{self.ns}:status:day:{_day(now)}"

    def _incr(self, key: str, field: str, ttl: int) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(key, field, 1)
            pipe.expire(key, ttl)
            pipe.execute()
        except redis.RedisError:
            pass  # a status figure never breaks a sync or a webhook

    def hot_lead(self, crm: str, region: str | None, now: float) -> None:
        self._incr(self._day_key(now), f"hot|{crm}|{region or ''}", DAY_TTL_S)

    def assigned(self, crm: str, region: str | None, rep_id: str, now: float) -> None:
        self._incr(self._day_key(now), f"assigned|{crm}|{region or ''}|{rep_id}", DAY_TTL_S)

    def webhook(self, crm: str, outcome: str, now: float) -> None:
        self._incr(f"{self.ns}:status:minute:{int(now // 60)}", f"{crm}|{outcome}", MINUTE_TTL_S)

    def worker_seen(self, name: str, now: float) -> None:
        try:
            key = f"{self.ns}:status:workers"
            self.r.zadd(key, {name: now})
            self.r.zremrangebyscore(key, "-inf", now - WORKER_SEEN_WINDOW_S)
        except redis.RedisError:
            pass


# --------------------------------------------------------------------------- reading


def _run(v: RunView) -> dict[str, Any]:
    from connector.console import expected_records

    def when(name: str) -> str | None:
        raw = v.fields.get(name)
        return _iso(float(raw)) if raw else None

    return {
        "id": v.id,
        "status": v.status,
        "mode": v.fields.get("mode", ""),
        "started": when("started") or when("created"),
        "finished": when("finished"),
        "read": v.count("read"),
        "expected": expected_records(v),
        "scored": v.count("scored"),
        "written": v.count("written"),
        "failed": v.count("failed"),
        "hot": v.count("hot"),
        "assigned": v.count("assigned"),
        "message": v.fields.get("message", ""),
    }


def _queue(client: redis.Redis) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    pipe.llen(BROKER_QUEUE)
    for step in _PRIORITY_STEPS:
        pipe.llen(f"{BROKER_QUEUE}{_PRIORITY_SEP}{step}")
    pipe.hlen(_UNACKED)
    *lengths, unacked = pipe.execute()
    return {"queued": int(sum(lengths)), "unacked": int(unacked)}


def _workers(client: redis.Redis, ns: str, now: float) -> list[dict[str, Any]]:
    raw: list[tuple[Any, float]] = client.zrangebyscore(  # type: ignore[assignment]
        f"{ns}:status:workers", now - WORKER_SEEN_WINDOW_S, "+inf", withscores=True
    )
    return [{"name": _s(name), "seen_seconds_ago": round(max(0.0, now - seen), 1)} for name, seen in raw]


def _today(client: redis.Redis, ns: str, now: float) -> dict[str, dict[str, Any]]:
    raw: Mapping[Any, Any] = client.hgetall(f"{ns}:status:day:{_day(now)}")  # type: ignore[assignment]
    out: dict[str, dict[str, Any]] = {}
    for field, value in raw.items():
        kind, crm, region, *rest = _s(field).split("|")
        per = out.setdefault(crm, {"hot": {}, "assigned": {}})
        region = region or "(no region)"
        if kind == "hot":
            per["hot"][region] = per["hot"].get(region, 0) + int(value)
        elif kind == "assigned" and rest:
            reps = per["assigned"].setdefault(region, {})
            reps[rest[0]] = reps.get(rest[0], 0) + int(value)
    return out


def _webhooks(client: redis.Redis, ns: str, now: float) -> dict[str, dict[str, int]]:
    minute = int(now // 60)
    pipe = client.pipeline(transaction=False)
    for m in range(minute - 59, minute + 1):
        pipe.hgetall(f"{ns}:status:minute:{m}")
    out: dict[str, dict[str, int]] = {}
    for bucket in pipe.execute():
        for field, value in bucket.items():
            crm, _, outcome = _s(field).partition("|")
            per = out.setdefault(crm, {"accepted": 0, "rejected": 0})
            per[outcome] = per.get(outcome, 0) + int(value)
    return out


def _rep_names(rt: Runtime, crm: Any) -> dict[str, str]:
    try:
        return {r.id: r.name for r in rt.adapter(crm).list_reps()}
    except Exception:  # noqa: BLE001 - names are a nicety: without the CRM, status shows rep ids
        return {}


def collect_status(rt: Runtime, now: float, *, recent: int = 5, rep_names: bool = True) -> dict[str, Any]:
    """Everything `leadscore status` shows, as one JSON-ready object."""
    client = rt.redis
    try:
        client.ping()
    except redis.RedisError as exc:
        raise UserError(f"Redis cannot be reached ({type(exc).__name__}); set REDIS_URL to the workers' Redis.") \
            from None
    today = _today(client, rt.namespace, now)
    hooks = _webhooks(client, rt.namespace, now)
    crms: dict[str, Any] = {}
    for crm in rt.configured_crms:
        adapter = rt.adapter(crm)
        views = [v for v in (rt.runs.get(r) for r in rt.runs.recent(crm, recent)) if v is not None]
        # Every change before the newest successful run started has been read; the cursor itself may
        # be older (it is the last change seen, and a quiet CRM does not move it).
        done = [v for v in views if v.status == "done"]
        through = float(done[0].fields.get("started") or done[0].fields.get("created") or 0) if done else None
        streams: dict[str, Any] = {}
        for stream in adapter.streams:
            cursor = rt.runs.cursor(crm, stream)
            read_through = through if through is not None else cursor
            behind = None if read_through is None else round(max(0.0, now - read_through), 1)
            waiting = rt.retries.behind(crm, stream)  # records read but not written yet (connector/retry.py)
            if waiting.since is not None:
                behind = max(behind or 0.0, round(waiting.seconds(now), 1))
            streams[stream] = {
                "cursor": _iso(cursor),
                "read_through": _iso(read_through),
                "behind_seconds": behind,
                "retry_waiting": waiting.waiting,
                "retry_since": _iso(waiting.since),
            }
        used, limit, window = adapter.api_budget()
        day = today.get(crm, {"hot": {}, "assigned": {}})
        names = _rep_names(rt, crm) if rep_names and day["assigned"] else {}
        in_progress = [v.id for v in views if not v.finished]
        crms[crm] = {
            "runs": [_run(v) for v in views],
            "in_progress": in_progress,
            # what a running sync reads before its pages are scored (HubSpot: the look-back's web events)
            "preparing": adapter.preparing() if in_progress else None,
            "streams": streams,
            "api_budget": {"used": used, "limit": limit, "window": window},
            "hot_today": day["hot"],
            "assigned_today": {
                region: {names.get(rep, rep): n for rep, n in reps.items()}
                for region, reps in day["assigned"].items()
            },
            "webhooks_last_hour": hooks.get(crm, {"accepted": 0, "rejected": 0}),
            "backtest": BacktestHistory(client, rt.namespace).latest(crm),
        }
    return {
        "generated_at": _iso(now),
        "crms": crms,
        "queue": _queue(client),
        "workers": _workers(client, rt.namespace, now),
    }


# --------------------------------------------------------------------------- showing


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never synced"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def show_status(report: Mapping[str, Any], *, plain: bool) -> None:
    from connector.console import table

    crms: Mapping[str, Any] = report["crms"]
    runs = [
        [crm, r["id"], r["status"], r["mode"], r["started"] or "", r["finished"] or "",
         r["read"] if r["expected"] is None else f"{r['read']}/{r['expected']}", r["written"], r["failed"], r["hot"],
         r["assigned"]]
        for crm, c in crms.items() for r in c["runs"]
    ]
    if runs:
        table("runs (newest first)", ["CRM", "run", "status", "mode", "started", "finished", "read", "written",
                                      "failed", "hot", "assigned"], runs, plain=plain)
    else:
        print("runs: none yet")
    for crm, c in crms.items():
        if c.get("preparing"):
            print(f"{crm}: {c['preparing']}")
    table("streams", ["CRM", "stream", "changes read through", "behind", "cursor (last change seen)",
                      "waiting to be retried"],
          [[crm, s, v["read_through"] or "-", _ago(v["behind_seconds"]), v["cursor"] or "-",
            f"{v['retry_waiting']} since {v['retry_since']}" if v.get("retry_waiting") else "-"]
           for crm, c in crms.items() for s, v in c["streams"].items()], plain=plain)
    budget_rows = []
    for crm, c in crms.items():
        b = c["api_budget"]
        limit = b["limit"]
        share = f"{100 * b['used'] / limit:.0f}%" if limit else "-"
        budget_rows.append([crm, b["used"], limit if limit is not None else "-", share, b["window"]])
    table("API budget", ["CRM", "used", "limit", "share", "window"], budget_rows, plain=plain)
    today_rows = []
    for crm, c in crms.items():
        regions = sorted(set(c["hot_today"]) | set(c["assigned_today"]))
        for region in regions:
            reps = c["assigned_today"].get(region, {})
            today_rows.append([crm, region, c["hot_today"].get(region, 0), sum(reps.values()),
                               ", ".join(f"{name} {n}" for name, n in sorted(reps.items())) or "-"])
    if today_rows:
        table("today (UTC)", ["CRM", "region", "hot leads", "assigned", "per rep"], today_rows, plain=plain)
    else:
        print("today (UTC): no hot leads yet")
    q = report["queue"]
    hooks = ", ".join(f"{crm} {c['webhooks_last_hour']['accepted']} accepted / "
                      f"{c['webhooks_last_hour']['rejected']} rejected" for crm, c in crms.items())
    workers = report["workers"]
    print(f"queue: {q['queued']} task(s) waiting, {q['unacked']} being worked on")
    print(f"workers seen in the last {WORKER_SEEN_WINDOW_S // 60} min: {len(workers)}"
          + (" (" + ", ".join(f"{w['name']} {w['seen_seconds_ago']:.0f} s ago" for w in workers) + ")"
             if workers else ""))
    print(f"webhooks in the last hour: {hooks or 'none'}")
    for crm, c in crms.items():
        print(f"weekly backtest, {crm}: {_backtest_line(c.get('backtest'))}")


def _backtest_line(b: Mapping[str, Any] | None) -> str:
    if not b:
        return "not run yet (beat runs it on Mondays; or leadscore backtest)"
    when = _iso(b["at"])
    if "error" in b:
        return f"could not run at {when}: {b['error']}"
    hot = b["bands"].get("hot", {})
    rate = "-" if hot.get("rate") is None else f"{100 * hot['rate']:.0f}%"
    return (f"AUC {b['auc']:.3f} on {b['leads']:,} outcomes (base rate {100 * b['base_rate']:.0f}%, hot converted "
            f"{rate}), model {b['model']}, at {when}")
