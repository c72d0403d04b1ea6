"""`leadscore sandbox --import FILE.csv`: the sandbox HubSpot with the contacts of a CSV export.

Each row becomes a HubSpot contact (created as if through the API, so list, search, batch read and
writes treat it like any other), each column a contact property:
- a column whose header is a known property's internal name or label ("email" or "Email",
  "lifecyclestage" or "Lifecycle Stage", "hs_lifecyclestage_customer_date" or "Became a Customer
  Date", ...) fills that property; read-only roll-ups (e.g. "Number of Pageviews") are filled too:
  the import is the CRM's own history, not an API write;
- any other column becomes a custom property (group contactinformation) named after the header
  (lowercase, underscores) of a type inferred from its values: bool (true/false, yes/no), number,
  datetime (ISO 8601 or YYYY-MM-DD), enumeration (a few distinct values repeated) or string; all
  of them are reported in one summary line;
- an id column ("id", "Record ID", "hs_object_id", "Contact ID"; positive whole numbers, each once)
  gives the contact its id; without it contacts are numbered 1, 2, ... in file order. Email is
  optional.

Outcomes for `backtest` and `suggest` come from columns like any other: `lifecyclestage` with
`hs_lifecyclestage_<stage>_date` and `hs_lead_status` work with the shipped mappings/hubspot.yaml;
a column of its own (e.g. converted + converted_date) becomes a custom property to name in
`outcomes.property` of hubspot.yaml.

A row whose value does not fit its property (an option the property lacks, a word in a number
column) is reported and skipped; the others are imported. A file that cannot be read as a CSV
export raises ImportError_ with one sentence.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sandbox.hubspot import HubSpotCrm, PropertyDef, check_value, iso_ms, parse_time_ms

ID_HEADERS: Final = ("id", "record id", "hs_object_id", "contact id", "record_id")
MAX_ROWS: Final = 1_000_000
MAX_ENUM_OPTIONS: Final = 20
_BOOLS: Final = {"true": "true", "false": "false", "yes": "true", "no": "false"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


class CsvImportError(ValueError):
    """The file cannot be imported; the message is one sentence for the user."""


@dataclass
class ImportSummary:
    path: str
    imported: int = 0
    custom: list[tuple[str, str]] = field(default_factory=list)  # (property name, inferred type)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row number in the file, why)

    def line(self) -> str:
        """One line for the terminal."""
        text = f"imported {self.imported} contact{'s' if self.imported != 1 else ''} from {self.path}"
        if self.custom:
            made = ", ".join(f"{name} ({kind})" for name, kind in self.custom)
            text += f"; {len(self.custom)} column{'s' if len(self.custom) > 1 else ''} became custom properties: {made}"
        else:
            text += "; every column is a known property"
        if self.skipped:
            shown = "; ".join(f"row {n}: {why}" for n, why in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            text += f"; skipped {len(self.skipped)} row{'s' if len(self.skipped) > 1 else ''} ({shown}{more})"
        return text


def property_name(header: str) -> str:
    """A custom property's internal name from a column header: lowercase letters, digits, underscores."""
    name = re.sub(r"[^a-z0-9]+", "_", header.strip().lower()).strip("_")
    if not name or not name[0].isalpha():
        name = "col_" + name
    return name[:100]


