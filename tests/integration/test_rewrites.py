"""An unchanged portal is not rewritten day after day (issue 12 item 8): reasons name dates, not ages.

Syncs the sandbox portal once a simulated day with nothing new happening, and counts the contacts each
sync writes (what `leadscore status` shows as written). With a model whose rounded scores do not move
from day to day (no decay, no window), days 2..N write nothing. With the shipped model, decay moves some
scores daily and those leads are rewritten: bench/rewrites.py measures how many.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from connector.bootstrap import Runtime, build_runtime
from connector.config import Settings
from sandbox.server import Sandbox
from tests.conftest import ROOT
from tests.inprocess import run_in_process

PEOPLE = 80
DAYS = 4
DAY = 86400.0
NOW = time.time()  # after every activity the sandbox made up (it dates them up to its own start)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.start(contacts=PEOPLE, seed=21, hubspot_rate=5000) as sb:
        yield sb


def steady_mappings(tmp_path: Path) -> Path:
    """The shipped mappings, with every engagement rule kept whole (no decay, no window) and every
    activity the sandbox has read (the longest look-back), so nothing moves from one day to the next."""
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    hubspot = mdir / "hubspot.yaml"
    text = hubspot.read_text(encoding="utf-8")
    hubspot.write_text(text.replace("  lookback_days: 180\n", "  lookback_days: 3650\n", 1), encoding="utf-8")
    scoring = yaml.safe_load((mdir / "scoring.yaml").read_text(encoding="utf-8"))
    scoring["model"].pop("window_days", None)
    for rule in scoring["engagement"]:
        rule.pop("half_life_days", None)
        rule.pop("window_days", None)
        rule["decay"] = False
    (mdir / "scoring.yaml").write_text(yaml.safe_dump(scoring, allow_unicode=True), encoding="utf-8")
    return mdir


def sync_at(rt: Runtime, now: float) -> tuple[int, int]:
    """(read, written) of one full sync scored at `now`."""
    view = run_in_process(rt, "hubspot", now=now)
    assert view.status == "done"
    return view.count("scored"), view.count("written")


def test_an_unchanged_portal_is_written_on_day_one_and_never_again(
    sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, mappings_dir=steady_mappings(tmp_path),
                        hubspot_base_url=sandbox.hubspot_url, hubspot_access_token=sandbox.hubspot_token)
    rt = build_runtime(settings, redis_client=redis.Redis.from_url(redis_url))
    rt.overrides["hubspot"] = lambda m: {"account": m.account.model_copy(update={"requests_per_10s": 4900})}
    rt.router.clock = lambda: NOW
    try:
        rt.adapter("hubspot").setup()
        first = sync_at(rt, NOW)
        later = [sync_at(rt, NOW + day * DAY) for day in range(1, DAYS)]
        engaged = sum(1 for c in rt.adapter("hubspot").read_page("contact", None, since=None).leads
                      if "x, last 20" in (c.written.get("reasons") or "") or "(20" in (c.written.get("reasons") or ""))
    finally:
        rt.close()

    assert first == (PEOPLE, PEOPLE)
    assert engaged > PEOPLE // 4  # reasons with dates in them: the ones an age would have churned
    assert later == [(PEOPLE, 0)] * (DAYS - 1)
