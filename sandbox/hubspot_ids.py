"""How the sandbox HubSpot numbers its engagements, shared by the HubSpot app and the webhook emitter
(a module of its own, so that sandbox.hubspot and sandbox.webhooks do not import each other)."""

from __future__ import annotations

from typing import Final

# An email, call, meeting or note activity of a generated person is the engagement with this id plus the activity id.
ENGAGEMENT_ID_BASE: Final = 50_000_000_000
# The engagement object types and the activity kinds each holds.
ENGAGEMENT_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "emails": ("email_open", "email_click", "email_reply", "email_bounce"),
    "calls": ("call",),
    "meetings": ("meeting",),
    "notes": ("note",),
}
