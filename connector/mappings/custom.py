"""Custom profile fields: any CRM property, declared with a type in hubspot.yaml / salesforce.yaml.

    contact:                       # hubspot.yaml
      custom:
        occupation: {property: what_is_your_current_occupation, type: enumeration}
        total_visits: {property: totalvisits, type: number}

    objects:                       # salesforce.yaml
      Lead:
        custom:
          occupation: {field: Occupation__c, type: enumeration}

The name on the left is what scoring rules read (`field: occupation`); it must not be
one of the engine's own fields (map those under `fields`). `leadscore check` verifies
that the property exists in the CRM and that its CRM type fits the declared one.
Adapters hand values to the engine already read by type (`normalise`), so the engine
never sees vendor formats (HubSpot's millisecond dates, Salesforce's booleans).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from connector.domain import CUSTOM_FIELD_TYPES, PROFILE_FIELDS
from connector.engine.values import as_number

FieldType = Literal["text", "number", "date", "boolean", "enumeration"]
assert CUSTOM_FIELD_TYPES == ("text", "number", "date", "boolean", "enumeration")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,59}$")

# The CRM types each declared type may be read from. HubSpot: the property's `type`
# (properties API: string, number, date, datetime, enumeration, bool). Salesforce:
# the describe `type` of the field.
HUBSPOT_TYPES: dict[str, frozenset[str]] = {
    "text": frozenset({"string", "enumeration", "number", "phone_number", "date", "datetime", "bool"}),
    "number": frozenset({"number"}),
    "date": frozenset({"date", "datetime"}),
    "boolean": frozenset({"bool", "enumeration"}),  # older checkboxes are enumerations of true/false
    "enumeration": frozenset({"enumeration", "string", "bool"}),
}
SALESFORCE_TYPES: dict[str, frozenset[str]] = {
    "text": frozenset({"string", "textarea", "picklist", "multipicklist", "email", "phone", "url", "combobox",
                       "double", "int", "currency", "percent", "date", "datetime", "boolean", "id", "reference"}),
    "number": frozenset({"double", "int", "long", "currency", "percent"}),
    "date": frozenset({"date", "datetime"}),
    "boolean": frozenset({"boolean"}),
    "enumeration": frozenset({"picklist", "multipicklist", "combobox", "string", "boolean"}),
}

_TRUE = frozenset({"true", "yes", "1", "y", "on", "checked"})
_FALSE = frozenset({"false", "no", "0", "n", "off", "unchecked"})


def check_custom_name(name: str) -> str:
    """A pydantic after-validator for the name a custom field is read by in scoring rules."""
    if name in PROFILE_FIELDS:
        raise ValueError(f"'{name}' is an engine profile field already; map it under fields")
    if not _NAME.match(name):
        raise ValueError(f"'{name}' is not a field name (lower-case letters, digits and _, starting with a letter)")
    return name


def normalise(raw: Any, kind: str) -> Any:
    """A CRM value read as its declared type; None when empty. What cannot be read stays as it came,
    for the engine to name as a problem on the lead."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if kind == "number":
        number, _ = as_number(raw)
        return raw if number is None else number
    if kind == "boolean":
        if isinstance(raw, bool):
            return "true" if raw else "false"
        text = str(raw).strip().casefold()
        return "true" if text in _TRUE else "false" if text in _FALSE else raw
    if kind == "date":
        return _date(raw)
    return raw if isinstance(raw, str) else str(raw)


def _date(raw: Any) -> Any:
    """'YYYY-MM-DD' (UTC) from an ISO date or datetime, or epoch milliseconds (HubSpot's date properties)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        ms = float(raw)
    else:
        text = str(raw).strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return text
        if text.isdigit():
            ms = float(text)
        else:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                # Salesforce writes offsets without a colon (+0000)
                m = re.fullmatch(r"(.+)([+-]\d{2})(\d{2})", text)
                if m is None:
                    return raw
                try:
                    parsed = datetime.fromisoformat(f"{m.group(1)}{m.group(2)}:{m.group(3)}")
                except ValueError:
                    return raw
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC).strftime("%Y-%m-%d")
    if not math.isfinite(ms):
        return raw
    seconds = ms / 1000 if abs(ms) >= 1e11 else ms  # HubSpot gives milliseconds
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return raw


def declared_fields(folder: Path) -> dict[str, str]:
    """Custom field name -> type, as hubspot.yaml and salesforce.yaml in `folder` declare them
    (files that are absent declare nothing). MappingError when a file is wrong or the two disagree
    on a field's type."""
    from connector.mapfile import MappingError
    from connector.mappings.hubspot import load_hubspot_mapping
    from connector.mappings.salesforce import load_salesforce_mapping

    out: dict[str, str] = {}
    where: dict[str, str] = {}
    hubspot = folder / "hubspot.yaml"
    if hubspot.exists():
        for name, spec in load_hubspot_mapping(hubspot).contact.custom.items():
            out[name], where[name] = spec.type, str(hubspot)
    salesforce = folder / "salesforce.yaml"
    if salesforce.exists():
        mapping = load_salesforce_mapping(salesforce)
        for obj in mapping.objects.values():
            for name, sf in obj.custom.items():
                known = out.setdefault(name, sf.type)
                if known != sf.type:
                    raise MappingError(
                        str(salesforce), None, f"custom.{name}",
                        f"the field {name} is declared as {sf.type} here but as {known} in {where[name]}; "
                        "give it one type",
                    )
                where.setdefault(name, str(salesforce))
    return out
