"""Retraining: a new model replaces the active one only within the AUC margin; every training is recorded;
beat's daily entry trains only when the last training is old enough."""

from __future__ import annotations

import random
from pathlib import Path

import redis

from connector.bootstrap import Runtime, build_runtime
from connector.config import load_settings
from connector.learn.dataset import Example, dataset_from_examples
from connector.learn.retrain import retrain_if_due, train_and_store
from tests.predict_synthetic import READ_AT, make_dataset, make_examples


def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    settings = load_settings({"REDIS_URL": redis_url, "HUBSPOT_ACCESS_TOKEN": "pat-test",
                              "HUBSPOT_BASE_URL": "http://127.0.0.1:9", "LEADSCORE_MODEL_STORE": str(tmp_path)})
    return build_runtime(settings, redis_client=redis.Redis.from_url(redis_url))


def shuffled(n: int, seed: int) -> object:
    """The same leads with their outcomes shuffled: nothing left to learn (AUC about 0.5)."""
    examples = make_examples(n, seed=seed)
    labels = [(e.outcome, e.outcome_at) for e in examples]
    random.Random(seed).shuffle(labels)
    return dataset_from_examples("hubspot", [Example(e.lead, o, t) for e, (o, t) in
                                             zip(examples, labels, strict=True)], READ_AT)


def test_a_worse_model_is_recorded_but_the_active_one_stays(redis_url: str, tmp_path: Path) -> None:
    rt = runtime(redis_url, tmp_path)
    store = rt.model_store
    assert store is not None

    first = train_and_store(rt, "hubspot", dataset=make_dataset(500, seed=21), now=READ_AT)
    assert first.kept
    assert store.active_version("hubspot") == first.model_version

    worse = train_and_store(rt, "hubspot", dataset=shuffled(500, seed=22), now=READ_AT + 86400)

    assert worse.kept is False
    assert worse.kept_why.startswith(f"its CV AUC {worse.cv_auc:.3f} is ")
    assert "more than the allowed 0.02" in worse.kept_why
    assert store.active_version("hubspot") == first.model_version
    assert [(t.model_version, t.kept) for t in store.trainings("hubspot")] == [
        (worse.model_version, False), (first.model_version, True)]


def test_beat_trains_only_when_the_last_training_is_old_enough(redis_url: str, tmp_path: Path) -> None:
    rt = runtime(redis_url, tmp_path)
    first = train_and_store(rt, "hubspot", dataset=make_dataset(420, seed=23), now=READ_AT)

    figures, why = retrain_if_due(rt, "hubspot", now=READ_AT + 3 * 86400)

    assert figures is None
    assert why == "not due: last trained 2026-11-18 11:06 UTC"
    assert [t.model_version for t in rt.model_store.trainings("hubspot")] == [first.model_version]  # type: ignore[union-attr]


def test_beat_has_a_daily_retrain_entry_per_crm_at_the_configured_time(redis_url: str, tmp_path: Path) -> None:
    from tasks.beat import beat_schedule

    entry = beat_schedule(runtime(redis_url, tmp_path))["hubspot-retrain"]
    assert entry["task"] == "leadscore.learn.retrain"
    assert entry["args"] == ("hubspot",)
    assert (entry["schedule"].hour, entry["schedule"].minute) == ({3}, {30})
