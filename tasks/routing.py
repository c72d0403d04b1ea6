"""Routing tasks: the SLA sweep that reassigns hot leads nobody acted on, and the notification retries."""

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


@house_task(name="leadscore.routing.send_notifications")
def send_notifications(self: Any) -> int:
    """Rep e-mails and chat messages whose sending failed and that are due again."""
    return sum(get_runtime().router.send_notifications().values())
