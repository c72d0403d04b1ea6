"""Reading mappings/scoring.yaml into a compiled `ScoringModel`.

The schema (connector/mappings/scoring.py) checks each key on its own; here
come the checks that look across the file (rule names unique, values known to
the alias tables), the model version, and the compilation.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from connector.engine.compiled import ScoringModel
from connector.engine.rules import alias_table
from connector.engine.values import fmt_number
from connector.mapfile import Loc, MappingError, dotted, read_yaml, validate
from connector.mappings.scoring import (
    ENGAGEMENT_KEYS,
    FIT_KEYS,
    FIT_OPERATORS,
    TEXT_OPERATORS,
    ModelSettings,
    ScoringFile,
)

# Where an unknown key sits -> what may sit there instead.
_KEY_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^fit\[\d+\]\.[^.\[]+$"),
        f"a fit rule takes {', '.join(FIT_KEYS)} and one test: {', '.join(FIT_OPERATORS)}",
    ),
    (
        re.compile(r"^engagement\[\d+\]\.where\.[^.\[]+\.[^.\[]+$"),
        f"a condition is one test: {', '.join(TEXT_OPERATORS)}",
    ),
    (re.compile(r"^engagement\[\d+\]\.[^.\[]+$"), f"an engagement rule takes {', '.join(ENGAGEMENT_KEYS)}"),
    (re.compile(r"^model\.[^.\[]+$"), f"model takes {', '.join(ModelSettings.model_fields)}"),
    (re.compile(r"^[^.\[]+$"), f"the file has {', '.join(ScoringFile.model_fields)}"),
)


def load_scoring(path: Path) -> ScoringModel:
    """Read, validate and compile a scoring file; MappingError (file, line, key) when it is wrong."""
    file = str(path)
    data, pos = read_yaml(path)
    try:
        spec = validate(data, pos, ScoringFile, file)
    except MappingError as exc:
        raise _with_hint(exc) from None
    for loc, problem in cross_check(spec):
        raise MappingError(file, pos.line_of(loc), dotted(loc), problem)
    return ScoringModel(spec, model_version(spec))


def model_version(spec: ScoringFile) -> str:
    """'label+hash': the hash is of the validated content, so comments and layout do not change it
    (a new version makes the connector rewrite every score in the CRM)."""
    # The `probability:` section changes what is written only when the band comes from it.
    skip = {"probability"} if spec.probability.band_from == "points" else set()
    content = spec.model_dump(mode="json", by_alias=True, exclude=skip)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return f"{spec.model.label}+{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def _with_hint(exc: MappingError) -> MappingError:
    if exc.problem != "unknown key" or not exc.key:
        return exc
    for pattern, hint in _KEY_HINTS:
        if pattern.match(exc.key):
            name = re.split(r"[.\]]", exc.key)[-1]
            return MappingError(exc.file, exc.line, exc.key, f"unknown key '{name}'; {hint}")
    return exc


def cross_check(spec: ScoringFile) -> list[tuple[Loc, str]]:
    """Problems that involve more than one key, each with where it is; the first is reported."""
    out: list[tuple[Loc, str]] = []
    settings = spec.model
    top = settings.caps.total.max
    if top is not None and settings.bands.hot > top:
        out.append((
            ("model", "bands", "hot"),
            f"thresholds out of order: hot ({settings.bands.hot}) is above the total cap ({fmt_number(top)})",
        ))
    seen: dict[str, Loc] = {}
    names: list[tuple[str, int, str]] = [("fit", i, r.name) for i, r in enumerate(spec.fit)]
    names += [("engagement", i, r.name) for i, r in enumerate(spec.engagement)]
    for group, i, rule_name in names:
        loc: Loc = (group, i, "name")
        first = seen.setdefault(rule_name.casefold(), loc)
        if first != loc:
            out.append((loc, f"the rule name '{rule_name}' is already used at {dotted(first)}"))
    for name, table in spec.aliases.items():
        owner: dict[str, str] = {}
        for canonical, variants in table.items():
            for j, spelling in enumerate([canonical, *variants]):
                key = " ".join(spelling.split()).casefold()
                other = owner.setdefault(key, canonical)
                if other != canonical:
                    spot: Loc = ("aliases", name, canonical) if j == 0 else ("aliases", name, canonical, j - 1)
                    out.append((spot, f"'{spelling}' is listed under both {other} and {canonical}"))
    known = {name: alias_table(table) for name, table in spec.aliases.items()}
    for i, rule in enumerate(spec.fit):
        canon = known.get(rule.field)
        if canon is None:
            continue
        values: list[Any] = [rule.equals] if rule.equals is not None else list(rule.in_ or [])
        for j, value in enumerate(values):
            if isinstance(value, str) and " ".join(value.split()).casefold() not in canon:
                where = ("fit", i, "equals") if rule.equals is not None else ("fit", i, "in", j)
                out.append((
                    where,
                    f"'{value}' is not a known {rule.field.replace('_', ' ')}; "
                    f"add it under aliases.{rule.field} or fix the spelling",
                ))
    return out
