"""The compiled scoring model: pure, fast, and able to say why.

`ScoringModel.score(profile, activities, now)` never does I/O and never raises
on what a CRM gave it: an unreadable field or activity is skipped and named in
`result.problems`.

How a score is made:

1. Fit: each profile field a rule reads is read once (cached per distinct
   text; values the file calls "not answered" read as empty); every rule on
   it that passes contributes its points. A rule testing several fields
   (`all` / `any` / `not` across fields) passes from the tests each field
   passed. Of rules sharing an `exclusive` name, only the first that passes
   (in file order) counts.
2. Engagement: each activity is dispatched by kind to the few rules that can
   match it; which of them match is cached per distinct attribute values.
   Per rule, occurrences within the window count (none at all when there are
   fewer than `min_count`; the newest `max_count` of them, when set), each
   worth `points * 0.5 ** (age / half_life)`; the sum is
   capped at `max_points` (in magnitude, for negative rules too). Activities
   dated in the future count as age 0.
3. Each group is held within its caps (min, max); the total is
   `weights.fit * fit + weights.engagement * engagement`, held within the
   total caps. Band from the total, grade from fit.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Final, final

from connector.domain import Activity
from connector.engine.decay import DAY, decay_rate
from connector.engine.result import Contribution, ScoreResult, phrase, reasons_text
from connector.engine.rules import (
    FieldPlan,
    FieldResult,
    Passed,
    alias_table,
    checks_of,
    fit_plans,
    kind_plans,
    needs_number,
    remember,
)
from connector.engine.values import as_text, fmt_day, fmt_number, show
from connector.mappings.scoring import BANT_KEYS, EngagementRule, FitRule, ScoringFile, Test

INF = math.inf
DAY_S: Final = 86400  # seconds in a day, as an int (Final: compiled, a constant, not a look-up)
# How many (count, day) details `_detail` keeps (two short strings each). A sync's activities fill some
# 1,000 by 2,500 contacts a worker and under 2,000 by 25,000; bench/engine.py's, 1,317. The reasons'
# phrases are not kept with them: a phrase is its rule's start ("+12 Pricing page", as many as the
# model has) and its detail's end (" (3x, last 2026-11-14)") put together. Kept, every detail's
# phrases (about 1.1 KB an entry) were most of what a sync worker's memory grew by with the portal
# (one process, 100,000 contacts: 126.9 MB after the last page, 124.3 without them). Putting the two
# together costs 1.4 % more instructions in score() than looking the phrase up (callgrind,
# bench/engine.py --leads 20000: 1,742M against 1,717M; formatting all of it, 1,769M).
DETAILS_LIMIT: Final = 2_048
MAX_PROBLEMS = 10

# A _KindSpec's class id when the class depends on the activity's attributes.
LOOK_UP: Final = -2


@final
class _KindSpec:
    """How the activities of one kind are classified: a kind whose rules look at no attribute has its
    class id (`cid`) itself, all its activities match alike; else `cid` is LOOK_UP and `cache` maps the
    value of `attr`, the attribute whose value decides, to the class id. A kind whose rules look at
    several attributes has no `attr` and an empty `cache`: _miss classifies it. A class for the reason
    _EngSpec is one."""

    __slots__ = ("attr", "cache", "cid")

    def __init__(self, cid: int, attr: str | None, cache: dict[Any, int]) -> None:
        self.cid = cid
        self.attr = attr
        self.cache = cache


@final
class _FieldSpec:
    """A profile field the fit rules read: its name, the cache to look in first, its plan (plan.read
    reads a value), and the result when the field is empty (None when an empty field passes nothing:
    None, not a shared empty result compared by identity, as compiled a fixed-length tuple is unboxed
    and boxing it again makes a new object). A class for the reason _EngSpec is one."""

    __slots__ = ("cache", "empty", "name", "plan")

    def __init__(self, name: str, cache: dict[str, FieldResult], plan: FieldPlan, empty: FieldResult | None) -> None:
        self.name = name
        self.cache = cache
        self.plan = plan
        self.empty = empty


@final
class _EngSpec:
    """One engagement rule as the hot path reads it. A class, not a tuple: compiled, its numbers are
    kept unboxed and read straight from the object, where a tuple is checked and unboxed whole."""

    __slots__ = ("cap", "max_count", "min_count", "name", "points", "rate", "tag", "window")

    def __init__(
        self, name: str, points: float, rate: float, window: float, max_count: int, cap: float, tag: str | None,
        min_count: int,
    ) -> None:
        self.name = name
        self.points = points
        self.rate = rate  # decay per second, 0.0 without decay
        self.window = window  # seconds (inf: none)
        self.max_count = max_count  # 0: none
        self.cap = cap  # inf: none
        self.tag = tag  # the BANT key or None
        self.min_count = min_count  # 0: none

# A contribution on its way into a result: (sort key, contribution, phrase or None), appended in file order
_Found = tuple[float, Contribution, str | None]
_WEIGHT: Final = itemgetter(0)  # a _Found's sort key: -|points|
# tuple.__new__ and the NamedTuples it builds (their own __new__ is a Python-level call). Compiled, a
# Final name is a static of the module, where any other is a look-up in its dict on every use.
_NEW: Final[Any] = tuple.__new__
_CONTRIBUTION: Final[Any] = Contribution
_SCORE_RESULT: Final[Any] = ScoreResult


# "+25 ", "-9 ": formatting a signed int is the slow part of a reason's text.
_SIGNED = {r: f"{r:+d} " for r in range(-1000, 1001) if r}


# What an empty field gives when no rule on it tests for emptiness: skipped at once.
_NOTHING: FieldResult = ((), (), ())


# Activity times beyond this (the year 5138, in epoch seconds) are no dates: the careful pass skips them.
MAX_EPOCH_S = 1e11


class _Unreadable(Exception):
    """An activity the fast path cannot read; the careful path takes over."""


def _bounds(lo: float | None, hi: float | None) -> tuple[float, float]:
    return (-INF if lo is None else float(lo), INF if hi is None else float(hi))


def _round(x: float) -> int:
    return math.floor(x + 0.5)


class ScoringModel:
    """A scoring file compiled for speed. Build it with `connector.engine.load_scoring`."""

    def __init__(self, spec: ScoringFile, version: str) -> None:
        self.spec = spec
        self.version = version
        settings = spec.model
        self.label = settings.label
        self.hot_threshold: int = settings.bands.hot
        self.warm_threshold: int = settings.bands.warm
        grades = settings.grades
        self._grades = (("A", grades.A), ("B", grades.B), ("C", grades.C))
        caps = settings.caps
        self._fit_bounds = _bounds(caps.fit.min, caps.fit.max)
        self._eng_bounds = _bounds(caps.engagement.min, caps.engagement.max)
        self._total_bounds = _bounds(caps.total.min, caps.total.max)
        self._w_fit = float(settings.weights.fit)
        self._w_eng = float(settings.weights.engagement)
        self._bant_zero: dict[str, float] = dict.fromkeys(BANT_KEYS, 0.0)
        self._bant_none: dict[str, int] = dict.fromkeys(BANT_KEYS, 0)  # copied into a result without BANT points

        # Fit rules: slot = index in spec.fit; grouped by field.
        aliases = {name: alias_table(table) for name, table in spec.aliases.items()}
        self._exclusive = tuple(r.exclusive for r in spec.fit)
        self._any_exclusive = any(e is not None for e in self._exclusive)
        plans, self._combos = fit_plans(spec.fit, aliases, spec.fields)
        self._fields: tuple[_FieldSpec, ...] = tuple(
            _FieldSpec(p.field, {} if p.by_domain else p.cache, p, None if p.none_result == _NOTHING else p.none_result)
            for p in plans
        )

        # Engagement rules: slot = index in spec.engagement; grouped by kind.
        self._eng: tuple[_EngSpec, ...] = tuple(
            self._eng_spec(r, settings.half_life_days, settings.window_days) for r in spec.engagement
        )
        triples = []
        for slot, rule in enumerate(spec.engagement):
            conditions = tuple(
                (attr, checks_of(cond, attr, lambda t: " ".join(t.split()).casefold()))
                for attr, cond in rule.where.items()
            )
            for kind in rule.kinds():
                triples.append((slot, kind, conditions))
        numeric = frozenset(
            attr for rule in spec.engagement for attr, cond in rule.where.items() if needs_number(cond)
        )
        substrings: dict[int, tuple[str, ...] | None] = {}
        for slot, rule in enumerate(spec.engagement):
            plain = all(cond.operators() == ["contains"] for cond in rule.where.values())
            substrings[slot] = (
                tuple(n.casefold() for cond in rule.where.values() for n in cond.contains or ()) if plain else None
            )
        self._plans, self._classes = kind_plans(triples, numeric, substrings)
        # kind -> how its activities are classified (_KindSpec)
        self._kinds: dict[str, _KindSpec] = {
            kind: _KindSpec(p.classify({}), None, {}) if p.key_attrs is None
            else _KindSpec(LOOK_UP, p.key_attrs, p.cache) if not isinstance(p.key_attrs, tuple)
            else _KindSpec(LOOK_UP, None, {})
            for kind, p in self._plans.items()
        }
        # (seen << 32) + day -> ('3x, last 2026-11-14', ' (3x, last 2026-11-14)')
        self._details: dict[int, tuple[str, str]] = {}
        # points * rules + rule slot -> '+12 Pricing page': a phrase's start, as many as the model has
        self._heads: dict[int, str] = {}
        self.profile_fields_used: frozenset[str] = frozenset(f for r in spec.fit for f in r.fields_read())
        self.activity_kinds_used: frozenset[str] = frozenset(self._kinds)

    @staticmethod
    def _eng_spec(rule: EngagementRule, half_life: float, window: float | None) -> _EngSpec:
        rate = decay_rate(rule.half_life_days or half_life) if rule.decay else 0.0
        win = rule.window_days if rule.window_days is not None else window
        return _EngSpec(
            rule.name,
            float(rule.points),
            rate,
            INF if win is None else float(win) * DAY,
            rule.max_count or 0,
            INF if rule.max_points is None else float(rule.max_points),
            rule.bant,
            rule.min_count or 0,
        )

    def __repr__(self) -> str:
        return f"ScoringModel({self.version!r}, fit={len(self.spec.fit)}, engagement={len(self._eng)})"

    # ------------------------------------------------------------------ scoring

    def score(self, profile: Mapping[str, Any], activities: Sequence[Activity], now: float) -> ScoreResult:
        """Score one lead at `now` (epoch seconds). Never raises on the record's content."""
        if not (type(now) is float or type(now) is int) or not math.isfinite(now):
            raise ValueError(f"now must be a finite number of epoch seconds, not {show(now)}")
        problems: list[str] = []
        found: list[_Found] = []
        bant = self._bant_zero.copy()
        fit_raw = self._score_fit(profile, found, bant, problems)
        mark = len(found)
        try:
            eng_raw = self._score_engagement(self._collect(activities), now, found, bant)
        except (_Unreadable, TypeError, AttributeError, ValueError):
            # Garbage somewhere in the activities: redo carefully, naming what was skipped.
            del found[mark:]
            bant = self._bant_zero.copy()
            for _, c, _ in found:
                if c.bant is not None:
                    bant[c.bant] += c.points
            clean = self._sanitize(activities, problems)
            eng_raw = self._score_engagement(self._collect(clean), now, found, bant)
        return self._result(fit_raw, eng_raw, found, bant, problems)

    def _score_fit(
        self, profile: Mapping[str, Any], found: list[_Found], bant: dict[str, float], problems: list[str]
    ) -> float:
        if type(profile) is not dict:  # the common case, without the slower check for any Mapping
            if isinstance(profile, Mapping):
                profile = dict(profile)
            else:
                problems.append(f"profile: {show(profile)} is not a record of fields")
                profile = {}
        # A plain dict: compiled, its look-ups skip the method call. An annotation, not a cast(): in pure
        # Python, cast(dict[str, Any], ...) builds the type on every call.
        fields: dict[str, Any] = profile  # type: ignore[assignment]
        matched: list[Passed] = []
        leaves: list[tuple[int, str]] = []
        for field in self._fields:
            raw = fields.get(field.name)
            if raw is None:
                empty = field.empty
                if empty is None:
                    continue
                result = empty
            elif (kind := type(raw)) is str or kind is int or kind is float:
                hit = field.cache.get(raw)  # compared with None, not tested for truth: that would box it again
                result = field.plan.read(raw) if hit is None else hit
            else:
                result = field.plan.read(raw)
            passed, unread, leaf = result
            if passed:
                matched.extend(passed)
            if unread:
                problems.extend(unread)
            if leaf:
                leaves.extend(leaf)
        if self._combos:
            hits = dict(leaves)
            for combo in self._combos:
                detail = combo.test(hits)
                if detail is not None:
                    rule = combo.rule
                    points = float(rule.points)
                    matched.append((
                        combo.slot,
                        Contribution(rule.name, "fit", points, detail, rule.bant),
                        phrase(points, rule.name, detail),
                    ))
        if not matched:
            return 0.0
        if len(matched) > 1:
            # by rule slot (slots are distinct, so nothing after them is compared): file order, which
            # _result's stable sort keeps among contributions of equal weight
            matched.sort()
            if self._any_exclusive:
                taken: set[str] = set()
                kept = []
                for entry in matched:
                    group = self._exclusive[entry[0]]
                    if group is not None:
                        if group in taken:
                            continue
                        taken.add(group)
                    kept.append(entry)
                matched = kept
        total = 0.0
        for _, c, text in matched:
            points = c.points
            total += points
            if c.bant is not None:
                bant[c.bant] += points
            found.append((-abs(points), c, text))
        return total

    def _collect(self, activities: Iterable[Activity]) -> list[list[float] | None]:
        """Timestamps of the matching activities, by engagement rule slot (None: none). The hot loop."""
        # Methods called on the objects, not through local aliases: as fast in Python 3.11+ (specialised
        # calls), and the compiled build then calls the dict's and list's C functions directly.
        kinds = self._kinds
        slots_of = self._classes.slots
        # A list by slot, not a dict: indexing it hashes and boxes nothing.
        per_rule: list[list[float] | None] = [None] * len(self._eng)
        # Activities as the (kind, ts, attrs) tuples they are. Compiled, each is checked to be a tuple of
        # three (anything else raises TypeError, and the careful pass reads it) and its time is taken as
        # the object it is (`act.ts`, a float field, would be unboxed and boxed again for the list).
        rows: Iterable[tuple[str, Any, Any]] = activities  # an annotation, not a cast(): nothing at run time
        for act in rows:
            kind = act[0]
            plan = kinds.get(kind)
            if plan is None:
                continue
            # A dict from every adapter. Compiled, this checks it is one (any other Mapping raises
            # TypeError, and the careful pass reads it) and looks up without a method call.
            attrs: dict[str, str] = act[2]
            cid = plan.cid
            if cid == LOOK_UP:
                known = plan.cache.get(attrs.get(plan.attr))  # type: ignore[arg-type]  # attrs.get(None) is None
                cid = self._miss(kind, attrs) if known is None else known
            elif type(attrs) is not dict:
                raise _Unreadable  # the careful pass reads any Mapping (and names what is none)
            if cid >= 0:
                ts = act[1]
                for slot in slots_of[cid]:
                    stamps = per_rule[slot]
                    if stamps is None:
                        per_rule[slot] = [ts]
                    else:
                        stamps.append(ts)
        return per_rule

    def _miss(self, kind: str, attrs: dict[str, str]) -> int:
        """Classify an activity whose deciding values are not cached yet, and cache them."""
        plan = self._plans[kind]
        key: Any
        cache: dict[Any, int]
        if isinstance(plan.key_attrs, tuple):
            key = tuple(attrs.get(a) for a in plan.key_attrs)
            cache = plan.multi_cache
        else:
            key = attrs.get(plan.key_attrs)  # type: ignore[arg-type]
            cache = plan.cache
            path = plan.shortcut(key)
            if path is not None:
                # Classified by its path; the whole url is remembered too, so the next sighting of
                # the same tagged url (portals repeat their campaign links) is one look-up.
                found = cache.get(path)
                if found is None:
                    found = remember(cache, path, plan.classify({plan.key_attrs: path}))  # type: ignore[dict-item]
                return remember(cache, key, found)
        cid = cache.get(key)
        if cid is None:
            cid = remember(cache, key, plan.classify(attrs))
        return cid

    def _score_engagement(
        self, per_rule: list[list[float] | None], now: float, found: list[_Found], bant: dict[str, float]
    ) -> float:
        # TypeError on a timestamp that is not a number. A loop, not sum(map(sum, ...)): compiled, it
        # adds unboxed floats (the two calls through the interpreter cost more than all the adding).
        spread = 0.0
        for stamps in per_rule:
            if stamps is not None:
                for t in stamps:
                    spread += t
        if spread - spread != 0.0:  # NaN or infinite somewhere, or (absurd stamps) an overflow
            for stamps in per_rule:
                if stamps is not None:
                    spread = sum(stamps)
                    if spread - spread != 0.0:
                        raise _Unreadable
        total = 0.0
        new = _NEW
        contribution = _CONTRIBUTION
        signed = _SIGNED
        details = self._details
        heads = self._heads
        rules = len(self._eng)
        eng = self._eng
        # In rule order, whatever the order of the activities: the sums come out the same to the last bit.
        for slot, stamps in enumerate(per_rule):
            if stamps is None:
                continue
            spec = eng[slot]
            points = spec.points
            rate = spec.rate
            window = spec.window
            min_count = spec.min_count
            n = len(stamps)
            if n < min_count:
                continue  # fewer than min_count in all: fewer in the window too
            if n == 1:
                # One occurrence (the common case): the general path below, unrolled.
                newest = stamps[0]
                age = now - newest
                if age > window and newest < now - window:
                    continue
                seen = 1
                if age < 0.0:
                    value = points * 1.0
                elif rate:
                    value = points * math.exp(rate * (newest - now))
                else:
                    value = points * 1.0
            else:
                stamps.sort()  # oldest first
                first = 0
                if now - stamps[0] > window:
                    first = bisect_left(stamps, now - window)
                    if first == n:
                        continue
                seen = n - first
                if seen < min_count:
                    continue
                max_count = spec.max_count
                if max_count and seen > max_count:
                    first = n - max_count
                newest = stamps[-1]
                if newest > now:
                    # dated in the future (clock skew): counts as now, never more
                    end = max(first, bisect_right(stamps, now))
                    weight = float(n - end)
                else:
                    end = n
                    weight = 0.0
                if not rate:
                    weight += end - first
                elif end - first == 1:
                    weight += math.exp(rate * (stamps[first] - now))
                else:
                    for t in stamps[first:end] if first or end != n else stamps:
                        weight += math.exp(rate * (t - now))
                value = points * weight
            cap = spec.cap
            if value > cap:
                value = cap
            elif value < -cap:
                value = -cap
            total += value
            tag = spec.tag
            if tag is not None:
                bant[tag] += value
            # the UTC day of the newest occurrence (its own, even when dated after `now` by a skewed
            # clock): a date, not an age, so the reason stays the same from day to day while the evidence does
            day = math.floor(newest) // DAY_S  # = int(newest // DAY), in integers: a float's // is slow compiled
            entry = details.get((seen << 32) + day)
            if entry is None:
                entry = self._detail(seen, day)
            detail, tail = entry
            r = math.floor(value + 0.5)
            if r == 0:
                text = None
            else:
                key = r * rules + slot
                head = heads.get(key)
                if head is None:
                    head = remember(heads, key, f"{signed.get(r) or f'{r:+d} '}{spec.name}")
                text = head + tail
            # tuple.__new__ directly: a NamedTuple's own __new__ is a Python-level call
            found.append((-abs(value), new(contribution, (spec.name, "engagement", value, detail, tag)), text))
        return total

    def _detail(self, seen: int, day: int) -> tuple[str, str]:
        """'3x, last 2026-11-14' and the end of a phrase that names it (cached: a population repeats these a lot)."""
        when = fmt_day(day)
        detail = f"{seen}x, last {when}" if seen > 1 else when
        return remember(self._details, (seen << 32) + day, (detail, f" ({detail})"), DETAILS_LIMIT)

    def _sanitize(self, activities: Any, problems: list[str]) -> list[Activity]:
        """The readable activities, as plain Activity objects; the rest named in `problems`."""
        clean: list[Activity] = []
        try:
            items = list(activities)
        except TypeError:
            problems.append(f"activities: {show(activities)} is not a list of activities")
            return clean
        skipped: list[str] = []
        for i, act in enumerate(items):
            kind = getattr(act, "kind", None)
            ts = getattr(act, "ts", None)
            attrs = getattr(act, "attrs", None)
            if type(kind) is not str:
                skipped.append(f"activity {i}: kind {show(kind)} is not text")
                continue
            if kind not in self._kinds:
                continue
            if not (type(ts) is int or type(ts) is float) or not math.isfinite(ts):
                skipped.append(f"activity {i} ({kind}): time {show(ts)} is not a number")
                continue
            if abs(ts) > MAX_EPOCH_S:  # finite but absurd: a few of them would sum to infinity
                skipped.append(f"activity {i} ({kind}): time {show(ts)} is not a date")
                continue
            readable: dict[str, str] = {}
            if isinstance(attrs, Mapping):
                for k, v in attrs.items():
                    text = as_text(v)[0]
                    if type(k) is str and text is not None:
                        readable[k] = text
            elif attrs is not None:
                skipped.append(f"activity {i} ({kind}): attributes {show(attrs)} are not a mapping")
            clean.append(Activity(kind, float(ts), readable))
        if len(skipped) > MAX_PROBLEMS:
            skipped[MAX_PROBLEMS:] = [f"and {len(skipped) - MAX_PROBLEMS} more unreadable activities"]
        problems.extend(skipped)
        return clean

    def _result(
        self,
        fit_raw: float,
        eng_raw: float,
        found: list[_Found],
        bant: dict[str, float],
        problems: list[str],
    ) -> ScoreResult:
        lo, hi = self._fit_bounds
        fit = _round(lo if fit_raw < lo else hi if fit_raw > hi else fit_raw)
        lo, hi = self._eng_bounds
        engagement = _round(lo if eng_raw < lo else hi if eng_raw > hi else eng_raw)
        total = self._w_fit * fit + self._w_eng * engagement
        lo, hi = self._total_bounds
        score = _round(lo if total < lo else hi if total > hi else total)
        band = "hot" if score >= self.hot_threshold else "warm" if score >= self.warm_threshold else "cold"
        grade = "D"
        for letter, threshold in self._grades:
            if fit >= threshold:
                grade = letter
                break
        # Strongest first, then in file order: `found` comes in file order (fit rules by slot, then
        # engagement rules by slot) and the sort is stable, so the weight alone is the key (a float key
        # compares faster than the tuples would).
        found.sort(key=_WEIGHT)
        any_bant = False  # most leads have no BANT points at all
        for v in bant.values():
            if v != 0.0:
                any_bant = True
                break
        contributions: list[Contribution] = []
        phrases: list[str] = []
        for _, c, text in found:
            contributions.append(c)
            if text is not None:  # phrases are never empty
                phrases.append(text)
        result: ScoreResult = _NEW(_SCORE_RESULT, (
            score,
            fit,
            engagement,
            band,
            grade,
            reasons_text(phrases),
            tuple(contributions),
            {k: math.floor(v + 0.5) for k, v in bant.items()} if any_bant else self._bant_none.copy(),
            self.version,
            tuple(problems),
        ))
        return result

    # --------------------------------------------------------------- explaining

    def explain(self, profile: Mapping[str, Any], activities: Sequence[Activity], now: float) -> str:
        """The score of one lead, point by point, for `leadscore explain`."""
        r = self.score(profile, activities, now)
        fit_sum = sum(c.points for c in r.contributions if c.group == "fit")
        eng_sum = sum(c.points for c in r.contributions if c.group == "engagement")
        settings = self.spec.model
        lines = [
            f"Model {self.version}",
            f"Score {r.score} ({r.band}; warm from {self.warm_threshold}, hot from {self.hot_threshold})",
            f"  = {fmt_number(settings.weights.fit)} x fit {r.fit}"
            f" + {fmt_number(settings.weights.engagement)} x engagement {r.engagement}"
            + _capped(settings.caps.total.min, settings.caps.total.max, "total"),
            f"Fit grade {r.grade} (A from {settings.grades.A}, B from {settings.grades.B},"
            f" C from {settings.grades.C}, else D)",
            "",
        ]
        rules: dict[str, FitRule | EngagementRule] = {rule.name: rule for rule in self.spec.fit}
        rules.update((rule.name, rule) for rule in self.spec.engagement)
        for group, title, raw, total, bounds in (
            ("fit", "Fit (profile)", fit_sum, r.fit, settings.caps.fit),
            ("engagement", "Engagement (activities)", eng_sum, r.engagement, settings.caps.engagement),
        ):
            lines.append(f"{title}: {total}")
            rows = [c for c in r.contributions if c.group == group]
            for c in rows:
                tag = f" [{c.bant}]" if c.bant else ""
                what = f"{c.rule} ({c.detail})" if c.detail else c.rule
                lines.append(f"  {c.points:+7.1f}  {what}{tag}  -- {_how(rules[c.rule])}")
            if not rows:
                lines.append("  (no rule matched)")
            if _round(raw) != total:
                held = _capped(bounds.min, bounds.max, group)
                lines.append(f"  rules sum to {raw:.1f}; held to {total}{held}")
            lines.append("")
        lines.append("BANT: " + ", ".join(f"{k} {v}" for k, v in r.bant.items()))
        lines.append(f"Reasons: {r.reasons}")
        if r.problems:
            lines.append("Unreadable, scored without:")
            lines.extend(f"  {p}" for p in r.problems)
        return "\n".join(lines)


