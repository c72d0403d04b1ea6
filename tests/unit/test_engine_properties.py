"""Properties of the default model over arbitrary records: it never raises, and more interest never costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.domain import ACTIVITY_KINDS, PROFILE_FIELDS, Activity
from connector.engine import ScoringModel, load_scoring

ROOT = Path(__file__).resolve().parents[2]
MODEL: ScoringModel = load_scoring(ROOT / "mappings" / "scoring.yaml")
NOW = 1_800_000_000.0
YEAR = 365 * 86400.0

# Kinds every rule of the default model rewards (page views can hit the careers penalty,
# bounces and unsubscribes are penalties).
POSITIVE_KINDS = sorted(
    {"meeting", "email_reply", "call", "webinar_attended", "webinar_registered", "event_attended",
     "email_click", "email_open", "download", "form_submission"}
)

garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["50-100", "n/a", "1,200", "€ 25M", "Deutschland", "CEO", "bob@gmail.com", "@", " "]),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
profiles = st.dictionaries(st.one_of(st.sampled_from(sorted(PROFILE_FIELDS)), st.text(max_size=8)), garbage)
any_kind = st.one_of(st.sampled_from(sorted(ACTIVITY_KINDS)), st.text(max_size=10), st.none(), st.integers())
any_time = st.one_of(
    st.floats(min_value=NOW - 2 * YEAR, max_value=NOW + 86400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.text(max_size=5),
    st.none(),
)
any_attrs = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(["url", "form", "title", "campaign"]), st.text(max_size=5)),
        st.one_of(st.text(max_size=40), st.sampled_from(["/pricing", "/careers", "Request a demo"]), garbage),
        max_size=3,
    ),
    st.none(),
    st.integers(),
)
any_activities = st.lists(st.builds(Activity, any_kind, any_time, any_attrs), max_size=15)

readable_attrs = st.dictionaries(
    st.sampled_from(["url", "form", "title", "campaign"]),
    st.one_of(st.text(max_size=40), st.sampled_from(["/pricing", "/careers", "Request a demo", "Whitepaper"])),
    max_size=3,
)
times = st.floats(min_value=NOW - 2 * YEAR, max_value=NOW + 86400)
readable_activities = st.lists(
    st.builds(Activity, st.sampled_from(sorted(ACTIVITY_KINDS)), times, readable_attrs), max_size=20
)
positive_activity = st.builds(Activity, st.sampled_from(POSITIVE_KINDS), times, readable_attrs)


@settings(max_examples=120, deadline=None)
@given(profiles, any_activities)
def test_scoring_never_raises_on_arbitrary_records(profile: dict[Any, Any], activities: list[Activity]) -> None:
    MODEL.score(profile, activities, NOW)


@settings(max_examples=120, deadline=None)
@given(profiles, any_activities)
def test_every_result_is_within_the_caps_and_bands(profile: dict[Any, Any], activities: list[Activity]) -> None:
    r = MODEL.score(profile, activities, NOW)
    assert 0 <= r.score <= 100
    assert -40 <= r.fit <= 60
    assert -30 <= r.engagement <= 60
    assert r.band == ("hot" if r.score >= 70 else "warm" if r.score >= 40 else "cold")
    assert r.grade in {"A", "B", "C", "D"}
    assert 0 < len(r.reasons) <= 480
    assert set(r.write_values(NOW)) == {"score", "fit", "engagement", "band", "grade", "reasons", "scored_at", "model"}


@settings(max_examples=120, deadline=None)
@given(profiles, readable_activities, positive_activity)
def test_adding_a_positive_activity_never_lowers_the_score(
    profile: dict[Any, Any], activities: list[Activity], extra: Activity
) -> None:
    before = MODEL.score(profile, activities, NOW)
    after = MODEL.score(profile, [*activities, extra], NOW)
    assert after.score >= before.score
    assert after.engagement >= before.engagement


@settings(max_examples=40, deadline=None)
@given(profiles, readable_activities)
def test_scoring_is_deterministic(profile: dict[Any, Any], activities: list[Activity]) -> None:
    assert MODEL.score(profile, activities, NOW) == MODEL.score(profile, list(activities), NOW)


@settings(max_examples=60, deadline=None)
@given(profiles, readable_activities, st.randoms(use_true_random=False))
def test_the_order_of_the_activities_changes_nothing(
    profile: dict[Any, Any], activities: list[Activity], rng: Any
) -> None:
    """CRMs page activities in their own order (and a webhook's rescore reads them in another than a
    sync): the same activities must give the same result, every contribution's points to the last bit,
    or a lead would be rewritten with nothing new."""
    shuffled = list(activities)
    rng.shuffle(shuffled)
    assert MODEL.score(profile, shuffled, NOW) == MODEL.score(profile, activities, NOW)


@settings(max_examples=40, deadline=None)
@given(profiles, readable_activities)
def test_explaining_never_raises(profile: dict[Any, Any], activities: list[Activity]) -> None:
    assert MODEL.explain(profile, activities, NOW).startswith(f"Model {MODEL.version}")


def test_absurd_but_finite_times_are_skipped_and_named_not_raised() -> None:
    """Found by the property above: two times near the float maximum sum to infinity in the fast pass."""
    huge = 8.988465674311579e307
    result = MODEL.score({}, [Activity("call", huge, {}), Activity("call", huge, None)], NOW)
    assert result.engagement == 0
    assert sum("is not a date" in p for p in result.problems) == 2
