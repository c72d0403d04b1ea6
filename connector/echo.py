"""Our own Salesforce writes coming back as Outbound Messages, told apart from real changes.

A workflow rule that fires "every time a record is edited" sends an Outbound Message for our
score writes and owner changes too (unless the admin took "Send Outbound Messages" from the
integration user's profile), and rescoring the record again for it costs API calls for
nothing. HubSpot names the changed property in its event; an Outbound Message does not: it
carries the current values of the fields the admin selected for the message, not what changed.

So the pipeline remembers, per record id, a fingerprint of the values scoring read from the
record itself (the mapping's `objects.<Lead|Contact>.fields`, not the parent Account's), and
a delivery is an echo when the same fingerprint comes out of its field values: nothing
scoring reads has changed since we scored it, whatever else did (our score fields, the owner,
fields no rule reads). A field the message does not carry counts as empty, so a message
without the scoring fields never matches a record that has values there: when in doubt, the
record is rescored. The admin should select the fields scoring reads in the Outbound Message
(README). Whether Salesforce sends empty fields as xsi:nil or leaves them out is unverified;
both read as empty here.

Kept in Redis: one hash per object type, record id -> 16 hex characters of a SHA-256 over
the values. Ids and hashes only, no personal data.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from connector.domain import Lead

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def normalise(value: Any) -> str:
    """One spelling per value, whether it came as JSON from the REST API or as text in a SOAP message."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    if _NUMBER.fullmatch(text):  # 250, 5000000.0, 5.0E7 (SOAP doubles)
        return repr(float(text))
    return text


def fingerprint(fields: Sequence[str], values: Mapping[str, Any]) -> str:
    """A short hash of `values` at `fields` (API names, in a fixed order); a missing field is empty."""
    digest = hashlib.sha256()
    for name in fields:
        digest.update(name.encode())
        digest.update(b"\x1f")
        digest.update(normalise(values.get(name)).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


class EchoFilter:
    """Fingerprints of what scoring read, per Salesforce record, shared by the workers and the web process."""

    def __init__(self, client: redis.Redis, namespace: str, fields: Mapping[str, Mapping[str, str]]) -> None:
        """`fields`: object type -> {API name: engine name} of the record's own fields scoring reads."""
        self.redis = client
        self.namespace = namespace
        self.fields = {obj: dict(sorted(by_api.items())) for obj, by_api in fields.items() if by_api}

    @classmethod
    def from_objects(cls, client: redis.Redis, namespace: str, objects: Mapping[str, Any]) -> EchoFilter:
        """From the Salesforce mapping's `objects` (each with `fields`: engine name -> API name)."""
        out: dict[str, dict[str, str]] = {}
        for obj, spec in objects.items():
            out[obj] = {api: engine for engine, api in spec.read_fields().items() if "." not in api}
        return cls(client, namespace, out)

    def _key(self, obj: str) -> str:
        return f"{self.namespace}:sf:fingerprint:{obj}"

    def remember(self, obj: str, leads: Sequence[Lead]) -> None:
        """What scoring read from each record, as it read it (the values of `lead.profile`)."""
        by_api = self.fields.get(obj)
        if not by_api or not leads:
            return
        names = list(by_api)
        prints = {
            lead.id: fingerprint(names, {api: lead.profile.get(engine) for api, engine in by_api.items()})
            for lead in leads
        }
        self.redis.hset(self._key(obj), mapping=prints)  # type: ignore[arg-type]

    def echoes(self, obj: str, deliveries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[bool]:
        """For each (record id, delivered field values): True when nothing scoring reads has changed."""
        by_api = self.fields.get(obj)
        if not by_api or not deliveries:
            return [False] * len(deliveries)
        names = list(by_api)
        known = self.redis.hmget(self._key(obj), [record_id for record_id, _ in deliveries])
        out = []
        for (_, values), stored in zip(deliveries, known, strict=True):
            seen = stored.decode() if isinstance(stored, bytes) else stored
            out.append(seen is not None and seen == fingerprint(names, values))
        return out

    def forget(self, obj: str, record_id: str) -> int:
        return int(self.redis.hdel(self._key(obj), record_id))
