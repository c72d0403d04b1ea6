"""Reading mappings/scoring.yaml into a compiled `ScoringModel`.

The schema (connector/mappings/scoring.py) checks each key on its own; here
come the checks that look across the file (rule names unique, values known to
the alias tables), the model version, and the compilation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connector.domain import PROFILE_FIELDS
from connector.engine.compiled import ScoringModel
from connector.engine.rules import alias_table
from connector.engine.values import fmt_number
from connector.mapfile import Loc, MappingError, dotted, read_yaml, validate
from connector.mappings.scoring import (
    CONDITION_TESTS,
    DOMAIN_FIELDS,
    ENGAGEMENT_KEYS,
    FIT_KEYS,
    FIT_TESTS,
    FieldSettings,
    ModelSettings,
    ScoringFile,
    Test,
    _suggest,
)

# Where an unknown key sits -> what may sit there instead.
_KEY_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^fit\[\d+\]\.fields$"),
        "a test reads one field; to test several in one rule, use all: or any: with a test per field, "
        "for example all: [{field: country, in: [DE]}, {field: employees, min: 200}]",
    ),
    (
        re.compile(r"^fit\[\d+\]\.[^.\[]+$"),
        f"a fit rule takes {', '.join(FIT_KEYS)} and one test: {', '.join(FIT_TESTS)}",
    ),
    (
        re.compile(r"^fit\[\d+\](\.not|\.(all|any)\[\d+\])+\.[^.\[]+$"),
        f"a test takes field and one test: {', '.join(FIT_TESTS)}",
    ),
    (
        re.compile(r"^engagement\[\d+\]\.where\.[^.\[]+(\.not|\.(all|any)\[\d+\])*\.[^.\[]+$"),
        f"a condition is one test: {', '.join(CONDITION_TESTS)}",
    ),
    (re.compile(r"^fields\.[^.\[]+\.[^.\[]+$"), f"a field takes {', '.join(FieldSettings.model_fields)}"),
    (re.compile(r"^engagement\[\d+\]\.[^.\[]+$"), f"an engagement rule takes {', '.join(ENGAGEMENT_KEYS)}"),
    (re.compile(r"^model\.[^.\[]+$"), f"model takes {', '.join(ModelSettings.model_fields)}"),
    (re.compile(r"^[^.\[]+$"), f"the file has {', '.join(ScoringFile.model_fields)}"),
)


def load_scoring(path: Path, custom_fields: Mapping[str, str] | None = None) -> ScoringModel:
    """Read, validate and compile a scoring file; MappingError (file, line, key) when it is wrong.

    `custom_fields` (name -> type) are the custom profile fields rules may read besides the engine's
    own; by default those hubspot.yaml and salesforce.yaml next to the file declare."""
    file = str(path)
    data, pos = read_yaml(path)
    try:
        spec = validate(data, pos, ScoringFile, file)
    except MappingError as exc:
        raise _with_hint(exc) from None
    if custom_fields is None:
        from connector.mappings.custom import declared_fields

        custom_fields = declared_fields(path.parent)
    for loc, problem in cross_check(spec, custom_fields):
        raise MappingError(file, pos.line_of(loc), dotted(loc), problem)
    return ScoringModel(spec, model_version(spec))


# Keys added to the file format after its first version: left out of the version hash while unused,
# so upgrading the connector does not change the version of an unchanged file (and rewrite every lead).
_LATER_FIT_KEYS = ("min", "max", "not", "all", "any")
_LATER_CONDITION_KEYS = ("range", *_LATER_FIT_KEYS)


def _drop_unused(node: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in node and node[key] is None:
            del node[key]


def model_version(spec: ScoringFile) -> str:
    """'label+hash': the hash is of the validated content, so comments and layout do not change it
    (a new version makes the connector rewrite every score in the CRM)."""
    dump = spec.model_dump(mode="json", by_alias=True)
    if not dump.get("fields"):
        dump.pop("fields", None)
    for rule in dump.get("fit", []):
        _drop_unused(rule, ("field", *_LATER_FIT_KEYS))
    for rule in dump.get("engagement", []):
        _drop_unused(rule, ("min_count",))
        for condition in rule.get("where", {}).values():
            _drop_unused(condition, _LATER_CONDITION_KEYS)
    if spec.probability.band_from == "points":
        dump.pop("probability", None)  # it changes what is written only when the band comes from it
    canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    return f"{spec.model.label}+{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def _with_hint(exc: MappingError) -> MappingError:
    if exc.problem != "unknown key" or not exc.key:
        return exc
    for pattern, hint in _KEY_HINTS:
        if pattern.match(exc.key):
            name = re.split(r"[.\]]", exc.key)[-1]
            return MappingError(exc.file, exc.line, exc.key, f"unknown key '{name}'; {hint}")
    return exc


def _known(name: str, custom: Mapping[str, str]) -> str | None:
    """None when `name` is a field rules may read, else why not."""
    if name in PROFILE_FIELDS or name in custom:
        return None
    known = PROFILE_FIELDS | frozenset(custom)
    declared = f"; custom fields declared in hubspot.yaml / salesforce.yaml: {', '.join(sorted(custom))}" if custom \
        else "; declare a custom field under contact.custom in hubspot.yaml or objects.*.custom in salesforce.yaml"
    return (f"unknown profile field '{name}'{_suggest(name, known)}; "
            f"known: {', '.join(sorted(PROFILE_FIELDS))}{declared}")


def _test_problems(node: Test, loc: Loc, inherited: str | None, custom: Mapping[str, str]) -> list[tuple[Loc, str]]:
    """Field names, domain and number tests of a fit test and the tests inside it."""
    out: list[tuple[Loc, str]] = []
    if node.field is not None:
        why = _known(node.field, custom)
        if why is not None:
            return [((*loc, "field"), why)]
    f = node.field or inherited
    op = node.test_name()
    if op == "not":
        assert node.not_ is not None
        return _test_problems(node.not_, (*loc, "not"), f, custom)
    if op in ("all", "any"):
        for j, kid in enumerate((node.all_ if op == "all" else node.any_) or []):
            out += _test_problems(kid, (*loc, op, j), f, custom)
        return out
    if f is None:
        return [(loc, f"this test ({op}) names no field; give field: here or on the rule")]
    if op == "domain_in" and f not in DOMAIN_FIELDS:
        fields = " or ".join(sorted(DOMAIN_FIELDS))
        return [((*loc, "domain_in"), f"domain_in reads a domain, so it applies to {fields}")]
    kind = custom.get(f)
    if op == "range" and kind is not None and kind != "number":
        key = "range" if node.range is not None else "min" if node.min is not None else "max"
        return [((*loc, key), f"{f} is declared as {kind}, so a number test cannot apply; declare it as number")]
    return out


def _alias_problems(
    node: Test, loc: Loc, inherited: str | None, known: Mapping[str, Mapping[str, str]]
) -> list[tuple[Loc, str]]:
    """Values of `equals` / `in` tests that the field's alias table does not know, nested tests included."""
    f = node.field or inherited
    out: list[tuple[Loc, str]] = []
    op = node.test_name()
    if op in ("not", "all", "any"):
        kids = [node.not_] if op == "not" else (node.all_ if op == "all" else node.any_) or []
        for j, kid in enumerate(kids):
            if kid is not None:
                out += _alias_problems(kid, (*loc, "not") if op == "not" else (*loc, op, j), f, known)
        return out
    canon = known.get(f) if f is not None else None
    if canon is None:
        return out
    values: list[Any] = [node.equals] if node.equals is not None else list(node.in_ or [])
    for j, value in enumerate(values):
        if isinstance(value, str) and " ".join(value.split()).casefold() not in canon:
            where: Loc = (*loc, "equals") if node.equals is not None else (*loc, "in", j)
            out.append((
                where,
                f"'{value}' is not a known {str(f).replace('_', ' ')}; add it under aliases.{f} or fix the spelling",
            ))
    return out


def cross_check(spec: ScoringFile, custom: Mapping[str, str] | None = None) -> list[tuple[Loc, str]]:
    """Problems that involve more than one key, each with where it is; the first is reported.
    `custom`: the custom profile fields (name -> type) the CRM mapping files declare."""
    custom = custom or {}
    out: list[tuple[Loc, str]] = []
    for name in spec.fields:
        why = _known(name, custom)
        if why is not None:
            out.append((("fields", name), why))
    for name in spec.aliases:
        why = _known(name, custom)
        if why is not None:
            out.append((("aliases", name), why))
    for name, setting in spec.fields.items():
        if setting.closed and name not in spec.aliases:
            out.append((("fields", name, "closed"), f"closed needs a list of values under aliases.{name}"))
    for i, rule in enumerate(spec.fit):
        out += _test_problems(rule, ("fit", i), None, custom)
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
        out += _alias_problems(rule, ("fit", i), None, known)
    return out
