"""Learning tasks: the weekly backtest of the model in use (its figures kept in Redis for `leadscore status`),
and retraining the conversion probability on beat's schedule (scoring.yaml `probability.retrain`)."""

from __future__ import annotations

import time
from typing import Any

from connector.domain import CrmName
from connector.errors import RetryLater
from connector.learn.eval_commands import weekly_backtest
from connector.learn.retrain import retrain_if_due
from tasks.app import countdown, house_task
from tasks.runtime import get_runtime


@house_task(name="leadscore.learn.backtest", max_retries=0)
def backtest(self: Any, crm: CrmName) -> dict[str, Any]:
    """Read the outcomes, backtest the current model, store the figures (ids and numbers only)."""
    return weekly_backtest(get_runtime(), crm, time.time())


@house_task(name="leadscore.learn.retrain", max_retries=3)
def retrain(self: Any, crm: CrmName) -> str:
    """Train when the last training is `probability.retrain.every_days` old; keep it within the AUC margin."""
    try:
        _, why = retrain_if_due(get_runtime(), crm)
    except RetryLater as exc:
        raise self.retry(countdown=countdown(self, exc.wait), exc=exc) from None
    return why
