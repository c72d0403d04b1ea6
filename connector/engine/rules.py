"""Compiling rule tests into closures, once, at load time.

A test is a function of a `Reading` (one field or attribute, read every way a
test might need it) that returns the detail a rep sees when it passes
("CEO", "employees 420", "gmail.com") and None when it does not.

Fit rules are grouped by profile field: a `FieldPlan` reads the field once and
runs all its tests; the result for a given text is cached, since a population
repeats the same job titles, industries and countries over and over. A test
made of tests (`not`, `all`, `any`) on one field compiles into one check on
that field; one that spans several fields becomes a `Combo` over "leaves",
each leaf a single-field check run (and cached) by its field's plan.

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
from itertools import islice
from typing import Any, TypeVar

from connector.engine.result import Contribution, phrase
from connector.engine.values import PLACEHOLDERS, as_number, as_text, clip, domain_of, fmt_number, show
from connector.mappings.scoring import COMBINATORS, Condition, FieldSettings, FitRule, Operators, Test

# A cache holding this many distinct values forgets its older half (remember()), so a long-running
# worker fed endless new values keeps bounded memory.
CACHE_LIMIT = 20_000
# The bound of a profile field read as a number (employees, annual revenue). Such values repeat little
# (each company has its own: a hit is mostly another contact of the same company) and each entry holds
# its own contribution and phrase (about 430 bytes). At 8,000 these two caches and the e-mail domains a
# worker had seen were most of its growth with the portal (bench/sync.py --rate 10000 --incremental 0,
# pool child: 104.1-105.7 MB at 10,000 contacts, 113.1-113.3 at 100,000; 105.1-105.7 with every cache
# held to 64 entries): a cache this size is filled only by a big portal. At 2,048 both fill by 10,000
# to 25,000 contacts a worker. The price: bench/engine.py's employees (6,379 distinct values) are
# evaluated 18,155 times instead of 6,379, 3 % of the pure-Python engine's time and none measurable of
# the compiled one's.
NUMBER_CACHE_LIMIT = 2_048

X = TypeVar("X")  # what a combined test reads: a field's Reading, or the leaves passed across fields
K = TypeVar("K")
V = TypeVar("V")


def remember(cache: dict[K, V], key: K, value: V, limit: int = CACHE_LIMIT) -> V:
    """`cache[key] = value`; returns `value`. A cache holding `limit` entries first forgets the
    older half (a dict keeps its keys in the order they came): a population with more distinct values
    than that (campaign-tagged urls) keeps finding the half it saw last, where clearing it all found nothing."""
    if len(cache) >= limit:
        for old in list(islice(cache, limit // 2)):
            cache.pop(old, None)  # another thread may have taken it out already
    cache[key] = value
    return value


def any_of(checks: tuple[Callable[[X], str | None], ...]) -> Callable[[X], str | None]:
    """`any:` of tests: the detail of the first that passes, None when none does."""

    def first(x: X) -> str | None:
        for check in checks:
            detail = check(x)
            if detail is not None:
                return detail
        return None

    return first


def all_of(checks: tuple[Callable[[X], str | None], ...], clip_at: int | None = None) -> Callable[[X], str | None]:
    """`all:` of tests: their distinct details joined (clipped to `clip_at`), None when one fails."""

    def every(x: X) -> str | None:
        details: list[str] = []
        for check in checks:
            detail = check(x)
            if detail is None:
                return None
            if detail and detail not in details:
                details.append(detail)
        joined = ", ".join(details)
        return joined if clip_at is None else clip(joined, clip_at)

    return every


@dataclass(slots=True)
class Reading:
    text: str | None  # the value as text, whitespace collapsed; None when empty
    norm: str | None  # casefolded text, mapped to its canonical alias when the field has aliases
    number: float | None = None
    domain: str | None = None
    folded: str | None = None  # casefolded text (before any alias), when the reader made it already


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
        lo = float("-inf") if arg[0] is None else float(arg[0])
        hi = float("inf") if arg[1] is None else float(arg[1])

        def in_range(r: Reading) -> str | None:
            n = r.number
            return f"{label} {fmt_number(n)}" if n is not None and lo <= n <= hi else None

        return in_range
    if op == "contains":
        parts = sorted({p.casefold() for p in ([arg] if isinstance(arg, str) else arg)}, key=len, reverse=True)
        anywhere = re.compile("|".join(re.escape(p) for p in parts))

        def contains(r: Reading) -> str | None:
            f = r.folded
            if f is None:
                t = r.text
                if t is None:
                    return None
                f = t.casefold()
            m = anywhere.search(f)
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
    """The test a validated rule, test or condition carries, `not` / `all` / `any` included, as one check
    on one field or attribute."""
    op = rule.test_name()
    if op in COMBINATORS:
        kids = _children(rule)
        if op == "not":
            inner = checks_of(kids[0], label, canon)

            def negated(r: Reading) -> str | None:
                if inner(r) is not None:
                    return None
                return clip(r.text) if r.text is not None else f"no {label}"

            return negated
        checks = tuple(checks_of(k, label, canon) for k in kids)
        return any_of(checks) if op == "any" else all_of(checks)
    if op == "range":
        return compile_check(op, rule.bounds(), label, canon)
    return compile_check(op, getattr(rule, "in_" if op == "in" else op), label, canon)


def _children(node: Operators) -> list[Any]:
    if isinstance(node, Test | Condition):
        if node.not_ is not None:
            return [node.not_]
        return list(node.all_ or node.any_ or [])
    return []


def _ops(node: Operators) -> list[str]:
    """Every operator in a test and the tests inside it."""
    return [node.test_name(), *(op for k in _children(node) for op in _ops(k))]


def needs_number(node: Operators) -> bool:
    """Whether a test (or one inside it) reads its value as a number."""
    if node.test_name() == "range":
        return True
    if node.equals is not None and not isinstance(node.equals, str):
        return True
    if node.in_ is not None and not isinstance(node.in_[0], str):
        return True
    return any(needs_number(k) for k in _children(node))


def needs_domain(node: Operators) -> bool:
    return "domain_in" in _ops(node)


def _same(text: str) -> str:
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------- fit: per field

# A passed fit test: (rule slot, its contribution, its phrase for the reasons text or None).
Passed = tuple[int, Contribution, str | None]
# A passed leaf of a test across several fields: (leaf id, detail).
Leaf = tuple[int, str]
# What one field gives: the tests it passed, what could not be read, the leaves it passed.
FieldResult = tuple[tuple[Passed, ...], tuple[str, ...], tuple[Leaf, ...]]


_PASSED_NONE: FieldResult = ((), (), ())


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
    none_result: FieldResult = ((), (), ())
    # Only domain tests: the result depends on the domain alone, so cache by it (emails are unique).
    by_domain: bool = False
    # Leaves of tests across several fields that read this field: (leaf id, check).
    leaves: tuple[tuple[int, Check], ...] = ()
    # Values that mean "not answered" here (casefolded, spaces collapsed): read as empty.
    blank: frozenset[str] = frozenset()
    # With aliases: report a value the table does not know as a problem.
    closed: bool = False
    # By domain, with no aliases and no "not answered" values: every domain the tests name, and the
    # suffixes of their subdomains. A new domain that is none of them passes no test (read() neither
    # evaluates nor caches it: most of a population's domains are such first sightings).
    domains: frozenset[str] | None = None
    subdomains: tuple[str, ...] = ()
    # How many values `cache` holds before it forgets its older half (smaller for a field read as a number).
    limit: int = CACHE_LIMIT

    def __post_init__(self) -> None:
        self.none_result = self.evaluate(None)
        self.limit = NUMBER_CACHE_LIMIT if self.needs_number else CACHE_LIMIT
        self.by_domain = not self.leaves and all(rule.domain_in is not None for _, _, rule in self.tests)
        if self.by_domain and self.field == "email" and self.aliases is None and not self.blank:
            # as compile_check reads them
            self.domains = frozenset(
                d.strip().casefold().lstrip("@") for _, _, rule in self.tests for d in rule.domain_in or ()
            )
            self.subdomains = tuple("." + d for d in self.domains)

    def evaluate(self, raw: Any) -> FieldResult:
        name = self.field
        problems: list[str] = []
        text, problem = as_text(raw)
        if problem is not None:
            return (), (f"{name}: {problem}",), ()
        norm = None if text is None else text.casefold()
        if norm is not None and norm in self.blank:
            raw = text = norm = None
        if norm is not None and self.aliases is not None:
            canonical = self.aliases.get(norm)
            if canonical is None and self.closed:
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
        leaves = []
        for leaf, check in self.leaves:
            detail = check(reading)
            if detail is not None:
                leaves.append((leaf, detail))
        return tuple(matched), tuple(problems), tuple(leaves)

    def read(self, raw: Any) -> FieldResult:
        """The result for a value; the scorer looks in `cache` itself first for text values."""
        if raw is None:
            return self.none_result
        kind = type(raw)
        if kind is not str:
            if kind is not int and kind is not float:
                return self.evaluate(raw)
            # a number: cached as itself (1 and 1.0 read the same)
            return remember(self.cache, raw, self.evaluate(raw), self.limit)  # type: ignore[arg-type]
        text: str = raw  # typed: compiled, its slices and most of its methods are then direct calls
        key = text
        if self.by_domain:
            at = text.rfind("@")
            # no name before the @ (once spaces are collapsed): a problem. The first character first: a
            # slice of the name is a new string, and the names that start with a space are few
            if at <= 0 or (text[0].isspace() and text[:at].isspace()):
                return self.evaluate(raw)
            key = text[at:].casefold()
            shared = self.cache.get(key)
            if shared is not None:
                return shared
            if self.domains is not None and " ".join(text.split()) == text:
                # nothing to collapse: what evaluate() would read as the domain, and whether it is one
                # (the key without its @: casefolding maps no character to or from a ".")
                domain = key[1:].rstrip(".")
                if (
                    "." in domain and " " not in domain
                    and domain not in self.domains and not domain.endswith(self.subdomains)
                ):
                    # not cached: this check costs no more than remembering it (bench/engine.py did not
                    # move), and a portal has as many such domains as companies, which a cache of them
                    # held for a worker's lifetime (2 MB at its bound)
                    return _PASSED_NONE
        hit = self.evaluate(raw)
        if self.by_domain and hit[1]:
            return hit  # the problem names the whole address: do not share it
        return remember(self.cache, key, hit, self.limit)


def alias_table(spellings: Mapping[str, list[str]]) -> dict[str, str]:
    """canonical -> spellings, as in the file, into casefolded spelling -> casefolded canonical."""
    table: dict[str, str] = {}
    for canonical, variants in spellings.items():
        c = _same(canonical)
        table[c] = c
        for v in variants:
            table[_same(v)] = c
    return table


@dataclass(slots=True)
class Combo:
    """A fit rule whose tests read several fields: `test(leaves passed)` gives its detail or None."""

    slot: int
    rule: FitRule
    test: Callable[[Mapping[int, str]], str | None]


def _field_of(node: Test, inherited: str | None) -> set[str | None]:
    f = node.field or inherited
    kids = _children(node)
    if not kids:
        return {f}
    return {x for k in kids for x in _field_of(k, f)}


def fit_plans(
    rules: list[FitRule],
    aliases: Mapping[str, Mapping[str, str]],
    settings: Mapping[str, FieldSettings] | None = None,
) -> tuple[tuple[FieldPlan, ...], tuple[Combo, ...]]:
    """One plan per profile field read, and the rules that span several fields."""
    settings = settings or {}
    by_field: dict[str, list[tuple[int, FitRule]]] = {}
    leaves: dict[str, list[tuple[int, Test]]] = {}
    combos: list[Combo] = []

    def canon_for(name: str) -> Callable[[str], str]:
        table = aliases.get(name)

        def canon(text: str) -> str:
            t = _same(text)
            return table.get(t, t) if table is not None else t

        return canon

    def combo(node: Test, inherited: str | None) -> Callable[[Mapping[int, str]], str | None]:
        fields = _field_of(node, inherited)
        if len(fields) == 1:
            (f,) = fields
            assert f is not None
            leaf = sum(len(v) for v in leaves.values())
            leaves.setdefault(f, []).append((leaf, node.model_copy(update={"field": f})))
            return lambda hits: hits.get(leaf)
        f = node.field or inherited
        op = node.test_name()
        subs = tuple(combo(k, f) for k in _children(node))
        if op == "not":
            (sub,) = subs
            return lambda hits: "" if sub(hits) is None else None
        return any_of(subs) if op == "any" else all_of(subs, clip_at=60)

    for slot, rule in enumerate(rules):
        fields = _field_of(rule, None)
        if len(fields) == 1:
            (f,) = fields
            assert f is not None
            by_field.setdefault(f, []).append((slot, rule))
        else:
            combos.append(Combo(slot, rule, combo(rule, None)))
    plans = []
    for name in dict.fromkeys([*by_field, *leaves]):
        entries = by_field.get(name, [])
        table = aliases.get(name)
        canon = canon_for(name)
        label = name.replace("_", " ")
        field_leaves = leaves.get(name, [])
        tests = tuple((slot, checks_of(rule, label, canon), rule) for slot, rule in entries)
        nodes: list[Operators] = [rule for _, rule in entries] + [node for _, node in field_leaves]
        setting = settings.get(name) or FieldSettings()
        plans.append(FieldPlan(
            name,
            tests,
            any(needs_number(n) for n in nodes),
            any(needs_domain(n) for n in nodes),
            table,
            leaves=tuple((leaf, checks_of(node, label, canon)) for leaf, node in field_leaves),
            blank=frozenset(_same(v) for v in setting.not_answered),
            closed=setting.closed,
        ))
    return tuple(plans), tuple(combos)


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
        cid = self._ids.get(slots)  # the common case, without the lock: a slots tuple once in is never taken out
        if cid is not None:
            return cid
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
    # Attributes some condition reads as a number (parsed only for these: urls are not numbers).
    numeric: frozenset[str] = frozenset()
    # When every condition of this kind is a plain `contains` on the one key attribute: all their
    # needles, casefolded, as one pattern. A value whose query string ('?' onwards) holds none of
    # them is classified (and cached) by the part before the '?': urls tagged for campaigns
    # (?utm_source=...&utm_content=17) are mostly new, their paths are not.
    query_needles: re.Pattern[str] | None = None
    # path -> whether it holds nothing to collapse and does not read as empty; '?' + query string ->
    # whether it holds nothing to collapse and none of the needles
    plain: dict[str, bool] = dataclasses.field(default_factory=dict)

    def shortcut(self, raw: Any) -> str | None:
        """The part of `raw` before its query string, when that part decides its class alone."""
        if type(raw) is not str:
            return None
        path, mark, query = raw.partition("?")
        if not mark or not path or self.query_needles is None:
            return None
        # A portal's tagged links repeat their paths and their query strings: each verdict is cached.
        plain = self.plain.get(path)
        if plain is None:
            # whitespace to collapse, or a path that reads as empty: the long way
            plain = remember(self.plain, path,
                             path.isprintable() and " " not in path and path.casefold() not in PLACEHOLDERS)
        if not plain:
            return None
        plain = self.plain.get(mark + query)
        if plain is None:
            plain = remember(self.plain, mark + query, query.isprintable() and " " not in query
                             and self.query_needles.search(query.casefold()) is None)
        return path if plain else None

    def classify(self, attrs: Mapping[str, Any]) -> int:
        """The class id of the rules these attributes match; -1 for none. Each attribute is read once
        (text, casefolded, a number where a condition needs one) however many conditions test it."""
        readings: dict[str, Reading] = {}
        matched = []
        for rule in self.rules:
            for attr, check in rule.conditions:
                reading = readings.get(attr)
                if reading is None:
                    raw = attrs.get(attr)
                    if type(raw) is str and raw.isprintable() and " " not in raw and raw:
                        text: str | None = raw  # nothing to collapse (urls, form ids): as_text would give it back
                        if raw.casefold() in PLACEHOLDERS:
                            text = None
                    else:
                        text, _ = as_text(raw)
                    folded = None if text is None else text.casefold()
                    reading = readings[attr] = Reading(text, folded, folded=folded)
                    if text is not None and attr in self.numeric:
                        reading.number = as_number(raw)[0]
                if check(reading) is None:
                    break
            else:
                matched.append(rule.slot)
        return self.classes.intern(tuple(matched))


def kind_plans(
    rules: list[tuple[int, str, tuple[tuple[str, Check], ...]]],
    numeric: frozenset[str] = frozenset(),
    substrings: Mapping[int, tuple[str, ...] | None] | None = None,
) -> tuple[dict[str, KindPlan], ClassTable]:
    """(slot, kind, conditions) triples into one plan per kind; `numeric`: the attributes some
    condition reads as a number; `substrings`: per rule slot, the casefolded needles when its
    conditions are only plain `contains` tests (none: no conditions), else None."""
    classes = ClassTable()
    by_kind: dict[str, list[ActivityRule]] = {}
    for slot, kind, conditions in rules:
        by_kind.setdefault(kind, []).append(ActivityRule(slot, conditions))
    plans = {}
    for kind, entries in by_kind.items():
        attrs = sorted({a for r in entries for a, _ in r.conditions})
        key: KeyAttrs = None if not attrs else attrs[0] if len(attrs) == 1 else tuple(attrs)
        needles: re.Pattern[str] | None = None
        if substrings is not None and isinstance(key, str) and key not in numeric:
            found = [substrings.get(r.slot) for r in entries]
            if all(f is not None for f in found):
                words = sorted({n for f in found for n in f or ()}, key=len, reverse=True)
                if words and not any("?" in w for w in words):
                    needles = re.compile("|".join(re.escape(w) for w in words))
        plans[kind] = KindPlan(key, tuple(entries), classes, numeric=numeric, query_needles=needles)
    return plans, classes
