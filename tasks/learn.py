"""Learning tasks: the weekly backtest of the model in use (its figures kept in Redis for `leadscore status`)."""

from __future__ import annotations

import time
from typing import Any

from connector.domain import CrmName
from connector.learn.eval_commands import weekly_backtest
from tasks.app import house_task
from tasks.runtime import get_runtime


@house_task(name="leadscore.learn.backtest", max_retries=0)
def backtest(self: Any, crm: CrmName) -> dict[str, Any]:
    """Read the outcomes, backtest the current model, store the figures (ids and numbers only)."""
    return weekly_backtest(get_runtime(), crm, time.time())
