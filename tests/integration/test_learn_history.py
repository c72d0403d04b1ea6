"""The weekly backtest: a beat entry per CRM, its figures (ids and numbers only) kept in Redis for status."""

from __future__ import annotations

import json

import redis
from celery.schedules import crontab

from connector.engine import load_scoring
from connector.learn.evaluate import backtest
from connector.learn.history import KEEP, BacktestHistory, figures_of
from connector.status import _backtest_line
from tasks.beat import beat_schedule
from tests.conftest import ROOT
from tests.learn_synthetic import READ_AT, synthetic_dataset
from tests.unit.test_schedule import mappings_with, runtime


def test_beat_runs_a_backtest_per_configured_crm_every_monday(tmp_path) -> None:  # type: ignore[no-untyped-def]
    entries = beat_schedule(runtime(mappings_with(tmp_path, '  full_daily_at: "02:30"\n')))
    assert entries["hubspot-backtest"] == {
        "task": "leadscore.learn.backtest", "schedule": crontab(day_of_week="mon", hour=4, minute=15),
        "args": ("hubspot",),
    }
    assert "salesforce-backtest" not in entries


def test_the_figures_are_numbers_and_ids_and_the_newest_is_what_status_shows(redis_client: redis.Redis) -> None:
    bt = backtest(synthetic_dataset(400, seed=8), load_scoring(ROOT / "mappings" / "scoring.yaml"))
    history = BacktestHistory(redis_client)
    for week in range(KEEP + 3):
        history.save("hubspot", figures_of(bt, READ_AT + week * 7 * 86400))
    latest = history.latest("hubspot")
    assert latest is not None
    assert latest["at"] == READ_AT + (KEEP + 2) * 7 * 86400
    assert latest["auc"] == round(bt.auc, 4)
    assert latest["bands"]["warm"] == {"leads": bt.bands["warm"]["leads"], "won": bt.bands["warm"]["won"],
                                       "rate": round(bt.bands["warm"]["rate"], 4)}
    assert len(history.history("hubspot")) == KEEP
    stored = " ".join(str(v) for k in redis_client.keys("leadscore:backtest:*") for v in (
        [redis_client.get(k)] if redis_client.type(k) == "string" else redis_client.lrange(k, 0, -1)))
    assert "@" not in stored  # no lead data, only figures
    assert "job_title" not in stored
    line = _backtest_line(latest)
    assert line.startswith(f"AUC {bt.auc:.3f} on {bt.leads:,} outcomes")
    assert bt.model in line


def test_a_backtest_that_could_not_run_says_why_in_status(redis_client: redis.Redis) -> None:
    history = BacktestHistory(redis_client)
    history.failed("salesforce", READ_AT, "outcomes are not configured in mappings/salesforce.yaml.")
    assert json.loads(redis_client.get("leadscore:backtest:salesforce:latest"))["error"].startswith("outcomes")
    assert _backtest_line(history.latest("salesforce")) == (
        "could not run at 2026-05-28T20:26:40Z: outcomes are not configured in mappings/salesforce.yaml.")
    assert _backtest_line(None).startswith("not run yet")
