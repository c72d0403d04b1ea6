"""The compiled engine against a straightforward reading of the rules, float for float.

The engine's fast paths (caches by value and by email domain, one-occurrence
shortcuts, shared timestamp lists) must not change a single bit of a result:
here every lead of a sample of the benchmark population, and a few edge cases,
is scored both ways and compared whole (contributions' points included).
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.domain import Activity
from connector.engine import Contribution, ScoreResult, ScoringModel, load_scoring
from connector.engine.decay import DAY, decay_rate
from connector.engine.result import reasons_text
from connector.engine.rules import Reading, alias_table, checks_of, fit_plans
from connector.engine.values import as_number, as_text, fmt_day
from connector.mappings.scoring import BANT_KEYS

ROOT = Path(__file__).resolve().parents[2]
MODEL: ScoringModel = load_scoring(ROOT / "mappings" / "scoring.yaml")


def _clamp(x: float, lo: float | None, hi: float | None) -> float:
    if lo is not None and x < lo:
        return float(lo)
    if hi is not None and x > hi:
        return float(hi)
    return x


def reference(m: ScoringModel, profile: Mapping[str, Any], activities: Sequence[Activity], now: float) -> ScoreResult:
    """One rule at a time, nothing cached: for clean records (no unreadable activities)."""
    spec = m.spec
    settings = spec.model
    found: list[tuple[float, int, Contribution]] = []
    # Fit: every rule's test on a fresh reading of its field; the first of an exclusive group counts.
    aliases = {name: alias_table(table) for name, table in spec.aliases.items()}
    problems: list[str] = []
    passed: dict[int, Contribution] = {}
    plans, combos = fit_plans(spec.fit, aliases, spec.fields)
    leaves: dict[int, str] = {}
    for plan in plans:
        contributions, unread, leaf = plan.evaluate(profile.get(plan.field))
        problems += unread
        passed.update((slot, c) for slot, c, _ in contributions)
        leaves.update(leaf)
    for combo in combos:
        detail = combo.test(leaves)
        if detail is not None:
            r = combo.rule
            passed[combo.slot] = Contribution(r.name, "fit", float(r.points), detail, r.bant)
    taken: set[str] = set()
    for slot in sorted(passed):
        group = spec.fit[slot].exclusive
        if group is not None:
            if group in taken:
                continue
            taken.add(group)
        found.append((-abs(passed[slot].points), slot, passed[slot]))
    # Engagement: the matching occurrences per rule, oldest first.
    for i, rule in enumerate(spec.engagement):
        conditions = [(a, checks_of(c, a, lambda t: " ".join(t.split()).casefold())) for a, c in rule.where.items()]
        stamps = []
        for act in activities:
            if act.kind not in rule.kinds():
                continue
            readings = [(check, act.attrs.get(a)) for a, check in conditions]
            if all(check(Reading(
                as_text(raw)[0], None if as_text(raw)[0] is None else as_text(raw)[0].casefold(),  # type: ignore[union-attr]
                None if as_text(raw)[0] is None else as_number(raw)[0],
            )) is not None for check, raw in readings):
                stamps.append(float(act.ts))
        if not stamps:
            continue
        stamps.sort()
        n = len(stamps)
        win = rule.window_days if rule.window_days is not None else settings.window_days
        window = math.inf if win is None else float(win) * DAY
        first = bisect_left(stamps, now - window) if now - stamps[0] > window else 0
        if first == n:
            continue
        seen = n - first
        if rule.min_count and seen < rule.min_count:
            continue
        if rule.max_count and seen > rule.max_count:
            first = n - rule.max_count
        end = max(first, bisect_right(stamps, now)) if stamps[-1] > now else n
        weight = float(n - end) if end != n else 0.0
        rate = decay_rate(rule.half_life_days or settings.half_life_days) if rule.decay else 0.0
        if not rate:
            weight += end - first
        else:
            for t in stamps[first:end]:
                weight += math.exp(rate * (t - now))
        value = float(rule.points) * weight
        cap = math.inf if rule.max_points is None else float(rule.max_points)
        value = max(-cap, min(cap, value))
        when = fmt_day(int(stamps[-1] // DAY))
        detail = f"{seen}x, last {when}" if seen > 1 else when
        found.append((-abs(value), len(spec.fit) + i, Contribution(rule.name, "engagement", value, detail, rule.bant)))
    found.sort(key=lambda f: (f[0], f[1]))
    contributions = tuple(c for _, _, c in found)
    caps = settings.caps
    fit = math.floor(_clamp(sum(c.points for c in contributions if c.group == "fit"), caps.fit.min, caps.fit.max) + 0.5)
    eng_raw = sum(c.points for c in contributions if c.group == "engagement")
    engagement = math.floor(_clamp(eng_raw, caps.engagement.min, caps.engagement.max) + 0.5)
    total = float(settings.weights.fit) * fit + float(settings.weights.engagement) * engagement
    score = math.floor(_clamp(total, caps.total.min, caps.total.max) + 0.5)
    band = "hot" if score >= settings.bands.hot else "warm" if score >= settings.bands.warm else "cold"
    g = settings.grades
    grade = "A" if fit >= g.A else "B" if fit >= g.B else "C" if fit >= g.C else "D"
    bant = dict.fromkeys(BANT_KEYS, 0.0)
    for c in contributions:
        if c.bant is not None:
            bant[c.bant] += c.points
    phrases = [p for c in contributions if (p := c.phrase()) is not None]
    return ScoreResult(
        score, fit, engagement, band, grade, reasons_text(phrases), contributions,
        {k: math.floor(v + 0.5) for k, v in bant.items()}, m.version, tuple(problems),
    )


def _population(n: int) -> list[tuple[dict[str, Any], list[Activity]]]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import engine as bench  # bench/engine.py: the benchmark's own population
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return [lead for page in bench.pages(n, 7, 0) for lead in page]


def _same(a: ScoreResult, b: ScoreResult) -> bool:
    # repr: bit for bit (0.1 + 0.2 and 0.3 differ there), contributions' points included
    return repr(tuple(a)) == repr(tuple(b))


def test_the_benchmark_population_scores_exactly_as_the_rules_read() -> None:
    now = 1_795_000_000.0
    leads = _population(1500)
    model = load_scoring(ROOT / "mappings" / "scoring.yaml")  # fresh caches: first sightings, then hits
    for _ in range(2):
        for profile, activities in leads:
            got = model.score(profile, activities, now)
            want = reference(model, profile, activities, now)
            assert _same(got, want), (profile, activities)


NOW = 1_800_000_000.0
EDGES = [
    [Activity("page_view", NOW + 60, {"url": "/pricing"})],  # one, in the future
    [Activity("page_view", NOW, {"url": "/pricing"})],  # one, exactly now
    [Activity("page_view", NOW - 90 * DAY, {"url": "/pricing"})],  # one, at the window's edge
    [Activity("page_view", NOW - 90 * DAY - 1, {"url": "/pricing?next=/careers"})],  # one, just outside
    [Activity("email_bounce", NOW - 400 * DAY)],  # no decay, beyond the default window
    [Activity("email_bounce", NOW - 3 * DAY), Activity("email_bounce", NOW - DAY)],  # max_count 1
    [Activity("form_submission", NOW - d * DAY, {"form": "Request a demo"}) for d in (1, 5, 9, -1)],
    [Activity("page_view", NOW - d * DAY, {"url": u}) for d in (0, 1, 100, -2) for u in ("/products/x", "/careers")],
    [Activity("meeting", NOW - 2 * DAY), Activity("call", NOW + 10), Activity("note", NOW)],
]


@pytest.mark.parametrize("activities", EDGES)
def test_edge_cases_score_exactly_as_the_rules_read(activities: list[Activity]) -> None:
    profile = {"job_title": "Head of Test", "email": "a@gmail.com", "country": "DE"}
    assert _same(MODEL.score(profile, activities, NOW), reference(MODEL, profile, activities, NOW))


URL_PIECES = ["https://x.example", "/pricing", "/products", "/careers", "?", "&", "utm_content=", "/PRICING", "n/a",
              " ", "\t", "ß", "/de/preise", "=", "/demo", "?ref=/pricing", "#", "Straße"]


FAST = load_scoring(ROOT / "mappings" / "scoring.yaml")
SLOW = load_scoring(ROOT / "mappings" / "scoring.yaml")
for _plan in SLOW._plans.values():
    _plan.query_needles = None  # every url read whole


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(URL_PIECES), min_size=0, max_size=6).map("".join), min_size=1, max_size=8))
def test_urls_classified_by_their_path_score_as_classified_whole(urls: list[str]) -> None:
    """The first-sighting shortcut (a query string without any rule's text is not read) changes nothing."""
    fast, slow = FAST, SLOW
    acts = [Activity("page_view", 1_795_000_000.0 - i * 86400.0, {"url": u}) for i, u in enumerate(urls)]
    assert _same(fast.score({}, acts, 1_795_000_000.0), slow.score({}, acts, 1_795_000_000.0))
    assert _same(fast.score({}, acts, 1_795_000_000.0), slow.score({}, acts, 1_795_000_000.0))  # cached now


def test_records_given_as_other_mappings_score_as_the_same_dicts() -> None:
    """Attributes and profiles that are read-only Mappings, not dicts (the compiled engine checks for a
    dict on its fast path and reads anything else on the careful one), score as the same dicts."""
    from types import MappingProxyType

    for profile, activities in _population(300):
        proxied = [Activity(a.kind, a.ts, MappingProxyType(dict(a.attrs))) for a in activities]
        assert _same(MODEL.score(MappingProxyType(profile), proxied, NOW), MODEL.score(profile, activities, NOW))


EMAIL_PIECES = ["bob", "@", ".", "gmail.com", "GMail.COM", "mail.gmx.de", "gmx.de", "x.example", " ", "\t", "..",
                "notgmail.com", "ß", "İ", "n/a", "company7.example", "@@", "web.de."]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(EMAIL_PIECES), min_size=0, max_size=5).map("".join), min_size=1, max_size=6))
