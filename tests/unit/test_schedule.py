"""Beat's schedule comes from the `schedule:` section of each CRM's mapping file."""

from __future__ import annotations

import shutil
from pathlib import Path

import fakeredis
import pytest
from celery.schedules import crontab

from connector.bootstrap import build_runtime
from connector.config import Settings
from connector.mapfile import MappingError
from tasks.beat import beat_schedule
from tests.conftest import ROOT


def mappings_with(tmp_path: Path, schedule: str) -> Path:
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    text = (mdir / "hubspot.yaml").read_text()
    head, _, _ = text.partition("\nschedule:\n")
    (mdir / "hubspot.yaml").write_text(head + "\nschedule:\n" + schedule)
    return mdir


def runtime(mdir: Path):  # type: ignore[no-untyped-def]
    settings = Settings(mappings_dir=mdir, hubspot_base_url="http://127.0.0.1:9", hubspot_access_token="t")
    return build_runtime(settings, redis_client=fakeredis.FakeRedis())


def test_the_configured_intervals_become_beat_entries(tmp_path: Path) -> None:
    rt = runtime(mappings_with(tmp_path, '  incremental_every_minutes: 15\n  full_daily_at: "23:05"\n'))
    entries = beat_schedule(rt)
    assert entries["hubspot-incremental"]["schedule"] == 900.0
    assert entries["hubspot-incremental"]["args"] == ("hubspot", False)
    assert entries["hubspot-full"]["schedule"] == crontab(hour=23, minute=5)
    assert entries["hubspot-full"]["args"] == ("hubspot", True)
    assert "salesforce-incremental" not in entries  # not configured
    assert entries["routing-sla"]["task"] == "leadscore.routing.check_sla"
    assert entries["routing-notifications"] == {"task": "leadscore.routing.send_notifications", "schedule": 30.0}
    assert entries["sync-retry"] == {"task": "leadscore.sync.retry", "schedule": 60.0}  # records not written yet


def test_an_unquoted_or_impossible_time_names_the_file_line_and_key(tmp_path: Path) -> None:
    rt = runtime(mappings_with(tmp_path, '  full_daily_at: "25:00"\n'))
    with pytest.raises(MappingError) as info:
        beat_schedule(rt)
    assert "hubspot.yaml, line " in str(info.value)
    assert str(info.value).endswith("key 'schedule.full_daily_at': '25:00' is not a time of day like \"02:30\" "
                                    "(UTC, in quotes)")
