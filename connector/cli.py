"""The `leadscore` command.

Every command exits non-zero with one clear sentence on bad input or missing
configuration; none prints a traceback for a user error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import redis

from connector.config import parse_moment
from connector.domain import CrmName
from connector.errors import ConfigError, LeadscoreError, StopSync, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}.")


def _crm_choice(value: str) -> str:
    if value not in ("hubspot", "salesforce", "both"):
        raise argparse.ArgumentTypeError(f"--crm must be hubspot, salesforce or both, not {value!r}")
    return value


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return n


def _moment(value: str) -> float | str:
    """`--at`: "now", or a date and time with its zone."""
    if value.strip().lower() == "now":
        return "now"
    try:
        return parse_moment(value, "--at")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date and time with its zone, such as 2026-11-23T10:00+01:00, nor 'now'"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="leadscore", description="Lead scoring and hot-lead routing for HubSpot and Salesforce.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="run a full sync on the built-in sandbox CRM and print what happened")
    d.add_argument("--crm", type=_crm_choice, default="both")
    d.add_argument("--contacts", type=_positive, default=10_000)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--workers", type=_positive, default=4, help="worker threads in the demo's own worker")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    d.add_argument("--at", type=_moment, default=None,
                   help="route as at this moment (ISO date and time with zone, or 'now'); default: the first "
                        "hour from now with the most reps in working hours")  # fmt: skip

    sub.add_parser("sandbox", help="run the sandbox CRM (HubSpot and Salesforce APIs) until stopped")

    sub.add_parser("check", help="validate mappings/ and the environment, and reach each configured CRM")
    sub.add_parser("setup", help="create the score properties in HubSpot; verify the Salesforce fields")

    y = sub.add_parser("sync", help="enqueue a sync")
    y.add_argument("--crm", type=_crm_choice, default=None, help="default: every configured CRM")
    y.add_argument("--full", action="store_true", help="read every record, not only the changed ones")
    y.add_argument("--wait", action="store_true", help="show progress until done; exit non-zero if it failed")

    e = sub.add_parser("explain", help="the score of one record, point by point")
    e.add_argument("--crm", choices=("hubspot", "salesforce"), required=True)
    e.add_argument("id")

    sub.add_parser("serve", help="the web process: webhooks, health, metrics")

    r = sub.add_parser("reps", help="rep availability: list, away, back")
    rsub = r.add_subparsers(dest="reps_command", metavar="ACTION", parser_class=_Parser)
    rsub.add_parser("list", help="reps by region with their availability now")
    a = rsub.add_parser("away", help="mark a rep out of office until a date")
    a.add_argument("email")
    a.add_argument("--until", required=True, help="YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)")
    b = rsub.add_parser("back", help="mark a rep back")
    b.add_argument("email")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if argv[:1] == ["sandbox"]:
            # the sandbox parses its own options (argparse's REMAINDER drops leading --options)
            from sandbox.server import main as sandbox_main

            return int(sandbox_main(argv[1:]))
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, StopSync) as exc:
        print(f"leadscore: {exc}", file=sys.stderr)
        return 1
    except LeadscoreError as exc:
        print(f"leadscore: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug, not a user error: still one line, no traceback
        print(f"leadscore: internal error ({type(exc).__name__}: {exc}); please report it", file=sys.stderr)
        return 2


# --- helpers -----------------------------------------------------------------------------------------


def _runtime() -> Any:
    from tasks.runtime import get_runtime

    return get_runtime()


def _crms(rt: Any, choice: str | None) -> list[CrmName]:
    configured = rt.configured_crms
    wanted: list[CrmName] = {
        "hubspot": ["hubspot"],
        "salesforce": ["salesforce"],
        "both": ["hubspot", "salesforce"],
    }.get(choice or "", configured)
    if not wanted:
        raise UserError(
            "no CRM is configured: set HUBSPOT_ACCESS_TOKEN, or SALESFORCE_INSTANCE_URL and SALESFORCE_ACCESS_TOKEN."
        )
    for crm in wanted:
        if crm not in configured:
            if crm == "hubspot":
                rt.settings.require_hubspot()
            else:
                rt.settings.require_salesforce()
    return wanted


def _load_mappings(mdir: Path) -> list[str]:
    """Load every mapping file; return the problems (one sentence each)."""
    from connector.engine import load_scoring
    from connector.mappings.hubspot import load_hubspot_mapping
    from connector.mappings.routing import load_routing
    from connector.mappings.salesforce import load_salesforce_mapping

    problems = []
    loaders: list[tuple[str, Callable[[Path], object]]] = [
        ("scoring.yaml", load_scoring),
        ("hubspot.yaml", load_hubspot_mapping),
        ("salesforce.yaml", load_salesforce_mapping),
        ("routing.yaml", load_routing),
    ]
    for name, loader in loaders:
        try:
            loader(mdir / name)
        except UserError as exc:
            problems.append(str(exc))
    return problems


# --- commands ----------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from tasks.beat import schedules

    rt = _runtime()
    settings = rt.settings
    problems = _load_mappings(settings.mappings_dir)
    ok_lines: list[str] = []
    try:
        rt.redis.ping()
        ok_lines.append(f"redis: reachable at {_redact(settings.redis_url)}")
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis is reported as one sentence
        problems.append(f"Redis at {_redact(settings.redis_url)} cannot be reached ({type(exc).__name__}); "
                        "set REDIS_URL to a running Redis.")
    if not rt.configured_crms:
        problems.append("no CRM is configured: set HUBSPOT_ACCESS_TOKEN, or SALESFORCE_INSTANCE_URL and "
                        "SALESFORCE_ACCESS_TOKEN.")
    for crm in rt.configured_crms:
        try:
            found = rt.adapter(crm).check()
        except UserError as exc:
            found = [str(exc)]
        problems += [f"{crm}: {p}" for p in found]
        if not found:
            ok_lines.append(f"{crm}: reachable, fields and scopes in place")
    try:
        for crm, sched in schedules(rt):
            ok_lines.append(f"schedule: {sched.describe(crm)}")
    except UserError as exc:
        problems.append(str(exc))
    for line in ok_lines:
        print(f"ok   {line}")
    for line in problems:
        print(f"FAIL {line}")
    if problems:
        print(f"{len(problems)} problem(s) to fix.", file=sys.stderr)
        return 1
    print("all checks passed.")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    rt = _runtime()
    failed = False
    for crm in _crms(rt, None):
        for line in rt.adapter(crm).setup():
            print(f"{crm}: {line}")
        if rt.adapter(crm).check():
            failed = True
    return 1 if failed else 0


def cmd_sync(args: argparse.Namespace) -> int:
    from tasks.sync import enqueue_run

    rt = _runtime()
    try:
        rt.redis.ping()
    except Exception as exc:  # noqa: BLE001 - reported as one sentence
        raise UserError(
            f"Redis cannot be reached ({type(exc).__name__}); set REDIS_URL to the workers' Redis."
        ) from None
    run_ids = []
    for crm in _crms(rt, args.crm):
        started = enqueue_run(crm, args.full)
        if started.skipped_for:
            print(f"{crm}: skipped: sync {started.skipped_for} is still running")
        else:
            print(f"{crm}: sync {started.run_id} enqueued ({'full' if args.full else 'incremental'})")
            run_ids.append(started.run_id)
    if not args.wait:
        return 0
    views = wait_for_runs(rt.runs, run_ids)
    return 0 if all(v.status == "done" for v in views) else 1


REDIS_PATIENCE_S = 60.0


def wait_for_runs(runs: Any, run_ids: list[str], timeout: float | None = None, quiet: bool = False) -> list[Any]:
    """Show a progress line until every run has finished; print each run's summary."""
    deadline = None if timeout is None else time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last_print = 0.0
    views: list[Any] = []
    unreachable_since: float | None = None
    while True:
        try:
            views = [runs.get(r) for r in run_ids]
        except redis.RedisError:
            # Redis restarting: keep asking for a while, then say so in one sentence
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > REDIS_PATIENCE_S:
                raise UserError(
                    f"Redis has not answered for {REDIS_PATIENCE_S:.0f} s, so the sync's progress is unknown; "
                    "check REDIS_URL and run the sync again."
                ) from None
            time.sleep(1)
            continue
        unreachable_since = None
        lost = [r for r, v in zip(run_ids, views, strict=True) if v is None]
        if lost:
            raise UserError(
                f"the state of sync {lost[0]} is gone (Redis was restarted or flushed); run the sync again: "
                "nothing is written twice."
            )
        line = "  ".join(_progress(v) for v in views if v is not None)
        now = time.monotonic()
        if not quiet and (tty or now - last_print > 5):
            print(("\r" if tty else "") + line + (" " * 8 if tty else ""), end="" if tty else "\n", file=sys.stderr)
            last_print = now
        if all(v is not None and v.finished for v in views):
            break
        if deadline is not None and now > deadline:
            raise UserError("the sync did not finish in time; is a worker running (celery -A tasks worker)?")
        time.sleep(0.2)
    if tty and not quiet:
        print(file=sys.stderr)
    if not quiet:
        for v in views:
            print(_summary(v))
    return views