def test_email_domains_seen_first_score_as_read_whole(emails: list[str]) -> None:
    """A new domain that no rule names is not read in full (nor cached): that changes nothing, seen once or
    again."""
    for email in emails * 2:
        profile = {"email": email}
        assert _same(FAST.score(profile, [], NOW), reference(FAST, profile, [], NOW)), email


def test_a_stream_of_new_values_keeps_the_caches_bounded_and_the_results_exact() -> None:
    """A long-running worker sees endless new titles, revenues, domains and urls: each cache forgets its
    older half when full (memory stays bounded, as bench/sync.py's RSS by portal size shows), and what is
    scored after that is what a fresh engine says."""
    from connector.engine.compiled import DETAILS_LIMIT
    from connector.engine.rules import CACHE_LIMIT, NUMBER_CACHE_LIMIT

    model = load_scoring(ROOT / "mappings" / "scoring.yaml")

    def lead(i: int) -> tuple[dict[str, Any], list[Activity]]:
        profile = {"job_title": f"Test Engineer {i}", "annual_revenue": 1_000_000 + i, "employees": f"{i:,}",
                   "email": f"p{i}@company{i}.example", "country": "Germany"}
        acts = [Activity("page_view", NOW - 3600.0 * (1 + i % 50), {"url": f"https://x.example/products/daq?i={i}"}),
                Activity("page_view", NOW - 86400.0, {"url": f"https://x.example/p{i}/pricing"})]
        return profile, acts

    for i in range(CACHE_LIMIT + 2_000):
        model.score(*lead(i), NOW)
    caches: list[dict[Any, Any]] = [field.cache for field in model._fields]
    caches += [field.plan.cache for field in model._fields]
    for plan in model._plans.values():
        caches += [plan.cache, plan.multi_cache, plan.plain]
    caches.append(model._details)
    assert max(len(c) for c in caches) <= CACHE_LIMIT + 1
    assert sum(len(c) for c in caches) > CACHE_LIMIT  # the stream did fill them
    # fields read as numbers (each value its own contribution and phrase) are held to the smaller bound
    numbers = {f.plan.field: len(f.plan.cache) for f in model._fields if f.plan.needs_number}
    assert set(numbers) >= {"annual_revenue", "employees"}
    assert all(NUMBER_CACHE_LIMIT // 2 < n <= NUMBER_CACHE_LIMIT for n in numbers.values()), numbers
    # a domain no rule names is not kept at all: a portal has as many as it has companies
    email = next(f.plan for f in model._fields if f.plan.field == "email")
    assert email.domains is not None
    assert not any("company" in key for key in email.cache), list(email.cache)[:5]
    assert len(model._details) > 0
    for day in range(20_000, 20_000 + 2 * DETAILS_LIMIT + 10):  # a worker running for years
        model._detail(1, day)
    assert DETAILS_LIMIT // 2 < len(model._details) <= DETAILS_LIMIT
    fresh = load_scoring(ROOT / "mappings" / "scoring.yaml")
    for i in range(CACHE_LIMIT - 50, CACHE_LIMIT + 2_050, 97):
        assert _same(model.score(*lead(i), NOW), fresh.score(*lead(i), NOW)), i


def test_a_full_cache_keeps_the_half_it_saw_last() -> None:
    """More distinct values than a cache holds (a portal's campaign-tagged urls) must still find the
    recent ones: a full cache forgets its older half, not everything."""
    from connector.engine.rules import CACHE_LIMIT, remember

    cache: dict[str, int] = {}
    for i in range(CACHE_LIMIT):
        remember(cache, f"u{i}", i)
    assert len(cache) == CACHE_LIMIT
    assert remember(cache, "new", -1) == -1
    assert len(cache) == CACHE_LIMIT - CACHE_LIMIT // 2 + 1
    assert "u0" not in cache
    assert f"u{CACHE_LIMIT // 2 - 1}" not in cache
    assert all(cache[f"u{i}"] == i for i in range(CACHE_LIMIT // 2, CACHE_LIMIT))
    assert cache["new"] == -1
