"""`leadscore demo` as a newcomer runs it: the rotation shows at any hour, and the summary names its clock.

Each demo runs in its own process (it installs an in-process Celery worker), with no REDIS_URL,
so it starts a private redis-server, as on a fresh machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

SATURDAY_NIGHT = dt.datetime(2026, 12, 5, 3, 0, tzinfo=dt.UTC)  # nobody of the sandbox's sales team works


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "SALESFORCE_", "LEADSCORE_"))}
    env.pop("REDIS_URL", None)
    return env


def demo_at_real_time(now: dt.datetime, contacts: int) -> tuple[str, dict[str, Any]]:
    """The demo's text and JSON as if the real time were `now` (the wall clock is the one thing injected)."""
    script = (
        "import json, sys\n"
        "from tasks.demo import run_demo\n"
        f"summary = run_demo(crm='hubspot', contacts={contacts}, seed=7, progress=False, now={now.timestamp()!r})\n"
        "print(summary.text())\n"
        "print(json.dumps(summary.as_dict(), sort_keys=True))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=clean_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    *text, last = proc.stdout.strip().splitlines()
    return "\n".join(text), json.loads(last)


def test_run_outside_working_hours_the_demo_still_shows_the_rotation_and_names_its_clock() -> None:
    text, summary = demo_at_real_time(SATURDAY_NIGHT, contacts=600)

    clock = summary["routing_clock"]
    at = dt.datetime.fromisoformat(clock["at"])
    assert clock["source"] == "default"
    assert at > SATURDAY_NIGHT
    assert at.weekday() < 5, "the next working day, not the weekend night"
    assert f"routing as at {at:%a %Y-%m-%d %H:%M} UTC" in text
    assert "the demo's default" in text

    routing = summary["crms"]["hubspot"]["routing"]
    dach = {rep["name"]: rep for rep in routing["regions"]["DACH"]["reps"]}
    receivers = [name for name, rep in dach.items() if rep["received"] > 0]
    assert len(receivers) >= 3, f"the rotation among DACH's reps shows: {dach}"
    assert dach["Katrin Vogel"]["weight"] == 2
    assert dach["Katrin Vogel"]["capacity"] == 15
    assert dach["Jens Lorenz"]["received"] == 0
    assert dach["Jens Lorenz"]["skipped"]["inactive"] > 0
    for name in receivers:
        assert f"    {name}" in text

    real = routing["at_real_time"]
    assert real["reps_in_hours"] == 0
    assert real["outcomes"] == {"fallback owner": summary["crms"]["hubspot"]["assigned"]}
    assert real["line"] == (
        "At the real time (Sat 2026-12-05 03:00 UTC) nobody is in working hours: all "
        f"{summary['crms']['hubspot']['assigned']} hot leads would have gone to the fallback owner Katrin Vogel."
    )
    assert real["line"] in text


def test_at_a_stated_moment_outside_working_hours_every_hot_lead_goes_to_the_fallback_owner() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "connector.cli", "demo", "--crm", "hubspot", "--contacts", "300", "--json",
         "--at", "2026-12-05T04:00:00+01:00"],
        env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["routing_clock"]["source"] == "--at"
    assert summary["routing_clock"]["at"] == "2026-12-05T03:00:00+00:00"
    hubspot = summary["crms"]["hubspot"]
    regions = hubspot["routing"]["regions"]
    assert sum(r["to_fallback_owner"] for r in regions.values()) == hubspot["assigned"] > 0
    reps = [rep for r in regions.values() for rep in r["reps"]]
    assert all(rep["received"] == 0 for rep in reps)
    assert any(rep["skipped"].get("outside hours") for rep in reps), "the reps are passed over: outside hours"


def test_an_unreadable_at_is_one_sentence_and_exit_1() -> None:
    proc = subprocess.run([sys.executable, "-m", "connector.cli", "demo", "--at", "tomorrow"], env=clean_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "leadscore: leadscore demo: argument --at: 'tomorrow' is not a date and time with its zone, "
        "such as 2026-11-23T10:00+01:00, nor 'now'."
    )