def _capped(lo: float | None, hi: float | None, what: str) -> str:
    parts = []
    if lo is not None:
        parts.append(f"min {fmt_number(lo)}")
    if hi is not None:
        parts.append(f"max {fmt_number(hi)}")
    return f" ({what} {', '.join(parts)})" if parts else ""


_OP_WORDS = {
    "equals": "is the value",
    "in": "is one of the values",
    "range": "is in the range",
    "contains": "contains the text",
    "matches": "matches the pattern",
    "words": "has one of the words",
    "present": "is filled in",
    "missing": "is empty",
    "domain_in": "is at one of the domains",
}


def _test_words(node: Test, inherited: str | None = None) -> str:
    """A test in a few words: 'country is one of the values and employees is in the range 200..'."""
    f = node.field or inherited
    op = node.test_name()
    if op == "not":
        assert node.not_ is not None
        return f"not ({_test_words(node.not_, f)})"
    if op in ("all", "any"):
        kids = node.all_ if op == "all" else node.any_
        joined = (" and " if op == "all" else " or ").join(_test_words(k, f) for k in kids or [])
        return f"({joined})" if inherited is not None else joined
    if op == "range":
        lo, hi = node.bounds()
        span = f"{'' if lo is None else fmt_number(lo)}..{'' if hi is None else fmt_number(hi)}"
        return f"{f} is in the range {span}"
    return f"{f} {_OP_WORDS[op]}"


def _how(rule: FitRule | EngagementRule) -> str:
    """The rule's settings in a few words, for the explanation."""
    if isinstance(rule, FitRule):
        return f"{fmt_number(rule.points)} when {_test_words(rule)}"
    parts = [f"{fmt_number(rule.points)} each"]
    if rule.where:
        parts.append("where " + " and ".join(
            _test_words(Test.model_validate({"field": attr, **cond.model_dump(by_alias=True, exclude_none=True)}))
            for attr, cond in rule.where.items()
        ))
    if rule.min_count is not None:
        parts.append(f"from {rule.min_count} in the window")
    if rule.max_count is not None:
        parts.append(f"newest {rule.max_count}")
    if rule.max_points is not None:
        parts.append(f"max {fmt_number(rule.max_points)}")
    if rule.window_days is not None:
        parts.append(f"last {fmt_number(rule.window_days)}d")
    if not rule.decay:
        parts.append("no decay")
    elif rule.half_life_days is not None:
        parts.append(f"half-life {fmt_number(rule.half_life_days)}d")
    return ", ".join(parts)
