"""`leadscore status` after a sync: runs, streams behind, API budget, hot leads and assignments today,
webhooks in the last hour, workers and queue; as JSON with --json, as plain lines when not a terminal."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from connector.status import Recorder
from connector.web import build_app
from sandbox.server import Sandbox
from tasks.realtime import CeleryDispatcher
from tests.conftest import ROOT
from tests.inprocess import run_in_process
from tests.integration.test_cli import run
from tests.integration.test_webhooks import SECRET, TestClient, _event, _post_hubspot

PEOPLE = 200
# 2026-11-23 (a Monday) 10:00 UTC: inside working hours in Europe, so hot leads are assigned.
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=PEOPLE, seed=4, hubspot_rate=5000) as sb:
        yield sb


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    return mdir


@pytest.fixture
def rt(sandbox: Sandbox, redis_url: str, mappings: Path) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, mappings_dir=mappings, hubspot_base_url=sandbox.hubspot_url,
                        hubspot_access_token=sandbox.hubspot_token, hubspot_webhook_secret=SECRET)
    runtime = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url))
    runtime.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
    runtime.router.clock = lambda: NOW
    yield runtime
    runtime.close()


def synced(rt: Runtime) -> str:
    rt.adapter("hubspot").setup()
    return run_in_process(rt, "hubspot", now=NOW).id


def env(sandbox: Sandbox, redis_url: str, mappings: Path) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "HUBSPOT_BASE_URL": sandbox.hubspot_url,
            "HUBSPOT_ACCESS_TOKEN": sandbox.hubspot_token, "LEADSCORE_MAPPINGS": str(mappings)}


def test_status_json_reports_the_run_the_stream_the_budget_and_todays_hot_leads(
    sandbox: Sandbox, rt: Runtime, redis_url: str, mappings: Path
) -> None:
    run_id = synced(rt)
    view = rt.runs.get(run_id)
    assert view is not None
    assert view.status == "done"
    Recorder(rt.redis, rt.namespace).worker_seen("celery@w1", time.time())
    with TestClient(build_app(lambda: rt, dispatcher=CeleryDispatcher(redis_url))) as client:
        assert _post_hubspot(client, [_event(1, 5)]).status_code == 200
        assert _post_hubspot(client, [_event(2, 5)], secret="wrong").status_code == 401

    proc = run(["status", "--json"], env(sandbox, redis_url, mappings))

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    hub = report["crms"]["hubspot"]
    assert [r["id"] for r in hub["runs"]] == [run_id]
    assert hub["runs"][0]["status"] == "done"
    assert hub["runs"][0]["read"] == PEOPLE
    assert hub["in_progress"] == []
    assert 0 <= hub["streams"]["contact"]["behind_seconds"] < 600  # read through the run's start, moments ago
    assert hub["streams"]["contact"]["cursor"] is not None
    assert hub["api_budget"]["used"] >= view.count("api_calls") > 0
    assert sum(hub["hot_today"].values()) == view.count("hot") > 0
    assert sum(sum(reps.values()) for reps in hub["assigned_today"].values()) == view.count("assigned") > 0
    rep_names = {r.name for r in rt.adapter("hubspot").list_reps()}
    assert {name for reps in hub["assigned_today"].values() for name in reps} <= rep_names
    assert hub["webhooks_last_hour"] == {"accepted": 1, "rejected": 1}
    assert [w["name"] for w in report["workers"]] == ["celery@w1"]
    assert report["queue"]["queued"] >= 1  # the drain the accepted delivery scheduled


def test_status_without_a_terminal_is_plain_lines(
    sandbox: Sandbox, rt: Runtime, redis_url: str, mappings: Path
) -> None:
    synced(rt)

    proc = run(["status"], env(sandbox, redis_url, mappings))

    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no colours or cursor movement
    lines = proc.stdout.splitlines()
    assert "runs (newest first)" in lines
    stream = lines[lines.index("streams") + 2]
    assert stream.split()[:2] == ["hubspot", "contact"]
    assert "never synced" not in stream
    assert any(line.startswith("  hubspot  ") and " done " in line for line in lines)
    assert "queue: " in proc.stdout
    assert "webhooks in the last hour: hubspot 0 accepted / 0 rejected" in proc.stdout


def test_status_with_no_reachable_redis_is_one_sentence(sandbox: Sandbox, mappings: Path) -> None:
    from tests.conftest import free_port

    proc = run(["status"], env(sandbox, f"redis://127.0.0.1:{free_port()}/0", mappings))

    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("leadscore: Redis cannot be reached")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_first_sync_reading_the_look_backs_web_events_says_so_and_how_far_it_is(
    sandbox: Sandbox, rt: Runtime, redis_url: str, mappings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before a first sync can score a page, it reads the look-back's web events of every contact (on a
    big portal at a real rate limit, the better part of an hour, with nothing read yet): `status` and
    `sync --wait` say that this is what the sync is doing, and how far it is."""
    from connector import sync
    from connector.console import wait_for_runs
    from connector.crm.hubspot_events import FULL_SLICES

    started, _ = sync.start_run(rt, "hubspot", full=True)
    store = rt.adapter("hubspot").web_events
    now = time.time()
    gen = store._start(now, covered=False)  # a first sync page starts the read: the whole look-back,
    assert gen is not None
    fill = f"{store.prefix}:fill:{gen}"
    for _ in range(2):  # in slices, and two of the eight are read
        member = store._claim(keys=[fill], args=[repr(now), repr(now + 120)]).decode()
        lo, hi = (int(x) for x in member.split(":"))
        store._read_slice(lo, hi, fill, member)
        rt.redis.zrem(fill, member)
    said = f"reading the web events of the last 180 days before scoring (once; later syncs read only new ones): " \
           f"{100 * 2 // FULL_SLICES} % done"

    proc = run(["status"], env(sandbox, redis_url, mappings))
    assert proc.returncode == 0, proc.stderr
    assert f"hubspot: {said}" in proc.stdout.splitlines(), proc.stdout
    proc = run(["status", "--json"], env(sandbox, redis_url, mappings))
    assert json.loads(proc.stdout)["crms"]["hubspot"]["preparing"] == said

    def then_the_pages() -> None:
        time.sleep(1.5)
        rt.runs.set(started.run_id, status="done")

    t = threading.Thread(target=then_the_pages)
    t.start()
    try:
        wait_for_runs(rt.runs, [started.run_id], timeout=60, preparing=lambda crm: rt.adapter(crm).preparing())
    finally:
        t.join()
    assert f"pages 0/1 read 0 scored 0 written 0 assigned 0; {said}" in capsys.readouterr().err
