"""Routing tasks: the SLA sweep that reassigns hot leads nobody acted on."""

from __future__ import annotations

from typing import Any

from connector.errors import RetryLater
from tasks.app import countdown, house_task
from tasks.runtime import get_runtime


@house_task(name="leadscore.routing.check_sla")
def check_sla(self: Any) -> int:
    try:
        return len(get_runtime().router.check_sla())  # by routing's clock
    except RetryLater as exc:
        raise self.retry(countdown=countdown(self, exc.wait), exc=exc) from None