def infer_type(values: Sequence[str]) -> tuple[str, str, list[str]]:
    """(type, fieldType, enumeration options) for a column from its non-empty values."""
    seen = [v.strip() for v in values if v.strip()]
    if not seen:
        return "string", "text", []
    if all(v.lower() in _BOOLS for v in seen):
        return "bool", "booleancheckbox", []
    if all(_NUMBER.match(v) for v in seen):
        return "number", "number", []
    if all(_DATE.match(v) for v in seen):
        return "datetime", "date", []
    distinct = list(dict.fromkeys(seen))
    if len(distinct) <= MAX_ENUM_OPTIONS and len(distinct) * 2 <= len(seen) and max(map(len, distinct)) <= 100:
        return "enumeration", "select", sorted(distinct)
    return "string", "textarea" if max(map(len, seen)) > 255 else "text", []


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise CsvImportError(f"{path} does not exist or is not a file.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CsvImportError(f"{path} is not UTF-8 text: export it as CSV (UTF-8) and try again.") from None
    if "\x00" in text:
        raise CsvImportError(f"{path} looks like a binary file, not a CSV export.")
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise CsvImportError(f"{path} is not a readable CSV file ({exc}).") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise CsvImportError(f"{path} is empty: it needs a header row and one row per contact.")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise CsvImportError(f"{path}: column {header.index('') + 1} of the header row has no name.")
    dupes = sorted({h for h in header if [x.lower() for x in header].count(h.lower()) > 1})
    if dupes:
        raise CsvImportError(f"{path}: the header names the column {dupes[0]!r} more than once.")
    data = rows[1:]
    if not data:
        raise CsvImportError(f"{path} has a header row but no contacts.")
    if len(data) > MAX_ROWS:
        raise CsvImportError(f"{path} has {len(data):,} rows; the sandbox imports at most {MAX_ROWS:,}.")
    for n, row in enumerate(data, start=2):
        if len(row) > len(header):
            raise CsvImportError(f"{path}: row {n} has {len(row)} values but the header names {len(header)} columns.")
    return header, [row + [""] * (len(header) - len(row)) for row in data]


def _known(crm: HubSpotCrm) -> dict[str, str]:
    """lowercased internal name or label -> internal name, for every contact property."""
    out: dict[str, str] = {}
    for name, d in crm.contact_props.items():
        out.setdefault(d.label.lower(), name)
    for name in crm.contact_props:
        out[name.lower()] = name
    return out


def _ids(path: Path, header: list[str], rows: list[list[str]]) -> tuple[int | None, list[int] | None]:
    col = next((k for k, h in enumerate(header) if h.lower() in ID_HEADERS), None)
    if col is None:
        return None, None
    ids: list[int] = []
    for n, row in enumerate(rows, start=2):
        value = row[col].strip()
        if not value.isdigit() or int(value) < 1:
            raise CsvImportError(f"{path}: row {n} has the id {value!r}; ids must be positive whole numbers.")
        ids.append(int(value))
    if len(set(ids)) != len(ids):
        first = next(i for i in ids if ids.count(i) > 1)
        raise CsvImportError(f"{path}: the id {first} appears on more than one row; each contact needs its own.")
    return col, ids


def import_csv(crm: HubSpotCrm, path: Path | str) -> ImportSummary:
    """Create one contact per row of `path` in the sandbox HubSpot `crm` (see the module docstring)."""
    path = Path(path)
    header, rows = _read(path)
    id_col, ids = _ids(path, header, rows)
    known = _known(crm)
    summary = ImportSummary(str(path))
    columns: list[tuple[int, PropertyDef]] = []
    for k, h in enumerate(header):
        if k == id_col:
            continue
        name = known.get(h.lower())
        if name is None:
            name = property_name(h)
            if name in crm.contact_props:  # two headers that differ only in punctuation
                raise CsvImportError(f"{path}: the column {h!r} would become the property {name}, which exists.")
            ptype, ftype, choices = infer_type([row[k] for row in rows])
            d = PropertyDef(
                name, h, ptype, ftype, "contactinformation", options=[
                    {"label": o, "value": o, "displayOrder": j, "hidden": False} for j, o in enumerate(choices)
                ], hubspot_defined=False,
            )  # fmt: skip
            with crm.lock:
                crm.contact_props[name] = d
            summary.custom.append((name, ptype))
            known[name] = name
        columns.append((k, crm.contact_props[name]))
    order = sorted(range(len(rows)), key=lambda r: ids[r]) if ids is not None else range(len(rows))
    for r in order:
        row = rows[r]
        values: dict[str, str] = {}
        why = None
        for k, d in columns:
            raw = row[k].strip()
            if not raw:
                continue
            if d.type == "bool":
                raw = _BOOLS.get(raw.lower(), raw)
            allowed = d.option_values() if d.type == "enumeration" and d.options else None
            problem = check_value(d.type, d.field_type, allowed, d.name, raw)
            if problem is not None:
                why = f"{d.name}: {problem['message']}"
                break
            if d.type in ("date", "datetime"):
                ms = parse_time_ms(raw)
                raw = iso_ms(ms) if ms is not None else raw
            values[d.name] = raw
        if why is not None:
            summary.skipped.append((r + 2, why))
            continue
        crm.store.create("contacts", values, first_key=(ids[r] - 1) if ids is not None else crm.pop.n)
        summary.imported += 1
    if not summary.imported:
        first, reason = summary.skipped[0]
        raise CsvImportError(f"{path}: no row could be imported (row {first}: {reason}).")
    return summary
