"""The sandbox's limit counters: HubSpot's day ends at the portal's midnight, Salesforce's allowance rolls over 24 h."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sandbox.common import Clock, DailyBudget, RollingBudget

NEW_YORK = ZoneInfo("America/New_York")


class FakeTime:
    def __init__(self, at: dt.datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def to(self, at: dt.datetime) -> None:
        self.now = at.timestamp()


def test_a_portals_daily_budget_resets_at_its_own_midnight_not_at_utc_midnight() -> None:
    clock = FakeTime(dt.datetime(2026, 7, 1, 18, 0, tzinfo=NEW_YORK))
    budget = DailyBudget(2, clock=clock, zone=NEW_YORK)
    assert budget.try_acquire("account") == (True, 1)
    assert budget.try_acquire("account") == (True, 0)
    assert budget.try_acquire("account") == (False, 0)
    clock.to(dt.datetime(2026, 7, 2, 0, 30, tzinfo=dt.UTC))  # UTC's new day, still July 1st in New York
    assert budget.try_acquire("account") == (False, 0)
    assert budget.resets_at() == dt.datetime(2026, 7, 2, 0, 0, tzinfo=NEW_YORK).timestamp()
    clock.to(dt.datetime(2026, 7, 2, 0, 0, 1, tzinfo=NEW_YORK))  # 04:00:01 UTC (summer time)
    assert budget.try_acquire("account") == (True, 1)
    assert budget.used("account") == 1


def test_salesforces_allowance_counts_the_preceding_24_hours() -> None:
    clock = Clock(base=FakeTime(dt.datetime(2026, 7, 1, 23, 0, tzinfo=dt.UTC)))
    budget = RollingBudget(3, clock=clock)
    budget.record("org", 2)
    clock.advance(3600)  # past midnight: a calendar day would start afresh here
    assert budget.try_acquire("org") == (True, 0)
    assert budget.try_acquire("org") == (False, 0)
    assert budget.used("org") == 3
    clock.advance(23 * 3600 + 60)  # the first two are more than 24 h old now (their minute has left)
    assert budget.used("org") == 1
    assert budget.try_acquire("org") == (True, 1)
