"""Features for the learned conversion probability, from the same normalised leads the rules see.

Pure: no I/O, the moment passed in. A `FeatureSpec` is fitted once on the training
examples (which profile fields exist, custom ones included, and how to read each)
and then turns any lead into one row of numbers:

- per profile field: a number (log-scaled) and whether it is missing, when most of its
  values are numbers; else the field's frequent values one-hot, "another value" and
  "missing"; a field with mostly unique values (names, e-mails) only says present or not;
- per activity kind: how many before the moment, how many in the 30 days before it, and
  days since the last (capped at a year);
- per scoring rule: the points the rule gave (fit rules for who the lead is, engagement
  rules for what it did, decayed and capped as the engine does).

Personal identifiers (PERSONAL_FIELDS: names, e-mail, phone, company, city) are never features.
Each feature belongs to a group (a field, a kind, a rule) that is one factor in words.
Fields excluded by the leakage guard (connector.learn.train) are never read, nor the
rules that read them.
"""

from __future__ import annotations

import contextlib
import math
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connector.domain import ACTIVITY_KINDS, Activity
from connector.engine import ScoreResult, ScoringModel

DAY = 86400.0
RECENT_DAYS = 30.0
MAX_DAYS = 365.0
MAX_CATEGORIES = 12          # frequent values one-hot per text field
MIN_CATEGORY_COUNT = 5       # a value seen fewer times counts as "another value"
FIELD_CACHE_LIMIT = 50_000   # distinct values remembered per field; cleared past this
NUMERIC_SHARE = 0.8          # a field is a number when this share of its values read as numbers
UNIQUE_SHARE = 0.5           # a field with more distinct values than this share of leads is an identifier

# Who the person is, not what they are like: never a feature (a model must not favour a first name or
# a phone number's digits). The rules still read e-mail and website domains (free-mail, ...), and
# their points are features.
PERSONAL_FIELDS: frozenset[str] = frozenset(
    {"email", "first_name", "last_name", "phone", "website", "company", "city", "name", "mobile_phone"}
)

# Kinds in words, for the factors ("3 meetings", "no email replies").
KIND_WORDS: dict[str, tuple[str, str]] = {
    "page_view": ("page view", "page views"),
    "form_submission": ("form submitted", "forms submitted"),
    "download": ("download", "downloads"),
    "email_open": ("email opened", "emails opened"),
    "email_click": ("email clicked", "emails clicked"),
    "email_reply": ("email reply", "email replies"),
    "email_bounce": ("email bounce", "email bounces"),
    "email_unsubscribe": ("unsubscribe", "unsubscribes"),
    "meeting": ("meeting", "meetings"),
    "call": ("call", "calls"),
    "note": ("note", "notes"),
    "webinar_registered": ("webinar registration", "webinar registrations"),
    "webinar_attended": ("webinar attended", "webinars attended"),
    "event_attended": ("event attended", "events attended"),
}


