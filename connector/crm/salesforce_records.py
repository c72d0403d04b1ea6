"""Pure translations between Salesforce records and the engine's vocabulary.

No I/O here: SOQL text, datetime parsing, score values in both directions, and the
activity rules of mappings/salesforce.yaml applied to Task / Event / CampaignMember
records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from connector.crm.times import parse_time as _parse_time
from connector.domain import Activity
from connector.mappings.salesforce import SALESFORCE_ID, Rule, Source

# Score fields by how they are typed in Salesforce.
NUMBER_FIELDS = frozenset({"score", "fit", "engagement", "probability"})
DATETIME_FIELDS = frozenset({"scored_at"})

# Each activity object and the fields that link it to a Lead or Contact.
LINK_FIELDS: Mapping[str, Mapping[str, str]] = {
    "Task": {"Lead": "WhoId", "Contact": "WhoId"},
    "Event": {"Lead": "WhoId", "Contact": "WhoId"},
    "CampaignMember": {"Lead": "LeadId", "Contact": "ContactId"},
}

# Keep every GET URL (query text included) under this many characters: Salesforce
# answers 414 above roughly 16,000.
MAX_URL_CHARS = 15_000


def soql_datetime(ts: float) -> str:
    """An unquoted SOQL datetime literal, to the second (SystemModstamp has no finer grain)."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_soql(
    fields: Sequence[str],
    obj: str,
    where: Sequence[str] = (),
    *,
    order_by: str | None = None,
    limit: int | None = None,
) -> str:
    """The one place SOQL text is put together.

    Safe by construction: object and field names come from constants or from the
    mapping file, whose schema only admits plain API names; values enter `where`
    only through `soql_id`, `soql_string` and `soql_datetime`.
    """
    text = f"SELECT {', '.join(fields)} FROM {obj}"  # noqa: S608 - names validated, values escaped (see above)
    if where:
        text += " WHERE " + " AND ".join(where)
    if order_by:
        text += f" ORDER BY {order_by}"
    if limit is not None:
        text += f" LIMIT {int(limit)}"
    return text


def soql_string(value: str) -> str:
    """A quoted SOQL string literal (backslash escapes, as SOQL reads them)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def soql_id(value: str) -> str:
    if not SALESFORCE_ID.match(value):
        raise ValueError(f"{value!r} is not a Salesforce id")
    return f"'{value}'"


def parse_time(value: Any) -> float | None:
    """Salesforce datetime ('2026-01-02T03:04:05.000+0000') or date ('2026-01-02') -> epoch seconds."""
    return _parse_time(value) if isinstance(value, str) else None


def iso_utc(ts: float) -> str:
    """Epoch seconds -> the ISO form Salesforce takes and gives back: 2026-01-02T03:04:05.000Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def get_path(record: Mapping[str, Any], path: str) -> Any:
    """`Title`, or one parent hop: `Account.Name` (None when the parent is empty)."""
    if "." not in path:
        return record.get(path)
    parent, _, name = path.partition(".")
    related = record.get(parent)
    if not isinstance(related, Mapping):
        return None
    return related.get(name)


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- score values


def canonical_written(engine_name: str, value: Any) -> str | None:
    """A score value read from Salesforce, as the canonical string the pipeline compares with.

    Numbers as integer strings when whole ("87", not "87.0"), datetimes as ISO UTC.
    """
    if value is None or value == "":
        return None
    if engine_name in NUMBER_FIELDS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    if engine_name in DATETIME_FIELDS:
        ts = parse_time(value)
        return iso_utc(ts) if ts is not None else None
    return str(value)


def to_salesforce(engine_name: str, value: str) -> Any:
    """An engine value (text) as Salesforce wants it: numbers as numbers, datetimes as ISO UTC."""
    if engine_name in NUMBER_FIELDS:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{engine_name} must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{engine_name} must be a finite number, not {value!r}")
        return int(number) if number.is_integer() else number
    if engine_name in DATETIME_FIELDS:
        try:
            ts = float(value)
        except ValueError:
            parsed = parse_time(value)
            if parsed is None:
                raise ValueError(f"{engine_name} must be a time (ISO 8601 or epoch seconds), not {value!r}") from None
            ts = parsed
        return iso_utc(ts)
    return value


# --------------------------------------------------------------------------- IN lists


def in_list_queries(template: str, ids: Sequence[str], *, base_url_chars: int = 80) -> Iterator[str]:
    """`template` with `{ids}` replaced by quoted id lists, each query's URL under MAX_URL_CHARS.

    Ids that are not Salesforce ids are dropped (they cannot match anything, and
    nothing else may reach the query text).
    """
    fixed = base_url_chars + len(quote_plus(template.replace("{ids}", "")))
    budget = MAX_URL_CHARS - fixed
    if budget < 100:
        raise ValueError("the query is too long to add any ids to it")
    chunk: list[str] = []
    used = 0
    seen: set[str] = set()
    for raw in ids:
        if not SALESFORCE_ID.match(raw) or raw in seen:
            continue
        seen.add(raw)
        cost = len(quote_plus(f"'{raw}',"))
        if chunk and used + cost > budget:
            yield template.replace("{ids}", ",".join(f"'{i}'" for i in chunk))
            chunk, used = [], 0
        chunk.append(raw)
        used += cost
    if chunk:
        yield template.replace("{ids}", ",".join(f"'{i}'" for i in chunk))


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- activities


def source_fields(source_name: str, source: Source, rules: Iterable[Rule]) -> list[str]:
    """Every field one activity object's query must select, each once, in a stable order."""
    wanted = ["Id", *dict.fromkeys(LINK_FIELDS[source_name].values())]
    wanted += source.time_fields
    wanted += source.attrs.values()
    for rule in rules:
        if rule.source == source_name:
            wanted += [c.field for c in rule.when]
    out: list[str] = []
    seen: set[str] = set()
    for name in wanted:
        if name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


def activity_from(
    source_name: str, source: Source, rules: Sequence[Rule], record: Mapping[str, Any], *, oldest: float, now: float
) -> Activity | None:
    """The engine activity one Task / Event / CampaignMember record stands for, or None.

    The first rule whose conditions all hold decides the kind; records no rule
    matches, and records dated outside [oldest, now], are not signals.
    """
    ts: float | None = None
    for name in source.time_fields:
        ts = parse_time(record.get(name))
        if ts is not None:
            break
    if ts is None or ts > now or ts < oldest:
        return None
    for rule in rules:
        if rule.source != source_name:
            continue
        if all(c.test(as_text(get_path(record, c.field))) for c in rule.when):
            attrs = {attr: text for attr, api in source.attrs.items() if (text := as_text(get_path(record, api)))}
            attrs["source"] = source_name
            return Activity(kind=rule.kind, ts=ts, attrs=attrs)
    return None
