"""What the `leadscore` command shows: tables, progress bars, and plain text when nobody is watching.

On a terminal, summaries are rich tables and long waits (`sync --wait`, `demo`)
show progress bars with the rate and the time left. When the output is not a
terminal (a pipe, a file, a scheduler's log) or `--json` is given, the same
facts come as plain lines that a script can read, and nothing is redrawn.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from connector.domain import CRMS, CrmName
from connector.errors import UserError
from connector.runs import RunStore, RunView, Stall


def is_tty(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def out() -> Console:
    """The console for results (stdout)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def err() -> Console:
    """The console for progress and messages (stderr)."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, plain: bool | None = None) -> None:
    """A table on stdout: rich on a terminal, else one line a row with columns separated by two spaces."""
    plain = (not is_tty()) if plain is None else plain
    if plain:
        if title:
            print(title)
        widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
                  for i, c in enumerate(columns)]
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in rows:
            print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return
    t = Table(title=title or None, title_justify="left", show_edge=False, header_style="bold")
    for i, c in enumerate(columns):
        t.add_column(str(c), justify="right" if rows and isinstance(rows[0][i], int | float) else "left")
    for row in rows:
        t.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    out().print(t)


# --------------------------------------------------------------------------- run progress


class _RateColumn(ProgressColumn):
    """Records per second, as rich measured them."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} records/s", style="progress.data.speed")


class _CountsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("counts", "")))


@dataclass
class RunLine:
    """One run's figures as the progress display shows them."""

    crm: str
    read: int
    expected: int | None
    pages_done: int
    pages_total: int
    counts: str
    waiting: str = ""  # a stream waiting for a page its worker stopped answering for (see `waiting_text`)

    @classmethod
    def of(cls, v: RunView, stalls: Sequence[Stall] = (), preparing: str | None = None) -> RunLine:
        waiting = waiting_text(stalls)
        return cls(
            crm=v.fields.get("crm", "?"),
            read=v.count("read"),
            expected=expected_records(v),
            pages_done=v.count("pages_done"),
            pages_total=v.count("pages_total"),
            counts=f"scored {v.count('scored')} written {v.count('written')} assigned {v.count('assigned')}",
            waiting="; ".join(t for t in (preparing, waiting) if t),
        )

    def plain(self) -> str:
        width = 20
        filled = int(width * self.pages_done / self.pages_total) if self.pages_total else 0
        return (f"{self.crm} [{'#' * filled}{'.' * (width - filled)}] pages {self.pages_done}/{self.pages_total} "
                f"read {self.read} {self.counts}" + (f"; {self.waiting}" if self.waiting else ""))


def waiting_text(stalls: Sequence[Stall]) -> str:
    """What a run waits for, in words: the longest wait per stream (connector/runs.py, "Lost pages")."""
    seen: set[str] = set()
    parts = []
    for st in stalls:  # longest first
        if st.stream in seen:
            continue
        seen.add(st.stream)
        if st.state == "resent":
            parts.append(f"{st.stream}: waiting {st.seconds:.0f} s for a page lost with its worker, sent to another")
        else:
            parts.append(f"{st.stream}: waiting {st.seconds:.0f} s for a page whose worker stopped answering")
    return "; ".join(parts)


def expected_records(v: RunView) -> int | None:
    """How many records the run will read, when the CRM told us for every stream (else None)."""
    streams = [s for s in v.fields.get("streams", "").split(",") if s]
    totals = [v.fields.get(f"expected:{s}") for s in streams]
    if not streams or any(t is None or t == "" for t in totals):
        return None
    return sum(int(t or 0) for t in totals)


