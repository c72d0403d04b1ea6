"""The `leadscore` command (click for commands and help, rich for what it shows).

Every command exits non-zero with one clear sentence on bad input or missing
configuration; none prints a traceback for a user error. Results go to stdout,
progress and errors to stderr; on a terminal summaries are tables and waits are
progress bars, elsewhere (or with `--json`) the output is plain.

Adding a command: a function here decorated with `@cli.command(help=...)` and its
options, whose body calls the command's own module (e.g. `connector.learn.commands`)
and returns the exit code. Options that several commands share are below
(`crm_option`, `JSON_OPTION`, `POSITIVE`).

This module is the outermost layer: it may import `tasks` (Celery), lazily and only
in the commands that drive workers (`sync`, `demo`).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from connector import console
from connector.config import parse_moment
from connector.domain import CrmName
from connector.errors import LeadscoreError, UserError

# --------------------------------------------------------------------------- option types


class WholeNumber(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A whole number, optionally at least `minimum`; the message is the argparse-era one."""

    name = "n"

    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if self.minimum is not None and n < self.minimum:
            self.fail(f"{value} must be at least {self.minimum}", param, ctx)
        return n


POSITIVE = WholeNumber(minimum=1)
WHOLE = WholeNumber()


class Moment(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """`--at`: "now", or a date and time with its zone, as epoch seconds."""

    name = "moment"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or str(value).strip().lower() == "now":
            return value if isinstance(value, float) else "now"
        try:
            return parse_moment(str(value), "--at")
        except ValueError:
            self.fail(
                f"{value!r} is not a date and time with its zone, such as 2026-11-23T10:00+01:00, nor 'now'", param, ctx
            )


def _crm_value(allowed: Sequence[str]) -> Callable[[click.Context, click.Parameter, Any], str | None]:
    def check(_ctx: click.Context, _param: click.Parameter, value: Any) -> str | None:
        if value is None or value in allowed:
            return value  # type: ignore[no-any-return]
        names = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise click.BadParameter(f"must be {names}, not {value!r}")

    return check


def crm_option(
    *, required: bool = False, both: bool = True, default: str | None = None, help_text: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    allowed = ("hubspot", "salesforce", "both") if both else ("hubspot", "salesforce")
    extra: dict[str, Any] = {} if default is None else {"default": default, "show_default": True}
    return click.option(
        "--crm", required=required, callback=_crm_value(allowed), metavar="|".join(allowed),
        help=help_text or ("which CRM" + ("" if required or default else " (default: every configured CRM)")),
        **extra,
    )


JSON_OPTION: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--json", "as_json", is_flag=True, help="print one JSON object instead of text"
)


class _Command(click.Command):
    """A command whose one-line help is listed whole, not cut at 45 characters."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return (self.short_help or self.help or "").strip().split("\n")[0]


class _Group(click.Group):
    """Commands listed in the order they are declared, like the README."""

    command_class = _Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def get_short_help_str(self, limit: int = 45) -> str:
        return (self.short_help or self.help or "").strip().split("\n")[0]


@click.group(
    cls=_Group,
    name="leadscore",
    help="Lead scoring and hot-lead routing for HubSpot and Salesforce.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def cli() -> None:
    pass


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=args, prog_name="leadscore", standalone_mode=False)
        return int(rv or 0)
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:  # --help
        return int(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except click.UsageError as exc:
        print(f"leadscore: {_usage_sentence(exc)}", file=sys.stderr)
        return 1
    except LeadscoreError as exc:
        print(f"leadscore: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug, not a user error: still one line, no traceback
        print(f"leadscore: internal error ({type(exc).__name__}: {exc}); please report it", file=sys.stderr)
        return 2


def _usage_sentence(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx else "leadscore"
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter) and exc.param is not None:
        name = exc.param.opts[0] if exc.param.opts else exc.param.name
        text = f"{where}: argument {name}: {exc.message}"
    else:
        message = exc.format_message().rstrip(".")
        text = f"{where}: {message[:1].lower()}{message[1:]}"
    return text.rstrip(".") + "."


# --------------------------------------------------------------------------- helpers


def _runtime() -> Any:
    from connector.bootstrap import build_runtime
    from connector.config import load_settings

    return build_runtime(load_settings())


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
            if str(exc) not in problems:  # scoring.yaml reads the custom fields of the CRM files too
                problems.append(str(exc))
    return problems


SANDBOX_EXTRA = ("trustme", "fakeredis")


def require_sandbox_extra(command: str) -> None:
    """`demo` and `sandbox` need the `sandbox` extra; say so in one sentence when it is missing."""
    missing = []
    for module in SANDBOX_EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(
            f"leadscore {command} needs the sandbox extra ({', '.join(missing)} missing): "
            "install it with pip install 'leadscore[sandbox]' (in a checkout: pip install -e '.[sandbox]')."
        )


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


# --------------------------------------------------------------------------- commands


@cli.command(help="Run a full sync on the built-in sandbox CRM and print what happened.")
@crm_option(default="both")
@click.option("--contacts", type=POSITIVE, default=10_000, show_default=True, help="people in each CRM")
@click.option("--seed", type=WHOLE, default=7, show_default=True, help="the same seed gives the same data")
@click.option("--workers", type=POSITIVE, default=4, show_default=True, help="worker threads in the demo's own worker")
@click.option("--at", "at", type=Moment(), default=None,
              help="route as at this moment (ISO date and time with zone, or 'now'); default: the first hour "
                   "from now with the most reps in working hours")  # fmt: skip
@JSON_OPTION
def demo(crm: str, contacts: int, seed: int, workers: int, at: float | str | None, as_json: bool) -> int:
    require_sandbox_extra("demo")
    from tasks.demo import run_demo  # the demo runs the real Celery tasks in this process

    summary = run_demo(crm=crm, contacts=contacts, seed=seed, workers=workers, progress=not as_json, at=at)
    if as_json:
        print(json.dumps(summary.as_dict(), sort_keys=True))
    else:
        summary.show(plain=not console.is_tty())
    return 0 if summary.ok else 1


@cli.command(
    help="Run the sandbox CRM (HubSpot and Salesforce APIs) until stopped; see leadscore sandbox --help.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def sandbox(options: tuple[str, ...]) -> int:
    # the sandbox parses its own options (the same parser `python -m sandbox.server` uses)
    require_sandbox_extra("sandbox")
    from sandbox.server import main as sandbox_main

    return int(sandbox_main(list(options)))


@cli.command(help="Validate mappings/ and the environment, and reach each configured CRM.")
def check() -> int:
    rt = _runtime()
    settings = rt.settings
    problems = _load_mappings(settings.mappings_dir)
    ok_lines: list[str] = []
    warnings: list[str] = []
    try:
        rt.redis.ping()
        ok_lines.append(f"redis: reachable at {_redact(settings.redis_url)}")
        from connector.persistence import redis_persistence

        kept = redis_persistence(rt.redis)
        (ok_lines if kept.level == "ok" else warnings).append(kept.sentence)
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
    warnings += _streams_behind(rt)
    try:
        ok_lines += [f"schedule: {rt.schedule(crm).describe(crm)}" for crm in rt.configured_crms]
    except UserError as exc:
        problems.append(str(exc))
    for line in ok_lines:
        print(f"ok   {line}")
    for line in warnings:
        print(f"WARN {line}")
    for line in problems:
        print(f"FAIL {line}")
    if problems:
        print(f"{len(problems)} problem(s) to fix.", file=sys.stderr)
        return 1
    print("all checks passed.")
    return 0


def _streams_behind(rt: Any) -> list[str]:
    """One warning per stream with records not written yet (connector/retry.py), oldest first."""
    from connector.retry import RETRY_EVERY_SECONDS
    from connector.status import _ago

    now = time.time()
    lines: list[str] = []
    for crm in rt.configured_crms:
        try:
            streams = rt.adapter(crm).streams
            found = [rt.retries.behind(crm, stream) for stream in streams]
        except Exception:  # noqa: BLE001, S112 - Redis or the mapping is already reported above
            continue
        for b in found:
            if not b.waiting or b.since is None:
                continue
            since = dt.datetime.fromtimestamp(b.since, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(
                f"{crm} {b.stream}: behind by {_ago(b.seconds(now))}: {b.waiting} record(s) not written yet, "
                f"waiting to be retried since {since} (last reason: {b.why or 'unknown'}); they are retried "
                f"every {RETRY_EVERY_SECONDS:.0f} s and by the next sync, and clear once the CRM accepts them."
            )
    return lines


@cli.command(help="Create the score fields in each configured CRM (idempotent) and say what was done.")
def setup() -> int:
    rt = _runtime()
    failed = False
    for crm in _crms(rt, None):
        for line in rt.adapter(crm).setup():
            print(f"{crm}: {line}")
        if rt.adapter(crm).check():
            failed = True
    return 1 if failed else 0


@cli.command(help="Enqueue a sync for the workers; with --wait, show progress until it is done.")
@crm_option()
@click.option("--full", is_flag=True, help="read every record, not only the changed ones")
@click.option("--wait", is_flag=True, help="show progress until done; exit non-zero if it failed")
def sync(crm: str | None, full: bool, wait: bool) -> int:
    from tasks.runtime import set_runtime
    from tasks.sync import enqueue_run  # the CLI's link to the workers' queue

    rt = _runtime()
    try:
        rt.redis.ping()
    except Exception as exc:  # noqa: BLE001 - reported as one sentence
        raise UserError(
            f"Redis cannot be reached ({type(exc).__name__}); set REDIS_URL to the workers' Redis."
        ) from None
    set_runtime(rt)
    run_ids = []
    for name in _crms(rt, crm):
        started = enqueue_run(name, full)
        if started.skipped_for:
            print(f"{name}: skipped: sync {started.skipped_for} is still running")
        else:
            print(f"{name}: sync {started.run_id} enqueued ({'full' if full else 'incremental'})")
            run_ids.append(started.run_id)
    sys.stdout.flush()
    if not wait:
        return 0
    views = console.wait_for_runs(rt.runs, run_ids, preparing=lambda crm: rt.adapter(crm).preparing())
    return 0 if all(v.status == "done" for v in views) else 1


@cli.command(help="The score of one record, point by point, as the engine computed it.")
@crm_option(required=True, both=False)
@click.argument("record_id", metavar="ID")
def explain(crm: CrmName, record_id: str) -> int:
    rt = _runtime()
    _crms(rt, crm)
    adapter = rt.adapter(crm)
    now = time.time()
    for stream in adapter.streams:
        leads = adapter.get_leads(stream, [record_id])
        if leads:
            break
    else:
        raise UserError(f"no {crm} record has the id {record_id!r}.")
    lead = leads[0]
    adapter.load_activities(leads, now)
    print(f"{lead.key}")
    print(rt.model.explain(lead.profile, lead.activities, now))
    from connector.learn.predict import explain_lines

    for line in explain_lines(rt, crm, lead, now):
        print(line)
    record = rt.router.routing_record(lead.key)
    if record:
        print("routing:")
        print(f"  {record}")
    return 0


@cli.command(help="Learn a conversion probability from past outcomes; print CV AUC, Brier, calibration.")
@crm_option(both=False)
@JSON_OPTION
def train(crm: CrmName | None, as_json: bool) -> int:
    from connector.learn.retrain import require_store, train_and_store
    from connector.learn.train import summary_lines

    rt = _runtime()
    crms = _crms(rt, crm)
    require_store(rt)
    found = {}
    for name in crms:
        if not as_json and console.is_tty(sys.stderr):
            print(f"{name}: reading outcomes and training ...", file=sys.stderr, flush=True)
        figures = train_and_store(rt, name)
        found[name] = figures.as_json()
        if not as_json:
            print(f"{name}: model {figures.model_version}")
            for line in summary_lines(figures):
                print(f"  {line}")
    if as_json:
        # one CRM: its object; every configured CRM (no --crm, both configured): one object per CRM
        print(json.dumps(found[crms[0]] if len(crms) == 1 else found, sort_keys=True))
    return 0


@cli.command(help="The web process: webhooks, health, metrics.")
def serve() -> int:
    from connector.web import serve as serve_web

    return serve_web()


@cli.command(help="Runs in progress and recent, streams behind, queue, API budget, hot leads today.")
@JSON_OPTION
def status(as_json: bool) -> int:
    from connector.status import collect_status, show_status

    rt = _runtime()
    _crms(rt, None)  # nothing to report on without a CRM: one sentence, exit 1
    report = collect_status(rt, time.time())
    if as_json:
        print(json.dumps(report, sort_keys=True, default=str))
    else:
        show_status(report, plain=not console.is_tty())
    return 0


# --------------------------------------------------------------------------- learning from outcomes

ONE_CRM = "which CRM (default: the one configured; needed when both are)"


@cli.command(help="How well a model separates won from lost on past outcomes (AUC, bands, deciles, rules).")
@crm_option(both=False, help_text=ONE_CRM)
@click.option("--model", "model_file", metavar="FILE", help="a scoring file to test (default: mappings/scoring.yaml)")
@click.option("--since", metavar="DATE", help="leave out outcomes dated before this day (YYYY-MM-DD, UTC)")
@click.option("--html", "html_file", metavar="FILE", help="also write the report as one self-contained HTML file")
@JSON_OPTION
def backtest(crm: str | None, model_file: str | None, since: str | None, html_file: str | None,
             as_json: bool) -> int:
    from connector.learn.eval_commands import backtest_command

    return backtest_command(_runtime(), crm, model_file, since, html_file, as_json, plain=not console.is_tty())


@cli.command(help="Points and thresholds fitted to past outcomes, written as a scoring.yaml; prints current vs "
                  "suggested, cross-validated.")
@crm_option(both=False, help_text=ONE_CRM)
@click.option("--out", required=True, metavar="FILE", help="where to write the suggested scoring.yaml")
@click.option("--target", metavar="TARGET", help="what hot means: top:N% of the leads (default top:10%) or "
                                                   "precision:P (the share of hot leads that convert)")
@JSON_OPTION
def suggest(crm: str | None, out: str, target: str | None, as_json: bool) -> int:
    from connector.learn.eval_commands import suggest_command

    return suggest_command(_runtime(), crm, out, target, as_json, plain=not console.is_tty())


@cli.command(help="What a model change would do to the current leads (band moves, new hot leads per region and "
                  "rep), without writing anything.")
@click.argument("file", metavar="FILE")
@crm_option(both=False, help_text=ONE_CRM)
@JSON_OPTION
def preview(file: str, crm: str | None, as_json: bool) -> int:
    from connector.learn.eval_commands import preview_command

    return preview_command(_runtime(), file, crm, as_json, plain=not console.is_tty())


# --------------------------------------------------------------------------- reps


@cli.group(cls=_Group, help="Rep availability by hand: list, away, back.", invoke_without_command=False)
def reps() -> None:
    pass


@reps.command("list", help="Reps by region with their availability now.")
def reps_list() -> int:
    from connector.routing import service

    rt = _runtime()
    for line in service.list_reps_status(rt.router, rt.router.clock()):  # routing's clock
        print(line)
    return 0


@reps.command(help="Mark a rep out of office until a date.")
@click.argument("email")
@click.option("--until", required=True, help="YYYY-MM-DD (through that day in the rep's time zone) "
                                              "or YYYY-MM-DDTHH:MM (UTC)")
def away(email: str, until: str) -> int:
    from connector.routing import commands

    rt = _runtime()
    _known_rep(rt, email)
    when = _parse_until(until)
    kept = commands.reps_away(rt, email, when)  # mappings/away.yaml first, then Redis
    shown = f"the end of {when} in the rep's time zone" if not isinstance(when, dt.datetime) else (
        when.strftime("%Y-%m-%d %H:%M UTC"))
    print(f"{email} is away until {shown}")
    print(kept)
    return 0


@reps.command(help="Mark a rep back.")
@click.argument("email")
def back(email: str) -> int:
    from connector.routing import commands

    rt = _runtime()
    _known_rep(rt, email)
    notes = commands.reps_back(rt, email)  # mappings/away.yaml and Redis
    print(f"{email} is back")
    for note in notes:
        print(note)
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


if __name__ == "__main__":
    raise SystemExit(main())
