"""The model store: versions in files, the active one in Redis, loaded once per worker and only as recorded."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import redis

from connector.engine import load_scoring
from connector.learn.store import ActiveModels, ModelStore, StoreError, store_folder
from connector.learn.train import TrainedModel, train
from connector.mappings.probability import ProbabilitySettings
from tests.conftest import ROOT
from tests.predict_synthetic import READ_AT, make_dataset


@cache
def trained() -> TrainedModel:
    return train(make_dataset(420, seed=9), load_scoring(ROOT / "mappings" / "scoring.yaml"), ProbabilitySettings(),
                 now=READ_AT, repeats=1)


@pytest.fixture
def store(tmp_path: Path, redis_url: str) -> ModelStore:
    return ModelStore(str(tmp_path / "models"), redis.Redis.from_url(redis_url), "test")


def test_a_saved_model_is_versioned_and_loads_back_with_its_figures(store: ModelStore) -> None:
    version = store.save(trained())
    assert version.startswith("hubspot-20261118T110640Z-")
    assert (store.folder / "hubspot" / f"{version}.joblib").is_file()
    loaded = store.load("hubspot", version)
    assert loaded.version == version
    assert loaded.spec.columns == trained().spec.columns
    figures = store.figures("hubspot", version)
    assert figures is not None
    assert figures.cv_auc == pytest.approx(trained().figures.cv_auc, abs=1e-4)
    assert store.active_version("hubspot") is None
    store.activate("hubspot", version)
    assert store.active_version("hubspot") == version


def test_a_changed_model_file_is_refused(store: ModelStore) -> None:
    version = store.save(trained())
    path = store.folder / "hubspot" / f"{version}.joblib"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(StoreError, match="does not match the digest recorded when it was trained"):
        store.load("hubspot", version)


def test_a_file_put_into_the_store_by_someone_else_is_not_loaded(store: ModelStore) -> None:
    (store.folder / "hubspot").mkdir(parents=True)
    (store.folder / "hubspot" / "hubspot-planted.joblib").write_bytes(b"not ours")
    with pytest.raises(StoreError, match="is not recorded in Redis"):
        store.load("hubspot", "hubspot-planted")


def test_a_worker_loads_the_active_model_once_and_again_when_another_becomes_active(store: ModelStore) -> None:
    models = ActiveModels(store)
    assert models.get("hubspot") is None
    first = store.save(trained())
    store.activate("hubspot", first)
    assert models.get("hubspot").version == first
    assert models.get("hubspot").version == first
    assert models.loads == 1
    again = TrainedModel(**{**{k: getattr(trained(), k) for k in ("crm", "spec", "estimator", "baseline")},
                            "figures": type(trained().figures).from_json(
                                {**trained().figures.as_json(), "trained_at": READ_AT + 86400})})
    second = store.save(again)
    store.activate("hubspot", second)
    assert models.get("hubspot").version == second
    assert models.loads == 2


def test_an_active_version_whose_file_is_gone_gives_no_probability_and_is_not_retried(store: ModelStore) -> None:
    version = store.save(trained())
    store.activate("hubspot", version)
    (store.folder / "hubspot" / f"{version}.joblib").unlink()
    models = ActiveModels(store)
    assert models.get("hubspot") is None
    assert models.get("hubspot") is None
    assert models.loads == 0


def test_each_training_is_recorded_newest_first(store: ModelStore) -> None:
    f = trained().figures
    store.record_training(type(f).from_json({**f.as_json(), "model_version": "a", "kept": True}))
    store.record_training(type(f).from_json({**f.as_json(), "model_version": "b", "kept": False}))
    assert [(t.model_version, t.kept) for t in store.trainings("hubspot")] == [("b", False), ("a", True)]


def test_the_store_is_a_folder_or_a_file_url() -> None:
    assert store_folder("file:///srv/models") == Path("/srv/models")
    assert store_folder("/srv/models") == Path("/srv/models")
    with pytest.raises(Exception, match="must be a folder path or a file:// URL"):
        store_folder("s3://bucket/models")


def test_the_backtest_report_shows_the_active_models_reliability_through_the_configured_store(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.learn import report
    from connector.learn.dataset import dataset_from_examples
    from connector.learn.evaluate import backtest
    from tests.predict_synthetic import make_examples

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("LEADSCORE_MODEL_STORE", str(tmp_path / "models"))
    ds = dataset_from_examples("hubspot", make_examples(300, seed=3), READ_AT)
    bt = backtest(ds, load_scoring(ROOT / "mappings" / "scoring.yaml"))
    assert report.extra_sections(ds, bt) == []  # no active model yet: no section

    store = ModelStore(str(tmp_path / "models"), redis.Redis.from_url(redis_url), "leadscore")
    store.activate("hubspot", store.save(trained()))
    [section] = report.extra_sections(ds, bt)

    assert section.title == "Learned probability: reliability"
    assert store.active_version("hubspot") in section.html