def _progress(v: Any) -> str:
    total = v.count("pages_total")
    done = v.count("pages_done")
    width = 20
    filled = int(width * done / total) if total else 0
    return (f"{v.fields.get('crm')} [{'#' * filled}{'.' * (width - filled)}] pages {done}/{total} "
            f"read {v.count('read')} scored {v.count('scored')} written {v.count('written')} "
            f"assigned {v.count('assigned')}")


def _summary(v: Any) -> str:
    lines = [
        f"{v.fields.get('crm')} sync {v.id}: {v.status}"
        + (f" ({v.fields['message']})" if v.fields.get("message") else ""),
        f"  read {v.count('read')}, scored {v.count('scored')}, written {v.count('written')}, "
        f"unchanged {v.count('unchanged')}, hot {v.count('hot')}, assigned {v.count('assigned')}, "
        f"failed {v.count('failed')}, API calls {v.count('api_calls')}",
    ]
    for f in v.failures[:20]:
        lines.append(f"  failed: {f}")
    if len(v.failures) > 20:
        lines.append(f"  ... and {len(v.failures) - 20} more failures")
    return "\n".join(lines)


def cmd_explain(args: argparse.Namespace) -> int:
    rt = _runtime()
    _crms(rt, args.crm)
    adapter = rt.adapter(args.crm)
    now = time.time()
    for stream in adapter.streams:
        leads = adapter.get_leads(stream, [args.id])
        if leads:
            break
    else:
        raise UserError(f"no {args.crm} record has the id {args.id!r}.")
    lead = leads[0]
    adapter.load_activities(leads, now)
    print(f"{lead.key}")
    print(rt.model.explain(lead.profile, lead.activities, now))
    record = rt.router.routing_record(lead.key)
    if record:
        print("routing:")
        print(f"  {record}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from connector.web import serve

    return serve()


def cmd_reps(args: argparse.Namespace) -> int:
    from connector.routing import service

    rt = _runtime()
    router = rt.router
    if args.reps_command in ("away", "back"):
        _known_rep(rt, args.email)
    if args.reps_command == "away":
        until = _parse_until(args.until)
        service.set_away(router, args.email, until)
        shown = f"the end of {until} in the rep's time zone" if not isinstance(until, dt.datetime) else (
            until.strftime("%Y-%m-%d %H:%M UTC"))
        print(f"{args.email} is away until {shown}")
        return 0
    if args.reps_command == "back":
        service.set_back(router, args.email)
        print(f"{args.email} is back")
        return 0
    for line in service.list_reps_status(router, router.clock()):
        print(line)
    return 0


def _known_rep(rt: Any, who: str) -> None:
    """A typo must not leave the real rep receiving leads: the rep must exist somewhere we route to."""
    wanted = who.strip().lower()
    configured = {e.lower() for e in rt.router.config.reps}
    crms = _crms(rt, None)
    if wanted in configured:
        return
    for crm in crms:
        if any(wanted in (r.email.lower(), r.id.lower()) for r in rt.router.reps(crm)):
            return
    raise UserError(f"no rep has the e-mail or id {who!r} in {' or '.join(crms)} or mappings/routing.yaml.")


def _parse_until(value: str) -> dt.date | dt.datetime:
    """A plain date means away through that whole day in the rep's own time zone; a time is UTC."""
    try:
        return dt.date.fromisoformat(value) if len(value) == 10 else dt.datetime.strptime(
            value, "%Y-%m-%dT%H:%M").replace(tzinfo=dt.UTC)
    except ValueError:
        raise UserError(f"--until must be a date like 2026-12-24 or 2026-12-24T17:00 (UTC), not {value!r}.") from None


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


def cmd_demo(args: argparse.Namespace) -> int:
    from connector.demo import run_demo

    summary = run_demo(crm=args.crm, contacts=args.contacts, seed=args.seed, workers=args.workers,
                       progress=not args.json, at=args.at)
    if args.json:
        print(json.dumps(summary.as_dict(), sort_keys=True))
    else:
        print(summary.text())
    return 0 if summary.ok else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "check": cmd_check,
    "setup": cmd_setup,
    "sync": cmd_sync,
    "explain": cmd_explain,
    "serve": cmd_serve,
    "reps": cmd_reps,
}

if __name__ == "__main__":
    raise SystemExit(main())
