"""Retraining the conversion probability on beat's schedule (scoring.yaml `probability.retrain`)."""

from __future__ import annotations

from typing import Any

from connector.errors import RetryLater
from connector.learn.retrain import retrain_if_due
from tasks.app import countdown, house_task
from tasks.runtime import get_runtime


@house_task(name="leadscore.learn.retrain", max_retries=3)
def retrain(self: Any, crm: str) -> str:
    try:
        _, why = retrain_if_due(get_runtime(), crm)  # type: ignore[arg-type]
    except RetryLater as exc:
        raise self.retry(countdown=countdown(self, exc.wait), exc=exc) from None
    return why
