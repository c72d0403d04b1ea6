"""Compiling rule tests into closures, once, at load time.

A test is a function of a `Reading` (one field or attribute, read every way a
test might need it) that returns the detail a rep sees when it passes
("CEO", "employees 420", "gmail.com") and None when it does not.

Fit rules are grouped by profile field: a `FieldPlan` reads the field once and
runs all its tests; the result for a given text is cached, since a population
repeats the same job titles, industries and countries over and over.

Engagement rules are grouped by activity kind: a `KindPlan` turns an
activity's relevant attributes into the tuple of rules it matches, cached per
distinct attribute values (urls, form names), so the per-event work is a few
dictionary look-ups.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connector.engine.result import Contribution, phrase
from connector.engine.values import as_number, as_text, clip, domain_of, fmt_number, show
from connector.mappings.scoring import FitRule, Operators

# Caches are cleared when they grow past this many distinct values, so a
# long-running worker fed unbounded garbage keeps bounded memory.
CACHE_LIMIT = 100_000


@dataclass(slots=True)
class Reading:
    text: str | None  # the value as text, whitespace collapsed; None when empty
    norm: str | None  # casefolded text, mapped to its canonical alias when the field has aliases
    number: float | None = None
    domain: str | None = None


Check = Callable[[Reading], str | None]


def word_regex(words: list[str]) -> re.Pattern[str]:
    """Whole words or phrases, case-insensitive; 'head of' matches 'Head of Test', not 'Ahead of'."""
    alternatives = "|".join(
        r"\s+".join(re.escape(part) for part in w.split()) for w in sorted(words, key=len, reverse=True)
    )
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def compile_check(op: str, arg: Any, label: str, canon: Callable[[str], str]) -> Check:
    """One operator and its argument as a closure. `canon` maps a text to its canonical alias."""
    if op == "equals":
        if isinstance(arg, str):
            want = canon(arg)
            return lambda r: clip(r.text) if r.norm == want and r.text is not None else None
        wanted = float(arg)
        return lambda r: f"{label} {fmt_number(r.number)}" if r.number == wanted else None
    if op == "in":
        if all(isinstance(v, str) for v in arg):
            texts = frozenset(canon(v) for v in arg)
            return lambda r: clip(r.text) if r.norm in texts and r.text is not None else None
        numbers = frozenset(float(v) for v in arg)
        return lambda r: f"{label} {fmt_number(r.number)}" if r.number in numbers else None
    if op == "range":
        lo = float("-inf") if arg.min is None else float(arg.min)
        hi = float("inf") if arg.max is None else float(arg.max)

        def in_range(r: Reading) -> str | None:
            n = r.number
            return f"{label} {fmt_number(n)}" if n is not None and lo <= n <= hi else None

        return in_range
    if op == "contains":
        parts = sorted({p.casefold() for p in ([arg] if isinstance(arg, str) else arg)}, key=len, reverse=True)
        anywhere = re.compile("|".join(re.escape(p) for p in parts))

        def contains(r: Reading) -> str | None:
            t = r.text
            if t is None:
                return None
            m = anywhere.search(t.casefold())
            return None if m is None else m.group(0)

        return contains
    if op in ("matches", "words"):
        pattern = re.compile(arg, re.IGNORECASE) if op == "matches" else word_regex(arg)

        def search(r: Reading) -> str | None:
            if r.text is None:
                return None
            m = pattern.search(r.text)
            if m is None:
                return None
            return clip(m.group(0) or r.text)

        return search
    if op == "present":
        return lambda r: clip(r.text) if r.text is not None else None
    if op == "missing":
        return lambda r: "" if r.text is None else None
    if op == "domain_in":
        domains = frozenset(d.strip().casefold().lstrip("@") for d in arg)
        subdomains = tuple("." + d for d in domains)

        def in_domains(r: Reading) -> str | None:
            d = r.domain
            if d is None:
                return None
            return d if d in domains or d.endswith(subdomains) else None

        return in_domains
    raise ValueError(f"unknown operator {op}")  # pragma: no cover - the schema closes the vocabulary


def checks_of(rule: Operators, label: str, canon: Callable[[str], str]) -> Check:
    """The single test a validated rule or condition carries."""
    (op,) = rule.operators()
    arg = getattr(rule, "in_" if op == "in" else op)
    return compile_check(op, arg, label, canon)


def _same(text: str) -> str:
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------- fit: per field

# A passed fit test: (rule slot, its contribution, its phrase for the reasons text or None).
Passed = tuple[int, Contribution, str | None]
# What one field gives: the tests it passed, and what could not be read.
FieldResult = tuple[tuple[Passed, ...], tuple[str, ...]]


@dataclass(slots=True)
class FieldPlan:
    """Every fit test on one profile field, and how the field must be read for them.

    Results are cached per distinct text, contributions included: a population
    repeats its job titles and countries, and a Contribution is immutable.
    """

    field: str
    tests: tuple[tuple[int, Check, FitRule], ...]
    needs_number: bool
    needs_domain: bool
    aliases: Mapping[str, str] | None  # any spelling, casefolded -> canonical, casefolded
    cache: dict[str, FieldResult] = dataclasses.field(default_factory=dict)
    none_result: FieldResult = ((), ())
    # Only domain tests: the result depends on the domain alone, so cache by it (emails are unique).
    by_domain: bool = False

    def __post_init__(self) -> None:
        self.none_result = self.evaluate(None)
        self.by_domain = all(rule.domain_in is not None for _, _, rule in self.tests)

    def evaluate(self, raw: Any) -> FieldResult:
        name = self.field
        problems: list[str] = []
        text, problem = as_text(raw)
        if problem is not None:
            return (), (f"{name}: {problem}",)
        norm = None if text is None else text.casefold()
        if norm is not None and self.aliases is not None:
            canonical = self.aliases.get(norm)
            if canonical is None:
                problems.append(f"{name}: {show(raw)} is not a known {name.replace('_', ' ')}")
            norm = canonical
        reading = Reading(text, norm)
        if self.needs_number and raw is not None:
            reading.number, problem = as_number(raw)
            if problem is not None:
                problems.append(f"{name}: {problem}")
        if self.needs_domain and text is not None:
            reading.domain, problem = domain_of(text, name)
            if problem is not None:
                problems.append(f"{name}: {problem}")
        matched = []
        for slot, check, rule in self.tests:
            detail = check(reading)
            if detail is not None:
                points = float(rule.points)
                matched.append((
                    slot,
                    Contribution(rule.name, "fit", points, detail, rule.bant),
                    phrase(points, rule.name, detail),
                ))
        return tuple(matched), tuple(problems)

    def read(self, raw: Any) -> FieldResult:
        """The result for a value; the scorer looks in `cache` itself first for text values."""
        if raw is None:
            return self.none_result
        kind = type(raw)
        if kind is not str:
            if kind is not int and kind is not float:
                return self.evaluate(raw)
            hit = self.evaluate(raw)  # a number: cached as itself (1 and 1.0 read the same)
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            self.cache[raw] = hit  # type: ignore[index]
            return hit
        key = raw
        if self.by_domain:
            at = raw.rfind("@")
            if at <= 0:
                return self.evaluate(raw)
            key = raw[at:].casefold()
            shared = self.cache.get(key)
            if shared is not None:
                return shared
        hit = self.evaluate(raw)
        if self.by_domain and hit[1]:
            return hit  # the problem names the whole address: do not share it
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = hit
        return hit


def alias_table(spellings: Mapping[str, list[str]]) -> dict[str, str]:
    """canonical -> spellings, as in the file, into casefolded spelling -> casefolded canonical."""
    table: dict[str, str] = {}
    for canonical, variants in spellings.items():
        c = _same(canonical)
        table[c] = c
        for v in variants:
            table[_same(v)] = c
    return table


def fit_plans(rules: list[FitRule], aliases: Mapping[str, Mapping[str, str]]) -> tuple[FieldPlan, ...]:
    by_field: dict[str, list[tuple[int, FitRule]]] = {}
    for slot, rule in enumerate(rules):
        by_field.setdefault(rule.field, []).append((slot, rule))
    plans = []
    for name, entries in by_field.items():
        table = aliases.get(name)

        def canon(text: str, table: Mapping[str, str] | None = table) -> str:
            t = _same(text)
            return table.get(t, t) if table is not None else t

        label = name.replace("_", " ")
        tests = tuple((slot, checks_of(rule, label, canon), rule) for slot, rule in entries)
        needs_number = any(
            rule.range is not None
            or (rule.equals is not None and not isinstance(rule.equals, str))
            or (rule.in_ is not None and not isinstance(rule.in_[0], str))
            for _, rule in entries
        )
        needs_domain = any(rule.domain_in is not None for _, rule in entries)
        plans.append(FieldPlan(name, tests, needs_number, needs_domain, table))
    return tuple(plans)


# ---------------------------------------------------------- engagement: per kind

# What a KindPlan keys its cache by: no attribute, one, or several.
KeyAttrs = str | tuple[str, ...] | None


@dataclass(slots=True)
class ActivityRule:
    slot: int
    conditions: tuple[tuple[str, Check], ...]


class ClassTable:
    """Interns tuples of rule slots as small ints, shared by all kinds of one model."""

    def __init__(self) -> None:
        self.slots: list[tuple[int, ...]] = []
        self._ids: dict[tuple[int, ...], int] = {}
        self._lock = threading.Lock()

    def intern(self, slots: tuple[int, ...]) -> int:
        if not slots:
            return -1
        with self._lock:
            cid = self._ids.get(slots)
            if cid is None:
                cid = self._ids[slots] = len(self.slots)
                self.slots.append(slots)
            return cid


@dataclass(slots=True)
class KindPlan:
    """The engagement rules of one activity kind."""

    key_attrs: KeyAttrs
    rules: tuple[ActivityRule, ...]
    classes: ClassTable
    cache: dict[Any, int] = dataclasses.field(default_factory=dict)  # by the one deciding value
    multi_cache: dict[tuple[Any, ...], int] = dataclasses.field(default_factory=dict)  # by several

    def classify(self, attrs: Mapping[str, Any]) -> int:
        """The class id of the rules these attributes match; -1 for none."""
        readings: dict[str, Reading] = {}
        matched = []
        for rule in self.rules:
            for attr, check in rule.conditions:
                reading = readings.get(attr)
                if reading is None:
                    text, _ = as_text(attrs.get(attr))
                    reading = readings[attr] = Reading(text, None if text is None else text.casefold())
                if check(reading) is None:
                    break
            else:
                matched.append(rule.slot)
        return self.classes.intern(tuple(matched))


def kind_plans(
    rules: list[tuple[int, str, tuple[tuple[str, Check], ...]]],
) -> tuple[dict[str, KindPlan], ClassTable]:
    """(slot, kind, conditions) triples into one plan per kind."""
    classes = ClassTable()
    by_kind: dict[str, list[ActivityRule]] = {}
    for slot, kind, conditions in rules:
        by_kind.setdefault(kind, []).append(ActivityRule(slot, conditions))
    plans = {}
    for kind, entries in by_kind.items():
        attrs = sorted({a for r in entries for a, _ in r.conditions})
        key: KeyAttrs = None if not attrs else attrs[0] if len(attrs) == 1 else tuple(attrs)
        plans[kind] = KindPlan(key, tuple(entries), classes)
    return plans, classes