class _Display:
    """Progress bars on a terminal, a plain line every few seconds elsewhere, nothing when quiet."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, mode: str, expected: dict[str, int] | None) -> None:
        self.mode = mode  # "bars", "lines" or "quiet"
        self.expected = expected or {}
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self._last_line = 0.0
        self._last_waiting: tuple[str, ...] = ()

    @contextmanager
    def running(self) -> Iterator[_Display]:
        if self.mode != "bars":
            yield self
            return
        self._progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f} read"),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            _CountsColumn(),
            console=err(),
            transient=False,
            refresh_per_second=5,
        )
        with self._progress:
            yield self

    def update(self, run_id: str, line: RunLine) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "lines":
            return
        assert self._progress is not None
        total = line.expected if line.expected is not None else self.expected.get(line.crm)
        if run_id not in self._tasks:
            self._tasks[run_id] = self._progress.add_task(line.crm, total=total, counts=line.counts)
        counts = line.counts + (f" | {line.waiting}" if line.waiting else "")
        self._progress.update(self._tasks[run_id], completed=line.read, total=total, counts=counts)

    def lines(self, lines: Sequence[RunLine]) -> None:
        if self.mode != "lines":
            return
        now = time.monotonic()
        # a stream that starts or stops waiting for a lost page is said at once, not at the next line
        waiting = tuple("".join(c for c in x.waiting if not c.isdigit()) for x in lines)
        if now - self._last_line >= self.PLAIN_EVERY_S or waiting != self._last_waiting:
            print("  ".join(x.plain() for x in lines), file=sys.stderr)
            self._last_line = now
            self._last_waiting = waiting

    def finish(self, run_id: str, line: RunLine) -> None:
        if self.mode == "bars" and self._progress is not None and run_id in self._tasks:
            # a run that read fewer records than announced (deleted meanwhile) still ends at 100 %
            self._progress.update(self._tasks[run_id], completed=line.read, total=max(line.read, 1))


REDIS_PATIENCE_S = 60.0


def wait_for_runs(
    runs: RunStore,
    run_ids: list[str],
    timeout: float | None = None,
    quiet: bool = False,
    *,
    expected: dict[str, int] | None = None,
    summary: Callable[[RunView], None] | None = None,
    preparing: Callable[[CrmName], str | None] | None = None,
) -> list[RunView]:
    """Show progress until every run has finished, then each run's summary; return the final views.

    `expected`: records each CRM's run will read when the caller knows it (the demo does),
    for the time left when the CRM did not say. `preparing(crm)`: what that CRM's runs read before
    their pages can be scored, in words (CrmAdapter.preparing), shown while a run has read nothing.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    display = _Display("quiet" if quiet else ("bars" if is_tty(sys.stderr) else "lines"), expected)
    views: list[RunView] = []
    unreachable_since: float | None = None
    with display.running():
        while True:
            try:
                got = [runs.get(r) for r in run_ids]
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
            lost = [r for r, v in zip(run_ids, got, strict=True) if v is None]
            if lost:
                raise UserError(
                    f"the state of sync {lost[0]} is gone (Redis was restarted or flushed); run the sync again: "
                    "nothing is written twice."
                )
            views = [v for v in got if v is not None]
            lines = [RunLine.of(v, () if v.finished else _stalls(runs, v.id),
                                None if v.finished or preparing is None else _preparing(preparing, v))
                     for v in views]  # fmt: skip
            for v, line in zip(views, lines, strict=True):
                (display.finish if v.finished else display.update)(v.id, line)
            display.lines(lines)
            if all(v.finished for v in views):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise UserError("the sync did not finish in time; is a worker running (celery -A tasks worker)?")
            time.sleep(0.2)
    if not quiet:
        for v in views:
            (summary or print_run_summary)(v)
    return views


def _preparing(preparing: Callable[[CrmName], str | None], v: RunView) -> str | None:
    if v.count("read"):
        return None  # pages are being scored: the progress line says enough
    crm = v.fields.get("crm", "")
    if crm not in CRMS:
        return None
    try:
        return preparing(crm)
    except redis.RedisError:
        return None  # the progress line goes on without it; the next look asks again


def _stalls(runs: RunStore, run_id: str) -> list[Stall]:
    try:
        return runs.stalled(run_id)
    except redis.RedisError:
        return []  # the progress line goes on without it; the next look asks again


def _failure_kind(entry: str) -> str:
    """'to retry' for records kept in the retry set (connector/retry.py), 'failed' for the rest."""
    return "to retry" if ": will be retried: " in entry or "retried on their own" in entry else "failed"


def run_summary_text(v: RunView) -> str:
    """A finished run in plain lines: the first says its status, the second its figures."""
    lines = [
        f"{v.fields.get('crm')} sync {v.id}: {v.status}"
        + (f" ({v.fields['message']})" if v.fields.get("message") else ""),
        f"  read {v.count('read')}, scored {v.count('scored')}, written {v.count('written')}, "
        f"unchanged {v.count('unchanged')}, hot {v.count('hot')}, assigned {v.count('assigned')}, "
        f"failed {v.count('failed')}, API calls {v.count('api_calls')}"
        + (f", to retry {v.count('retrying')}" if v.count("retrying") else ""),
    ]
    if lost := lost_pages_text(v):
        lines.append(f"  {lost}")
    for f in v.failures[:20]:
        lines.append(f"  {_failure_kind(f)}: {f}")
    if len(v.failures) > 20:
        lines.append(f"  ... and {len(v.failures) - 20} more failures")
    return "\n".join(lines)


def lost_pages_text(v: RunView) -> str:
    """Pages lost with their worker and sent again (connector/runs.py, "Lost pages"), and the wait they cost."""
    resent = v.count("pages_resent")
    if not resent:
        return ""
    waited = float(v.fields.get("lost_wait_s") or 0)
    return (f"{resent} page(s) lost with their worker were sent to another worker; "
            f"waited {waited:.0f} s for them in all")


def print_run_summary(v: RunView) -> None:
    """The plain lines, or on a terminal the status line and a table of the figures."""
    if not is_tty():
        print(run_summary_text(v))
        return
    first, *_ = run_summary_text(v).splitlines()
    out().print(first, markup=False)
    names: tuple[str, ...] = ("read", "scored", "written", "unchanged", "hot", "assigned", "failed", "api_calls")
    if v.count("retrying"):
        names += ("retrying",)
    table("", [n.replace("_", " ") for n in names], [[v.count(n) for n in names]], plain=False)
    if lost := lost_pages_text(v):
        out().print(f"  {lost}", markup=False)
    for f in v.failures[:20]:
        out().print(f"  {_failure_kind(f)}: {f}", markup=False)
    if len(v.failures) > 20:
        out().print(f"  ... and {len(v.failures) - 20} more failures", markup=False)