def number_of(value: Any) -> float | None:
    """A profile value as a number ("1,200", "420", 3.5); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip().replace(",", "").replace("_", "").replace(" ", "")
    if not text:
        return None
    try:
        n = float(text)
    except ValueError:
        return None
    return n if math.isfinite(n) else None


def text_of(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text.casefold() if text else None


def _signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


@dataclass(frozen=True, slots=True)
class FieldPlan:
    name: str
    how: str                       # "number", "category" or "present"
    categories: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()   # the categories as first seen (for words)
    start: int = 0                 # first column


@dataclass(slots=True)
class FeatureSpec:
    """Which columns a lead becomes; fitted on training leads, stored with the model."""

    fields: list[FieldPlan]
    kinds: list[str]
    # (fit|engagement, rule name, the field or kind group it joins or ""): a fit rule is a factor
    # together with its profile field, a one-kind engagement rule together with its kind
    rules: list[tuple[str, str, str]]
    columns: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)          # group of each column
    group_columns: dict[str, list[int]] = field(default_factory=dict)
    _kind_start: int = 0
    _rule_index: dict[str, int] = field(default_factory=dict)
    _cat_index: list[dict[str, int]] = field(default_factory=list)
    _kind_pos: dict[str, int] = field(default_factory=dict)
    _template: list[float] = field(default_factory=list)
    _field_reads: list[tuple[str, dict[Any, tuple[tuple[int, float], ...]]]] = field(default_factory=list)
    _field_cache: list[dict[Any, tuple[tuple[int, float], ...]]] = field(default_factory=list)
    _plans: dict[str, FieldPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._layout()

    def _layout(self) -> None:
        cols: list[str] = []
        groups: list[str] = []
        fields: list[FieldPlan] = []
        for plan in self.fields:
            start = len(cols)
            if plan.how == "number":
                cols += [f"{plan.name}:number", f"{plan.name}:missing"]
            elif plan.how == "category":
                cols += [f"{plan.name}={c}" for c in plan.categories] + [f"{plan.name}:other", f"{plan.name}:missing"]
            else:
                cols.append(f"{plan.name}:present")
            groups += [f"field:{plan.name}"] * (len(cols) - start)
            fields.append(FieldPlan(plan.name, plan.how, plan.categories, plan.labels, start))
        self.fields = fields
        self._cat_index = [{c: p.start + i for i, c in enumerate(p.categories)} for p in fields]
        self._kind_start = len(cols)
        self._kind_pos = {k: len(cols) + 3 * i for i, k in enumerate(self.kinds)}
        for kind in self.kinds:
            cols += [f"{kind}:count", f"{kind}:recent", f"{kind}:days_since"]
            groups += [f"kind:{kind}"] * 3
        self._rule_index = {}
        known = set(groups)
        for _group, name, joins in self.rules:
            self._rule_index[name] = len(cols)
            cols.append(f"rule:{name}")
            groups.append(joins if joins in known else f"rule:{name}")
        self.columns, self.groups = cols, groups
        self.group_columns = {}
        for i, g in enumerate(groups):
            self.group_columns.setdefault(g, []).append(i)
        self._template = [0.0] * len(cols)
        for j in self._kind_pos.values():
            self._template[j + 2] = MAX_DAYS  # no activity of the kind: as long ago as counts
        self._field_cache = [{} for _ in self.fields]
        self._plans = {p.name: p for p in self.fields}
        self._field_reads = [(p.name, c) for p, c in zip(self.fields, self._field_cache, strict=True)]

    def __getstate__(self) -> dict[str, Any]:  # stored without the caches
        return {"fields": self.fields, "kinds": self.kinds, "rules": self.rules}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            object.__setattr__(self, name, [] if name.startswith("_") else None)
        self.fields, self.kinds, self.rules = state["fields"], state["kinds"], state["rules"]
        self.columns, self.groups, self.group_columns = [], [], {}
        self._layout()

    @property
    def width(self) -> int:
        return len(self.columns)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls, profiles: Sequence[Mapping[str, Any]], model: ScoringModel, exclude: Iterable[str] = ()
    ) -> FeatureSpec:
        """Plan the columns from the training leads' profiles (custom fields included) and the scoring rules."""
        excluded = set(exclude)
        n = max(1, len(profiles))
        seen: dict[str, list[Any]] = {}
        for p in profiles:
            for name, value in p.items():
                if (name in excluded or name in PERSONAL_FIELDS or value is None
                        or (isinstance(value, str) and not value.strip())):
                    continue
                seen.setdefault(name, []).append(value)
        plans: list[FieldPlan] = []
        for name in sorted(seen):
            values = seen[name]
            if sum(number_of(v) is not None for v in values) >= NUMERIC_SHARE * len(values):
                plans.append(FieldPlan(name, "number"))
                continue
            texts = Counter(t for v in values if (t := text_of(v)) is not None)
            if len(texts) > UNIQUE_SHARE * n:
                plans.append(FieldPlan(name, "present"))
                continue
            frequent = [t for t, c in texts.most_common(MAX_CATEGORIES) if c >= MIN_CATEGORY_COUNT]
            first: dict[str, str] = {}
            for v in values:
                t = text_of(v)
                if t is not None and t not in first:
                    first[t] = " ".join(str(v).split())
            plans.append(FieldPlan(name, "category", tuple(frequent), tuple(first[t] for t in frequent)))
        rules: list[tuple[str, str, str]] = [
            ("fit", r.name, f"field:{r.field}") for r in model.spec.fit if r.field not in excluded
        ] + [
            ("engagement", r.name, f"kind:{kinds[0]}" if len(kinds := r.kinds()) == 1 else "")
            for r in model.spec.engagement
        ]
        return cls(plans, sorted(ACTIVITY_KINDS), rules)

    # ------------------------------------------------------------------ rows

    def _read_field(self, k: int, raw: Any) -> tuple[tuple[int, float], ...]:
        """The (column, value) pairs one field's raw value sets; cached per distinct value."""
        plan = self.fields[k]
        cells: tuple[tuple[int, float], ...]
        if plan.how == "number":
            n = number_of(raw)
            cells = ((plan.start + 1, 1.0),) if n is None else ((plan.start, _signed_log(n)),)
        elif plan.how == "category":
            t = text_of(raw)
            k_cats = len(plan.categories)
            col = plan.start + k_cats + 1 if t is None else self._cat_index[k].get(t, plan.start + k_cats)
            cells = ((col, 1.0),)
        else:
            cells = ((plan.start, 1.0),) if text_of(raw) is not None else ()
        cache = self._field_cache[k]
        if len(cache) > FIELD_CACHE_LIMIT:
            cache.clear()
        with contextlib.suppress(TypeError):  # an unhashable value: read every time
            cache[raw] = cells
        return cells

    def row(self, profile: Mapping[str, Any], activities: Sequence[Activity], at: float,
            scored: ScoreResult) -> list[float]:
        """One lead as numbers, as of `at` (only activities before `at` count)."""
        return self.matrix([(profile, activities, scored)], at).tolist()  # type: ignore[no-any-return]

    def matrix(self, items: Sequence[tuple[Mapping[str, Any], Sequence[Activity], ScoreResult]], at: float
               ) -> np.ndarray:
        """Leads as rows of numbers, as of `at`. Written into one flat buffer: building a page of rows
        as Python lists and converting them costs as much again as filling them."""
        width = len(self.columns)
        buf = array("d", self._template) * len(items)
        read = self._read_field
        reads = self._field_reads
        index = self._kind_pos
        rules = self._rule_index
        recent_from = at - RECENT_DAYS * DAY
        log1p = math.log1p
        off = 0
        for profile, activities, scored in items:
            get = profile.get
            for k, (name, cache) in enumerate(reads):
                raw = get(name)
                try:
                    cells = cache.get(raw) or read(k, raw)
                except TypeError:  # an unhashable value
                    cells = read(k, raw)
                for col, value in cells:
                    buf[off + col] = value
            # activity kinds: how many, how many in the last RECENT_DAYS, days since the last
            seen: dict[int, list[float]] = {}
            for a in activities:
                j = index.get(a.kind)
                if j is not None:
                    ts = a.ts
                    if ts < at:
                        stamps = seen.get(j)
                        if stamps is None:
                            seen[j] = [ts]
                        else:
                            stamps.append(ts)
            for j, stamps in seen.items():
                buf[off + j] = log1p(len(stamps))
                buf[off + j + 1] = log1p(sum(1 for t in stamps if t >= recent_from))
                days = (at - max(stamps)) / DAY
                buf[off + j + 2] = days if days < MAX_DAYS else MAX_DAYS
            for c in scored.contributions:
                j = rules.get(c.rule)  # rule names are unique in a scoring file (load.cross_check)
                if j is not None:
                    buf[off + j] += c.points
            off += width
        return np.frombuffer(buf, dtype=float).reshape(len(items), width)

    # ------------------------------------------------------------------ words

    def word_columns(self, group: str) -> tuple[int, int, tuple[int, ...]]:
        """The columns `describe` reads for a group: a span (start, end) and the rule columns it names."""
        kind, _, name = group.partition(":")
        cols = self.group_columns[group]
        if kind == "kind":
            return cols[0], cols[0] + 3, ()
        if kind == "rule":
            return cols[0], cols[0] + 1, ()
        plan = self._plans[name]
        size = {"number": 2, "present": 1}.get(plan.how, len(plan.categories) + 2)
        return plan.start, plan.start + size, tuple(c for c in cols if self.columns[c].startswith("rule:"))

    def describe(self, group: str, x: Sequence[float], at: float) -> str:
        """The lead's value of one feature group in words ("3 meetings, the last on 2026-11-20")."""
        kind, _, name = group.partition(":")
        cols = self.group_columns[group]
        if kind == "kind":
            one, many = KIND_WORDS.get(name, (name, name))
            count = round(math.expm1(x[cols[0]]))
            if count <= 0:
                return f"no {many}"
            when = time.strftime("%Y-%m-%d", time.gmtime(at - x[cols[2]] * DAY))
            return f"{count} {one if count == 1 else many}, the last on {when}"
        if kind == "rule":
            points = x[cols[0]]
            return f"'{name}' {points:+.0f} points" if round(points) else f"no '{name}' points"
        fired = [self.columns[c][5:] for c in cols if self.columns[c].startswith("rule:") and round(x[c])]
        if fired:  # the rule says it in the admin's own words: "job title: Student or intern"
            return f"{name.replace('_', ' ')}: {', '.join(fired)}"
        return self._field_words(self._plans[name], x)

    def _field_words(self, plan: FieldPlan, x: Sequence[float]) -> str:
        label = plan.name.replace("_", " ")
        if plan.how == "number":
            if x[plan.start + 1]:
                return f"no {label} given"
            v = math.copysign(math.expm1(abs(x[plan.start])), x[plan.start])
            return f"{label} {v:,.0f}"
        if plan.how == "present":
            return f"{label} given" if x[plan.start] else f"no {label} given"
        k = len(plan.categories)
        if x[plan.start + k + 1]:
            return f"no {label} given"
        if x[plan.start + k]:
            return f"{label} not among the usual values"
        for i, lab in enumerate(plan.labels):
            if x[plan.start + i]:
                return f"{label} {lab}"
        return label

